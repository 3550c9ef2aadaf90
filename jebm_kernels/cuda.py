"""The ``cuda`` backend: the CUDA kernels in csrc/*.cu, bound by raw device addresses and the
current stream (``jebm_kernels._cuda``, built by setup.py where nvcc is found).

What it serves: float32 tensors on a CUDA device.
- A fusable prior (``problem.spec`` set, no posterior: a ``PriorEnergy`` or an ``nn.Sequential``
  of the MLP family): the whole chain, all K steps, forward and hand-written input-gradient of
  every MLP, noise, step and MALA's accept/reject, in ONE launch (csrc/cuda_prior_chain.cu).
- Any other energy (a posterior, a conv decoder, any torch callable): autograd gives the gradient,
  and csrc/cuda_update.cu draws the noise and moves every layer in one launch per step; MALA's
  accept/reject is the shared loop's (``reference.run_chain``), on the normals and uniforms the
  kernel drew. This is what the Triton backend does, with the same noise.

Everything is checked here before an address reaches C++ (device, dtype, shape, contiguity);
the bindings check sizes, offsets and that every address is device memory of the current
device, and raise ValueError. Nothing here synchronises with the host: the per-step statistics
are reduced on the device and read only by whoever asks for them.

Without the extension or without a GPU the backend says why it is unavailable; ``auto`` then
moves on quietly and ``langevin(backend="cuda")`` raises with that reason.
"""
from __future__ import annotations

import math

import torch

from .backends import register_backend
from .problem import Problem
from .reference import run_chain
from .fusable import FLOAT32_MAX, float32, named_mlps, scalars_reason
from .spec import MLPSpec, PriorSpec

__all__ = ["CudaBackend", "extension_error", "run_fused", "run_hybrid"]

try:
    from . import _cuda
    _LIMITS = _cuda.limits()
    _IMPORT_ERROR: Exception | None = None
except (ImportError, AttributeError) as exc:  # no nvcc at install time, JEBM_CUDA=0, a stale build
    _cuda = None
    _IMPORT_ERROR = exc
    _LIMITS = {}
_MAX_BATCH = 1 << 31


def extension_error() -> str | None:
    """Why the extension could not be imported, or None when it is there."""
    return None if _cuda is not None else f"{type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}"


def _stream(device: torch.device) -> int:
    # 0 (the legacy default stream) only for host tensors, which only the host emulation runs
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def _step_constants(problem: Problem):
    # As the reference's float32 ops see the Python scalars: s^2/2, s*tau and 2 (s tau)^2 in
    # double, rounded to float32 once (in C++).
    s, tau = problem.step_sizes, problem.noise_scale
    return [v * v / 2 for v in s], [v * tau for v in s], [2 * (v * tau) ** 2 for v in s]


def _weights_reason(problem: Problem) -> str | None:
    """A fusable prior's weights must live where z lives, in float32 (the reference fails too
    otherwise, so this is a refusal, not a fallback)."""
    for name, m in named_mlps(problem.spec):
        for i, (w, b) in enumerate(zip(m.weights, m.biases)):
            for t, what in ((w, "weight"), (b, "bias")):
                if t is None:
                    continue
                if t.device != problem.device:
                    return f"the {name}'s {what} {i} is on {t.device} but z is on {problem.device}"
                if t.dtype != torch.float32:
                    return f"the {name}'s {what} {i} has dtype {t.dtype}; the cuda backend works in float32"
    return None


def _fused_reason(problem: Problem) -> str | None:
    """Why the whole-chain kernel cannot run this problem (None: it can); the backend then runs
    it as autograd + the fused update instead."""
    spec = problem.spec
    if spec is None or problem.posterior is not None:
        return "not a fusable prior"
    if not problem.is_list and not problem.squeeze_output:
        return "a prior energy takes z as a list of [B, d] tensors"
    L = len(spec.dims)
    if L > _LIMITS["max_latent"] or sum(spec.dims) > _LIMITS["max_width"]:
        return f"{L} latent layers of {spec.dims} exceed the kernel's limits"
    mlps = named_mlps(spec)
    if len(mlps) > _LIMITS["max_mlps"]:
        return f"{len(mlps)} MLPs; the kernel takes at most {_LIMITS['max_mlps']}"
    n_linear = 0
    for name, m in mlps:
        n_linear += len(m.weights)
        if len(m.weights) > _LIMITS["max_linear_per_mlp"]:
            return f"the {name} has {len(m.weights)} Linear layers; at most {_LIMITS['max_linear_per_mlp']}"
        widths = [m.in_dim] + [w.shape[0] for w in m.weights]
        if max(widths) > _LIMITS["max_width"]:
            return f"the {name} has a layer wider than {_LIMITS['max_width']}: {widths}"
    if n_linear > _LIMITS["max_linear_total"]:
        return f"{n_linear} Linear layers in all; the kernel takes at most {_LIMITS['max_linear_total']}"
    return scalars_reason(spec, mlps) or _chain_constants_reason(problem)


def _step_reason(problem: Problem) -> str | None:
    """Both kernels hold s^2/2 and s*tau in float32: values beyond its range cannot be run."""
    h, c, _ = _step_constants(problem)
    for name, values in (("s^2/2", h), ("s*tau", c)):
        for v in values:
            if not math.isfinite(v) or abs(v) > FLOAT32_MAX:
                return f"{name} = {v:.3g} is beyond float32's range, in which the cuda kernels hold it"
    return None


def _chain_constants_reason(problem: Problem) -> str | None:
    """The whole-chain kernel also holds 2 (s tau)^2 (MALA) and q_l = sum of 1/sigma^2 (base_sigma,
    prior_sigma) in float32; where they do not fit, the chain runs as autograd + update instead."""
    _, _, den = _step_constants(problem)
    if problem.mala and any(not 0.0 < float32(v) <= FLOAT32_MAX for v in den):
        return "2 (s tau)^2 is 0 or beyond float32's range"
    sigmas = [s for s in tuple(problem.prior_sigma or ()) + tuple(problem.spec.base_sigma or ()) if math.isfinite(s)]
    if any(not 1.0 / (s * s) <= FLOAT32_MAX for s in sigmas):
        return "a 1 / sigma^2 (prior_sigma, base_sigma) is beyond float32's range"
    return None


def _reason(problem: Problem) -> str | None:
    if problem.device.type != "cuda":
        return f"tensors on {problem.device}; the cuda backend runs CUDA tensors"
    if problem.dtype != torch.float32:
        return f"the cuda backend works in float32, got {problem.dtype}"
    if len(problem.dims) > _LIMITS["max_latent"]:
        return f"{len(problem.dims)} latent layers; the kernels take at most {_LIMITS['max_latent']}"
    if problem.batch >= _MAX_BATCH or any(d > _LIMITS["max_width"] for d in problem.dims):
        return "batch or latent dims beyond the cuda kernels' limits"
    why = _step_reason(problem)
    if why is not None:
        return why
    if problem.spec is not None and problem.posterior is None:
        return _weights_reason(problem)
    return None


# ------------------------------------------------------------------------------ the whole chain

class _Packed:
    """Every Linear's W^T [in, out], W [out, in] and bias in one float32 device buffer (the kernel
    reads W^T for the forward and W for the input gradient, both coalesced), and the argument
    tuples of ``_cuda.Model``."""

    def __init__(self, spec: PriorSpec, device, act_codes: dict):
        self.act_codes = act_codes
        self.chunks: list[torch.Tensor] = []
        self.size = 0
        self.mlps: list[tuple] = []
        self.terms = [self._add(t) for t in spec.layer_terms]
        self.joint = self._add(spec.joint_term)
        self.gauss = [self._add(g.mlp) for g in spec.gaussians]
        self.weights = (torch.cat(self.chunks) if self.chunks
                        else torch.zeros(1, dtype=torch.float32, device=device))

    def _put(self, t: torch.Tensor) -> int:
        at = self.size
        self.chunks.append(t.detach().reshape(-1))
        self.size += t.numel()
        return at

    def _add(self, m: MLPSpec | None) -> int:
        if m is None:
            return -1
        sizes = [m.in_dim] + [int(w.shape[0]) for w in m.weights]
        wt_offs, w_offs, b_offs = [], [], []
        for w, b in zip(m.weights, m.biases):
            wt_offs.append(self._put(w.detach().t()))
            w_offs.append(self._put(w))
            b_offs.append(-1 if b is None else self._put(b))
        self.mlps.append((sizes, wt_offs, w_offs, b_offs, self.act_codes[m.activation], float(m.act_param),
                          self.act_codes[m.out_activation]))
        return len(self.mlps) - 1


def run_fused(problem: Problem, accept_record: torch.Tensor | None = None, *, philox: torch.Tensor | None = None,
              ext=None):
    """Every step of every chain of a fusable prior in one launch.

    ``accept_record`` (uint8 [K, B] on the device, MALA only) receives each chain's decisions.
    ``philox`` (int64 [2] on the device: seed as a signed bit pattern, base offset): the kernel
    reads seed and offset from it, counters start at base + ``problem.offset``, and the problem's
    seed is ignored (the graph-safe form, as triton_prior_chain's).
    ``ext`` replaces the extension module (tests pass a host-emulated build, tests/cuda_emulation).
    """
    ext = _cuda if ext is None else ext
    spec, device = problem.spec, problem.device
    B, K = problem.batch, problem.n_steps
    packed = _Packed(spec, device, ext.act_codes())
    base = [float(s) for s in spec.base_sigma] if spec.base_sigma is not None else []
    ps = [float(s) for s in problem.prior_sigma] if problem.prior_sigma is not None else []
    model = ext.Model(list(spec.dims), packed.mlps, packed.terms, packed.joint, packed.gauss,
                      [float(g.sigma_floor) for g in spec.gaussians], 1 if spec.space == "eps" else 0,
                      float(spec.energy_sign), base, ps, packed.weights.data_ptr(), packed.weights.numel())
    _, _, n_blocks, nbytes = model.plan(B)
    workspace = torch.empty(nbytes, dtype=torch.uint8, device=device)
    x = [t.contiguous() for t in problem.z]
    out = [torch.empty_like(t) for t in x]
    h, c, den = _step_constants(problem)
    stats = torch.zeros(max(K, 1) * n_blocks * 3, dtype=torch.float32, device=device) if problem.want_info else None
    if accept_record is not None:
        if not problem.mala:
            raise ValueError("accept_record needs mala=True")
        if (accept_record.dtype != torch.uint8 or accept_record.device != device
                or tuple(accept_record.shape) != (K, B) or not accept_record.is_contiguous()):
            raise ValueError(f"accept_record must be a contiguous uint8 tensor of shape ({K}, {B}) on {device}")
    model.chain(B, [t.data_ptr() for t in x], [t.data_ptr() for t in out], K, h, c, den, problem.mala,
                problem.seed, problem.offset, workspace.data_ptr(), nbytes,
                stats.data_ptr() if stats is not None else 0, stats.numel() if stats is not None else 0,
                accept_record.data_ptr() if accept_record is not None and K else 0, _stream(device),
                _philox_address(philox, device))
    result = {"energy": [], "grad_norm": [], "accept": []}
    if problem.want_info and K:
        per_step = stats.view(K, n_blocks, 3).sum(1) / B
        result["energy"] = list(per_step[:, 0].unbind(0))
        result["grad_norm"] = list(per_step[:, 1].unbind(0))
        if problem.mala:
            result["accept"] = list(per_step[:, 2].unbind(0))
    return out, result


def _philox_address(philox: torch.Tensor | None, device) -> int:
    if philox is None:
        return 0
    if philox.dtype != torch.int64 or philox.numel() != 2 or philox.device != device or not philox.is_contiguous():
        raise ValueError(f"philox must be a contiguous int64 tensor [seed, offset] on {device}, got "
                         f"{philox.dtype} {tuple(philox.shape)} on {philox.device}")
    return philox.data_ptr()


# ------------------------------------------------------------------- autograd + the fused update

def run_hybrid(problem: Problem, *, ext=None):
    """Any energy: autograd for the gradient, one cuda_update.cu launch per step for the move
    (``ext`` as in ``run_fused``)."""
    ext = _cuda if ext is None else ext
    B, dims, device = problem.batch, list(problem.dims), problem.device
    h, c, _ = _step_constants(problem)

    def propose(problem, x, g, k):
        x = [t.contiguous() for t in x]
        g = [t.contiguous() for t in g]
        moved = [torch.empty_like(t) for t in x]
        noise = [torch.empty_like(t) for t in x] if problem.mala else []
        uniform = torch.empty(B, dtype=torch.float32, device=device) if problem.mala else None
        ext.multi_layer_update(B, dims, [t.data_ptr() for t in x], [t.data_ptr() for t in g],
                                 [t.data_ptr() for t in moved], [t.data_ptr() for t in noise],
                                 uniform.data_ptr() if uniform is not None else 0, h, c, problem.seed,
                                 problem.offset + k * problem.stride, 0, _stream(device))
        return moved, (noise if problem.mala else None), uniform

    return run_chain(problem, propose)


class CudaBackend:
    name = "cuda"

    def unavailable_reason(self):
        if _cuda is None:
            return (f"the CUDA extension jebm_kernels._cuda is not built ({extension_error()}); "
                    "install with nvcc on PATH (JEBM_CUDA=1 pip install . makes a failed build an error)")
        if not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
        return None

    def unsupported_reason(self, problem: Problem):
        why = self.unavailable_reason()
        return why if why is not None else _reason(problem)

    def run(self, problem: Problem):
        with torch.cuda.device(problem.device):
            if problem.spec is not None and problem.posterior is None and _fused_reason(problem) is None:
                return run_fused(problem)
            return run_hybrid(problem)


register_backend(CudaBackend())
