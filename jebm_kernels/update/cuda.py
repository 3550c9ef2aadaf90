"""The update as csrc's CUDA kernel (``_cuda.multi_layer_update``), on the current stream; with a
``philox`` tensor on the device the kernel reads seed and base offset itself (graph-safe)."""
from __future__ import annotations

import torch

from .. import extension
from ..fusable import step_constants_reason
from ..problem import Problem

__all__ = ["reason", "propose", "stream_of"]


def stream_of(device: torch.device) -> int:
    # 0 (the legacy default stream) only for host tensors, which only the host emulation runs
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def unavailable() -> str | None:
    if extension.cuda_ext is None:
        return (f"the CUDA extension jebm_kernels._cuda is not built ({extension.cuda_error()}); "
                "install with nvcc on PATH (JEBM_CUDA=1 pip install . makes a failed build an error)")
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


def reason(problem: Problem) -> str | None:
    """Why the CUDA kernels cannot take this problem's tensors and step constants (None: they can)."""
    why = unavailable()
    if why is not None:
        return why
    limits = extension.cuda_limits()
    if problem.device.type != "cuda":
        return f"tensors on {problem.device}; the cuda backend runs CUDA tensors"
    if problem.dtype != torch.float32:
        return f"the cuda backend works in float32, got {problem.dtype}"
    if len(problem.dims) > limits["max_latent"]:
        return f"{len(problem.dims)} latent layers; the kernels take at most {limits['max_latent']}"
    if problem.batch > limits.get("max_batch", (1 << 31) - 1) or any(d > limits["max_width"] for d in problem.dims):
        return "batch or latent dims beyond the cuda kernels' limits"
    return step_constants_reason(problem, "cuda")


def propose(problem: Problem, x: list[torch.Tensor], g: list[torch.Tensor], k: int, *, ext=None):
    """Step k's move in one launch. ``ext`` replaces the extension (tests pass a host-emulated build)."""
    ext = extension.cuda_ext if ext is None else ext
    B, dims, device = problem.batch, list(problem.dims), problem.device
    x = [t.contiguous() for t in x]
    g = [t.contiguous() for t in g]
    moved = [torch.empty_like(t) for t in x]
    noise = [torch.empty_like(t) for t in x] if problem.mala else []
    uniform = torch.empty(B, dtype=torch.float32, device=device) if problem.mala else None
    seed, offset, philox = problem.noise_position(k, by_pointer=True)
    ext.multi_layer_update(B, dims, [t.data_ptr() for t in x], [t.data_ptr() for t in g],
                           [t.data_ptr() for t in moved], [t.data_ptr() for t in noise],
                           uniform.data_ptr() if uniform is not None else 0, list(problem.h), list(problem.c),
                           seed, offset, philox.data_ptr() if philox is not None else 0, stream_of(device))
    return moved, (noise if problem.mala else None), uniform
