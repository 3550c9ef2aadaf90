"""A prior's Linear weights in one float32 device buffer, as both GPU kernels read them (the Triton
kernel, ``triton.py``, and csrc's CUDA kernel, ``cuda.py``).

Per Linear, MLP by MLP in ``PriorSpec.mlps`` order: W^T ([in, out] row-major, for the forward GEMM
x @ W^T), then W ([out, in], for the input-gradient GEMM dh @ W), so that both GEMMs read their
weight tiles with unit stride along the tile's fast axis; then its bias, when it has one. Each
kernel builds its own tables from the offsets (``PackedLinear``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..spec import PriorMLPs

__all__ = ["PackedLinear", "PackedWeights"]


class PackedLinear(NamedTuple):
    """Where one Linear's tensors sit in ``PackedWeights.weights`` (float offsets)."""
    wt: int      # W^T [n_in, n_out]
    w: int       # W [n_out, n_in]
    bias: int    # bias [n_out], or -1: none
    n_in: int
    n_out: int


class PackedWeights:
    """``weights``: every Linear of ``mlps`` in the module docstring's layout, on ``device`` (one
    float of zeros when there is none); ``linears[m]``: MLP m's Linears, first to last. Raises
    when a tensor is not on ``device`` or not of ``dtype`` (z's)."""

    def __init__(self, mlps: PriorMLPs, device, dtype=torch.float32):
        chunks: list[torch.Tensor] = []
        size = 0

        def put(t: torch.Tensor) -> int:
            nonlocal size
            at = size
            chunks.append(t.reshape(-1))
            size += t.numel()
            return at

        self.linears: list[list[PackedLinear]] = []
        for e in mlps:
            rows = []
            for w, b in zip(e.mlp.weights, e.mlp.biases):
                for t in (w, b):
                    if t is None:
                        continue
                    if t.device != device:
                        raise ValueError(f"the energy's weights are on {t.device} but z is on {device}: "
                                         f"put both on one device")
                    if t.dtype != dtype:
                        raise TypeError(f"the energy's weights are {t.dtype} but z is {dtype}: use one dtype")
                w = w.detach()
                n_out, n_in = w.shape
                wt_off = put(w.t())
                w_off = put(w)
                b_off = -1 if b is None else put(b.detach())
                rows.append(PackedLinear(wt_off, w_off, b_off, n_in, n_out))
            self.linears.append(rows)
        self.weights = (torch.cat(chunks).contiguous() if chunks
                        else torch.zeros(1, dtype=torch.float32, device=device))
