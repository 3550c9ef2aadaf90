"""Triton: the whole prior chain of a ``PriorSpec`` in one kernel launch (the kernel and what it
computes: ``triton_kernel.py``): the backend's ``reason`` and ``run``, the tables the kernel reads,
and the ``jebm::prior_chain_triton`` op that launches it.

Structure as data, not as code
------------------------------
MLP count, depth, widths and activations vary, so the kernel is generic and reads the structure
from small tables built once per call (``TritonTables``), the MLPs numbered by ``PriorSpec.mlps``:
* all weights in one float32 buffer (``packing.py``): each Linear's W^T and W, then its bias;
* ``lin`` int32 [n_linear, 8]: W^T offset, W offset, bias offset (-1: none), in, out,
  activation id, scratch column of the pre-activation, scratch column of the output;
  ``linp`` float32: the activation's parameter (LeakyReLU slope, Softplus beta, ELU alpha);
* ``mlp`` int32 [n_mlp, 2]: first Linear, number of Linears;
* ``lay`` int32 [L, 4]: d_l, column of layer l in concat(z), its term MLP, its Gaussian MLP
  (-1: none); ``layf`` float32 [L, 8]: h_l, c_l, q_l, sigma floor, 2 (s_l tau)^2;
* ``reg`` int32 [8]: the scratch columns of X, G, X', G', Z, GZ and the two backward ping-pong
  buffers.
"""
from __future__ import annotations

import os

import torch

from ..activation_table import CODES
from ..device_tables import device_table
from ..philox import signed_seed, unsigned_seed
from ..problem import Problem
from ..spec import PriorSpec
from ..update import triton as update_triton
from .packing import PackedWeights
from .triton_kernel import triton

if triton is not None:
    from .triton_kernel import prior_chain_kernel

__all__ = ["reason", "precision_reason", "run", "op_args", "TritonTables"]


def precision_reason(problem: Problem) -> str | None:
    """Why the whole-chain kernel cannot run this problem's precision (None: it can: bf16 is tl.dot
    on bf16 operands)."""
    return None


def reason(problem: Problem) -> str | None:
    """Why the whole-chain kernel cannot run this problem (None: it can)."""
    why = update_triton.reason(problem)
    if why is not None:
        return why
    if not problem.is_prior:
        return "not a fusable prior"
    return None


class TritonTables:
    """The structure tables and weight buffer of one PriorSpec (see the module docstring)."""

    def __init__(self, spec: PriorSpec, device, dtype):
        L = len(spec.dims)
        D = sum(spec.dims)
        mlps = spec.mlps()
        self.mlps = [e.mlp for e in mlps]
        self.joint = mlps.joint
        gauss_ids = list(mlps.gaussians) + [-1] * (L - len(mlps.gaussians))

        widths = [1] + [n for m in self.mlps for w in m.weights for n in w.shape]
        maxw = max(widths)
        reg = [0, D, 2 * D, 3 * D, 4 * D, 5 * D, 6 * D, 6 * D + maxw]
        col = 6 * D + 2 * maxw
        packed = PackedWeights(mlps, device, dtype)
        lin, linp, mlp_rows = [], [], []
        for m, linears in zip(self.mlps, packed.linears):
            mlp_rows.append([len(lin), len(linears)])
            last = len(linears) - 1
            for i, p in enumerate(linears):
                act = m.activation if i < last else m.out_activation
                lin.append([p.wt, p.w, p.bias, p.n_in, p.n_out, CODES[act], col, col + p.n_out])
                linp.append(float(m.act_param))
                col += 2 * p.n_out
        self.tot = -(-col // 16) * 16  # round up: rows start 64-byte aligned
        self.maxw = maxw
        self.weights = packed.weights
        # int32 tables: tile index arithmetic stays 32-bit (weights < 2^31 floats); the Philox
        # counters and flat state indices are widened to int64 in the kernel
        t32 = lambda rows: device_table([v for r in rows for v in r] if rows else [0], torch.int32, device)
        self.lin = t32(lin)
        self.linp = device_table(linp if linp else [0.0], torch.float32, device)
        self.mlp = t32(mlp_rows)
        cols = [sum(spec.dims[:l]) for l in range(L)]
        self.lay = t32([[spec.dims[l], cols[l], mlps.terms[l], gauss_ids[l]] for l in range(L)])
        self.reg = t32([reg])
        self.cols = cols


def _precision(problem: Problem) -> str:
    """tl.dot's operands: bf16 for a bf16 call, else ieee float32 (or JEBM_TRITON_PRECISION's TF32)."""
    if problem.precision.bf16:
        return "bf16" if problem.device.type == "cuda" else "bf16-emulated"
    p = os.environ.get("JEBM_TRITON_PRECISION", "ieee").strip() or "ieee"
    if p not in ("ieee", "tf32x3", "tf32"):
        raise ValueError(f"JEBM_TRITON_PRECISION must be ieee, tf32x3 or tf32, got {p!r}")
    return p


def run(problem: Problem, **blocks):
    """The whole chain of ``problem`` (a fusable prior, float32) in one launch: (final layers
    [B, d_l], statistics [K, 3] or None). With ``problem.philox`` on the state's device the
    kernel reads seed and base offset from that tensor (what a captured CUDA graph needs to draw
    new noise on each replay). ``blocks``: ``op_args``'s block sizes (``triton_kernel.py``)."""
    stats = problem.new_stats()
    if problem.n_steps == 0:
        return [t.clone() for t in problem.z], stats
    args = op_args(problem, **blocks)
    out, stat_buf = torch.ops.jebm.prior_chain_triton(*args)
    B, K, dims = problem.batch, problem.n_steps, problem.dims
    if stats is not None:
        n_blocks = stat_buf.numel() // (4 * K)
        stats.copy_(stat_buf.view(K, n_blocks, 4).sum(1)[:, :3] / B)
        if not problem.mala:
            stats[:, 2] = 0
    final = [c.view(B, d) for c, d in zip(out.split([B * d for d in dims]), dims)]
    return final, stats


def op_args(problem: Problem, *, block_b: int = 16, block_k: int = 32, block_n: int = 64, block_e: int = 64,
            num_warps: int = 4, max_programs: int | None = None) -> tuple:
    """The arguments of ``jebm::prior_chain_triton`` for ``problem`` (K >= 1): the packed tables
    and weights, the sizes, the noise position and the kernel's flags and tiles."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    for name, v in (("block_b", block_b), ("block_k", block_k), ("block_n", block_n), ("block_e", block_e)):
        if v < 16 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {v}")
    spec, z = problem.spec, problem.z
    L = len(spec.dims)
    B, K = problem.batch, problem.n_steps
    device, dtype = problem.device, problem.dtype
    if dtype != torch.float32:
        raise TypeError(f"the Triton prior chain works in float32, got {dtype}")
    dims = problem.dims
    D = sum(dims)
    packed = TritonTables(spec, device, dtype)
    q = problem.quadratic_coefficients()
    floors = [g.sigma_floor for g in spec.gaussians] + [0.0] * (L - len(spec.gaussians))
    layf = [[h, c, ql, fl, den, 0.0, 0.0, 0.0]
            for h, c, ql, fl, den in zip(problem.h, problem.c, q, floors, problem.mala_denominators)]
    layf = device_table([v for row in layf for v in row], torch.float32, device)

    x = torch.cat([t.reshape(-1) for t in z]).contiguous()
    n_blocks = triton.cdiv(B, block_b)
    if max_programs is None:
        max_programs = (8 * torch.cuda.get_device_properties(device).multi_processor_count
                        if device.type == "cuda" else n_blocks)
    n_prog = max(1, min(n_blocks, max_programs))
    gauss = spec.space == "eps" or spec.base_sigma is None
    seed, offset, philox = problem.noise_position(by_pointer=True)
    return (x, packed.weights, packed.lin, packed.linp, packed.mlp, packed.lay, layf, packed.reg,
            philox if philox is not None else packed.reg, B, L, D, packed.tot, K, problem.stride, packed.joint,
            n_blocks, n_prog, float(spec.energy_sign), signed_seed(seed), offset,
            spec.space == "eps", gauss, problem.mala, problem.want_info, block_b, block_k, block_n, block_e,
            _precision(problem), num_warps, philox is not None)


if triton is not None:

    @torch.library.triton_op("jebm::prior_chain_triton", mutates_args=())
    def _prior_chain_triton_op(x: torch.Tensor, weights: torch.Tensor, lin: torch.Tensor, linp: torch.Tensor,
                               mlp: torch.Tensor, lay: torch.Tensor, layf: torch.Tensor, reg: torch.Tensor,
                               philox: torch.Tensor, B: int, L: int, D: int, tot: int, n_steps: int, stride: int,
                               joint: int, n_blocks: int, n_prog: int, sign: float, seed: int, offset: int,
                               space_eps: bool, gauss: bool, mala: bool, stats: bool, block_b: int, block_k: int,
                               block_n: int, block_e: int, precision: str, num_warps: int,
                               philox_from_ptr: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole chain in one launch (the tables: ``TritonTables``; ``run`` builds the call).
        Returns the final flat state and the per-block statistics [K (or 1), blocks, 4]."""
        out = torch.empty_like(x)
        scratch = torch.empty(n_prog * block_b * tot, dtype=torch.float32, device=x.device)
        stat_buf = torch.zeros((n_steps if stats else 1) * n_blocks * 4, dtype=torch.float32, device=x.device)
        torch.library.wrap_triton(prior_chain_kernel)[(n_prog,)](
            x, out, weights, lin, linp, mlp, lay, layf, reg, scratch, stat_buf, B, L, D, tot, n_steps, stride,
            joint, n_blocks, sign, 0 if philox_from_ptr else unsigned_seed(seed), offset, philox,
            SPACE_EPS=space_eps, GAUSS=gauss, MALA=mala, STATS=stats, BB=block_b, KC=block_k, NC=block_n,
            EC=block_e, PREC=precision, num_warps=num_warps, PHILOX_FROM_PTR=philox_from_ptr)
        return out, stat_buf

    @_prior_chain_triton_op.register_fake
    def _prior_chain_triton_fake(x, weights, lin, linp, mlp, lay, layf, reg, philox, B, L, D, tot, n_steps, stride,
                                 joint, n_blocks, n_prog, sign, seed, offset, space_eps, gauss, mala, stats, block_b,
                                 block_k, block_n, block_e, precision, num_warps, philox_from_ptr):
        # the interpreter (TRITON_INTERPRET=1) cannot run a kernel on fake tensors: give the shapes
        return x.new_empty(x.shape), x.new_empty(((n_steps if stats else 1) * n_blocks * 4,))
