"""The benchmark configurations: the papers' prior shapes, random float32 weights from a fixed seed.

- ``lebm``: Pang et al. 2020 (LEBM). d = 100; the energy is the user's own
  ``nn.Sequential(Linear(100, 200), GELU, Linear(200, 200), GELU, Linear(200, 1))`` passed
  straight to ``langevin`` with ``prior_sigma=1.0`` (so U(z) = E(z) + ||z||^2 / 2), step 0.4.
- ``cvpr``: Cui, Wu & Han, CVPR 2023, CIFAR-10 latent prior (docs/design.md, section 1): L = 2, d = (128, 100);
  f_1 MLP 128-200-200-200-1, f_2 MLP 100-100-100-1, LeakyReLU(0.2); p(z_1 | z_2) MLP
  100-200-200-200-200-256; z-space, energy_sign -1, step 0.4.
- ``iccv``: the ICCV 2023 five-layer prior as jebm's ``"iccv-svhn"`` preset defines it (read from
  ``jebm.train.presets``, so the benchmark follows the model): d = (64, 32, 16, 8, 4); layer
  energies with two hidden layers (200 wide for the two bottom layers, 100 above); the joint term
  f_0 on concat(z) (124 -> 200 -> 200 -> 1); four Gaussians with two hidden layers of 200;
  LeakyReLU(0.2); eps-space; step 0.4.

Posterior configurations: ``posterior`` (jebm's default model's), ``closure-mlp`` and
``closure-conv`` (closures as users write them), and ``svhn-conv``: LEBM's SVHN generator (Pang et
al. 2020, ``_netG`` of their ``train_svhn.py``: nz = 100, transposed convolutions 100 -> 512
(4x4) -> 256 (8x8) -> 128 (16x16) -> 3 (32x32), LeakyReLU(0.2), tanh; ngf = 64, no batch norm)
in their posterior chain, the closure ||x - g(z)||^2 / (2 * 0.3^2) + ||z||^2 / 2, K = 20 steps
of s = 0.1 (their g_l_steps, g_l_step_size), batch 16 and 100.

The suite in ``benchmarks/`` runs every chain for K = 60 steps (the papers' prior chain) at batch
8, 100 and 1000, except where a configuration names its own (``CONFIG_STEPS``,
``CONFIG_BATCHES``: ``svhn-conv``); ``JEBM_BENCH_QUICK=1`` shrinks this to batch 8 (16 for
``svhn-conv``) and K = 5 (an end-to-end check of the suite). ``jebm bench`` chooses its own
(``jebm.bench.quick``).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace

import torch
from torch import nn

import jebm_kernels as jk
from jebm_kernels.spec import GaussianSpec, MLPSpec, PriorSpec, mlp_spec_from_sequential

from ..train.presets import resolve_config

__all__ = ["QUICK", "BATCHES", "N_STEPS", "CONFIG_NAMES", "PRIOR_CONFIGS", "POSTERIOR_CONFIGS", "CONFIG_TITLES",
           "CONFIG_STEPS", "CONFIG_BATCHES", "steps_for", "batches_for", "Case", "make_case",
           "lebm_svhn_generator", "WEIGHT_SEED", "START_SEED", "NOISE_SEED"]

QUICK = os.environ.get("JEBM_BENCH_QUICK", "0") not in ("", "0")
BATCHES: tuple[int, ...] = (8,) if QUICK else (8, 100, 1000)
N_STEPS: int = 5 if QUICK else 60
PRIOR_CONFIGS = ("lebm", "cvpr", "iccv")
POSTERIOR_CONFIGS = ("posterior", "closure-mlp", "closure-conv", "svhn-conv")
CONFIG_NAMES = PRIOR_CONFIGS + POSTERIOR_CONFIGS
# Configurations with their own chain length and batches (the paper's posterior chain of that model).
CONFIG_STEPS = {"svhn-conv": 5 if QUICK else 20}
CONFIG_BATCHES = {"svhn-conv": (16,) if QUICK else (16, 100)}
CONFIG_TITLES = {
    "lebm": "LEBM, d=100, MLP 100-200-200-1 GELU",
    "cvpr": "CVPR 2023 CIFAR-10 prior, L=2, d=(128,100)",
    "iccv": "ICCV 2023 five-layer prior, d=(64,32,16,8,4), eps-space",
    "posterior": "jebm default model's posterior, MLP decoder, eps-space",
    "closure-mlp": "closure posterior, MLP decoder 32-256-256-784",
    "closure-conv": "closure posterior, small conv decoder to 1x16x16",
    "svhn-conv": "closure posterior, LEBM's SVHN generator (nz=100, ngf=64) to 3x32x32",
}


def steps_for(config: str) -> int:
    """K of ``config``'s chain in the suite."""
    return CONFIG_STEPS.get(config, N_STEPS)


def batches_for(config: str) -> tuple[int, ...]:
    """The batches the suite times ``config`` at."""
    return CONFIG_BATCHES.get(config, BATCHES)

WEIGHT_SEED = 0        # torch seed of every configuration's weights
START_SEED = 1         # torch seed of the chains' starting points
NOISE_SEED = 20230601  # Philox seed of the Langevin noise (offset 0): every call replays one stream
STEP_SIZE = 0.4
LEAK = 0.2

_ARCH_KEYS = ("dims", "ebm_hidden", "joint_hidden", "gauss_hidden", "space")


def _preset(name: str) -> tuple[dict, str]:
    """(architecture, where it came from) of a jebm preset."""
    cfg = resolve_config(name)
    return {k: cfg[k] for k in _ARCH_KEYS}, f"jebm.train.presets.PRESETS[{name!r}]"


def _per_module(widths, n: int) -> list[list[int]]:
    if widths and isinstance(widths[0], (list, tuple)):
        return [list(w) for w in widths]
    return [list(widths) for _ in range(n)]


def _mlp(sizes: list[int], act: nn.Module) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        if i:
            mods.append(act)
        mods.append(nn.Linear(sizes[i], sizes[i + 1]))
    return nn.Sequential(*mods)


def _frozen(seq: nn.Sequential) -> nn.Sequential:
    for p in seq.parameters():
        p.requires_grad_(False)
    return seq


def _spec_of(seq: nn.Sequential) -> MLPSpec:
    s = mlp_spec_from_sequential(seq)
    assert s is not None, f"not an MLP of the fusable family: {seq}"
    return s


def _prior_spec(arch: dict) -> PriorSpec:
    dims = [int(d) for d in arch["dims"]]
    L = len(dims)
    act = nn.LeakyReLU(LEAK)
    ebm_hidden = _per_module(arch["ebm_hidden"], L)
    gauss_hidden = _per_module(arch["gauss_hidden"], L - 1) if L > 1 else []
    terms = tuple(_spec_of(_frozen(_mlp([dims[l], *ebm_hidden[l], 1], act))) for l in range(L))
    joint = None
    if arch.get("joint_hidden"):
        joint = _spec_of(_frozen(_mlp([sum(dims), *arch["joint_hidden"], 1], act)))
    gaussians = tuple(GaussianSpec(_spec_of(_frozen(_mlp([dims[l + 1], *gauss_hidden[l], 2 * dims[l]], act))))
                      for l in range(L - 1))
    return PriorSpec(dims=tuple(dims), layer_terms=terms, joint_term=joint, gaussians=gaussians,
                     space=arch["space"], energy_sign=-1.0)


def _move_mlp(m: MLPSpec | None, device) -> MLPSpec | None:
    if m is None:
        return None
    return replace(m, weights=tuple(w.to(device) for w in m.weights),
                   biases=tuple(None if b is None else b.to(device) for b in m.biases))


def _move_spec(spec: PriorSpec, device) -> PriorSpec:
    return replace(spec, layer_terms=tuple(_move_mlp(t, device) for t in spec.layer_terms),
                   joint_term=_move_mlp(spec.joint_term, device),
                   gaussians=tuple(replace(g, mlp=_move_mlp(g.mlp, device)) for g in spec.gaussians))


@dataclass
class Case:
    """One (configuration, batch): what every provider needs to run the same K-step chain."""
    config: str
    batch: int
    n_steps: int
    energy: object                    # what is passed to ``langevin`` (nn.Sequential, PriorEnergy, a closure)
    z0: object                        # a tensor [B, d] or a list of [B, d_l]
    step_size: float
    prior_sigma: float | None
    flops_spec: PriorSpec | None      # for FLOP counts: PriorSpec.flops_per_chain_step() (None: not counted)
    arch_source: str = ""
    device: str = "cpu"
    net: nn.Sequential | None = field(default=None, repr=False)  # LEBM's module
    step_flops: int | None = None     # FLOPs per chain step when flops_spec does not count them all
    kind: str = "prior_chain"         # "prior_chain" or "posterior_chain"

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(t.shape[1] for t in self.layers)

    @property
    def space(self) -> str:
        return self.flops_spec.space if self.flops_spec is not None else "z"

    @property
    def flops_per_chain_step(self) -> int | None:
        """3 x the forward FLOPs of one chain step (PriorSpec.flops_per_chain_step's count), or None."""
        if self.step_flops is not None:
            return self.step_flops
        return None if self.flops_spec is None else self.flops_spec.flops_per_chain_step()

    @property
    def layers(self) -> list[torch.Tensor]:
        return list(self.z0) if isinstance(self.z0, (list, tuple)) else [self.z0]

    @property
    def flops_per_call(self) -> int | None:
        """FLOPs of one whole chain for the whole batch: per chain-step FLOPs x B x K."""
        f = self.flops_per_chain_step
        return None if f is None else f * self.batch * self.n_steps

    @property
    def chain_steps_per_call(self) -> int:
        return self.batch * self.n_steps

    def energy_of_layers(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """U of flat layers [B, d_l], [B]: exactly what ``langevin``'s reference differentiates
        (the energy plus the prior_sigma term)."""
        if self.net is not None:
            u = self.net(xs[0]).squeeze(-1)
        elif isinstance(self.energy, (jk.PriorEnergy, jk.PosteriorEnergy)):
            u = self.energy(list(xs))
        else:  # a closure of one tensor
            u = self.energy(xs[0])
        if self.prior_sigma is not None:
            for x in xs:
                u = u + x.pow(2).sum(-1) / (2 * self.prior_sigma * self.prior_sigma)
        return u

    def langevin(self, backend: str, **kw):
        """The K-step chain through ``jebm_kernels.langevin`` on ``backend``, fixed Philox stream."""
        return jk.langevin(self.energy, self.z0, n_steps=self.n_steps, step_size=self.step_size,
                           prior_sigma=self.prior_sigma, generator=(NOISE_SEED, 0), backend=backend, **kw)

    def to(self, device) -> "Case":
        device = torch.device(device)
        z0 = [t.to(device) for t in self.z0] if isinstance(self.z0, (list, tuple)) else self.z0.to(device)
        if self.net is not None:
            net = _frozen(copy.deepcopy(self.net).to(device))  # .to() moves a module in place
            return replace(self, z0=z0, energy=net, net=net, device=str(device))
        if isinstance(self.energy, jk.PosteriorEnergy):
            e = self.energy
            moved = jk.PosteriorEnergy(_move_spec(e.spec, device), _move_mlp(e.decoder, device), e.x_obs.to(device),
                                       e.sigma_x)
            return replace(self, z0=z0, energy=moved, flops_spec=moved.spec, device=str(device))
        if self.config == "svhn-conv":  # a closure: built again on the device
            return _svhn_conv_posterior(self.batch, self.n_steps, device)
        if not isinstance(self.energy, jk.PriorEnergy):
            return _closure_posterior(self.config, self.batch, self.n_steps, device)
        spec = _move_spec(self.energy.spec, device)
        return replace(self, z0=z0, energy=jk.PriorEnergy(spec), device=str(device))


def _with_seed(seed: int, fn):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def make_case(config: str, batch: int, n_steps: int | None = None) -> Case:
    """The configuration ``config`` at batch ``batch`` (weights and starts are the same every call);
    ``n_steps`` None: the configuration's own K (``steps_for``)."""
    n_steps = steps_for(config) if n_steps is None else n_steps
    if config == "lebm":
        net = _with_seed(WEIGHT_SEED, lambda: _frozen(_mlp([100, 200, 200, 1], nn.GELU())))
        mlp = _spec_of(net)
        flops_spec = PriorSpec(dims=(100,), layer_terms=(mlp,), energy_sign=1.0, base_sigma=(1.0,))
        z0 = _with_seed(START_SEED, lambda: torch.randn(batch, 100))
        return Case("lebm", batch, n_steps, net, z0, STEP_SIZE, 1.0, flops_spec,
                    "jebm/bench/configs.py (the LEBM energy MLP)", net=net)
    if config in ("cvpr", "iccv"):
        arch, source = _preset("cvpr-cifar10" if config == "cvpr" else "iccv-svhn")
        spec = _with_seed(WEIGHT_SEED, lambda: _prior_spec(arch))
        z0 = _with_seed(START_SEED, lambda: [torch.randn(batch, d) for d in spec.dims])
        return Case(config, batch, n_steps, jk.PriorEnergy(spec), z0, STEP_SIZE, None, spec, source)
    if config == "posterior":
        return _jebm_posterior(batch, n_steps)
    if config in ("closure-mlp", "closure-conv"):
        return _closure_posterior(config, batch, n_steps)
    if config == "svhn-conv":
        return _svhn_conv_posterior(batch, n_steps)
    raise ValueError(f"unknown configuration {config!r}; choose one of {CONFIG_NAMES}")


POST_STEP_SIZE = 0.1  # the papers' posterior chain
SIGMA_X = 0.3


def _jebm_posterior(batch: int, n_steps: int) -> Case:
    """The posterior of jebm's ``default`` model (random weights from WEIGHT_SEED) given the first
    ``batch`` images of the bundled digits, as its trainer samples z+: a ``PosteriorEnergy`` with
    the model's MLP decoder, in the preset's space."""
    from ..data import load_dataset
    from ..model import JEBM
    cfg = resolve_config("default")
    data = load_dataset("digits", split="all")
    model = _with_seed(WEIGHT_SEED, lambda: JEBM.from_config(cfg, data.shape))
    for p in model.parameters():
        p.requires_grad_(False)
    reps = -(-batch // len(data.images))
    x = data.images.repeat(reps, 1, 1, 1)[:batch]
    energy = model.posterior_energy_fn(x, cfg["space"])
    z0 = _with_seed(START_SEED, lambda: [torch.randn(batch, d) for d in model.dims])
    dec = energy.decoder
    return Case("posterior", batch, n_steps, energy, z0, cfg["post_step_size"], None, energy.spec,
                "jebm.train.presets.PRESETS['default'] (JEBM.posterior_energy_fn)",
                step_flops=energy.spec.flops_per_chain_step() + 3 * dec.flops_per_row(), kind="posterior_chain")


def _closure_posterior(config: str, batch: int, n_steps: int, device="cpu") -> Case:
    """A posterior written as users write it: a Python closure, ||x - g(z)||^2 / (2 sigma_x^2) +
    ||z||^2 / 2, with an MLP decoder 32-256-256-784 (tanh) or a small conv decoder (Linear 32 ->
    64x4x4, two stride-2 transposed convolutions to 1x16x16, tanh); x fixed random images in
    [-1, 1]. Not a fusable form (the decoder's output is compared with data): the kernels run it
    as autograd + their update."""
    d = 32

    def build():
        if config == "closure-mlp":
            return nn.Sequential(nn.Linear(d, 256), nn.LeakyReLU(LEAK), nn.Linear(256, 256), nn.LeakyReLU(LEAK),
                                 nn.Linear(256, 784), nn.Tanh()), (784,)
        return nn.Sequential(nn.Linear(d, 64 * 4 * 4), nn.Unflatten(1, (64, 4, 4)), nn.LeakyReLU(LEAK),
                             nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.LeakyReLU(LEAK),
                             nn.ConvTranspose2d(32, 1, 4, 2, 1), nn.Tanh()), (1, 16, 16)

    dec, shape = _with_seed(WEIGHT_SEED, build)
    dec = dec.to(device)
    for p in dec.parameters():
        p.requires_grad_(False)
    x = _with_seed(START_SEED + 1, lambda: torch.rand(batch, *shape) * 2 - 1).to(device)
    two_var = 2 * SIGMA_X * SIGMA_X

    def energy(z):
        return (x - dec(z)).reshape(z.shape[0], -1).pow(2).sum(-1) / two_var + 0.5 * z.pow(2).sum(-1)

    z0 = _with_seed(START_SEED, lambda: torch.randn(batch, d)).to(device)
    flops = 3 * 2 * (d * 256 + 256 * 256 + 256 * 784) if config == "closure-mlp" else None  # conv: not counted
    return Case(config, batch, n_steps, energy, z0, POST_STEP_SIZE, None, None,
                "jebm/bench/configs.py (a closure over an nn.Sequential decoder)", device=str(device),
                step_flops=flops, kind="posterior_chain")


SVHN_NZ = 100
SVHN_NGF = 64


def lebm_svhn_generator(nz: int = SVHN_NZ, ngf: int = SVHN_NGF, nc: int = 3) -> nn.Sequential:
    """LEBM's SVHN generator (their ``_netG`` without batch norm, as they train it): z [B, nz, 1, 1]
    -> images [B, nc, 32, 32] in [-1, 1]."""
    return nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0), nn.LeakyReLU(LEAK),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1), nn.LeakyReLU(LEAK),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1), nn.LeakyReLU(LEAK),
        nn.ConvTranspose2d(ngf * 2, nc, 4, 2, 1), nn.Tanh())


def _transposed_conv_flops(net: nn.Sequential, side: int = 1) -> int:
    """2 x the multiply-adds of the transposed convolutions of ``net`` on a side x side input."""
    flops = 0
    for m in net:
        if isinstance(m, nn.ConvTranspose2d):
            k, st, pad = m.kernel_size[0], m.stride[0], m.padding[0]
            flops += 2 * m.in_channels * m.out_channels * k * k * side * side
            side = (side - 1) * st - 2 * pad + k
    return flops


def _svhn_conv_posterior(batch: int, n_steps: int, device="cpu") -> Case:
    """The posterior chain of LEBM's SVHN model as its code runs it, written as a user writes it:
    a closure ||x - g(z)||^2 / (2 * 0.3^2) + ||z||^2 / 2 over their generator (random weights from
    WEIGHT_SEED), x fixed random images in [-1, 1] of 3x32x32. No kernel fuses it: autograd gives
    the gradient, the backend its update."""
    dec = _with_seed(WEIGHT_SEED, lebm_svhn_generator).to(device)
    for p in dec.parameters():
        p.requires_grad_(False)
    x = _with_seed(START_SEED + 1, lambda: torch.rand(batch, 3, 32, 32) * 2 - 1).to(device)
    two_var = 2 * SIGMA_X * SIGMA_X

    def energy(z):
        recon = dec(z.reshape(z.shape[0], SVHN_NZ, 1, 1))
        return (x - recon).reshape(z.shape[0], -1).pow(2).sum(-1) / two_var + 0.5 * z.pow(2).sum(-1)

    z0 = _with_seed(START_SEED, lambda: torch.randn(batch, SVHN_NZ)).to(device)
    return Case("svhn-conv", batch, n_steps, energy, z0, POST_STEP_SIZE, None, None,
                "jebm/bench/configs.py (LEBM's SVHN generator, a closure as users write it)", device=str(device),
                step_flops=3 * _transposed_conv_flops(dec), kind="posterior_chain")


def describe(config: str) -> str:
    """One line: the architecture of a configuration and the FLOPs of one chain step."""
    c = make_case(config, 1, 1)
    if config in POSTERIOR_CONFIGS:
        flops = c.flops_per_chain_step
        return (CONFIG_TITLES[config] + f"; z dims {c.dims}; step {c.step_size}"
                + (f"; {flops / 1e6:.3f} MFLOP per chain step" if flops else "") + f"; from {c.arch_source}")
    s = c.flops_spec
    parts = []
    for l, t in enumerate(s.layer_terms):
        if t is not None:
            parts.append(f"f_{l + 1} " + "-".join(str(w.shape[1]) for w in t.weights) + "-1")
    if s.joint_term is not None:
        parts.append("f_0 " + "-".join(str(w.shape[1]) for w in s.joint_term.weights) + "-1")
    for l, g in enumerate(s.gaussians):
        parts.append(f"p(z_{l + 1}|z_{l + 2}) " + "-".join(str(w.shape[1]) for w in g.mlp.weights)
                     + f"-{g.mlp.out_dim}")
    act = (s.layer_terms[0] or s.joint_term).activation
    return (f"dims {s.dims}, {s.space}-space, {act}; " + "; ".join(parts)
            + f"; {s.flops_per_chain_step() / 1e6:.3f} MFLOP per chain step; architecture from {c.arch_source}")
