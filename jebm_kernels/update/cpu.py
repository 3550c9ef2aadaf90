"""The update in C++ (``_C.multi_layer_update``: OpenMP over chains, the SIMD Philox of csrc):
CPU float32 tensors; the extension draws the same normals as the torch reference to float32
rounding of log/cos, and the same uniforms bit for bit."""
from __future__ import annotations

import torch

from .. import extension
from ..fusable import FLOAT32_MAX, float32, step_constants_reason
from ..problem import Problem

__all__ = ["reason", "propose", "mala_select"]


def reason(problem: Problem) -> str | None:
    if extension.cpu_ext is None:
        return f"the C++ extension jebm_kernels._C is not built ({extension.cpu_error()})"
    if problem.device.type != "cpu":
        return f"tensors on {problem.device}; the cpu backend runs CPU tensors"
    if problem.dtype != torch.float32:
        return f"the cpu backend works in float32, got {problem.dtype}"
    return step_constants_reason(problem, "cpu")


def propose(problem: Problem, x: list[torch.Tensor], g: list[torch.Tensor], k: int):
    # the call's constants read once (this runs every step of a chain loop, between the steps of
    # the user's energy: its Python time is the loop's overhead over a hand-written one)
    B, dims, h, c, mala = problem.remember("cpu.propose", lambda: (
        problem.batch, list(problem.dims), list(problem.h), list(problem.c), problem.mala))
    seed, offset, _ = problem.noise_position(k)
    x = [t.contiguous() for t in x]
    g = [t.contiguous() for t in g]
    prop = [torch.empty(B, d) for d in dims]
    noise = [torch.empty(B, d) for d in dims] if mala else []
    uniform = torch.empty(B) if mala else None
    extension.cpu_ext.multi_layer_update(
        B, dims, [t.data_ptr() for t in x], [t.data_ptr() for t in g], [t.data_ptr() for t in prop],
        [t.data_ptr() for t in noise], uniform.data_ptr() if uniform is not None else 0,
        h, c, seed, offset, extension.threads())
    return prop, noise, uniform


def mala_select(problem: Problem, x, prop, g, g_p, noise, u, u_p, uniform):
    """MALA's accept step as one C++ call (``_C.mala_select``), in place on ``x``, ``g`` and ``u``;
    the accepted flags [B] (float 0/1), or None when these tensors are not the contiguous float32
    ones it takes (an energy that returns float64 or strided values) or a denominator float32
    cannot hold: the torch formulas run."""
    if not problem.remember("cpu.mala_den", lambda: all(0 < float32(d) <= FLOAT32_MAX
                                                            for d in problem.mala_denominators)):
        return None  # 2 (s tau)^2 beyond float32 (a step of 1e-30): the torch formulas' own arithmetic
    tensors = [*x, *prop, *g, *g_p, *noise, u, u_p, uniform]
    if any(t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu" for t in tensors):
        return None
    accepted = torch.empty(problem.batch)
    extension.cpu_ext.mala_select(
        problem.batch, list(problem.dims), [t.data_ptr() for t in x], [t.data_ptr() for t in prop],
        [t.data_ptr() for t in g], [t.data_ptr() for t in g_p], [t.data_ptr() for t in noise], u.data_ptr(),
        u_p.data_ptr(), uniform.data_ptr(), list(problem.h), list(problem.mala_denominators), accepted.data_ptr(),
        extension.threads())
    return accepted
