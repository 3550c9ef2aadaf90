"""The ``cpu`` backend: the compiled C++ kernels in csrc/ (OpenMP over chains, SIMD picked at run
time: AVX-512, AVX2+FMA or the baseline), bound by raw addresses (``jebm_kernels._C``).

What it serves (``unsupported_reason`` says why not, otherwise):
- a ``PriorEnergy``, or an ``nn.Sequential`` energy of the fusable family (with ``prior_sigma``):
  the whole chain, all K steps, forward and hand-written input-gradient of every MLP, the noise,
  the step and MALA's accept/reject, in one C++ call;
- a ``PosteriorEnergy`` with an ``MLPSpec`` decoder: likewise, fused whole;
- a ``PosteriorEnergy`` with a callable (conv) decoder: per step, autograd gives the decoder
  term's gradient with respect to z_1; one C++ call adds the prior terms (and, in eps-space,
  carries dU/dz_1 back through the Gaussians); the C++ multi-layer update draws the noise and
  moves every layer; MALA's accept is the reference's torch code on those values.
Float32 CPU tensors only. Everything is checked here before an address reaches C++ (dtype,
device, shape, contiguity: non-contiguous tensors are copied; NaN/inf in weights or observations
is reported); the C++ side checks sizes and addresses again and raises ValueError.

If the extension was not built, the backend reports itself unavailable, ``auto`` uses the
reference, and a warning says so once.
"""
from __future__ import annotations

import math
import warnings

import torch

from .backends import register_backend
from .problem import Problem
from .fusable import FLOAT32_MAX, float32, named_mlps, scalars_reason
from .spec import MLPSpec

__all__ = ["CpuBackend", "extension_error", "isa"]

try:
    from . import _C
    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # no compiler at install time, or a build for another Python
    _C = None
    _IMPORT_ERROR = exc

_WARNED = False
_MAX_LATENT = 16
_MAX_LINEAR = 16
_MAX_MLPS = 64
_MAX_WIDTH = 1 << 20
_MAX_BATCH = 1 << 31


def extension_error() -> str | None:
    """Why the extension could not be imported, or None when it is there."""
    return None if _C is not None else f"{type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}"


def isa() -> str | None:
    """The instruction set the kernels run with ('avx512', 'avx2', 'generic'), None without them."""
    return _C.isa() if _C is not None else None


def _warn_once() -> None:
    global _WARNED
    if not _WARNED:
        _WARNED = True
        warnings.warn(
            f"jebm_kernels: the C++ extension jebm_kernels._C is not available ({extension_error()}); "
            "the cpu backend is off and 'auto' uses the reference backend. Build it with "
            "`pip install .` or `python setup.py build_ext --inplace` (needs a C++17 compiler).",
            RuntimeWarning, stacklevel=4)


def _threads() -> int:
    return max(1, torch.get_num_threads())


# ------------------------------------------------------------------------------------ checking

def _tensor_reason(t, what: str) -> str | None:
    if not torch.is_tensor(t):
        return f"{what} is a {type(t).__name__}, not a tensor"
    if t.device.type != "cpu":
        return f"{what} is on {t.device}; the cpu backend needs CPU tensors"
    if t.dtype != torch.float32:
        return f"{what} has dtype {t.dtype}; the cpu backend works in float32"
    if t.numel() and not bool(torch.isfinite(t.detach()).all()):
        return f"{what} contains NaN or inf"
    return None


def _float32_constants_reason(problem: Problem) -> str | None:
    """The kernels hold s^2/2, s*tau, 2 (s tau)^2 and the denominators 2 sigma^2 (prior_sigma,
    base_sigma, sigma_x) as float32 (``_step_constants``, csrc/bindings.cpp): a value beyond
    float32's range, or a denominator that rounds to 0 in float32, is one they cannot represent."""
    h, c, den = _step_constants(problem)
    sig = [s for s in (problem.prior_sigma or ()) + tuple(problem.spec.base_sigma or ()) if math.isfinite(s)]
    if problem.posterior is not None:
        sig.append(problem.posterior.sigma_x)
    denominators = [2 * s * s for s in sig]
    named = [("s^2/2", h), ("s*tau", c), ("2 (s tau)^2", den if problem.mala else []), ("2 sigma^2", denominators)]
    for name, values in named:
        for v in values:
            if not math.isfinite(v) or abs(v) > FLOAT32_MAX:
                return f"{name} = {v:.3g} is beyond float32's range, in which the cpu kernels hold it"
    for v in denominators:
        if float32(v) == 0.0:
            return f"2 sigma^2 = {v:.3g} rounds to 0 in float32, in which the cpu kernels divide by it"
    return None


def _reason(problem: Problem) -> str | None:
    if problem.device.type != "cpu":
        return f"tensors on {problem.device}; the cpu backend runs CPU tensors"
    if problem.dtype != torch.float32:
        return f"the cpu backend works in float32, got {problem.dtype}"
    spec = problem.spec
    if spec is None:
        if problem.squeeze_output:
            return ("this nn.Sequential is not of the fusable family: Linear layers with one activation "
                    "(LeakyReLU, GELU, SiLU, Softplus(threshold=20), Tanh, ReLU) between them, ending in "
                    "Linear(h, 1) on z's single layer")
        return (f"the energy ({type(problem.energy).__name__}) is not a PriorEnergy, a PosteriorEnergy or a "
                "fusable nn.Sequential, so there is nothing to fuse")
    if not problem.is_list and not problem.squeeze_output:
        return (f"a {type(problem.energy).__name__} takes z as a list with one [B, d] tensor per layer "
                "(as the reference calls it), got a single tensor")
    if any(len(s) != 2 for s in problem.shapes):
        return (f"a fused energy takes each layer as [B, d]; z has shapes {[tuple(s) for s in problem.shapes]}")
    L = len(spec.dims)
    if L > _MAX_LATENT:
        return f"{L} latent layers; the cpu kernels take at most {_MAX_LATENT}"
    if problem.batch >= _MAX_BATCH or any(d > _MAX_WIDTH for d in spec.dims) or sum(spec.dims) > _MAX_WIDTH:
        return "batch or latent dims beyond the cpu kernels' limits"
    mlps = named_mlps(spec, problem.posterior.decoder if problem.posterior is not None else None)
    if len(mlps) > _MAX_MLPS:
        return f"{len(mlps)} MLPs; the cpu kernels take at most {_MAX_MLPS}"
    for name, m in mlps:
        if len(m.weights) > _MAX_LINEAR:
            return f"the {name} has {len(m.weights)} Linear layers; the cpu kernels take at most {_MAX_LINEAR}"
        widths = [m.in_dim] + [w.shape[0] for w in m.weights]
        if any(not 1 <= w <= _MAX_WIDTH for w in widths):
            return f"the {name} has a layer width outside [1, {_MAX_WIDTH}]: {widths}"
        for i, (w, b) in enumerate(zip(m.weights, m.biases)):
            why = _tensor_reason(w, f"the {name}'s weight {i}") or (
                None if b is None else _tensor_reason(b, f"the {name}'s bias {i}"))
            if why:
                return why
    why = scalars_reason(spec, mlps) or _float32_constants_reason(problem)
    if why:
        return why
    post = problem.posterior
    if post is not None:
        why = _tensor_reason(post.x_obs, "the posterior's observations x_obs")
        if why:
            return why
        if isinstance(post.decoder, MLPSpec):
            if post.decoder.in_dim != spec.dims[0]:
                return f"the MLP decoder takes {post.decoder.in_dim} inputs but z_1 has {spec.dims[0]}"
            if post.x_obs.numel() != problem.batch * post.decoder.out_dim:
                return (f"the MLP decoder gives {post.decoder.out_dim} values per chain but x_obs has shape "
                        f"{tuple(post.x_obs.shape)}")
    return None


# ------------------------------------------------------------------------------------- packing

_ACT_CODES = _C.act_codes() if _C is not None else {}


def _addr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _mlp_arg(m: MLPSpec, keep: list) -> tuple:
    sizes = [m.in_dim] + [int(w.shape[0]) for w in m.weights]
    ws, bs = [], []
    for w, b in zip(m.weights, m.biases):
        w = w.detach().contiguous()
        keep.append(w)
        ws.append(_addr(w))
        if b is None:
            bs.append(0)
        else:
            b = b.detach().contiguous()
            keep.append(b)
            bs.append(_addr(b))
    return (sizes, ws, bs, _ACT_CODES[m.activation], float(m.act_param), _ACT_CODES[m.out_activation])


def _build_model(problem: Problem, with_decoder: bool):
    """The C++ Model (weights packed once, here) and the tensors that must outlive it."""
    spec = problem.spec
    keep: list = []
    mlps: list = []

    def add(m: MLPSpec) -> int:
        mlps.append(_mlp_arg(m, keep))
        return len(mlps) - 1

    terms = [add(t) if t is not None else -1 for t in spec.layer_terms]
    joint = add(spec.joint_term) if spec.joint_term is not None else -1
    gauss = [add(g.mlp) for g in spec.gaussians]
    floors = [float(g.sigma_floor) for g in spec.gaussians]
    decoder, sigma_x = -1, 1.0
    post = problem.posterior
    if with_decoder and post is not None:
        decoder = add(post.decoder)
        sigma_x = post.sigma_x
    base = [float(s) for s in spec.base_sigma] if spec.base_sigma is not None else []
    ps = [float(s) for s in problem.prior_sigma] if problem.prior_sigma is not None else []
    model = _C.Model(list(spec.dims), mlps, terms, joint, gauss, floors, 1 if spec.space == "eps" else 0,
                     float(spec.energy_sign), base, ps, decoder, float(sigma_x))
    return model, keep


def _step_constants(problem: Problem):
    # As the reference's float32 ops see the Python scalars: s^2/2, s*tau and 2 (s tau)^2 in
    # double, rounded to float32 once (in C++).
    s, tau = problem.step_sizes, problem.noise_scale
    return ([v * v / 2 for v in s], [v * tau for v in s], [2 * (v * tau) ** 2 for v in s])


def _contiguous_layers(problem: Problem) -> list[torch.Tensor]:
    return [t.contiguous() for t in problem.z]


# ------------------------------------------------------------------------------------- running

def run_fused(problem: Problem, accept_record: torch.Tensor | None = None):
    """Every step of every chain in one C++ call (prior, or posterior with an MLP decoder).

    ``accept_record`` (uint8 [K, B], MALA only) receives each chain's accept decision per step.
    """
    B, K = problem.batch, problem.n_steps
    model, keep = _build_model(problem, with_decoder=True)
    x = _contiguous_layers(problem)
    out = [torch.empty_like(t) for t in x]
    h, c, den = _step_constants(problem)
    xobs = 0
    if problem.posterior is not None:
        xo = problem.posterior.x_obs.detach().reshape(B, -1).contiguous()
        keep.append(xo)
        xobs = _addr(xo)
    energy = gnorm = accept = None
    if problem.want_info:
        energy, gnorm = torch.empty(K), torch.empty(K)
        accept = torch.empty(K) if problem.mala else None
    if accept_record is not None:
        if not problem.mala:
            raise ValueError("accept_record needs mala=True")
        if (accept_record.dtype != torch.uint8 or accept_record.device.type != "cpu"
                or tuple(accept_record.shape) != (K, B) or not accept_record.is_contiguous()):
            raise ValueError(f"accept_record must be a contiguous CPU uint8 tensor of shape ({K}, {B})")
    model.chain(B, [_addr(t) for t in x], [_addr(t) for t in out], K, h, c, den, problem.mala,
                problem.seed, problem.offset, xobs,
                _addr(energy) if energy is not None else 0, _addr(gnorm) if gnorm is not None else 0,
                _addr(accept) if accept is not None else 0,
                _addr(accept_record) if accept_record is not None and K else 0, _threads())
    stats = {"energy": [], "grad_norm": [], "accept": []}
    if problem.want_info:
        stats["energy"] = list(energy.unbind(0))
        stats["grad_norm"] = list(gnorm.unbind(0))
        if accept is not None:
            stats["accept"] = list(accept.unbind(0))
    return out, stats


def run_hybrid(problem: Problem):
    """A posterior with a callable (conv) decoder: autograd for the decoder term, C++ for the rest."""
    B, K, dims = problem.batch, problem.n_steps, problem.dims
    post = problem.posterior
    model, keep = _build_model(problem, with_decoder=False)
    eps_space = problem.spec.space == "eps"
    x_obs, two_var = post.x_obs.detach(), 2 * post.sigma_x * post.sigma_x
    nt = _threads()
    h, c, _ = _step_constants(problem)
    s, tau = problem.step_sizes, problem.noise_scale

    def energy_and_grad(xs):
        ptrs = [_addr(t) for t in xs]
        if eps_space:
            z1 = torch.empty(B, dims[0])
            model.z1(B, ptrs, _addr(z1), nt)
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
        model.eval(B, ptrs, _addr(u_dec), _addr(g_dec), 0, _addr(u), [_addr(t) for t in g], 0, nt)
        return u, g

    def propose(xs, gs, k):
        prop = [torch.empty(B, d) for d in dims]
        noise = [torch.empty(B, d) for d in dims] if problem.mala else []
        uniform = torch.empty(B) if problem.mala else None
        _C.multi_layer_update(B, list(dims), [_addr(t) for t in xs], [_addr(t) for t in gs],
                              [_addr(t) for t in prop], [_addr(t) for t in noise],
                              _addr(uniform) if uniform is not None else 0, h, c, problem.seed,
                              problem.offset + k * problem.stride, nt)
        return prop, noise, uniform

    # The loop and MALA's accept are reference.run_chain's, line for line.
    x = _contiguous_layers(problem)
    energies, grad_norms, accepts = [], [], []
    u, g = energy_and_grad(x) if K else (None, None)
    for k in range(K):
        if problem.want_info:
            energies.append(u.mean())
            grad_norms.append(torch.sqrt(sum(gl.pow(2).sum(-1) for gl in g)).mean())
        prop, noise, uniform = propose(x, g, k)
        if not problem.mala:
            x = prop
            if k + 1 < K:
                u, g = energy_and_grad(x)
            continue
        u_p, g_p = energy_and_grad(prop)
        log_q_fwd = -0.5 * sum(nl.pow(2).sum(-1) for nl in noise)
        log_q_bwd = -sum((xl - pl + (sl * sl / 2) * gpl).pow(2).sum(-1) / (2 * (sl * tau) ** 2)
                         for xl, pl, gpl, sl in zip(x, prop, g_p, s))
        log_alpha = u - u_p + log_q_bwd - log_q_fwd
        acc_k = torch.log(uniform) < log_alpha
        acc = acc_k.unsqueeze(1)
        x = [torch.where(acc, pl, xl) for pl, xl in zip(prop, x)]
        g = [torch.where(acc, gpl, gl) for gpl, gl in zip(g_p, g)]
        u = torch.where(acc_k, u_p, u)
        if problem.want_info:
            accepts.append(acc_k.to(torch.float32).mean())
    del keep
    return x, {"energy": energies, "grad_norm": grad_norms, "accept": accepts}


class CpuBackend:
    name = "cpu"

    def unavailable_reason(self):
        if _C is None:
            _warn_once()
            return f"the C++ extension jebm_kernels._C is not built ({extension_error()})"
        return None

    def unsupported_reason(self, problem: Problem):
        if _C is None:
            return self.unavailable_reason()
        return _reason(problem)

    def run(self, problem: Problem):
        post = problem.posterior
        if post is not None and not isinstance(post.decoder, MLPSpec):
            return run_hybrid(problem)
        return run_fused(problem)


register_backend(CpuBackend())
