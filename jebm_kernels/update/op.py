"""``jebm::multi_layer_update`` as a ``torch.library`` custom op (so ``torch.compile`` traces around
it and CUDA graphs capture it), and ``multi_layer_update``, its Python entry.

Schema: ``(x, g, philox, step_offset, step_sizes, noise_scale, mala) -> (moved, normals,
uniforms)``: one Langevin move of every layer, x_l - s_l^2/2 g_l + s_l tau xi_l, with the
normals and the MALA uniforms returned with ``mala`` (else [] and [0]). Every tensor float32
except ``philox``, an int64 [seed, offset] (``philox_tensor``): counters start at its offset +
``step_offset`` in the ``problem.py`` layout. On a CUDA device the kernels read it themselves (no
host sync, and a captured graph sees its value at replay time); a CPU one is read on the host.
The op never advances it.

The CPU and CUDA registrations are one function: ``dispatch.select(op="update")`` picks the
implementation (C++ on the CPU; csrc's CUDA kernel, else Triton, on a GPU).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .. import dispatch
from ..arguments import check_op_layers, make_op_problem

__all__ = ["multi_layer_update", "run_update_op"]


def _check_update(x, g, step_sizes) -> None:
    check_op_layers(x)
    if len(x) != len(g) or len(step_sizes) != len(x):
        raise ValueError(f"need one x, one gradient and one step size per layer: {len(x)} x, {len(g)} g, "
                         f"{len(step_sizes)} step sizes")
    B = x[0].shape[0]
    for l, (a, b) in enumerate(zip(x, g)):
        if a.dim() != 2 or a.shape != b.shape or a.shape[0] != B:
            raise ValueError(f"layer {l + 1}: x {tuple(a.shape)} and g {tuple(b.shape)} must be one [B, d] shape")
        if a.dtype != torch.float32 or b.dtype != torch.float32:
            raise TypeError(f"layer {l + 1}: the fused update works in float32, got {a.dtype} / {b.dtype}")
        if a.device != x[0].device or b.device != x[0].device:
            raise ValueError(f"layer {l + 1}: every x and g must be on {x[0].device}")


def run_update_op(x, g, philox, step_offset, step_sizes, noise_scale, mala, *, backend: str = "auto"):
    """The op's work, on the implementation ``backend`` names (``dispatch.select``'s rule)."""
    _check_update(x, g, step_sizes)
    problem = make_op_problem(None, x, philox, step_sizes, noise_scale, [], 1, mala, False, step_offset=step_offset)
    impl = dispatch.select(backend, problem, op="update")
    with torch.cuda.device(problem.device) if problem.device.type == "cuda" else nullcontext():
        moved, noise, uniform = impl.update.propose(problem, problem.z, [t.contiguous() for t in g], 0)
    # separate outputs: a custom op may not return views of one buffer, nor its inputs
    moved = [t.clone() if t._base is not None else t for t in moved]
    if not mala:
        return moved, [], torch.empty(0, device=problem.device)
    return moved, [t.clone() if t._base is not None else t for t in noise], uniform.clone()


@torch.library.custom_op("jebm::multi_layer_update", mutates_args=(), device_types=("cpu", "cuda"))
def _update_op(x: list[torch.Tensor], g: list[torch.Tensor], philox: torch.Tensor, step_offset: int,
               step_sizes: list[float], noise_scale: float,
               mala: bool) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    return run_update_op(x, g, philox, step_offset, step_sizes, noise_scale, mala)


@_update_op.register_fake
def _update_fake(x, g, philox, step_offset, step_sizes, noise_scale, mala):
    moved = [t.new_empty(t.shape) for t in x]
    noise = [t.new_empty(t.shape) for t in x] if mala else []
    return moved, noise, x[0].new_empty((x[0].shape[0] if mala else 0,))


def multi_layer_update(x: list[torch.Tensor], g: list[torch.Tensor], philox: torch.Tensor, *, step_size,
                       noise_scale: float = 1.0, step_offset: int = 0, mala: bool = False):
    """``torch.ops.jebm.multi_layer_update``: (moved layers, normals or [], uniforms or [0])."""
    steps = list(step_size) if isinstance(step_size, (list, tuple)) else [step_size] * len(x)
    return torch.ops.jebm.multi_layer_update(list(x), list(g), philox, step_offset, [float(s) for s in steps],
                                             float(noise_scale), mala)
