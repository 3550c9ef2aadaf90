"""Triton: the multi-layer fused Langevin update, every latent layer in one launch.

    out_l = x_l - h_l * g_l + c_l * xi_l,   h_l = s_l^2 / 2,  c_l = s_l * tau,
    xi = tl.randn(seed, offset + flat index)   (the problem.py noise layout)

The layers live in one flat buffer in layer-major order ([B, d_1] then [B, d_2] ...), which is
exactly the noise layout, so a layer's noise counter is ``offset + start_l + i``. The grid is
(blocks, L + 1): axis 1 picks the layer; the extra row L draws the MALA uniforms
``tl.rand(seed, offset + B * D + b)``. Optionally the normals are written out (MALA needs them
for the proposal density) and the result clamped.

Seed and offset are 64-bit kernel arguments that Triton must not specialise (a specialised
value would recompile for every call); they are never read back on the host. Graph-safe variant
(``philox=`` a device int64 tensor [seed, offset], ``PHILOX_FROM_PTR``): the kernel loads seed and
offset from that tensor and adds ``offset`` (then a per-step constant) to it, so a CUDA graph that
captured the launch draws fresh noise on every replay once the tensor is advanced on the device.
"""
from __future__ import annotations

import os

import torch

from ..device_tables import device_table
from ..philox import signed_seed, unsigned_seed
from ..problem import Problem

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is optional: the backend reports itself unavailable
    triton = None

__all__ = ["reason", "propose", "launch", "op_args", "available", "interpreting"]

if triton is not None:

    @triton.jit(do_not_specialize=["seed", "offset", "n_uniform", "uniform_base"])
    def _multi_layer_update_kernel(
        x_ptr,          # float32 [N]: current state, all layers, layer-major
        g_ptr,          # float32 [N]: dU/dx, same layout
        out_ptr,        # float32 [N]: the moved state (may alias x_ptr)
        noise_ptr,      # float32 [N]: the normals drawn (written only when WRITE_NOISE)
        uniform_ptr,    # float32 [n_uniform]: MALA uniforms (written only when n_uniform > 0)
        start_ptr,      # int64 [L]: first flat index of each layer
        size_ptr,       # int64 [L]: elements of each layer
        h_ptr,          # float32 [L]: s_l^2 / 2
        c_ptr,          # float32 [L]: s_l * tau
        n_layers,       # L
        n_uniform,      # B with MALA, else 0
        uniform_base,   # B * D: where the uniforms' counters start
        seed,           # uint64 Philox key
        offset,         # int64 first counter of this step (added to philox_ptr[1] with PHILOX_FROM_PTR)
        philox_ptr,     # int64 [2]: seed (bit pattern) and base offset, read when PHILOX_FROM_PTR
        clamp_lo, clamp_hi,
        WRITE_NOISE: tl.constexpr, CLAMP: tl.constexpr, BLOCK: tl.constexpr,
        PHILOX_FROM_PTR: tl.constexpr,
    ):
        if PHILOX_FROM_PTR:
            seed = tl.load(philox_ptr)
            offset = tl.load(philox_ptr + 1) + offset
        layer = tl.program_id(1)
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        if layer < n_layers:
            start = tl.load(start_ptr + layer)
            size = tl.load(size_ptr + layer)
            h = tl.load(h_ptr + layer)
            c = tl.load(c_ptr + layer)
            mask = i < size
            idx = start + i
            x = tl.load(x_ptr + idx, mask=mask)
            g = tl.load(g_ptr + idx, mask=mask)
            xi = tl.randn(seed, offset + idx)
            y = (x - h * g) + c * xi
            if CLAMP:
                y = tl.minimum(tl.maximum(y, clamp_lo), clamp_hi)
            tl.store(out_ptr + idx, y, mask=mask)
            if WRITE_NOISE:
                tl.store(noise_ptr + idx, xi, mask=mask)
        else:
            mask = i < n_uniform
            tl.store(uniform_ptr + i, tl.rand(seed, offset + uniform_base + i), mask=mask)


def available() -> str | None:
    """Why Triton cannot run here, or None."""
    if triton is None:
        return "triton is not installed (pip install triton)"
    if not torch.cuda.is_available() and not interpreting():
        return "no CUDA device (TRITON_INTERPRET=1 runs Triton on the CPU, slowly, for tests)"
    return None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def reason(problem: Problem) -> str | None:
    why = available()
    if why is not None:
        return why
    if problem.dtype != torch.float32:
        return f"Triton kernels work in float32, got {problem.dtype}"
    if problem.device.type == "cuda" or (problem.device.type == "cpu" and interpreting()):
        return None
    return f"tensors on {problem.device} (Triton needs CUDA, or CPU with TRITON_INTERPRET=1)"


def propose(problem: Problem, x: list[torch.Tensor], g: list[torch.Tensor], k: int):
    """Step k's move of every layer in one launch: (moved, normals or None, uniforms or None)."""
    B, dims, device = problem.batch, problem.dims, problem.device
    sizes = [B * d for d in dims]
    # cached device tables: no host-to-device copy per step (a sync, and not capturable)
    tables = dict(starts=device_table([sum(sizes[:l]) for l in range(len(sizes))], torch.int64, device),
                  size_t=device_table(sizes, torch.int64, device),
                  h=device_table(problem.h, torch.float32, device), c=device_table(problem.c, torch.float32, device))
    seed, offset, philox = problem.noise_position(k, by_pointer=True)
    flat_x = torch.cat([t.reshape(-1) for t in x])
    flat_g = torch.cat([t.reshape(-1) for t in g])
    moved, noise, uniform = launch(flat_x, flat_g, sizes, seed, offset, n_uniform=B if problem.mala else 0,
                                   write_noise=problem.mala, philox=philox, **tables)
    split = lambda t: [c.view(B, d) for c, d in zip(t.split(sizes), dims)]
    return split(moved), (split(noise) if noise is not None else None), uniform


def launch(x: torch.Tensor, g: torch.Tensor, sizes: list[int], seed: int, offset: int, *, h: torch.Tensor,
           c: torch.Tensor, starts: torch.Tensor, size_t: torch.Tensor, n_uniform: int = 0,
           write_noise: bool = False, clamp: tuple[float, float] | None = None, block: int = 1024,
           philox: torch.Tensor | None = None):
    """Move every layer of the flat state ``x`` [N] one Langevin step in one launch, through the
    ``jebm::multi_layer_update_triton`` op (a ``torch.library.triton_op``: torch.compile sees the
    Triton kernel inside it).

    Returns (moved state, normals or None, uniforms or None). ``sizes`` are the per-layer element
    counts (B * d_l), in order; ``x`` and ``g`` are contiguous float32 on one device; ``h``, ``c``
    (float32 [L]) and ``starts``, ``size_t`` (int64 [L]) are the per-layer tables on that device.

    With ``philox`` (int64 [2] on x's device: seed as a signed bit pattern, base offset) the
    kernel reads seed and offset from it and uses counters ``philox[1] + offset`` onwards; the
    host ``seed`` is then ignored.
    """
    if triton is None:
        raise RuntimeError("triton is not installed")
    if x.dtype != torch.float32 or g.dtype != torch.float32:
        raise TypeError("multi_layer_update works in float32")
    if not (x.is_contiguous() and g.is_contiguous()) or x.shape != g.shape or x.dim() != 1:
        raise ValueError("x and g must be contiguous 1-D tensors of one shape")
    if sum(sizes) != x.numel() or len(sizes) != h.numel() or not sizes:
        raise ValueError(f"layer sizes {sizes} do not add up to the state's {x.numel()} elements")
    if philox is not None and (philox.dtype != torch.int64 or philox.numel() != 2 or philox.device != x.device):
        raise ValueError(f"philox must be an int64 tensor [seed, offset] on {x.device}, got "
                         f"{philox.dtype} {tuple(philox.shape)} on {philox.device}")
    args = op_args(x, g, sizes, seed, offset, h=h, c=c, starts=starts, size_t=size_t, n_uniform=n_uniform,
                   write_noise=write_noise, clamp=clamp, block=block, philox=philox)
    out, noise, uniform = torch.ops.jebm.multi_layer_update_triton(*args)
    return out, (noise if write_noise else None), (uniform[:n_uniform] if n_uniform else None)


def op_args(x, g, sizes, seed, offset, *, h, c, starts, size_t, n_uniform=0, write_noise=False, clamp=None,
            block=1024, philox=None) -> tuple:
    """``launch``'s arguments as ``jebm::multi_layer_update_triton`` takes them (tests opcheck it)."""
    lo, hi = clamp if clamp is not None else (0.0, 0.0)
    return (x, g, starts, size_t, h, c, philox if philox is not None else starts, signed_seed(seed), offset, max(sizes),
            n_uniform, write_noise, clamp is not None, float(lo), float(hi), block, philox is not None)


if triton is not None:

    @torch.library.triton_op("jebm::multi_layer_update_triton", mutates_args=())
    def _update_triton_op(x: torch.Tensor, g: torch.Tensor, starts: torch.Tensor, size_t: torch.Tensor,
                          h: torch.Tensor, c: torch.Tensor, philox: torch.Tensor, seed: int, offset: int,
                          max_size: int, n_uniform: int, write_noise: bool, clamp: bool, lo: float, hi: float,
                          block: int, philox_from_ptr: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = torch.empty_like(x)
        noise = torch.empty_like(x) if write_noise else torch.empty(0, dtype=x.dtype, device=x.device)
        uniform = torch.empty(max(n_uniform, 1), dtype=torch.float32, device=x.device)
        grid = (triton.cdiv(max(max_size, n_uniform), block), h.numel() + 1)
        torch.library.wrap_triton(_multi_layer_update_kernel)[grid](
            x, g, out, noise if write_noise else out, uniform, starts, size_t, h, c, h.numel(), n_uniform,
            x.numel(), 0 if philox_from_ptr else unsigned_seed(seed), offset, philox, lo, hi,
            WRITE_NOISE=write_noise, CLAMP=clamp, BLOCK=block, PHILOX_FROM_PTR=philox_from_ptr)
        return out, noise, uniform

    @_update_triton_op.register_fake
    def _update_triton_fake(x, g, starts, size_t, h, c, philox, seed, offset, max_size, n_uniform, write_noise,
                            clamp, lo, hi, block, philox_from_ptr):
        # the interpreter (TRITON_INTERPRET=1) cannot run a kernel on fake tensors: give the shapes
        noise = x.new_empty(x.shape if write_noise else (0,))
        return x.new_empty(x.shape), noise, x.new_empty((max(n_uniform, 1),))
