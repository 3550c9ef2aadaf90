"""The prior chain in C++ (csrc, ``_C.Model``): every step of every chain in one call, OpenMP over
chains, SIMD picked at run time (AVX-512, AVX2+FMA or the baseline).

What it runs whole: a ``PriorEnergy`` or an ``nn.Sequential`` of the fusable family (with
``prior_sigma``), and a ``PosteriorEnergy`` with an ``MLPSpec`` decoder: forward and hand-written
input-gradient of every MLP, the noise, the step and MALA's accept/reject.
For a ``PosteriorEnergy`` with a callable (conv) decoder it gives ``chain.run_chain`` the energy
and gradient: autograd for the decoder term, one C++ call for the prior terms (in eps-space also
carrying dU/dz_1 back through the Gaussians) (``posterior_energy_and_grad``).

Float32 CPU tensors only. Everything is checked here before an address reaches C++ (dtype,
device, shape, contiguity: non-contiguous tensors are copied; NaN/inf in weights or observations
is reported); the C++ side checks sizes and addresses again and raises ValueError.

Per-call work is done once per value of the weights: the checks of a weight set and the packed C++
model (``_C.Model``: the weights in the kernels' panel layout, each thread's scratch) are kept by
the weights' epochs (``tensor_cache.LEDGER``: the same tensor objects holding the same values,
compared each call), so an optimizer step, ``load_state_dict`` or a write through ``.data`` is seen
on the next call. Entries go when their tensors do.
"""
from __future__ import annotations

import torch

from .. import extension, traces
from ..fusable import activations_reason, float32_constants_reason, scalars_reason, tensor_reason
from ..problem import Problem
from ..spec import MLPSpec
from ..tensor_cache import LEDGER, LRUCache
from ..update import cpu as update_cpu

__all__ = ["reason", "precision_reason", "prior_terms_reason", "InputFault", "run", "energy_and_grad",
           "posterior_energy_and_grad", "clear_caches"]


class InputFault(str):
    """A refusal that lies in the caller's tensors (NaN/inf weights or observations, weights of
    another dtype or device, layers of the wrong structure), not in the kernels' reach: the cpu
    backend reports it instead of running the chain on autograd (``dispatch.CpuBackend``)."""

_FUSABLE_FAMILY = ("this nn.Sequential is not of the fusable family: Linear layers with one activation "
                   "(LeakyReLU, GELU, SiLU, Softplus(threshold=20), Tanh, ReLU, ELU) between them, ending in "
                   "Linear(h, 1) on z's single layer")


# ------------------------------------------------------------------------------------- caches

# Weight sets whose every per-tensor check passed, and packed C++ models, by the weights' identities,
# valid while the weights keep their epochs (``tensor_cache.LEDGER``: the same values), so neither is
# redone per call and neither outlives a change of the values, ``.data`` writes included.
_VERIFIED = LRUCache(size=32)
_MODELS = LRUCache(size=8)
_LIMITS = extension.cpu_limits()


def _tensors_and_epochs(problem: Problem, mlps):
    """The weight tensors of ``mlps`` (``PriorSpec.mlps``, in order) and their epochs, each tensor's
    values compared once per call (the dispatch rule's question and ``run`` share them through the
    problem's memo)."""
    tensors = [t for e in mlps for t in (*e.mlp.weights, *e.mlp.biases) if t is not None]
    return tensors, LEDGER.epochs(tensors, problem.remember("cpu.epochs", dict))


def clear_caches() -> None:
    """Forget every weight check, packed model and traced reading (they are found again by
    comparing values: this only frees their memory)."""
    traces.forget_reads()
    _VERIFIED.clear()
    _MODELS.clear()
    LEDGER.clear()


def prior_terms_reason(problem: Problem) -> str | None:
    """Why the C++ kernels cannot evaluate this problem's prior (and MLP decoder), or None (asked
    by the dispatch rule and again by ``run``'s backend: the problem's memo answers the second)."""
    return problem.remember("cpu.prior_terms_reason", lambda: _prior_terms_reason(problem))


def _weight_reason(t, what: str, device) -> str | None:
    why = tensor_reason(t, what, device, "cpu", finite=True)
    return None if why is None else InputFault(why)


def _prior_terms_reason(problem: Problem) -> str | None:
    why = update_cpu.reason(problem)  # the extension, CPU tensors, float32
    if why is not None:
        return why
    spec = problem.spec
    if spec is None:
        if problem.squeeze_output:
            return _FUSABLE_FAMILY
        return (f"the energy ({type(problem.energy).__name__}) is not a PriorEnergy, a PosteriorEnergy or a "
                "fusable nn.Sequential, so there is nothing to fuse")
    if not problem.is_list and not problem.tensor_spec:
        return InputFault(f"a {type(problem.energy).__name__} takes z as a list with one [B, d] tensor per layer "
                          "(as the reference calls it), got a single tensor")
    if not problem.tensor_spec and any(len(s) != 2 for s in problem.shapes):
        return InputFault("a fused energy takes each layer as [B, d]; z has shapes "
                          f"{[tuple(s) for s in problem.shapes]}")
    lim = _LIMITS
    L = len(spec.dims)
    if L > lim["max_latent"]:
        return f"{L} latent layers; the cpu kernels take at most {lim['max_latent']}"
    if (problem.batch > lim["max_batch"] or any(d > lim["max_width"] for d in spec.dims)
            or sum(spec.dims) > lim["max_width"]):
        return "batch or latent dims beyond the cpu kernels' limits"
    mlps = spec.mlps(problem.posterior.decoder if problem.posterior is not None else None)
    if len(mlps) > lim["max_mlps"]:
        return f"{len(mlps)} MLPs; the cpu kernels take at most {lim['max_mlps']}"
    # the per-MLP and per-tensor checks depend only on the tensors (shapes, device, dtype, values):
    # skipped while the same tensors hold the values they passed with
    tensors, epochs = _tensors_and_epochs(problem, mlps)
    key = (tuple(len(e.mlp.weights) for e in mlps), tuple(b is None for e in mlps for b in e.mlp.biases),
           tuple(map(id, tensors)))
    if _VERIFIED.get(key) != epochs:
        for e in mlps:
            name, m = e.name, e.mlp
            if len(m.weights) > lim["max_linear_per_mlp"]:
                return (f"the {name} has {len(m.weights)} Linear layers; the cpu kernels take at most "
                        f"{lim['max_linear_per_mlp']}")
            widths = [m.in_dim] + [w.shape[0] for w in m.weights]
            if any(not 1 <= w <= lim["max_width"] for w in widths):
                return f"the {name} has a layer width outside [1, {lim['max_width']}]: {widths}"
            for i, (w, b) in enumerate(zip(m.weights, m.biases)):
                why = _weight_reason(w, f"the {name}'s weight {i}", problem.device) or (
                    None if b is None else _weight_reason(b, f"the {name}'s bias {i}", problem.device))
                if why:
                    return why
        _VERIFIED.put(key, epochs, tensors)
    why = (activations_reason(mlps, extension.ext_activations("cpu"), "cpu") or scalars_reason(spec, mlps)
           or float32_constants_reason(problem, "cpu"))
    if why:
        return why
    post = problem.posterior
    if post is not None:
        why = tensor_reason(post.x_obs, "the posterior's observations x_obs", problem.device, "cpu", finite=True)
        if why:
            return InputFault(why)
        if isinstance(post.decoder, MLPSpec):
            if post.decoder.in_dim != spec.dims[0]:
                return InputFault(f"the MLP decoder takes {post.decoder.in_dim} inputs but z_1 has {spec.dims[0]}")
            if post.x_obs.numel() != problem.batch * post.decoder.out_dim:
                return InputFault(f"the MLP decoder gives {post.decoder.out_dim} values per chain but x_obs has "
                                  f"shape {tuple(post.x_obs.shape)}")
    return None


def reason(problem: Problem) -> str | None:
    """Why the whole chain cannot run as one C++ call (None: it can)."""
    why = prior_terms_reason(problem)
    if why is None and problem.posterior is not None and not isinstance(problem.posterior.decoder, MLPSpec):
        return "the posterior's decoder is a callable (not an MLPSpec): its gradient needs autograd"
    return why


def precision_reason(problem: Problem) -> str | None:
    """Why the whole-chain kernel cannot run this problem's precision (None: it can): bf16 needs
    the AVX512-BF16 builds."""
    return extension.cpu_bf16_reason() if problem.precision.bf16 else None


def _runs_bf16(problem: Problem) -> bool:
    return problem.precision.bf16 and extension.cpu_bf16_reason() is None


# ------------------------------------------------------------------------------------- packing

def _mlp_arg(m: MLPSpec, codes: dict, keep: list) -> tuple:
    sizes = [m.in_dim] + [int(w.shape[0]) for w in m.weights]
    ws, bs = [], []
    for w, b in zip(m.weights, m.biases):
        w = w.detach().contiguous()
        keep.append(w)
        ws.append(w.data_ptr())
        if b is None:
            bs.append(0)
        else:
            b = b.detach().contiguous()
            keep.append(b)
            bs.append(b.data_ptr())
    return (sizes, ws, bs, codes[m.activation], float(m.act_param), codes[m.out_activation])


def _build_model(problem: Problem, with_decoder: bool, bf16: bool = False):
    """The C++ Model (weights packed once per version of the weights: ``_MODELS``) and the
    tensors that must outlive it. A ``bf16`` Model runs its chains on the AVX512-BF16 builds (the
    weights packed to bf16 pairs on first use); its ``eval`` stays float32, so the start check of a
    bf16 call and its chain share one Model."""
    spec, post = problem.spec, problem.posterior
    with_decoder = with_decoder and post is not None
    numbering = spec.mlps(post.decoder if with_decoder else None)
    specs = [e.mlp for e in numbering]
    terms, joint, gauss, decoder = list(numbering.terms), numbering.joint, list(numbering.gaussians), numbering.decoder
    floors = [float(g.sigma_floor) for g in spec.gaussians]
    sigma_x = post.sigma_x if with_decoder else 1.0
    base = [float(s) for s in spec.base_sigma] if spec.base_sigma is not None else []
    ps = [float(s) for s in problem.prior_sigma] if problem.prior_sigma is not None else []
    space = 1 if spec.space == "eps" else 0
    ext = extension.cpu_ext
    tensors, epochs = _tensors_and_epochs(problem, numbering)
    # the extension and its instruction set are part of the key: set_isa() changes the kernels a
    # new Model runs
    key = (id(ext), ext.isa(), tuple(spec.dims), tuple((m.activation, float(m.act_param), m.out_activation,
                                               tuple(b is None for b in m.biases)) for m in specs),
           tuple(terms), joint, tuple(gauss), tuple(floors), space, float(spec.energy_sign), tuple(base), tuple(ps),
           decoder, float(sigma_x), tuple(map(id, tensors)), bf16)
    hit = _MODELS.get(key)
    if hit is not None and hit[0] == epochs:
        return hit[1]
    keep: list = []
    codes = ext.act_codes()
    mlps = [_mlp_arg(m, codes, keep) for m in specs]
    model = ext.Model(list(spec.dims), mlps, terms, joint, gauss, floors, space, float(spec.energy_sign), base, ps,
                      decoder, float(sigma_x), **({"bf16": True} if bf16 else {}))
    _MODELS.put(key, (epochs, (model, keep)), tensors)
    return model, keep


# ------------------------------------------------------------------------------------- running

def run(problem: Problem, accept_record: torch.Tensor | None = None):
    """Every step of every chain in one C++ call (prior, or posterior with an MLP decoder):
    (final layers, statistics [K, 3] or None).

    ``accept_record`` (uint8 [K, B], MALA only) receives each chain's accept decision per step.
    """
    B, K = problem.batch, problem.n_steps
    model, keep = _build_model(problem, with_decoder=True, bf16=_runs_bf16(problem))
    x = [t.contiguous() for t in problem.z]
    out = [torch.empty_like(t) for t in x]
    xobs = 0
    if problem.posterior is not None:
        xo = problem.posterior.x_obs.detach().reshape(B, -1).contiguous()
        keep.append(xo)
        xobs = xo.data_ptr()
    # the kernel writes each statistic as one float32 row of K values
    rows = torch.zeros(3, K) if problem.want_info else None
    if accept_record is not None:
        if not problem.mala:
            raise ValueError("accept_record needs mala=True")
        if (accept_record.dtype != torch.uint8 or accept_record.device.type != "cpu"
                or tuple(accept_record.shape) != (K, B) or not accept_record.is_contiguous()):
            raise ValueError(f"accept_record must be a contiguous CPU uint8 tensor of shape ({K}, {B})")
    seed, offset, _ = problem.noise_position()
    row = (lambda i: rows[i].data_ptr()) if rows is not None else (lambda i: 0)
    model.chain(B, [t.data_ptr() for t in x], [t.data_ptr() for t in out], K, list(problem.h), list(problem.c),
                list(problem.mala_denominators), problem.mala, seed, offset, xobs, row(0), row(1),
                row(2) if problem.mala else 0, accept_record.data_ptr() if accept_record is not None and K else 0,
                extension.threads())
    stats = problem.new_stats()
    if stats is not None:
        stats.copy_(rows.t())
    return out, stats


def energy_and_grad(problem: Problem):
    """x -> (U(x), dU/dx) computed by the packed model ``run`` would run (prior, or posterior with an
    MLP decoder): the kernel's side of the start check (``fusion.confirm``)."""
    B, dims = problem.batch, problem.dims
    model, keep = _build_model(problem, with_decoder=True, bf16=_runs_bf16(problem))
    xobs = 0
    if problem.posterior is not None:
        xo = problem.posterior.x_obs.detach().reshape(B, -1).contiguous()
        keep = keep + [xo]
        xobs = xo.data_ptr()
    nt = extension.threads()

    def evaluate(xs):
        xs = [t.contiguous() for t in xs]
        u = torch.empty(B)
        g = [torch.empty(B, d) for d in dims]
        model.eval(B, [t.data_ptr() for t in xs], 0, 0, xobs, u.data_ptr(), [t.data_ptr() for t in g], 0, nt)
        return u, g

    evaluate.keep = keep  # the packed weights and observations live as long as the function
    return evaluate


def posterior_energy_and_grad(problem: Problem):
    """x -> (U(x | x_obs), dU/dx) for a posterior with a callable decoder: autograd for the decoder
    term ||x_obs - g(z_1)||^2 / (2 sigma_x^2), one C++ call for every prior term."""
    B, dims = problem.batch, problem.dims
    post = problem.posterior
    model, keep = _build_model(problem, with_decoder=False)
    eps_space = problem.spec.space == "eps"
    x_obs, two_var = post.x_obs.detach(), 2 * post.sigma_x * post.sigma_x
    nt = extension.threads()

    def energy_and_grad(xs):
        xs = [t.contiguous() for t in xs]
        ptrs = [t.data_ptr() for t in xs]
        if eps_space:
            z1 = torch.empty(B, dims[0])
            model.z1(B, ptrs, z1.data_ptr(), nt)
        else:
            z1 = xs[0]
        with torch.enable_grad():
            leaf = z1.detach().requires_grad_(True)
            recon = post.decoder(leaf)
            if not torch.is_tensor(recon) or recon.numel() != x_obs.numel():
                raise ValueError(f"the decoder must return images like x_obs {tuple(x_obs.shape)}, got "
                                 f"{tuple(recon.shape) if torch.is_tensor(recon) else type(recon).__name__}")
            diff = (x_obs - recon.reshape(x_obs.shape)).reshape(B, -1)
            u_dec = diff.pow(2).sum(-1) / two_var
            (g_dec,) = torch.autograd.grad(u_dec.sum(), leaf)
        u_dec, g_dec = u_dec.detach(), g_dec.detach()
        if u_dec.dtype != torch.float32 or g_dec.dtype != torch.float32 or g_dec.device.type != "cpu":
            raise TypeError(f"the decoder term must be CPU float32 to join the cpu backend's prior; got "
                            f"{u_dec.dtype} on {g_dec.device}")
        u_dec, g_dec = u_dec.contiguous(), g_dec.contiguous()
        u = torch.empty(B)
        g = [torch.empty(B, d) for d in dims]
        model.eval(B, ptrs, u_dec.data_ptr(), g_dec.data_ptr(), 0, u.data_ptr(), [t.data_ptr() for t in g], 0, nt)
        return u, g

    energy_and_grad.keep = keep  # the packed weights live as long as the function
    return energy_and_grad
