"""The prior chain as csrc's CUDA kernel (csrc/cuda_prior_chain.cu): every step of every chain of a
fusable prior, forward and hand-written input-gradient of every MLP, noise, step and MALA's
accept/reject, in ONE launch on the current stream.

Everything is checked here before an address reaches C++ (device, dtype, shape, contiguity); the
bindings check sizes, offsets and that every address is device memory of the current device, and
raise ValueError. Nothing here synchronises with the host: the per-step statistics are reduced on
the device and read only by whoever asks for them.
"""
from __future__ import annotations

import math

import torch

from .. import extension
from ..fusable import FLOAT32_MAX, activations_reason, float32, scalars_reason, tensor_reason
from ..problem import Problem
from ..spec import PriorSpec
from ..update import cuda as update_cuda
from .packing import PackedWeights

__all__ = ["reason", "precision_reason", "kernel_reason", "weights_reason", "run", "CudaWeights"]


def weights_reason(problem: Problem) -> str | None:
    """A fusable prior's weights must live where z lives, in float32 (the reference fails too
    otherwise, so this is a refusal, not a fallback)."""
    for e in problem.spec.mlps():
        for i, (w, b) in enumerate(zip(e.mlp.weights, e.mlp.biases)):
            for t, what in ((w, "weight"), (b, "bias")):
                if t is not None:
                    why = tensor_reason(t, f"the {e.name}'s {what} {i}", problem.device, "cuda")
                    if why is not None:
                        return why
    return None


def _chain_constants_reason(problem: Problem) -> str | None:
    """The whole-chain kernel also holds 2 (s tau)^2 (MALA) and q_l = sum of 1/sigma^2 (base_sigma,
    prior_sigma) in float32; where they do not fit, the chain runs as autograd + update instead."""
    if problem.mala and any(not 0.0 < float32(v) <= FLOAT32_MAX for v in problem.mala_denominators):
        return "2 (s tau)^2 is 0 or beyond float32's range"
    sigmas = [s for s in tuple(problem.prior_sigma or ()) + tuple(problem.spec.base_sigma or ()) if math.isfinite(s)]
    if any(not 1.0 / (s * s) <= FLOAT32_MAX for s in sigmas):
        return "a 1 / sigma^2 (prior_sigma, base_sigma) is beyond float32's range"
    return None


def precision_reason(problem: Problem) -> str | None:
    """Why the whole-chain kernel cannot run this problem's precision (None: it can)."""
    return "the CUDA whole-chain kernel computes in fp32 only" if problem.precision.bf16 else None


def reason(problem: Problem) -> str | None:
    """Why the whole-chain kernel cannot run this problem (None: it can); the cuda backend then
    runs it as autograd + the update kernel."""
    return (update_cuda.reason(problem) or (weights_reason(problem) if problem.is_prior else None)
            or kernel_reason(problem))


def kernel_reason(problem: Problem) -> str | None:
    """``reason`` without the device checks: the structure and constants the kernel can hold (the
    tests' host emulation of the extension runs it on CPU tensors)."""
    spec = problem.spec
    if not problem.is_prior:
        return "not a fusable prior"
    if not problem.is_list and not problem.tensor_spec:
        return "a prior energy takes z as a list of [B, d] tensors"
    lim = extension.cuda_limits()
    L = len(spec.dims)
    if L > lim["max_latent"] or sum(spec.dims) > lim["max_width"]:
        return f"{L} latent layers of {spec.dims} exceed the kernel's limits"
    mlps = spec.mlps()
    if len(mlps) > lim["max_mlps"]:
        return f"{len(mlps)} MLPs; the kernel takes at most {lim['max_mlps']}"
    n_linear = 0
    for e in mlps:
        m = e.mlp
        n_linear += len(m.weights)
        if len(m.weights) > lim["max_linear_per_mlp"]:
            return f"the {e.name} has {len(m.weights)} Linear layers; at most {lim['max_linear_per_mlp']}"
        widths = [m.in_dim] + [w.shape[0] for w in m.weights]
        if max(widths) > lim["max_width"]:
            return f"the {e.name} has a layer wider than {lim['max_width']}: {widths}"
    if n_linear > lim["max_linear_total"]:
        return f"{n_linear} Linear layers in all; the kernel takes at most {lim['max_linear_total']}"
    return (activations_reason(mlps, extension.ext_activations("cuda"), "cuda") or scalars_reason(spec, mlps)
            or _chain_constants_reason(problem))


class CudaWeights:
    """The prior's weights packed for the kernel (``packing.py``: W^T for the forward and W for the
    input gradient, both coalesced) and the argument tuples of ``_cuda.Model``."""

    def __init__(self, spec: PriorSpec, device, act_codes: dict):
        mlps = spec.mlps()
        packed = PackedWeights(mlps, device)
        self.weights = packed.weights
        self.terms, self.joint, self.gauss = list(mlps.terms), mlps.joint, list(mlps.gaussians)
        self.mlps: list[tuple] = []
        for e, linears in zip(mlps, packed.linears):
            m = e.mlp
            self.mlps.append(([m.in_dim] + [p.n_out for p in linears], [p.wt for p in linears],
                              [p.w for p in linears], [p.bias for p in linears], act_codes[m.activation],
                              float(m.act_param), act_codes[m.out_activation]))


def run(problem: Problem, accept_record: torch.Tensor | None = None, *, ext=None):
    """Every step of every chain of a fusable prior in one launch: (final layers, stats [K, 3] or None).

    ``accept_record`` (uint8 [K, B] on the device, MALA only) receives each chain's decisions.
    With ``problem.philox`` on the device the kernel reads seed and base offset from it (graph-safe).
    ``ext`` replaces the extension module (tests pass a host-emulated build, tests/cuda_emulation).
    """
    ext = extension.cuda_ext if ext is None else ext
    spec, device = problem.spec, problem.device
    B, K = problem.batch, problem.n_steps
    packed = CudaWeights(spec, device, ext.act_codes())
    base = [float(s) for s in spec.base_sigma] if spec.base_sigma is not None else []
    ps = [float(s) for s in problem.prior_sigma] if problem.prior_sigma is not None else []
    model = ext.Model(list(spec.dims), packed.mlps, packed.terms, packed.joint, packed.gauss,
                      [float(g.sigma_floor) for g in spec.gaussians], 1 if spec.space == "eps" else 0,
                      float(spec.energy_sign), base, ps, packed.weights.data_ptr(), packed.weights.numel())
    _, _, n_blocks, nbytes = model.plan(B)
    workspace = torch.empty(nbytes, dtype=torch.uint8, device=device)
    x = [t.contiguous() for t in problem.z]
    out = [torch.empty_like(t) for t in x]
    block_stats = (torch.zeros(max(K, 1) * n_blocks * 3, dtype=torch.float32, device=device)
                   if problem.want_info else None)
    if accept_record is not None:
        if not problem.mala:
            raise ValueError("accept_record needs mala=True")
        if (accept_record.dtype != torch.uint8 or accept_record.device != device
                or tuple(accept_record.shape) != (K, B) or not accept_record.is_contiguous()):
            raise ValueError(f"accept_record must be a contiguous uint8 tensor of shape ({K}, {B}) on {device}")
    seed, offset, philox = problem.noise_position(by_pointer=True)
    model.chain(B, [t.data_ptr() for t in x], [t.data_ptr() for t in out], K, list(problem.h), list(problem.c),
                list(problem.mala_denominators), problem.mala, seed, offset, workspace.data_ptr(), nbytes,
                block_stats.data_ptr() if block_stats is not None else 0,
                block_stats.numel() if block_stats is not None else 0,
                accept_record.data_ptr() if accept_record is not None and K else 0, update_cuda.stream_of(device),
                philox.data_ptr() if philox is not None else 0)
    stats = problem.new_stats()
    if stats is not None and K:
        stats.copy_(block_stats.view(K, n_blocks, 3).sum(1) / B)
        if not problem.mala:
            stats[:, 2] = 0
    return out, stats
