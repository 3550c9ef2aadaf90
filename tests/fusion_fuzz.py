"""A differential fuzz harness for ``langevin``'s reading of user energies: ``backend="auto"``
(the fused C++ kernels on what ``problem.py`` / ``recognize.py`` read from the energy) against
``backend="reference"`` (the torch autograd loop, the specification), over energies written the
ways EBM code is written.

The contract checked, per call of every case:
1. auto gives the reference's chain (fp32 tolerance; bf16 under autocast), whether it fused or
   declined (a declined call says why: ``info["why_not_fused"]`` a string);
2. auto raises exactly where the reference raises: the same exception type and message;
3. the reference calls the user's energy exactly K times (K + 1 with MALA, 0 for K = 0), and at
   most once when it raises (every raising energy here raises at its first call): no tracing,
   no extra calls. Counted with ``sys.setprofile`` on the energy's own entry code, so the energy
   is passed exactly as written (no wrapper, no hook that could change what is read);
4. the energy's modules (parameters and buffers: BatchNorm statistics, spectral-norm vectors)
   are the same after each auto call as after the reference's;
5. the harness itself: the reference run twice from fresh builds gives bit-identical results.

A MALA chain that differs is accepted only when some accept decision of the reference had
|log alpha - log u| < 1e-3 (an fp32 rounding can flip it): ``helpers.reference_mala_trace``.

``cases(seed, n)`` is deterministic; ``Case.build()`` makes a fresh energy, its start points
and its calls (each a mutation of the energy's state applied first, then langevin's kwargs), so
the reference and the auto runs start from the same state. ``run_cases`` collects every failure
and ``format_report`` tabulates them per style.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
import random
import sys
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

import jebm_kernels as jk

try:
    from jebm_kernels.arguments import make_problem
except ImportError:  # (before make_problem moved to arguments.py)
    from jebm_kernels.problem import make_problem

from helpers import reference_mala_trace

__all__ = ["Case", "Instance", "Step", "cases", "run_case", "run_cases", "format_report", "CallCounter",
           "expected_calls", "STYLES", "Failure", "Report"]

ATOL = RTOL = 5e-5          # fused fp32 kernels vs autograd, short chains
ATOL64 = RTOL64 = 1e-8      # float64 (no fp32 kernel may serve it)
ATOL_BF16 = 5e-2            # under torch.autocast(bfloat16)
MALA_MARGIN = 1e-3


# ----------------------------------------------------------------------------- counting calls

def _entry(energy):
    """(code object, owner or None): the frame that is entered once per call of ``energy``."""
    if isinstance(energy, functools.partial):
        return _entry(energy.func)
    if isinstance(energy, nn.Module):
        return type(energy).forward.__code__, energy
    if isinstance(energy, types.MethodType):
        return energy.__func__.__code__, energy.__self__
    if isinstance(energy, types.FunctionType):
        return energy.__code__, None
    return type(energy).__call__.__code__, energy


class CallCounter:
    """Counts calls of ``energy`` (entries of its forward / function / __call__ frame for this
    object) by ``sys.setprofile``: nothing about the energy changes."""

    def __init__(self, energy):
        self.code, self.owner = _entry(energy)
        self.n = 0

    def _profile(self, frame, event, arg):
        if event == "call" and frame.f_code is self.code:
            if self.owner is None or frame.f_locals.get("self") is self.owner:
                self.n += 1

    def __enter__(self):
        self._old = sys.getprofile()
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(self._old)
        return False


def expected_calls(n_steps: int, mala: bool) -> int:
    """run_chain's energy evaluations: the start and after each step but the last; MALA: the start
    and each proposal."""
    if n_steps == 0:
        return 0
    return n_steps + 1 if mala else n_steps


# ----------------------------------------------------------------------------- cases

@dataclass
class Step:
    """One langevin call: ``mutate()`` first (both runs), then langevin(energy, z, **kwargs)."""
    z: Any
    kwargs: dict
    mutate: Callable | None = None
    ctx: str | None = None          # None, "autocast" (bf16) or "inference_mode"
    note: str = ""


@dataclass
class Instance:
    energy: Callable
    steps: list
    modules: Callable = None        # -> nn.Module whose state_dict is compared after each call


@dataclass
class Case:
    style: str
    index: int
    seed: int
    desc: str
    builder: Callable
    fuzz_seed: int = 0              # cases(fuzz_seed, n)[index] / case_at(fuzz_seed, index) rebuilds it

    def build(self) -> Instance:
        torch.manual_seed(self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.builder()

    def __repr__(self):
        return f"Case({self.style} #{self.index} of fuzz seed {self.fuzz_seed}: {self.desc})"


# activation name -> (module factory, functional) given its parameter
ACTS = {
    "relu": (lambda p: nn.ReLU(), lambda x, p: F.relu(x)),
    "leaky_relu": (lambda p: nn.LeakyReLU(p), lambda x, p: F.leaky_relu(x, p)),
    "gelu": (lambda p: nn.GELU(), lambda x, p: F.gelu(x)),
    "gelu_tanh": (lambda p: nn.GELU(approximate="tanh"), lambda x, p: F.gelu(x, approximate="tanh")),
    "silu": (lambda p: nn.SiLU(), lambda x, p: F.silu(x)),
    "tanh": (lambda p: nn.Tanh(), lambda x, p: torch.tanh(x)),
    "softplus": (lambda p: nn.Softplus(beta=p), lambda x, p: F.softplus(x, beta=p)),
    "elu": (lambda p: nn.ELU(alpha=p), lambda x, p: F.elu(x, alpha=p)),
    # not in the kernels
    "sigmoid": (lambda p: nn.Sigmoid(), lambda x, p: torch.sigmoid(x)),
    "mish": (lambda p: nn.Mish(), lambda x, p: F.mish(x)),
    "hardtanh": (lambda p: nn.Hardtanh(), lambda x, p: F.hardtanh(x)),
    "softsign": (lambda p: nn.Softsign(), lambda x, p: F.softsign(x)),
    "selu": (lambda p: nn.SELU(), lambda x, p: F.selu(x)),
    "celu": (lambda p: nn.CELU(alpha=p), lambda x, p: F.celu(x, alpha=p)),
    "logsigmoid": (lambda p: nn.LogSigmoid(), lambda x, p: F.logsigmoid(x)),
    "softplus_thr5": (lambda p: nn.Softplus(beta=p, threshold=5.0), lambda x, p: F.softplus(x, beta=p, threshold=5.0)),
}
KERNEL_ACTS = ["relu", "leaky_relu", "gelu", "gelu_tanh", "silu", "tanh", "softplus", "elu"]
OTHER_ACTS = ["sigmoid", "mish", "hardtanh", "softsign", "selu", "celu", "logsigmoid", "softplus_thr5"]
ACT_PARAMS = {"leaky_relu": [0.01, 0.05, 0.2, 0.3], "softplus": [0.5, 1.0, 2.0, 5.0], "elu": [0.5, 1.0, 1.7],
              "celu": [0.5, 1.0, 2.0], "softplus_thr5": [1.0, 2.0]}
DIMS = [1, 2, 3, 5, 7, 8, 12, 13, 16]
WIDTHS = [1, 3, 5, 7, 8, 13, 16, 24, 32]


def pick_act(rng, other=0.25):
    name = rng.choice(OTHER_ACTS if rng.random() < other else KERNEL_ACTS)
    return name, rng.choice(ACT_PARAMS.get(name, [0.0]))


def act_module(a):
    return ACTS[a[0]][0](a[1])


def act_fn(a):
    f = ACTS[a[0]][1]
    return lambda x: f(x, a[1])


def pick_batch(rng):
    return rng.choice([1, 1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17])


def mlp(d, widths, act, out=1, bias=True):
    """[Linear(d, w1), act, ..., Linear(w_last, out)] as a module list."""
    mods, prev = [], d
    for w in widths:
        mods += [nn.Linear(prev, w, bias=bias), act_module(act)]
        prev = w
    mods.append(nn.Linear(prev, out, bias=bias))
    return mods


def draw_kwargs(rng, n_layers=1, mala_ok=True, k_max=6):
    K = rng.choice([0, 1, 1, 2, 2, 3, 3, 4, 5, 6])
    K = min(K, k_max)
    s = rng.choice([0.03, 0.05, 0.1, 0.15, 0.2, 0.3])
    noise = rng.choice([1.0, 1.0, 1.0, 0.5, 0.0])
    mala = mala_ok and noise > 0 and rng.random() < 0.15
    if mala:
        K, s = min(K, 4), min(s, 0.15)
    if n_layers > 1 and rng.random() < 0.6:
        step = [rng.choice([0.03, 0.05, 0.1, 0.2]) for _ in range(n_layers)]
    else:
        step = s
    r = rng.random()
    if r < 0.6:
        sigma = None
    elif n_layers > 1 and r < 0.8:
        sigma = [rng.choice([0.5, 1.0, 2.0]) for _ in range(n_layers)]
    else:
        sigma = rng.choice([0.5, 1.0, 2.0])
    kw = dict(n_steps=K, step_size=step, noise_scale=noise, mala=mala,
              generator=(rng.randrange(2 ** 32), rng.randrange(10 ** 6)))
    if sigma is not None:
        kw["prior_sigma"] = sigma
    return kw


def scale_steps(kw, f):
    """kwargs with the step size(s) times f (for stiff energies)."""
    kw = dict(kw)
    s = kw["step_size"]
    kw["step_size"] = [x * f for x in s] if isinstance(s, list) else s * f
    return kw


# mutations between calls (applied to both runs, deterministically)
WEIGHT_MUTATIONS = ["adam", "sgd", "load_state_dict", "clamp", "data_grad", "data_assign", "nograd_mul",
                    "train_toggle", "swap_linear", "load_state_dict_assign", "freeze"]
RARE_MUTATIONS = ["to_double"]  # every later call then raises (float32 z, float64 weights): both must agree


class Mutator:
    """Weight changes as training code makes them: an optimizer step, load_state_dict, writes
    through ``.data``, in-place under no_grad, train()/eval()."""

    def __init__(self, root: nn.Module, loss: Callable | None, seed: int):
        self.root = root
        self.gen = torch.Generator().manual_seed(seed)
        params = [p for p in root.parameters() if p.requires_grad]
        self.probe = [torch.randn(p.shape, generator=self.gen, dtype=p.dtype) for p in params]
        self.loss = loss or (lambda: sum((p * w).sum() for p, w in zip(root.parameters(), self.probe)))
        self.opts = {}

    def params(self):
        return [p for p in self.root.parameters() if p.requires_grad]

    def _grads(self):
        for p in self.params():
            p.grad = None
        self.loss().backward()

    def __call__(self, kind: str):
        return lambda: self.apply(kind)

    def apply(self, kind: str):
        if not self.params() and kind != "train_toggle":
            return
        if kind in ("adam", "sgd"):
            if kind not in self.opts:
                self.opts[kind] = (torch.optim.Adam(self.params(), lr=0.02) if kind == "adam"
                                   else torch.optim.SGD(self.params(), lr=0.05, momentum=0.5))
            opt = self.opts[kind]
            opt.zero_grad()
            self.loss().backward()
            opt.step()
        elif kind == "load_state_dict":
            sd = {k: (v * (1 + 0.1 * torch.randn(v.shape, generator=self.gen, dtype=v.dtype))
                      if v.is_floating_point() else v) for k, v in self.root.state_dict().items()}
            self.root.load_state_dict(sd)
        elif kind == "clamp":
            c = [0.01, 0.1, 0.3][int(torch.randint(3, (1,), generator=self.gen))]
            for p in self.params():
                p.data.clamp_(-c, c)
        elif kind == "data_grad":
            self._grads()
            for p in self.params():
                p.data -= 0.1 * p.grad
        elif kind == "data_assign":
            for p in self.params():
                p.data = p.data * 0.9 + 0.05 * torch.randn(p.shape, generator=self.gen, dtype=p.dtype)
        elif kind == "nograd_mul":
            with torch.no_grad():
                for p in self.params():
                    p.mul_(1.05)
        elif kind == "train_toggle":
            self.root.train(not self.root.training)
        elif kind == "swap_linear":  # a layer replaced by another (surgery, a partial checkpoint)
            root = self.root.module() if isinstance(self.root, _Holder) else self.root
            cands = [(parent, name, child) for parent in root.modules() for name, child in parent.named_children()
                     if type(child) is nn.Linear]
            if not cands:
                return
            parent, name, child = cands[int(torch.randint(len(cands), (1,), generator=self.gen))]
            new = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                            dtype=child.weight.dtype)
            with torch.no_grad():
                for p_new, p_old in zip(new.parameters(), child.parameters()):
                    p_new.copy_(p_old * (1 + 0.2 * torch.randn(p_old.shape, generator=self.gen, dtype=p_old.dtype)))
            setattr(parent, name, new)
        elif kind == "load_state_dict_assign":  # new Parameter objects
            sd = {k: (v * (1 - 0.1 * torch.rand(v.shape, generator=self.gen, dtype=v.dtype))
                      if v.is_floating_point() else v.clone()) for k, v in self.root.state_dict().items()}
            self.root.load_state_dict(sd, assign=True)
        elif kind == "freeze":
            for p in self.params():
                p.requires_grad_(False)
        elif kind == "to_double":
            (self.root.module() if isinstance(self.root, _Holder) else self.root).double()
        elif kind != "none":
            raise ValueError(kind)


@dataclass
class Plan:
    """Per call: (mutation kind, langevin kwargs, batch size, context)."""
    calls: list

    def describe(self):
        parts = []
        for kind, kw, B, ctx in self.calls:
            s = f"K={kw['n_steps']}"
            if kw.get("mala"):
                s += " mala"
            if kw["noise_scale"] != 1.0:
                s += f" tau={kw['noise_scale']}"
            if "prior_sigma" in kw:
                s += f" sigma={kw['prior_sigma']}"
            if isinstance(kw["step_size"], list):
                s += f" s={kw['step_size']}"
            s += f" B={B}"
            if ctx:
                s += f" [{ctx}]"
            parts.append((f"{kind}; " if kind and kind != "none" else "") + s)
        return " | ".join(parts)


def draw_plan(rng, mutations=WEIGHT_MUTATIONS, B=None, n_layers=1, mala_ok=True, vary_batch=False,
              ctx=None, n_calls=None, k_max=6, extra=()):
    """1-3 calls; mutations before calls 2.. from ``mutations`` + ``extra``."""
    n = n_calls or rng.choice([1, 2, 2, 3])
    B0 = B or pick_batch(rng)
    calls = []
    pool = list(mutations) + list(extra)
    for i in range(n):
        kind = "none" if i == 0 or not pool else rng.choice(pool)
        Bi = pick_batch(rng) if (vary_batch and i > 0 and rng.random() < 0.7) else B0
        calls.append((kind, draw_kwargs(rng, n_layers, mala_ok, k_max), Bi, ctx))
    return Plan(calls)


def make_steps(plan: Plan, z_of: Callable, mutate_of: Callable, seed: int) -> list:
    """Steps from a plan: z_of(gen, B) makes each call's start (in call order, so both builds
    draw the same), mutate_of(kind) the mutation."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for kind, kw, B, ctx in plan.calls:
        steps.append(Step(z=z_of(gen, B), kwargs=dict(kw), mutate=None if kind == "none" else mutate_of(kind),
                          ctx=ctx, note=kind))
    return steps


def randn(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen, dtype=dtype)


def _z2(d, dtype=torch.float32):
    return lambda gen, B: randn(gen, B, d, dtype=dtype)


def _instance(energy, root, plan, z_of, seed, loss=None, custom=None, modules=None):
    mut = Mutator(root, loss, seed + 7)

    def mutate_of(kind):
        if custom and kind in custom:
            return custom[kind]
        return mut(kind)
    return Instance(energy, make_steps(plan, z_of, mutate_of, seed + 11), modules or (lambda: root))


# ----------------------------------------------------------------------------- styles
# Each style: rng -> (description, build) where build() makes a fresh Instance from plain data
# drawn here (so two builds are equal).

def _dims(rng):
    return rng.choice(DIMS), [rng.choice(WIDTHS) for _ in range(rng.choice([1, 1, 2, 2, 3]))]


INPLACE = {"relu": lambda p: nn.ReLU(inplace=True), "leaky_relu": lambda p: nn.LeakyReLU(p, inplace=True),
           "elu": lambda p: nn.ELU(p, inplace=True), "silu": lambda p: nn.SiLU(inplace=True),
           "hardtanh": lambda p: nn.Hardtanh(inplace=True), "selu": lambda p: nn.SELU(inplace=True),
           "celu": lambda p: nn.CELU(p, inplace=True)}


class SubLinear(nn.Linear):
    """A Linear subclass that computes what nn.Linear does."""


class ScaledLinear(nn.Linear):
    """A Linear subclass whose forward differs."""

    def forward(self, x):
        return 0.5 * super().forward(x) + 0.1


SEQ_FORMS = ["plain", "plain", "plain", "inplace_act", "nested", "identity", "flatten", "linear_subclass",
             "linear_subclass_scaled"]


def st_seq_mlp(rng, seed):
    """nn.Sequential MLPs (the direct read path), and Sequentials that look like one."""
    d, ws = _dims(rng)
    act = pick_act(rng)
    bias = rng.random() < 0.85
    form = rng.choice(SEQ_FORMS)
    plan = draw_plan(rng, extra=RARE_MUTATIONS if rng.random() < 0.1 else ())

    def build():
        mods = mlp(d, ws, act, bias=bias)
        if form == "inplace_act" and act[0] in INPLACE:
            mods = [INPLACE[act[0]](act[1]) if i % 2 else m for i, m in enumerate(mods)]
        elif form == "nested":
            mods = [nn.Sequential(*mods[i:i + 2]) for i in range(0, len(mods) - 1, 2)] + [mods[-1]]
        elif form == "identity":
            mods = mods[:1] + [nn.Identity()] + mods[1:]
        elif form == "flatten":
            mods = [nn.Flatten()] + mods
        elif form.startswith("linear_subclass"):
            cls = ScaledLinear if form.endswith("scaled") else SubLinear
            i = 2 * int(torch.randint(len(ws) + 1, (1,)))
            old = mods[i]
            mods[i] = cls(old.in_features, old.out_features, bias=old.bias is not None)
        net = nn.Sequential(*mods)
        return _instance(net, net, plan, _z2(d), seed, loss=None)
    return f"Sequential ({form}) d={d} widths={ws} act={act} bias={bias} :: {plan.describe()}", build


def st_seq_trailing_act(rng, seed):
    d, ws = _dims(rng)
    act = pick_act(rng)
    last = rng.choice([("softplus", 1.0), ("tanh", 0.0), ("sigmoid", 0.0), act])
    plan = draw_plan(rng)

    def build():
        net = nn.Sequential(*mlp(d, ws, act), act_module(last))
        return _instance(net, net, plan, _z2(d), seed)
    return f"Sequential d={d} widths={ws} act={act} then {last} :: {plan.describe()}", build


def st_seq_layers(rng, seed):
    d, _ = _dims(rng)
    h = rng.choice(WIDTHS[2:])
    act = pick_act(rng, other=0.1)
    layer = rng.choice(["layernorm", "dropout", "batchnorm", "batchnorm"])
    train = rng.random() < 0.5
    plan = draw_plan(rng, mutations=["adam", "train_toggle", "data_assign", "load_state_dict"], mala_ok=not train)

    def build():
        if layer == "layernorm":
            extra = nn.LayerNorm(h)
            with torch.no_grad():
                extra.weight.uniform_(0.5, 1.5)
                extra.bias.uniform_(-0.3, 0.3)
        elif layer == "dropout":
            extra = nn.Dropout(0.3)
        else:
            extra = nn.BatchNorm1d(h)
            with torch.no_grad():
                extra.running_mean.uniform_(-0.5, 0.5)
                extra.running_var.uniform_(0.5, 2.0)
                extra.weight.uniform_(0.5, 1.5)
                extra.bias.uniform_(-0.3, 0.3)
        net = nn.Sequential(nn.Linear(d, h), extra, act_module(act), nn.Linear(h, 1))
        net.train(train)
        return _instance(net, net, plan, _z2(d), seed)
    return f"Sequential with {layer} ({'train' if train else 'eval'}) d={d} h={h} act={act} :: {plan.describe()}", build


_OUTS = ["squeeze", "view", "select", "sum", "mean", "flatten", "squeeze_all"]


def _reduce(out: torch.Tensor, how: str) -> torch.Tensor:
    if how == "squeeze":
        return out.squeeze(-1)
    if how == "view":
        return out.view(-1)
    if how == "select":
        return out[:, 0]
    if how == "sum":
        return out.sum(-1)
    if how == "mean":
        return out.mean(dim=1)
    if how == "flatten":
        return out.flatten()
    return out.squeeze()  # LEBM's .squeeze(): a scalar at B = 1


class LoopEnergy(nn.Module):
    def __init__(self, d, ws, act, out, how, sign, q):
        super().__init__()
        dims = [d] + ws
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])] + [nn.Linear(dims[-1], out)])
        self.act, self.how, self.sign, self.q = act, how, sign, q

    def forward(self, z):
        h = z
        f = act_fn(self.act)
        for layer in self.layers[:-1]:
            h = f(layer(h))
        u = self.sign * _reduce(self.layers[-1](h), self.how)
        if self.q:
            u = u + self.q * (z * z).sum(dim=1)
        return u


def _out_width(rng, how):
    return rng.choice([1, 1, 3, 5]) if how in ("sum", "mean") else 1


def st_modulelist(rng, seed):
    d, ws = _dims(rng)
    act = pick_act(rng)
    how = rng.choice(_OUTS)
    out = _out_width(rng, how)
    sign, q = rng.choice([1.0, -1.0]), rng.choice([0.0, 0.5, 0.25])
    plan = draw_plan(rng)

    def build():
        e = LoopEnergy(d, ws, act, out, how, sign, q)
        return _instance(e, e, plan, _z2(d), seed)
    return f"ModuleList loop d={d} widths={ws} act={act} out={out} {how} sign={sign} q={q} :: {plan.describe()}", build


def st_closure(rng, seed):
    """A closure over modules with F.* calls (a lambda, a def; a def whose cell is rebound)."""
    d, ws = _dims(rng)
    act = pick_act(rng)
    how = rng.choice(_OUTS)
    out = _out_width(rng, how)
    q = rng.choice([0.0, 0.5])
    form = rng.choice(["lambda", "def", "rebound_cell"])
    plan = draw_plan(rng, extra=["rebind_cell"] * 3 if form == "rebound_cell" else ())

    def build():
        layers = nn.ModuleList(mlp(d, ws, act, out)[0::2])
        f = act_fn(act)
        if form == "lambda":
            seq = nn.Sequential(*mlp(d, ws, act, out))
            energy = lambda z: -_reduce(seq(z), how) + q * z.pow(2).sum(-1)  # noqa: E731
            return _instance(energy, seq, plan, _z2(d), seed)
        if form == "def":
            def energy(z):
                h = z
                for layer in layers[:-1]:
                    h = f(layer(h))
                return _reduce(layers[-1](h), how) + q * (z ** 2).sum(-1)
            return _instance(energy, layers, plan, _z2(d), seed)
        net = nn.Sequential(*mlp(d, ws, act, out))
        gen = torch.Generator().manual_seed(seed + 3)

        def energy(z):
            return _reduce(net(z), how) + q * (z ** 2).sum(-1)

        def rebind_cell():
            nonlocal net
            net = _perturbed_copy(net, gen, 0.05)
        return _instance(energy, _Holder(lambda: net), plan, _z2(d), seed, custom={"rebind_cell": rebind_cell},
                         modules=lambda: net)
    return f"closure ({form}) d={d} widths={ws} act={act} out={out} {how} q={q} :: {plan.describe()}", build


GLOBAL_SRCS = {
    "direct": "def energy(z):\n    return {sign}net(z).squeeze(-1) + {q} * (z * z).sum(-1)\n",
    "dict": "def energy(z):\n    return {sign}MODELS['ebm'](z).squeeze(-1) + {q} * (z * z).sum(-1)\n",
    "attribute": "def energy(z):\n    return {sign}STATE.net(z).squeeze(-1) + {q} * (z * z).sum(-1)\n",
    "temperature": "def energy(z):\n    return {sign}net(z).squeeze(-1) / T + {q} * (z * z).sum(-1)\n",
}


def st_global_fn(rng, seed):
    """A module-level function reading a global module (directly, through a dict, through an
    attribute of a global object; or a global temperature); the global rebound between calls (a
    reloaded checkpoint, an EMA copy with slightly different weights)."""
    d, ws = _dims(rng)
    act = pick_act(rng)
    sign, q = rng.choice(["", "-"]), rng.choice([0.0, 0.5])
    form = rng.choice(["direct", "direct", "dict", "attribute", "temperature"])
    extra = ["rebind_ema", "rebind_ckpt", "rebind_ema"] + (["rebind_T"] * 2 if form == "temperature" else [])
    plan = draw_plan(rng, extra=extra)

    def build():
        ns = {"__name__": "fuzz_globals", "torch": torch, "T": 1.0}
        net = nn.Sequential(*mlp(d, ws, act))
        get = {"dict": lambda: ns["MODELS"]["ebm"], "attribute": lambda: ns["STATE"].net}.get(form, lambda: ns["net"])

        def put(new):
            if form == "dict":
                ns["MODELS"]["ebm"] = new
            elif form == "attribute":
                ns["STATE"].net = new
            else:
                ns["net"] = new
        ns["MODELS"], ns["STATE"] = {}, types.SimpleNamespace()
        put(net)
        exec(GLOBAL_SRCS[form].format(sign=sign, q=q), ns)
        gen = torch.Generator().manual_seed(seed + 3)

        def rebind_ckpt():
            new = nn.Sequential(*mlp(d, ws, act))
            new.load_state_dict({k: v + 0.05 * torch.randn(v.shape, generator=gen)
                                 for k, v in get().state_dict().items()})
            put(new)

        def rebind_t():
            ns["T"] = float(ns["T"] * (1.5 if torch.rand((), generator=gen) < 0.5 else 0.6))
        custom = {"rebind_ema": lambda: put(_perturbed_copy(get(), gen)), "rebind_ckpt": rebind_ckpt,
                  "rebind_T": rebind_t}
        return _instance(ns["energy"], _Holder(get), plan, _z2(d), seed, custom=custom, modules=get)
    return (f"module-level function, global {form}, d={d} widths={ws} act={act} {sign}net q={q} :: "
            f"{plan.describe()}"), build


class _Holder:
    """Stands for the module a name currently holds (a global, a closure cell, an attribute), so
    mutations follow a rebinding."""

    def __init__(self, get):
        self.module = get

    def parameters(self, recurse=True):
        return self.module().parameters()

    def state_dict(self, *a, **k):
        return self.module().state_dict(*a, **k)

    def load_state_dict(self, sd, *a, **k):
        return self.module().load_state_dict(sd, *a, **k)

    def train(self, mode=True):
        self.module().train(mode)
        return self

    @property
    def training(self):
        return self.module().training


def _perturbed_copy(net, gen, f=1e-3):
    new = copy.deepcopy(net)
    with torch.no_grad():
        for p in new.parameters():
            p.mul_(1 + f * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return new


def _quadratic(z, q):
    return q * z.pow(2).sum(-1)


def st_default_arg(rng, seed):
    d, ws = _dims(rng)
    act = pick_act(rng)
    q = rng.choice([0.0, 0.5])
    plan = draw_plan(rng)

    def build():
        net = nn.Sequential(*mlp(d, ws, act))

        def energy(z, net=net, q=q):
            return net(z).view(-1) + _quadratic(z, q)
        return _instance(energy, net, plan, _z2(d), seed)
    return f"def e(z, net=net) d={d} widths={ws} act={act} q={q} :: {plan.describe()}", build


def _partial_energy(z, net, scale, q):
    return scale * net(z)[:, 0] + q * (z * z).sum(1)


def st_partial(rng, seed):
    d, ws = _dims(rng)
    act = pick_act(rng)
    scale, q = rng.choice([1.0, -1.0, 0.5, 2.0]), rng.choice([0.0, 0.5])
    plan = draw_plan(rng)

    def build():
        net = nn.Sequential(*mlp(d, ws, act))
        energy = functools.partial(_partial_energy, net=net, scale=scale, q=q)
        return _instance(energy, net, plan, _z2(d), seed)
    return f"functools.partial d={d} widths={ws} act={act} scale={scale} q={q} :: {plan.describe()}", build


class ModelWithEnergy(nn.Module):
    def __init__(self, d, ws, act, q):
        super().__init__()
        self.ebm = nn.Sequential(*mlp(d, ws, act))
        self.q = q

    def energy(self, z):
        return -self.ebm(z).squeeze(1) + self.q * (z ** 2).sum(-1)


class PlainEnergyHolder:
    def __init__(self, net, q):
        self.net, self.q = net, q

    def energy(self, z):
        return self.net(z).sum(-1) + self.q * (z ** 2).sum(-1)


class CallableEnergy:
    """A callable object (not a Module)."""

    def __init__(self, layers, act, q):
        self.layers, self.f, self.q = layers, act_fn(act), q

    def __call__(self, z):
        h = z
        for layer in self.layers[:-1]:
            h = self.f(layer(h))
        return self.layers[-1](h).squeeze(-1) + self.q * (z * z).sum(-1)


def st_bound_method(rng, seed):
    d, ws = _dims(rng)
    act = pick_act(rng)
    q = rng.choice([0.0, 0.5])
    kind = rng.choice(["module", "plain"])
    plan = draw_plan(rng, extra=["swap_attr", "set_q"])

    def build():
        gen = torch.Generator().manual_seed(seed + 3)
        if kind == "module":
            m = ModelWithEnergy(d, ws, act, q)

            def swap():
                m.ebm = _perturbed_copy(m.ebm, gen, 0.05)

            def set_q():
                m.q = m.q + 0.25
            return _instance(m.energy, m, plan, _z2(d), seed, custom={"swap_attr": swap, "set_q": set_q})
        holder = PlainEnergyHolder(nn.Sequential(*mlp(d, ws, act)), q)

        def swap_plain():
            holder.net = _perturbed_copy(holder.net, gen, 0.05)

        def set_q_plain():
            holder.q = holder.q + 0.25
        return _instance(holder.energy, _Holder(lambda: holder.net), plan, _z2(d), seed,
                         custom={"swap_attr": swap_plain, "set_q": set_q_plain}, modules=lambda: holder.net)
    return f"bound method ({kind}) d={d} widths={ws} act={act} q={q} :: {plan.describe()}", build


def st_callable_obj(rng, seed):
    d, ws = _dims(rng)
    act = pick_act(rng)
    q = rng.choice([0.0, 0.5])
    plan = draw_plan(rng, extra=["swap_attr"])

    def build():
        layers = nn.ModuleList(mlp(d, ws, act)[0::2])
        obj = CallableEnergy(layers, act, q)
        gen = torch.Generator().manual_seed(seed + 3)

        def swap():
            obj.layers = _perturbed_copy(obj.layers, gen, 0.05)
        return _instance(obj, _Holder(lambda: obj.layers), plan, _z2(d), seed, custom={"swap_attr": swap},
                         modules=lambda: obj.layers)
    return f"callable object d={d} widths={ws} act={act} q={q} :: {plan.describe()}", build


HOOKS = ["fwd_scale_seq", "fwd_add_seq", "pre_scale_seq", "fwd_scale_layer", "pre_scale_layer", "fwd_observe",
         "bwd_scale_layer", "bwd_scale_seq"]


def st_hooks(rng, seed):
    """Hooks on the Sequential or a layer: from the start, added after the first call, or removed
    after it."""
    d, ws = _dims(rng)
    act = pick_act(rng, other=0.1)
    hook = rng.choice(HOOKS)
    c = rng.choice([0.5, 1.5, 2.0])
    when = rng.choice(["always", "always", "added_later", "removed_later"])
    extra = {"added_later": ["add_hook"] * 3, "removed_later": ["remove_hook"] * 3}.get(when, [])
    plan = draw_plan(rng, mutations=["adam", "clamp", "nograd_mul"], mala_ok=True, extra=extra,
                     n_calls=rng.choice([2, 3]) if extra else None)
    wrapped = rng.random() < 0.3

    def build():
        net = nn.Sequential(*mlp(d, ws, act))
        layer = net[0]
        seen = []
        handles = []

        def add():
            if handles:
                return
            if hook == "fwd_scale_seq":
                h = net.register_forward_hook(lambda m, i, o: o * c)
            elif hook == "fwd_add_seq":
                h = net.register_forward_hook(lambda m, i, o: o + c)
            elif hook == "pre_scale_seq":
                h = net.register_forward_pre_hook(lambda m, a: (a[0] * c,))
            elif hook == "fwd_scale_layer":
                h = layer.register_forward_hook(lambda m, i, o: o * c)
            elif hook == "pre_scale_layer":
                h = layer.register_forward_pre_hook(lambda m, a: (a[0] * c,))
            elif hook == "fwd_observe":
                h = net.register_forward_hook(lambda m, i, o: seen.append(1))
            elif hook == "bwd_scale_layer":
                h = layer.register_full_backward_hook(lambda m, gi, go: tuple(None if g is None else g * c for g in gi))
            else:
                h = net.register_full_backward_hook(lambda m, gi, go: tuple(None if g is None else g * c for g in gi))
            handles.append(h)

        def remove():
            while handles:
                handles.pop().remove()
        if when != "added_later":
            add()
        energy = net if not wrapped else (lambda z: net(z).squeeze(-1) + 0.5 * (z * z).sum(-1))
        return _instance(energy, net, plan, _z2(d), seed, custom={"add_hook": add, "remove_hook": remove})
    return (f"hook {hook} ({when}) c={c} on Sequential d={d} widths={ws} act={act}"
            f"{' (in a lambda)' if wrapped else ''} :: {plan.describe()}"), build


PARAMS_OLD = ["spectral_norm", "weight_norm", "prune"]
PARAMS_NEW = ["p_spectral_norm", "p_weight_norm", "p_orthogonal"]


def _parametrize(layer, kind, amount=0.3):
    if kind == "spectral_norm":
        return nn.utils.spectral_norm(layer)
    if kind == "weight_norm":
        return nn.utils.weight_norm(layer)
    if kind == "prune":
        prune.l1_unstructured(layer, "weight", amount=amount)
        return layer
    P = nn.utils.parametrizations
    if kind == "p_spectral_norm":
        return P.spectral_norm(layer)
    if kind == "p_weight_norm":
        return P.weight_norm(layer)
    if kind == "p_orthogonal":
        return P.orthogonal(layer)
    raise ValueError(kind)


def st_parametrized(rng, seed, kinds):
    d, ws = _dims(rng)
    act = pick_act(rng, other=0.1)
    kind = rng.choice(kinds)
    train = rng.random() < 0.5
    which = rng.choice(["all", "first", "last"])
    wrapped = rng.random() < 0.3
    plan = draw_plan(rng, mutations=["adam", "adam", "sgd", "train_toggle", "nograd_mul", "load_state_dict"])

    def build():
        mods = mlp(d, ws, act)
        lin = [i for i in range(0, len(mods), 2)]
        chosen = lin if which == "all" else ([lin[0]] if which == "first" else [lin[-1]])
        for i in chosen:
            mods[i] = _parametrize(mods[i], kind)
        net = nn.Sequential(*mods)
        probe = torch.randn(4, d, generator=torch.Generator().manual_seed(seed + 5))
        if kind == "spectral_norm":
            # the old API starts from random u, v (sigma = u^T W v can be ~0: huge weights, a chain
            # that amplifies fp32 rounding past any tolerance); a trained model has iterated them
            net.train()
            with torch.no_grad():
                for _ in range(10):
                    net(probe)
        net.train(train)
        energy = net if not wrapped else (lambda z: net(z).squeeze(-1) + 0.5 * (z * z).sum(-1))
        return _instance(energy, net, plan, _z2(d), seed, loss=lambda: net(probe).pow(2).sum())
    return (f"{kind} on {which} Linear(s) ({'train' if train else 'eval'}) d={d} widths={ws} act={act}"
            f"{' (in a lambda)' if wrapped else ''} :: {plan.describe()}"), build


class SharedEnergy(nn.Module):
    def __init__(self, d, h, act, form):
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, 1)
        self.f, self.form = act_fn(act), form

    def forward(self, z):
        h = self.f(self.inp(z))
        if self.form == "shared":
            h = self.f(self.mid(h))
            h = self.f(self.mid(h))
        elif self.form == "residual":
            h = h + self.f(self.mid(h))
        return self.out(h).squeeze(-1)


class ShiftedEnergy(nn.Module):
    """Normalisation statistics held as a buffer (updated in place between calls)."""

    def __init__(self, d, h, act):
        super().__init__()
        self.net = nn.Sequential(*mlp(d, [h], act))
        self.register_buffer("mu", torch.zeros(d))
        self.register_buffer("inv_std", torch.ones(d))

    def forward(self, z):
        return self.net((z - self.mu) * self.inv_std).squeeze(-1) + 0.5 * (z * z).sum(-1)


STRUCTURE_FORMS = ["shared_seq", "shared", "residual", "concat_sq", "concat_self", "two_terms", "cat_sin",
                   "batch_center", "per_chain_weights", "masked_clone", "dae", "dae_tied", "data_branch",
                   "buffer_shift"]


def st_structure(rng, seed):
    """Shared weights, residual connections, concatenations, sums of two MLP terms; energies that
    couple the chains (a batch mean), weigh them differently, write into a clone, compare z with a
    function of itself (a denoising autoencoder's ||z - g(z)||^2), branch on values, or read
    normalisation buffers updated in place."""
    d, _ = _dims(rng)
    h = rng.choice(WIDTHS[1:])
    act = pick_act(rng, other=0.1)
    form = rng.choice(STRUCTURE_FORMS)
    plan = draw_plan(rng, extra=["buffer_update"] * 3 if form == "buffer_shift" else ())
    quad = lambda z: 0.5 * (z * z).sum(-1)  # noqa: E731

    def build():
        if form == "shared_seq":
            mid = nn.Linear(h, h)
            net = nn.Sequential(nn.Linear(d, h), act_module(act), mid, act_module(act), mid, act_module(act),
                                nn.Linear(h, 1))
            return _instance(net, net, plan, _z2(d), seed)
        if form in ("shared", "residual"):
            e = SharedEnergy(d, h, act, form)
            return _instance(e, e, plan, _z2(d), seed)
        if form in ("concat_sq", "concat_self", "cat_sin"):
            net = nn.Sequential(*mlp(2 * d, [h], act))
            other = {"concat_sq": lambda z: z * z, "concat_self": lambda z: z, "cat_sin": torch.sin}[form]
            energy = lambda z: net(torch.cat([z, other(z)], dim=-1)).squeeze(-1)  # noqa: E731
            return _instance(energy, net, plan, _z2(d), seed)
        if form == "two_terms":
            a, b = nn.Sequential(*mlp(d, [h], act)), nn.Sequential(*mlp(d, [h], act))
            energy = lambda z: a(z).squeeze(-1) + 0.5 * b(z).squeeze(-1)  # noqa: E731
            return _instance(energy, nn.ModuleList([a, b]), plan, _z2(d), seed)
        net = nn.Sequential(*mlp(d, [h], act))
        if form == "batch_center":
            energy = lambda z: net(z - z.mean(0, keepdim=True)).squeeze(-1) + quad(z)  # noqa: E731
        elif form == "per_chain_weights":
            w = torch.linspace(0.5, 1.5, plan.calls[0][2])
            energy = lambda z: w * net(z).squeeze(-1) + quad(z)  # noqa: E731
        elif form == "masked_clone":
            def energy(z):
                x = z.clone()
                x[:, 0] = 0.0
                return net(x).squeeze(-1) + quad(z)
        elif form in ("dae", "dae_tied"):
            enc, dec = nn.Linear(d, h), nn.Linear(h, d)
            f = act_fn(act)
            if form == "dae":
                energy = lambda z: ((z - dec(f(enc(z)))) ** 2).sum(-1)  # noqa: E731
            else:
                energy = lambda z: ((z - F.linear(f(enc(z)), enc.weight.t(), dec.bias)) ** 2).sum(-1)  # noqa: E731
            return _instance(energy, nn.ModuleList([enc, dec]), plan, _z2(d), seed)
        elif form == "data_branch":
            energy = lambda z: (net(z).squeeze(-1) if bool(z.sum() > 0) else -net(z).squeeze(-1)) + quad(z)  # noqa: E731
        else:
            e = ShiftedEnergy(d, h, act)
            gen = torch.Generator().manual_seed(seed + 3)

            def buffer_update():
                with torch.no_grad():
                    e.mu.add_(0.3 * torch.randn(d, generator=gen))
                    e.inv_std.mul_(1.2)
            return _instance(e, e, plan, _z2(d), seed, custom={"buffer_update": buffer_update})
        return _instance(energy, net, plan, _z2(d), seed)
    return f"{form} d={d} h={h} act={act} :: {plan.describe()}", build


def st_multilayer(rng, seed):
    d1, d2 = rng.choice(DIMS), rng.choice(DIMS)
    h = rng.choice(WIDTHS[1:])
    act = pick_act(rng, other=0.1)
    terms = rng.choice(["per_layer+joint", "joint", "per_layer"])
    as_tuple = rng.random() < 0.25
    plan = draw_plan(rng, n_layers=2)

    def build():
        f1, f2 = nn.Sequential(*mlp(d1, [h], act)), nn.Sequential(*mlp(d2, [h], act))
        joint = nn.Sequential(*mlp(d1 + d2, [h], act))
        root = nn.ModuleList([f1, f2, joint])

        def energy(zs):
            z1, z2 = zs
            u = 0.5 * (z1 ** 2).sum(-1) + 0.5 * (z2 ** 2).sum(-1)
            if terms != "joint":
                u = u + f1(z1).squeeze(-1) + f2(z2).squeeze(-1)
            if terms != "per_layer":
                u = u - joint(torch.cat([z1, z2], dim=1)).squeeze(-1)
            return u
        container = tuple if as_tuple else list
        return _instance(energy, root, plan, lambda gen, B: container([randn(gen, B, d1), randn(gen, B, d2)]), seed)
    return (f"two layers as a {'tuple' if as_tuple else 'list'} d=({d1},{d2}) h={h} act={act} {terms} :: "
            f"{plan.describe()}"), build


# ------------------------------------------------------------------------- posteriors

class PosteriorModule(nn.Module):
    """A posterior holding its batch as ``self.x`` (replaced between calls)."""

    def __init__(self, g, ebm, x, sigma):
        super().__init__()
        self.g, self.ebm, self.x, self.sigma = g, ebm, x, sigma

    def forward(self, z):
        recon = ((self.x - self.g(z)) ** 2).sum(-1) / (2 * self.sigma ** 2)
        u = recon + 0.5 * (z ** 2).sum(-1)
        if self.ebm is not None:
            u = u - self.ebm(z).squeeze(-1)
        return u


POST_SRC = """
def energy(z):
    return ((x - g(z)) ** 2).sum(-1) / (2 * SIGMA ** 2) + 0.5 * (z ** 2).sum(-1)
"""

POSTERIOR_FORMS = ["sub_pow_sum", "mse_none", "g_minus_x", "image_view", "expand_one", "module_self_x", "global_x"]


def st_posterior(rng, seed):
    d = rng.choice(DIMS)
    h = rng.choice(WIDTHS[2:])
    side = rng.choice([2, 3, 4])
    P = side * side
    act = pick_act(rng, other=0.15)
    sigma = rng.choice([0.05, 0.1, 0.3, 1.0])
    ebm = rng.random() < 0.4
    form = rng.choice(POSTERIOR_FORMS)
    vary = form in ("expand_one", "module_self_x", "global_x")
    extra = ["new_x"] if form in ("module_self_x", "global_x") else []
    plan = draw_plan(rng, mutations=["adam", "data_assign", "clamp", "nograd_mul"], vary_batch=vary, extra=extra * 3)
    # a stiff reconstruction term (1 / (2 sigma^2) up to 200) needs steps ~ sigma
    plan.calls = [(k, scale_steps(kw, min(1.0, 2 * sigma)), B, c) for k, kw, B, c in plan.calls]
    if form in ("module_self_x", "global_x"):
        # a call whose batch size changes gets a new batch first ("new_x"); a call without one
        # keeps the previous batch (and its size)
        calls, B = [], plan.calls[0][2]
        for i, (k, kw, Bi, c) in enumerate(plan.calls):
            if i and (k == "new_x" or Bi != B):
                k, B = "new_x", Bi
            calls.append((k, kw, B, c))
        plan = Plan(calls)
    new_x_batches = [B for i, (k, _, B, _) in enumerate(plan.calls) if i == 0 or k == "new_x"]

    def build():
        g = nn.Sequential(nn.Linear(d, h), act_module(act), nn.Linear(h, P))
        e = nn.Sequential(*mlp(d, [h], act)) if ebm else None
        root = nn.ModuleList([g] + ([e] if e is not None else []))
        gen = torch.Generator().manual_seed(seed + 13)
        r = 1 / (2 * sigma ** 2)
        ebm_term = (lambda z: -e(z).squeeze(-1)) if e is not None else (lambda z: 0.0)
        if form in ("sub_pow_sum", "mse_none", "g_minus_x", "image_view"):
            x = randn(gen, plan.calls[0][2], P).clamp(-1, 1)
            if form == "sub_pow_sum":
                energy = lambda z: ((x - g(z)) ** 2).sum(-1) * r + 0.5 * (z ** 2).sum(-1) + ebm_term(z)  # noqa: E731
            elif form == "mse_none":
                energy = lambda z: (F.mse_loss(g(z), x, reduction="none").sum(-1) / (2 * sigma ** 2)  # noqa: E731
                                    + 0.5 * (z ** 2).sum(-1) + ebm_term(z))
            elif form == "g_minus_x":
                energy = lambda z: (g(z) - x).pow(2).sum(1) * r + 0.5 * z.pow(2).sum(1) + ebm_term(z)  # noqa: E731
            else:
                x_img = x.view(-1, 1, side, side)
                energy = lambda z: (((x_img - g(z).view(-1, 1, side, side)) ** 2).sum(dim=[1, 2, 3])  # noqa: E731
                                    / (2 * sigma ** 2) + 0.5 * (z ** 2).sum(-1) + ebm_term(z))
            return _instance(energy, root, plan, _z2(d), seed)
        if form == "expand_one":
            x1 = randn(gen, 1, P).clamp(-1, 1)
            energy = lambda z: ((x1.expand(z.shape[0], -1) - g(z)) ** 2).sum(-1) * r + 0.5 * (z ** 2).sum(-1) + ebm_term(z)  # noqa: E731,E501
            return _instance(energy, root, plan, _z2(d), seed)
        xs = [randn(gen, B, P).clamp(-1, 1) for B in new_x_batches]
        nxt = iter(xs[1:])
        if form == "module_self_x":
            post = PosteriorModule(g, e, xs[0], sigma)

            def new_x():
                post.x = next(nxt)
            return _instance(post, post, plan, _z2(d), seed, custom={"new_x": new_x})
        ns = {"__name__": "fuzz_posterior", "x": xs[0], "g": g, "SIGMA": sigma}
        exec(POST_SRC, ns)

        def rebind_x():
            ns["x"] = next(nxt)
        return _instance(ns["energy"], root, plan, _z2(d), seed, custom={"new_x": rebind_x})
    return (f"posterior {form} d={d} h={h} P={P} sigma={sigma} act={act} ebm={ebm} :: {plan.describe()}"), build


class GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * 0.5


class StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 4) / 4

    @staticmethod
    def backward(ctx, g):
        return g


STOPGRAD_FORMS = ["detach_in", "data_in", "detach_out", "no_grad_block", "only_detached", "gradscale_out",
                  "gradscale_in", "straight_through", "st_detach_trick"]


def st_stopgrad(rng, seed):
    d, ws = _dims(rng)
    act = pick_act(rng, other=0.1)
    form = rng.choice(STOPGRAD_FORMS)
    plan = draw_plan(rng, mutations=["adam", "nograd_mul"])

    def build():
        net = nn.Sequential(*mlp(d, ws, act))
        quad = lambda z: 0.5 * (z ** 2).sum(-1)  # noqa: E731
        if form == "detach_in":
            energy = lambda z: net(z.detach()).squeeze(-1) + quad(z)  # noqa: E731
        elif form == "data_in":
            energy = lambda z: net(z.data).squeeze(-1) + quad(z)  # noqa: E731
        elif form == "detach_out":
            energy = lambda z: net(z).detach().squeeze(-1) + quad(z)  # noqa: E731
        elif form == "no_grad_block":
            def energy(z):
                with torch.no_grad():
                    a = net(z).squeeze(-1)
                return a + quad(z)
        elif form == "only_detached":
            energy = lambda z: net(z.detach()).squeeze(-1)  # noqa: E731
        elif form == "gradscale_out":
            energy = lambda z: GradScale.apply(net(z)).squeeze(-1) + quad(z)  # noqa: E731
        elif form == "gradscale_in":
            energy = lambda z: net(GradScale.apply(z)).squeeze(-1) + quad(z)  # noqa: E731
        elif form == "straight_through":
            energy = lambda z: net(StraightThrough.apply(z)).squeeze(-1) + quad(z)  # noqa: E731
        else:  # straight-through written with detach
            energy = lambda z: net(z + (torch.round(z * 4) / 4 - z).detach()).squeeze(-1) + quad(z)  # noqa: E731
        return _instance(energy, net, plan, _z2(d), seed)
    return f"stop-gradient {form} d={d} widths={ws} act={act} :: {plan.describe()}", build


class TempEnergy(nn.Module):
    """An annealed energy: a temperature attribute (a float, or a tensor buffer), or an attribute
    that picks the activation."""

    def __init__(self, d, ws, act, T, form):
        super().__init__()
        self.net = nn.Sequential(*mlp(d, ws, act))
        self.form = form
        if form == "buffer":
            self.register_buffer("T", torch.tensor(float(T)))
        else:
            self.T = T
        self.act_name = "tanh"

    def forward(self, z):
        if self.form == "act_flag":
            layers = [m for m in self.net if isinstance(m, nn.Linear)]
            f = {"tanh": torch.tanh, "silu": F.silu}[self.act_name]
            h = z
            for layer in layers[:-1]:
                h = f(layer(h))
            return layers[-1](h).squeeze(-1) / self.T + 0.5 * (z ** 2).sum(-1)
        return self.net(z).squeeze(-1) / self.T + 0.5 * (z ** 2).sum(-1)


def st_temperature(rng, seed):
    d, ws = _dims(rng)
    act = pick_act(rng, other=0.1)
    T0 = rng.choice([0.5, 1.0, 2.0])
    form = rng.choice(["float", "float", "buffer", "act_flag"])
    plan = draw_plan(rng, mutations=[], extra=["temperature"], n_calls=rng.choice([2, 3]))

    def build():
        e = TempEnergy(d, ws, act, T0, form)
        temps = iter([T0 * 2, T0 / 3, T0 * 1.5])

        def change():
            if form == "buffer":
                with torch.no_grad():
                    e.T.fill_(next(temps))
            elif form == "act_flag":
                e.act_name = "silu" if e.act_name == "tanh" else "tanh"
            else:
                e.T = next(temps)
        return _instance(e, e, plan, _z2(d), seed, custom={"temperature": change})
    return (f"temperature ({form}) T={T0} changed between calls d={d} widths={ws} act={act} :: "
            f"{plan.describe()}"), build


class LebmNetE(nn.Module):
    """LEBM's netE: z [B, nz, 1, 1] squeezed, the score viewed back."""

    def __init__(self, d, h, act):
        super().__init__()
        self.ebm = nn.Sequential(nn.Linear(d, h), act_module(act), nn.Linear(h, h), act_module(act), nn.Linear(h, 1))

    def forward(self, z):
        return self.ebm(z.squeeze()).view(-1, 1, 1, 1)


def st_layout(rng, seed):
    """float64 energies and z, non-contiguous z, LEBM's [B, d, 1, 1] latents squeezed."""
    d, ws = _dims(rng)
    act = pick_act(rng, other=0.15)
    form = rng.choice(["float64_seq", "float64_closure", "transposed_z", "transposed_closure", "lebm_4d",
                       "expanded_z", "z_requires_grad", "tensor_settings"])
    plan = draw_plan(rng)
    rng_bit = rng.random() < 0.5
    if form == "tensor_settings":  # step size and prior sigma given as 0-d tensors
        plan.calls = [(k, {**kw, "step_size": torch.tensor(kw["step_size"]),
                           **({"prior_sigma": torch.tensor(kw["prior_sigma"])} if "prior_sigma" in kw else {})}, B, c)
                      for k, kw, B, c in plan.calls]

    def build():
        if form.startswith("float64"):
            net = nn.Sequential(*mlp(d, ws, act)).double()
            energy = net if form == "float64_seq" else (lambda z: net(z).squeeze(-1) + 0.5 * (z * z).sum(-1))
            return _instance(energy, net, plan, _z2(d, torch.float64), seed)
        if form.startswith("transposed"):
            net = nn.Sequential(*mlp(d, ws, act))
            energy = net if form == "transposed_z" else (lambda z: -net(z).squeeze(-1) + 0.5 * (z * z).sum(-1))
            return _instance(energy, net, plan, lambda gen, B: randn(gen, d, B).t(), seed)
        if form == "lebm_4d":
            net_e = LebmNetE(d, ws[0], act)
            energy = lambda z: net_e(z).squeeze()  # noqa: E731
            return _instance(energy, net_e, plan, lambda gen, B: randn(gen, B, d, 1, 1), seed)
        net = nn.Sequential(*mlp(d, ws, act))
        energy = net if rng_bit else (lambda z: net(z).squeeze(-1) + 0.5 * (z * z).sum(-1))
        if form == "expanded_z":  # every chain from one point: a stride-0 batch
            return _instance(energy, net, plan, lambda gen, B: randn(gen, 1, d).expand(B, d), seed)
        if form == "z_requires_grad":
            return _instance(energy, net, plan, lambda gen, B: randn(gen, B, d).requires_grad_(), seed)
        return _instance(energy, net, plan, _z2(d), seed)
    return f"{form} d={d} widths={ws} act={act} :: {plan.describe()}", build


REJECT_FORMS = ["seq_4d_z", "seq_list_z", "inference_mode", "float64_z_float32_net", "float32_z_float64_net",
                "out_two", "closure_out_two", "scalar_out", "inplace_on_z"]


def st_rejects(rng, seed):
    """Inputs the energy itself rejects: the reference raises, auto must raise the same."""
    d, ws = _dims(rng)
    d = max(d, 2)
    act = pick_act(rng, other=0.1)
    form = rng.choice(REJECT_FORMS)
    ctx = "inference_mode" if form == "inference_mode" else None
    plan = draw_plan(rng, mutations=[], ctx=ctx, n_calls=rng.choice([1, 2]))

    def build():
        if form == "out_two":
            net = nn.Sequential(*mlp(d, ws, act, out=2))
            return _instance(net, net, plan, _z2(d), seed)
        if form == "closure_out_two":
            net = nn.Sequential(*mlp(d, ws, act, out=2))
            return _instance(lambda z: net(z) + 0.5 * (z * z).sum(-1, keepdim=True), net, plan, _z2(d), seed)
        net = nn.Sequential(*mlp(d, ws, act))
        if form == "seq_4d_z":
            return _instance(net, net, plan, lambda gen, B: randn(gen, B, d, 1, 1), seed)
        if form == "seq_list_z":
            return _instance(net, net, plan, lambda gen, B: [randn(gen, B, d)], seed)
        if form == "float64_z_float32_net":
            return _instance(net, net, plan, _z2(d, torch.float64), seed)
        if form == "float32_z_float64_net":
            net = net.double()
            return _instance(lambda z: net(z).squeeze(-1), net, plan, _z2(d), seed)
        if form == "scalar_out":
            return _instance(lambda z: net(z).sum(), net, plan, _z2(d), seed)
        if form == "inplace_on_z":
            def energy(z):
                z.mul_(1.0)
                return net(z).squeeze(-1)
            return _instance(energy, net, plan, _z2(d), seed)
        return _instance(net, net, plan, _z2(d), seed)  # under inference_mode
    return f"rejected input {form} d={d} widths={ws} act={act} :: {plan.describe()}", build


def st_autocast(rng, seed):
    d, ws = _dims(rng)
    act = pick_act(rng, other=0.1)
    form = rng.choice(["seq", "closure"])
    plan = draw_plan(rng, ctx="autocast", mala_ok=False)

    def build():
        net = nn.Sequential(*mlp(d, ws, act))
        energy = net if form == "seq" else (lambda z: net(z).squeeze(-1) + 0.5 * (z * z).sum(-1))
        return _instance(energy, net, plan, _z2(d), seed)
    return f"autocast(bf16) {form} d={d} widths={ws} act={act} :: {plan.describe()}", build


STYLES: dict[str, Callable] = {
    "seq_mlp": st_seq_mlp,
    "seq_trailing_act": st_seq_trailing_act,
    "seq_layers": st_seq_layers,
    "modulelist": st_modulelist,
    "closure": st_closure,
    "global_fn": st_global_fn,
    "default_arg": st_default_arg,
    "partial": st_partial,
    "bound_method": st_bound_method,
    "callable_obj": st_callable_obj,
    "hooks": st_hooks,
    "param_old": functools.partial(st_parametrized, kinds=PARAMS_OLD),
    "param_new": functools.partial(st_parametrized, kinds=PARAMS_NEW),
    "structure": st_structure,
    "multilayer": st_multilayer,
    "posterior": st_posterior,
    "stopgrad": st_stopgrad,
    "temperature": st_temperature,
    "layout": st_layout,
    "rejects": st_rejects,
    "autocast": st_autocast,
}
# styles drawn more often (the ones with many variants)
WEIGHTS = {"seq_mlp": 2, "posterior": 2, "param_old": 2, "param_new": 1, "hooks": 2, "stopgrad": 2, "structure": 2,
           "layout": 1}


_ORDER = [s for s in STYLES for _ in range(WEIGHTS.get(s, 1))]


def case_at(seed: int, i: int) -> Case:
    """Case ``i`` of ``cases(seed, n)`` for any n > i (each case depends only on seed and i)."""
    style = _ORDER[i % len(_ORDER)]
    rng = random.Random(f"{seed}:{i}:{style}")
    case_seed = rng.randrange(2 ** 31)
    desc, build = STYLES[style](rng, case_seed)
    return Case(style, i, case_seed, desc, build, fuzz_seed=seed)


def cases(seed: int, n: int) -> list[Case]:
    """``n`` cases, deterministic in ``seed``, cycling through the styles (weighted)."""
    return [case_at(seed, i) for i in range(n)]


# ----------------------------------------------------------------------------- running

@dataclass
class Outcome:
    out: Any = None
    exc: BaseException | None = None
    fused: bool | None = None
    why: Any = None
    backend: str | None = None
    energies: list | None = None
    calls: int = 0
    state: dict | None = None


def _context(ctx):
    if ctx == "autocast":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if ctx == "inference_mode":
        return torch.inference_mode()
    return contextlib.nullcontext()


def _snapshot(module):
    """The energy's parameters and buffers, and torch's RNG state (dropout draws from it): what
    an extra call of a stateful energy changes."""
    state = {} if module is None else {k: v.detach().clone() for k, v in module.state_dict().items()}
    state["<torch RNG state>"] = torch.get_rng_state()
    return state


def _clone(out):
    if isinstance(out, (list, tuple)):
        return [t.detach().clone() for t in out]
    return out.detach().clone() if torch.is_tensor(out) else out


@contextlib.contextmanager
def _quiet_torch_logs(names=("torch._subclasses.fake_tensor",)):
    """Tracing an energy that rejects its input logs the fake-tensor failure at ERROR level; the
    harness compares the exceptions itself."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def run_call(energy, step: Step, backend: str, torch_seed: int, count: bool = True) -> Outcome:
    torch.manual_seed(torch_seed)
    counter = CallCounter(energy) if count else None
    res = Outcome()
    try:
        with warnings.catch_warnings(), _quiet_torch_logs():
            warnings.simplefilter("ignore")
            with _context(step.ctx), (counter or contextlib.nullcontext()):
                out, info = jk.langevin(energy, step.z, backend=backend, return_info=True, **step.kwargs)
            res.out = _clone(out)
            res.fused, res.why, res.backend = info["fused"], info["why_not_fused"], info["backend"]
            res.energies = list(info["energy"])
    except Exception as exc:  # noqa: BLE001 (compared with the reference's)
        res.exc = exc
    res.calls = counter.n if counter else 0
    return res


def run_sequence(case: Case, backend: str, count: bool = True, upto: int | None = None) -> list[Outcome]:
    inst = case.build()
    outs = []
    for i, step in enumerate(inst.steps[:upto]):
        if step.mutate is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.manual_seed(case.seed + 101 * i)
                step.mutate()
        o = run_call(inst.energy, step, backend, case.seed * 7 + i, count)
        o.state = _snapshot(inst.modules())
        outs.append(o)
    return outs


def mala_margin(case: Case, i: int) -> float:
    """The smallest |log alpha - log u| of the reference's MALA decisions at call ``i`` (the state
    replayed through the reference's earlier calls)."""
    inst = case.build()
    for j, step in enumerate(inst.steps[:i + 1]):
        if step.mutate is not None:
            torch.manual_seed(case.seed + 101 * j)
            step.mutate()
        if j < i:
            run_call(inst.energy, step, "reference", case.seed * 7 + j, count=False)
    step = inst.steps[i]
    torch.manual_seed(case.seed * 7 + i)
    with warnings.catch_warnings(), _context(step.ctx):
        warnings.simplefilter("ignore")
        problem, _ = make_problem(inst.energy, step.z, return_info=False, **{"prior_sigma": None, **step.kwargs})
        _, _, margins = reference_mala_trace(problem)
    return float(margins.min()) if margins.numel() else math.inf


@dataclass
class Failure:
    style: str
    index: int
    seed: int       # the fuzz seed: case_at(seed, index) rebuilds the case
    call: int
    kind: str       # chain, exception, ref_calls, state, info, ref_nondeterministic, harness
    detail: str
    desc: str = ""

    def line(self):
        return f"[{self.style} #{self.index} seed {self.seed} call {self.call}] {self.kind}: {self.detail}"


@dataclass
class Report:
    cases: int = 0
    calls: int = 0
    per_style: dict = field(default_factory=dict)   # style -> [cases, calls, fused calls, failed cases, ref raised]
    failures: list = field(default_factory=list)
    mala_flips: int = 0


def _layers(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _max_diff(a, b) -> float:
    worst = 0.0
    for x, y in zip(_layers(a), _layers(b)):
        d = (x.double() - y.double()).abs()
        both_nan = x.isnan() & y.isnan()
        d = torch.where(both_nan, torch.zeros_like(d), d).nan_to_num(nan=math.inf)
        worst = max(worst, float(d.max()) if d.numel() else 0.0)
    return worst


def _chain_mismatch(a, b, atol, rtol) -> str | None:
    if isinstance(a, (list, tuple)) != isinstance(b, (list, tuple)):
        return f"structure: auto returned {type(a).__name__}, reference {type(b).__name__}"
    la, lb = _layers(a), _layers(b)
    if len(la) != len(lb):
        return f"{len(la)} layers vs the reference's {len(lb)}"
    for x, y in zip(la, lb):
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"shape/dtype {tuple(x.shape)} {x.dtype} vs the reference's {tuple(y.shape)} {y.dtype}"
        xd, yd = x.double(), y.double()
        same_nonfinite = (xd.isnan() & yd.isnan()) | (xd == yd)
        bad = ~same_nonfinite & ~((xd - yd).abs() <= atol + rtol * yd.abs())
        if bool(bad.any()):
            return f"max |auto - reference| = {_max_diff(a, b):.3g} ({int(bad.sum())}/{bad.numel()} elements)"
    return None


def _identical(a: Outcome, b: Outcome) -> bool:
    if (a.exc is None) != (b.exc is None):
        return False
    if a.exc is not None:
        return type(a.exc) is type(b.exc) and str(a.exc) == str(b.exc)
    if len(_layers(a.out)) != len(_layers(b.out)):
        return False
    return all(x.shape == y.shape and bool(((x == y) | (x.isnan() & y.isnan())).all())
               for x, y in zip(_layers(a.out), _layers(b.out)))


def _exc(e):
    s = str(e).replace("\n", " ")
    return f"{type(e).__name__}({s[:160]!r})"


def _library_error(exc) -> bool:
    """An exception raised inside jebm_kernels that is not one of its argument checks (ValueError,
    TypeError): a broken library (an ImportError mid-edit, an AttributeError), not the energy's
    own error. Both runs raising it would otherwise pass unnoticed."""
    if isinstance(exc, (ValueError, TypeError)):
        return False
    tb, last = exc.__traceback__, None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and os.path.dirname(jk.__file__) in os.path.abspath(last)


def _states_differ(a: dict | None, b: dict | None) -> str | None:
    if a is None or b is None:
        return None
    if a.keys() != b.keys():
        return f"state keys differ: {sorted(set(a) ^ set(b))}"
    for k in a:
        x, y = a[k], b[k]
        if x.shape != y.shape:
            return f"{k}: shape {tuple(x.shape)} vs {tuple(y.shape)}"
        if x.is_floating_point():
            if not torch.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True):
                return f"{k} differs by {float((x.double() - y.double()).abs().max()):.3g}"
        elif not torch.equal(x, y):
            return f"{k}: {x.tolist() if x.numel() < 5 else 'differs'} vs {y.tolist() if y.numel() < 5 else ''}"
    return None


def run_case(case: Case, check_determinism: bool = True) -> tuple[list[Failure], list[Outcome], list[Outcome], list]:
    """(failures, reference outcomes, auto outcomes, calls whose MALA difference a tiny margin explains)."""
    fails, flips = [], []

    def fail(i, kind, detail):
        fails.append(Failure(case.style, case.index, case.fuzz_seed, i, kind, detail, case.desc))

    # (a failure names its case: fusion_fuzz.case_at(seed, index) rebuilds it)
    try:
        ref = run_sequence(case, "reference", count=True)
        auto = run_sequence(case, "auto", count=True)
        ref2 = run_sequence(case, "reference", count=False) if check_determinism else None
    except Exception as exc:  # a harness error (building, a mutation): reported, not hidden
        fail(-1, "harness", _exc(exc))
        return fails, [], [], []
    steps = case.build().steps
    for i, (step, r, a) in enumerate(zip(steps, ref, auto)):
        kw = step.kwargs
        if ref2 is not None and not _identical(r, ref2[i]):
            fail(i, "ref_nondeterministic", "the reference run twice from fresh builds differs")
        want = expected_calls(kw["n_steps"], kw.get("mala", False))
        if r.exc is None and r.calls != want:
            fail(i, "ref_calls", f"reference called the energy {r.calls} times, expected {want} "
                                 f"(K={kw['n_steps']}{' mala' if kw.get('mala') else ''})")
        if r.exc is not None and _library_error(r.exc):
            fail(i, "ref_error", f"the reference raised inside jebm_kernels: {_exc(r.exc)}")
        if r.exc is not None and r.calls > 1:
            fail(i, "ref_calls", f"reference called the energy {r.calls} times before raising {_exc(r.exc)} "
                                 f"(at most 1 expected)")
        if r.exc is not None or a.exc is not None:
            if r.exc is None:
                fail(i, "exception", f"auto raised {_exc(a.exc)}; the reference ran")
            elif a.exc is None:
                fail(i, "exception", f"auto ran (fused={a.fused}); the reference raised {_exc(r.exc)}")
            elif type(a.exc) is not type(r.exc) or str(a.exc) != str(r.exc):
                fail(i, "exception", f"auto raised {_exc(a.exc)}; the reference raised {_exc(r.exc)}")
        else:
            if not isinstance(a.fused, bool) or (not a.fused and not (isinstance(a.why, str) and a.why)) \
                    or (a.fused and a.why is not None):
                fail(i, "info", f"fused={a.fused!r} with why_not_fused={a.why!r}")
            dtype = _layers(r.out)[0].dtype
            atol, rtol = ((ATOL_BF16, 0.0) if step.ctx == "autocast" else
                          (ATOL64, RTOL64) if dtype == torch.float64 else (ATOL, RTOL))
            why = _chain_mismatch(a.out, r.out, atol, rtol)
            if why is not None and kw.get("mala") and not why.startswith(("shape", "structure")):
                try:
                    m = mala_margin(case, i)
                except Exception:  # noqa: BLE001
                    m = math.inf
                if m < MALA_MARGIN:
                    why = None
                    flips.append(i)
                else:
                    why += f"; smallest MALA margin {m:.2g}"
            if why is not None:
                fail(i, "chain", f"{why} (auto fused={a.fused}"
                                 f"{'' if a.fused else ', why_not_fused=' + repr(str(a.why)[:80])})")
            elif step.ctx != "autocast" and len(a.energies) == len(r.energies):
                bad = [k for k, (x, y) in enumerate(zip(a.energies, r.energies))
                       if not (abs(x - y) <= 1e-3 + 1e-3 * abs(y) or (math.isnan(x) and math.isnan(y)))]
                if bad:
                    k = bad[0]
                    fail(i, "info", f"info['energy'][{k}] = {a.energies[k]:.6g} vs the reference's {r.energies[k]:.6g}")
        st = _states_differ(a.state, r.state)
        if st is not None:
            fail(i, "state", f"the energy's state after the call: {st} (auto called it {a.calls} times, "
                             f"reference {r.calls})")
    return fails, ref, auto, flips


def run_cases(case_list: list[Case], check_determinism: bool | int = True, progress=False) -> Report:
    """Every case's failures. ``check_determinism``: run the reference a second time (for every
    case, or for every n-th case when an int n)."""
    rep = Report()
    every = 1 if check_determinism is True else (int(check_determinism) or 0)
    for case in case_list:
        fails, ref, auto, flips = run_case(case, bool(every) and case.index % every == 0)
        rep.mala_flips += len(flips)
        st = rep.per_style.setdefault(case.style, [0, 0, 0, 0, 0])
        st[0] += 1
        st[1] += len(auto)
        st[2] += sum(1 for a in auto if a.exc is None and a.fused)
        st[3] += 1 if fails else 0
        st[4] += sum(1 for r in ref if r.exc is not None)
        rep.cases += 1
        rep.calls += len(auto)
        rep.failures += fails
        if progress and fails:
            print(fails[0].line())
    return rep


KIND_ORDER = ["harness", "ref_error", "ref_nondeterministic", "exception", "chain", "state", "info", "ref_calls"]


def format_report(rep: Report, max_lines: int = 60) -> str:
    kinds = sorted({f.kind for f in rep.failures})
    lines = [f"{rep.cases} cases, {rep.calls} calls, {len(rep.failures)} failures "
             f"in {len({(f.style, f.index) for f in rep.failures})} cases; {rep.mala_flips} MALA differences "
             f"explained by a margin < {MALA_MARGIN}", ""]
    head = (f"{'style':<18}{'cases':>6}{'calls':>6}{'fused':>6}{'raised':>7}{'failed':>7}  "
            + "".join(f"{k:>12}" for k in kinds))
    lines.append(head)
    for style, (n, calls, fused, failed, raised) in sorted(rep.per_style.items()):
        by_kind = {k: sum(1 for f in rep.failures if f.style == style and f.kind == k) for k in kinds}
        lines.append(f"{style:<18}{n:>6}{calls:>6}{fused:>6}{raised:>7}{failed:>7}  "
                     + "".join(f"{by_kind[k]:>12}" for k in kinds))
    lines.append("(calls: langevin calls per run; fused: auto calls that fused; raised: reference calls that raised; "
                 "failed: cases with a failure; then failures by kind)")
    if rep.failures:
        lines += ["", "failures (the most telling per case, then the other kinds it had):"]
        by_case: dict = {}
        for f in rep.failures:
            by_case.setdefault((f.style, f.index), []).append(f)
        for shown, fs in enumerate(by_case.values()):
            if shown == max_lines:
                lines.append(f"... and {len(by_case) - max_lines} more cases")
                break
            fs = sorted(fs, key=lambda f: (KIND_ORDER.index(f.kind) if f.kind in KIND_ORDER else 99, f.call))
            others = sorted({f.kind for f in fs[1:]} - {fs[0].kind})
            lines.append(fs[0].line() + (f"  (+ {', '.join(others)})" if others else ""))
            lines.append(f"      {fs[0].desc[:220]}")
        lines.append("(replay one: cd tests && python fusion_fuzz.py SEED 0 INDEX)")
    return "\n".join(lines)


def replay(seed: int, i: int) -> None:
    """Print case ``i`` of ``seed`` and every difference of its calls (``python tests/fusion_fuzz.py
    SEED N I``, from the tests directory)."""
    case = case_at(seed, i)
    print(case)
    fails, ref, auto, flips = run_case(case)
    for j, (r, a) in enumerate(zip(ref, auto)):
        print(f"call {j}: reference {'raised ' + _exc(r.exc) if r.exc else 'ran'} ({r.calls} energy calls); auto "
              f"{'raised ' + _exc(a.exc) if a.exc else 'ran'} backend={a.backend} fused={a.fused} why={a.why!r}")
    for f in fails:
        print(f.line())


if __name__ == "__main__":  # python tests/fusion_fuzz.py [seed] [n] [index to replay]
    import time
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    if len(sys.argv) > 3:
        replay(seed, int(sys.argv[3]))
        sys.exit()
    t = time.time()
    report = run_cases(cases(seed, n))
    print(format_report(report, max_lines=400))
    print(f"{time.time() - t:.1f} s")
