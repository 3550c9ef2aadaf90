"""Triton: the whole prior chain of a ``PriorSpec`` -- every one of the K Langevin (or MALA) steps,
forward and hand-written input-gradient of every MLP, noise and update -- in ONE kernel launch
(``prior_chain_kernel``; ``triton.py`` builds its tables and launches it).

What one program does
---------------------
The grid is one axis of programs; a program owns blocks of BB chains (``block_b``, 16 by default:
``tl.dot`` needs tiles of at least 16 rows, rows past B are masked) and runs all K steps of its
blocks with the step loop *inside* the kernel. Chains never talk to each other, so there is no
cross-program synchronisation at all; within a program, ``tl.debug_barrier()`` separates the
phases that hand data between threads through the scratch buffer (below).

Per step and chain block, with U the prior energy of ``spec.py`` (``prior_energy``) plus the
problem's ``prior_sigma`` term, in the sampled variables x (z, or eps):

* z-space:  U = s * (sum_l f_l(z_l) + f_0(concat z)) + sum_l [ |(z_l - mu_l)/sigma_l|^2 / 2
  + sum log sigma_l ] + |z_L|^2 / 2   (Gaussians), or + sum_l |z_l|^2 / (2 base_l^2) (base_sigma),
  s = ``energy_sign``; (mu_l, raw_l) = Gaussian MLP_l(z_{l+1}), sigma = exp(raw) + floor.
  The gradient: every f's backward adds s * df/dz into G; Gaussian l adds r/sigma to G_l and
  back-propagates (dmu, draw) = (-r/sigma, (1 - r^2)/sigma * exp(raw)) through its MLP into
  G_{l+1} (r = (z_l - mu_l)/sigma_l).
* eps-space: z_L = eps_L, z_l = mu_l + sigma_l * eps_l top-down; U = s * F(z(eps)) + |eps|^2/2.
  The f backwards accumulate dU/dz into GZ; then bottom-up (l = 1, 2, ...): G_l += GZ_l * sigma_l
  and (dmu, draw) = (GZ_l, GZ_l * eps_l * exp(raw)) go back through MLP_l into GZ_{l+1};
  finally G_L += GZ_L.
* All pure quadratic terms (top N(0, I), base_sigma, prior_sigma, eps's |eps|^2/2) are folded on
  the host into one coefficient q_l per layer: U += q_l |x_l|^2 / 2, G_l = q_l x_l.
* Update, in the reference's order of operations: x' = (x - h_l * g) + c_l * xi, h_l = s_l^2/2,
  c_l = s_l * tau, xi = ``tl.randn(seed, offset + k*stride + B*(d_1+..+d_{l-1}) + b*d_l + j)``
  (the ``problem.py`` layout). MALA: the proposal's energy and gradient, then
  log_alpha = u - u' + log q_bwd - log q_fwd with log q_fwd = -|xi|^2/2 and
  log q_bwd = -sum_l |x - x' + h_l g'|^2 / (2 (s_l tau)^2), accept iff
  log(tl.rand(seed, offset + k*stride + B*D + b)) < log_alpha -- exactly ``chain.py``.
* Per-step statistics (sum over the block's chains of the energy, of |grad|, of accepts) are
  written per block per step into a [K, blocks, 4] buffer and reduced by torch after the launch:
  no host synchronisation inside the chain.

The structure (MLP count, depth, widths, activations) is data, read from the tables
``triton.TritonTables`` builds (the kernel's arguments say their columns); layers are runtime
loops over these tables and widths runtime loops over column chunks of constexpr size with masks,
so no dimension needs to be a power of two or a multiple of anything (1, 3, 17, 129 all work), and
one compiled kernel serves every structure of the same space / MALA / statistics flags.

Scratch
-------
Each program has a [BB, TOT] float32 scratch matrix in global memory: the state X, its gradient
G, the proposal X' and G' (MALA), Z and GZ (eps-space), and per Linear its pre-activation and
output (the backward needs both: act'(a), and tanh' from the output), plus two ping-pong buffers
for the backward's dh. A Linear is then a K-chunked GEMM: for each chunk of NC outputs,
acc[BB, NC] += X[BB, KC] @ Wt[KC, NC] over chunks of KC inputs, then bias and activation, stored
back. The scratch of one block is private to its program and read back soon after it is written.

GPU design choices (for the CVPR configuration: L = 2, d = (128, 100), f_1 128-200-200-200-1,
f_2 100-100-100-1, LeakyReLU 0.2, p(z_1|z_2) MLP 100-200-200-200-200-256, batch 100, K = 60)
------------------------------------------------------------------------------------------
Design reasoning, not measurements (BENCHMARKS.md holds what was measured).
* Tiles: BB = 16 chains (the smallest ``tl.dot`` M), KC = 32, NC = 64, 4 warps: a [16, 32] x
  [32, 64] dot keeps 8 accumulators per thread and an 8 KB weight tile in flight; the widths 200 /
  100 / 256 pad to 224 / 128 / 256 along K and 256 / 128 / 256 along N (masked, not stored).
  ``input_precision="ieee"``: true float32 FMAs, as the reference's float32 GEMMs (cuBLAS
  without TF32, torch's default); ``JEBM_TRITON_PRECISION=tf32x3`` switches to 3-pass TF32
  tensor-core dots (error ~1e-6 relative).
* Where the weights live: in global memory, packed once per call (``packing.py``: 2.6 MB for CVPR
  in both layouts), read by every program once per step through L2, which holds them for the
  whole chain.
* Chains per program: 16, so batch 100 runs as 7 programs on 7 SMs; larger batches fill more SMs
  at the same work per program.
* Seed and offset are ``do_not_specialize`` 64-bit arguments (as the integer sizes and counts);
  every counter is computed in int64, so offsets past 2^32 and chains of any length are exact.
  Graph-safe variant (``philox=``, ``PHILOX_FROM_PTR``): seed and offset are loaded from a device
  int64 tensor [seed, offset] at the start of the kernel, so a captured CUDA graph draws new noise
  on each replay once that tensor is advanced on the device. The structure tables and ``layf``
  are cached per (contents, device) (``device_tables.py``), so a call with a structure seen before
  makes no host-to-device copy, which CUDA graph capture forbids.
* The scratch is [programs, 16, TOT] float32 (TOT ~ 5,600 columns for CVPR: 360 KB per program);
  the grid is capped at 8 programs per SM and programs loop over chain blocks, so memory is
  bounded for any batch.
"""
from __future__ import annotations

from ..activation_table import CODES

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is optional: the backend reports itself unavailable
    triton = None

__all__ = ["prior_chain_kernel"]

if triton is not None:

    # ------------------------------------------------------------------ element-wise math
    # Only tl / tl.math functions that both the compiler and the interpreter provide
    # (libdevice is not available under TRITON_INTERPRET=1).

    @triton.jit
    def _tanh(x):
        # Cephes tanhf: odd polynomial below 0.625, 1 - 2 / (exp(2|x|) + 1) above (~2 ulp).
        z = tl.abs(x)
        x2 = x * x
        p = x2 * -5.70498872745e-3 + 2.06390887954e-2
        p = p * x2 - 5.37397155531e-2
        p = p * x2 + 1.33314422036e-1
        p = p * x2 - 3.33332819422e-1
        small = p * x2 * x + x
        big = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)
        big = tl.where(x < 0, -big, big)
        return tl.where(z > 0.625, big, small)

    @triton.jit
    def _log1p_pos(y):
        # log(1 + y) for y >= 0, Goldberg's correction: log(u) * y / (u - 1), u = 1 + y.
        u = 1.0 + y
        d = u - 1.0
        safe = tl.where(d == 0.0, 1.0, d)
        return tl.where(d == 0.0, y, tl.log(u) * (y / safe))

    # activation codes: activation_table.py (the one table every backend numbers by)
    ACT_LEAKY_RELU = tl.constexpr(CODES["leaky_relu"])
    ACT_GELU = tl.constexpr(CODES["gelu"])
    ACT_GELU_TANH = tl.constexpr(CODES["gelu_tanh"])
    ACT_SILU = tl.constexpr(CODES["silu"])
    ACT_SOFTPLUS = tl.constexpr(CODES["softplus"])
    ACT_TANH = tl.constexpr(CODES["tanh"])
    ACT_RELU = tl.constexpr(CODES["relu"])
    ACT_ELU = tl.constexpr(CODES["elu"])

    @triton.jit
    def _expm1(x):
        # exp(x) - 1 without cancellation near 0 (Kahan: (u - 1) * x / log(u), u = exp(x))
        u = tl.exp(x)
        d = u - 1.0
        safe = tl.where((d == 0.0) | (u == 0.0), 1.0, tl.log(u))
        return tl.where(d == 0.0, x, tl.where(u == 0.0, -1.0, d * (x / safe)))

    @triton.jit
    def _act_fwd(a, act, p):
        """Activation ``act`` (an activation_table code, a runtime scalar) of pre-activation ``a``;
        ``p`` is LeakyReLU's slope, Softplus's beta or ELU's alpha. As torch computes them."""
        if act == ACT_LEAKY_RELU:
            h = tl.where(a > 0, a, a * p)
        elif act == ACT_GELU:  # erf form
            h = a * 0.5 * (1.0 + tl.math.erf(a * 0.7071067811865476))
        elif act == ACT_GELU_TANH:
            inner = 0.7978845608028654 * (a + 0.044715 * (a * a * a))
            h = 0.5 * a * (1.0 + _tanh(inner))
        elif act == ACT_SILU:
            h = a / (1.0 + tl.exp(-a))
        elif act == ACT_SOFTPLUS:  # beta = p, threshold 20
            bx = a * p
            h = tl.where(bx > 20.0, a, _log1p_pos(tl.exp(tl.minimum(bx, 20.0))) / p)
        elif act == ACT_TANH:
            h = _tanh(a)
        elif act == ACT_RELU:
            h = tl.where(a > 0, a, 0.0)
        elif act == ACT_ELU:  # alpha = p
            h = tl.where(a > 0, a, _expm1(tl.minimum(a, 0.0)) * p)
        else:  # identity
            h = a
        return h

    @triton.jit
    def _act_grad(a, h, act, p):
        """d act / d a at pre-activation ``a`` (output ``h``), as torch's backward formulas."""
        if act == ACT_LEAKY_RELU:
            g = tl.where(a > 0, 1.0, p)
        elif act == ACT_GELU:
            cdf = 0.5 * (1.0 + tl.math.erf(a * 0.7071067811865476))
            pdf = tl.exp(-0.5 * (a * a)) * 0.3989422804014327
            g = cdf + a * pdf
        elif act == ACT_GELU_TANH:
            a2 = a * a
            inner = 0.7978845608028654 * (a + 0.044715 * (a2 * a))
            t = _tanh(inner)
            left = 0.5 * a
            right = 1.0 + t
            g = 0.5 * right + left * (1.0 - t * t) * (0.7978845608028654 * (1.0 + 3.0 * 0.044715 * a2))
        elif act == ACT_SILU:
            s = 1.0 / (1.0 + tl.exp(-a))
            g = s * (1.0 + a * (1.0 - s))
        elif act == ACT_SOFTPLUS:
            bx = a * p
            z = tl.exp(tl.minimum(bx, 20.0))
            g = tl.where(bx > 20.0, 1.0, z / (z + 1.0))
        elif act == ACT_TANH:
            g = 1.0 - h * h
        elif act == ACT_RELU:
            g = tl.where(a > 0, 1.0, 0.0)
        elif act == ACT_ELU:
            g = tl.where(a > 0, 1.0, p * tl.exp(tl.minimum(a, 0.0)))
        else:
            g = tl.zeros_like(a) + 1.0
        return g

    # ------------------------------------------------------------------ one Linear layer

    @triton.jit
    def _round_bf16(x):
        """x rounded to the nearest bf16 (ties to even), as a float32."""
        b = x.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
        return b.to(tl.float32, bitcast=True)

    @triton.jit
    def _matmul_cols(s_ptr, w_ptr, in_col, m_off, n_k, n_n, n0, rb,
                     BB: tl.constexpr, KC: tl.constexpr, NC: tl.constexpr, PREC: tl.constexpr):
        """Columns n0:+NC of S[:, in_col:+n_k] @ M, M [n_k, n_n] row-major at m_off (masked)."""
        cn = n0 + tl.arange(0, NC)
        nm = cn < n_n
        acc = tl.zeros((BB, NC), dtype=tl.float32)
        for k0 in range(0, n_k, KC):
            ck = k0 + tl.arange(0, KC)
            km = ck < n_k
            xt = tl.load(s_ptr + rb + (in_col + ck)[None, :], mask=km[None, :], other=0.0)
            mt = tl.load(w_ptr + m_off + ck[:, None] * n_n + cn[None, :],
                         mask=km[:, None] & nm[None, :], other=0.0)
            if PREC == "bf16":
                # bf16 operands, float32 accumulation (tensor cores; precision.py)
                acc = tl.dot(xt.to(tl.bfloat16), mt.to(tl.bfloat16), acc)
            elif PREC == "bf16-emulated":
                # the same values for Triton's interpreter, whose bf16 conversion does not round to
                # nearest even and whose bf16 dot is wrong: operands rounded by their bits, exact
                # products and float32 sums, as tensor cores compute them
                acc = tl.dot(_round_bf16(xt), _round_bf16(mt), acc, input_precision="ieee")
            else:
                acc = tl.dot(xt, mt, acc, input_precision=PREC)
        return acc

    @triton.jit
    def _linear_fwd(s_ptr, w_ptr, in_col, wt_off, b_off, n_in, n_out, a_col, h_col, act, p, TOT,
                    BB: tl.constexpr, KC: tl.constexpr, NC: tl.constexpr, PREC: tl.constexpr):
        """S[:, a_col:+n_out] = S[:, in_col:+n_in] @ W^T + b;  S[:, h_col:+n_out] = act(that)."""
        rb = tl.arange(0, BB)[:, None] * TOT
        for n0 in range(0, n_out, NC):
            cn = n0 + tl.arange(0, NC)
            nm = cn < n_out
            acc = _matmul_cols(s_ptr, w_ptr, in_col, wt_off, n_in, n_out, n0, rb, BB, KC, NC, PREC)
            if b_off >= 0:
                acc = acc + tl.load(w_ptr + b_off + cn, mask=nm, other=0.0)[None, :]
            h = _act_fwd(acc, act, p)
            tl.store(s_ptr + rb + (a_col + cn)[None, :], acc, mask=nm[None, :])
            tl.store(s_ptr + rb + (h_col + cn)[None, :], h, mask=nm[None, :])

    @triton.jit
    def _linear_bwd(s_ptr, w_ptr, src_col, dst_col, w_off, n_in, n_out, accumulate, TOT,
                    BB: tl.constexpr, KC: tl.constexpr, NC: tl.constexpr, PREC: tl.constexpr):
        """S[:, dst_col:+n_in] (+)= S[:, src_col:+n_out] @ W   (W [n_out, n_in] at w_off)."""
        rb = tl.arange(0, BB)[:, None] * TOT
        for n0 in range(0, n_in, NC):
            cn = n0 + tl.arange(0, NC)
            nm = cn < n_in
            acc = _matmul_cols(s_ptr, w_ptr, src_col, w_off, n_out, n_in, n0, rb, BB, KC, NC, PREC)
            ptrs = s_ptr + rb + (dst_col + cn)[None, :]
            if accumulate:
                acc = tl.load(ptrs, mask=nm[None, :], other=0.0) + acc
            tl.store(ptrs, acc, mask=nm[None, :])

    # ------------------------------------------------------------------ one MLP

    @triton.jit
    def _mlp_fwd(s_ptr, w_ptr, lin_ptr, linp_ptr, mlp_ptr, m, in_col, TOT,
                 BB: tl.constexpr, KC: tl.constexpr, NC: tl.constexpr, PREC: tl.constexpr):
        """Forward of MLP ``m`` on S[:, in_col:]; returns the scratch column of its output."""
        first = tl.load(mlp_ptr + 2 * m)
        count = tl.load(mlp_ptr + 2 * m + 1)
        col = in_col
        for i in range(first, first + count):
            row = lin_ptr + i * 8
            h_col = tl.load(row + 7)
            _linear_fwd(s_ptr, w_ptr, col, tl.load(row + 0), tl.load(row + 2), tl.load(row + 3),
                        tl.load(row + 4), tl.load(row + 6), h_col, tl.load(row + 5),
                        tl.load(linp_ptr + i), TOT, BB, KC, NC, PREC)
            tl.debug_barrier()
            col = h_col
        return col

    @triton.jit
    def _mlp_out_col(lin_ptr, mlp_ptr, m):
        last = tl.load(mlp_ptr + 2 * m) + tl.load(mlp_ptr + 2 * m + 1) - 1
        return tl.load(lin_ptr + last * 8 + 7)

    @triton.jit
    def _mlp_bwd(s_ptr, w_ptr, lin_ptr, linp_ptr, mlp_ptr, m, pp0, pp1, dst_col, TOT,
                 BB: tl.constexpr, KC: tl.constexpr, NC: tl.constexpr, EC: tl.constexpr,
                 PREC: tl.constexpr):
        """Input-gradient of MLP ``m`` (after its forward): the upstream gradient of its output
        is in S[:, pp0:]; the gradient w.r.t. its input is ADDED to S[:, dst_col:]."""
        rb = tl.arange(0, BB)[:, None] * TOT
        first = tl.load(mlp_ptr + 2 * m)
        count = tl.load(mlp_ptr + 2 * m + 1)
        src = pp0
        other = pp1
        for t in range(0, count):
            i = first + count - 1 - t
            row = lin_ptr + i * 8
            n_in = tl.load(row + 3)
            n_out = tl.load(row + 4)
            act = tl.load(row + 5)
            a_col = tl.load(row + 6)
            h_col = tl.load(row + 7)
            p = tl.load(linp_ptr + i)
            # dh -> da = dh * act'(a), in place
            for j0 in range(0, n_out, EC):
                cj = j0 + tl.arange(0, EC)
                cm = (cj < n_out)[None, :]
                dh = tl.load(s_ptr + rb + (src + cj)[None, :], mask=cm, other=0.0)
                a = tl.load(s_ptr + rb + (a_col + cj)[None, :], mask=cm, other=0.0)
                h = tl.load(s_ptr + rb + (h_col + cj)[None, :], mask=cm, other=0.0)
                tl.store(s_ptr + rb + (src + cj)[None, :], dh * _act_grad(a, h, act, p), mask=cm)
            tl.debug_barrier()
            is_input = t == count - 1
            dst = other
            if is_input:
                dst = dst_col
            _linear_bwd(s_ptr, w_ptr, src, dst, tl.load(row + 1), n_in, n_out, is_input, TOT,
                        BB, KC, NC, PREC)
            tl.debug_barrier()
            nxt = other
            other = src
            src = nxt

    @triton.jit
    def _scalar_term(s_ptr, w_ptr, lin_ptr, linp_ptr, mlp_ptr, m, in_col, dst_col, sign, pp0, pp1,
                     TOT, BB: tl.constexpr, KC: tl.constexpr, NC: tl.constexpr, EC: tl.constexpr,
                     PREC: tl.constexpr):
        """An energy term f (MLP ``m``, one output): returns f [BB] and adds sign * df/dinput
        into S[:, dst_col:]."""
        rb1 = tl.arange(0, BB) * TOT
        out_col = _mlp_fwd(s_ptr, w_ptr, lin_ptr, linp_ptr, mlp_ptr, m, in_col, TOT, BB, KC, NC, PREC)
        f = tl.load(s_ptr + rb1 + out_col)
        tl.store(s_ptr + rb1 + pp0, tl.zeros_like(f) + sign)
        tl.debug_barrier()
        _mlp_bwd(s_ptr, w_ptr, lin_ptr, linp_ptr, mlp_ptr, m, pp0, pp1, dst_col, TOT, BB, KC, NC, EC, PREC)
        return f

    # ------------------------------------------------------------------ the prior energy

    @triton.jit
    def _energy_grad(s_ptr, w_ptr, lin_ptr, linp_ptr, mlp_ptr, lay_ptr, layf_ptr, reg_ptr, xc, gc,
                     L, joint, sign, TOT, SPACE_EPS: tl.constexpr, GAUSS: tl.constexpr,
                     BB: tl.constexpr, KC: tl.constexpr, NC: tl.constexpr, EC: tl.constexpr,
                     PREC: tl.constexpr):
        """U [BB] at the state S[:, xc:+D]; writes dU/dx into S[:, gc:+D]."""
        rb = tl.arange(0, BB)[:, None] * TOT
        zc = tl.load(reg_ptr + 4)
        gz = tl.load(reg_ptr + 5)
        pp0 = tl.load(reg_ptr + 6)
        pp1 = tl.load(reg_ptr + 7)
        u = tl.zeros((BB,), dtype=tl.float32)

        # 1. the quadratic terms q_l |x_l|^2 / 2 start G; GZ starts at 0
        for l in range(0, L):
            d = tl.load(lay_ptr + 4 * l)
            col = tl.load(lay_ptr + 4 * l + 1)
            q = tl.load(layf_ptr + 8 * l + 2)
            ssq = tl.zeros((BB,), dtype=tl.float32)
            for j0 in range(0, d, EC):
                cj = col + j0 + tl.arange(0, EC)
                cm = (j0 + tl.arange(0, EC) < d)[None, :]
                x = tl.load(s_ptr + rb + (xc + cj)[None, :], mask=cm, other=0.0)
                ssq += tl.sum(x * x, axis=1)
                tl.store(s_ptr + rb + (gc + cj)[None, :], q * x, mask=cm)
                if SPACE_EPS:
                    tl.store(s_ptr + rb + (gz + cj)[None, :], tl.zeros_like(x), mask=cm)
            u += ssq * (0.5 * q)
        tl.debug_barrier()

        # 2. z(eps), top-down (eps-space only): z_L = eps_L, z_l = mu_l + sigma_l * eps_l
        if SPACE_EPS:
            d = tl.load(lay_ptr + 4 * (L - 1))
            col = tl.load(lay_ptr + 4 * (L - 1) + 1)
            for j0 in range(0, d, EC):
                cj = col + j0 + tl.arange(0, EC)
                cm = (j0 + tl.arange(0, EC) < d)[None, :]
                e = tl.load(s_ptr + rb + (xc + cj)[None, :], mask=cm, other=0.0)
                tl.store(s_ptr + rb + (zc + cj)[None, :], e, mask=cm)
            tl.debug_barrier()
            for t in range(0, L - 1):
                l = L - 2 - t
                d = tl.load(lay_ptr + 4 * l)
                col = tl.load(lay_ptr + 4 * l + 1)
                gm = tl.load(lay_ptr + 4 * l + 3)
                col_above = tl.load(lay_ptr + 4 * (l + 1) + 1)
                floor = tl.load(layf_ptr + 8 * l + 3)
                out = _mlp_fwd(s_ptr, w_ptr, lin_ptr, linp_ptr, mlp_ptr, gm, zc + col_above, TOT,
                               BB, KC, NC, PREC)
                for j0 in range(0, d, EC):
                    cj = j0 + tl.arange(0, EC)
                    cm = (cj < d)[None, :]
                    mu = tl.load(s_ptr + rb + (out + cj)[None, :], mask=cm, other=0.0)
                    raw = tl.load(s_ptr + rb + (out + d + cj)[None, :], mask=cm, other=0.0)
                    e = tl.load(s_ptr + rb + (xc + col + cj)[None, :], mask=cm, other=0.0)
                    z = mu + (tl.exp(raw) + floor) * e
                    tl.store(s_ptr + rb + (zc + col + cj)[None, :], z, mask=cm)
                tl.debug_barrier()
            zin = zc
            gt = gz
        else:
            zin = xc
            gt = gc

        # 3. energy terms f_l(z_l) and the joint term f_0(concat z); their gradient into gt
        for l in range(0, L):
            tm = tl.load(lay_ptr + 4 * l + 2)
            if tm >= 0:
                col = tl.load(lay_ptr + 4 * l + 1)
                f = _scalar_term(s_ptr, w_ptr, lin_ptr, linp_ptr, mlp_ptr, tm, zin + col, gt + col, sign,
                                 pp0, pp1, TOT, BB, KC, NC, EC, PREC)
                u += sign * f
        if joint >= 0:
            f = _scalar_term(s_ptr, w_ptr, lin_ptr, linp_ptr, mlp_ptr, joint, zin, gt, sign, pp0, pp1,
                             TOT, BB, KC, NC, EC, PREC)
            u += sign * f

        # 4. the inter-layer Gaussians, bottom-up
        if GAUSS:
            for l in range(0, L - 1):
                d = tl.load(lay_ptr + 4 * l)
                col = tl.load(lay_ptr + 4 * l + 1)
                gm = tl.load(lay_ptr + 4 * l + 3)
                col_above = tl.load(lay_ptr + 4 * (l + 1) + 1)
                floor = tl.load(layf_ptr + 8 * l + 3)
                if SPACE_EPS:
                    out = _mlp_out_col(lin_ptr, mlp_ptr, gm)  # its forward ran in step 2
                else:
                    out = _mlp_fwd(s_ptr, w_ptr, lin_ptr, linp_ptr, mlp_ptr, gm, xc + col_above, TOT,
                                   BB, KC, NC, PREC)
                nlp = tl.zeros((BB,), dtype=tl.float32)
                for j0 in range(0, d, EC):
                    cj = j0 + tl.arange(0, EC)
                    cm = (cj < d)[None, :]
                    mu = tl.load(s_ptr + rb + (out + cj)[None, :], mask=cm, other=0.0)
                    raw = tl.load(s_ptr + rb + (out + d + cj)[None, :], mask=cm, other=0.0)
                    er = tl.exp(raw)
                    sigma = er + floor
                    g_ptrs = s_ptr + rb + (gc + col + cj)[None, :]
                    g = tl.load(g_ptrs, mask=cm, other=0.0)
                    if SPACE_EPS:
                        gzl = tl.load(s_ptr + rb + (gz + col + cj)[None, :], mask=cm, other=0.0)
                        e = tl.load(s_ptr + rb + (xc + col + cj)[None, :], mask=cm, other=0.0)
                        tl.store(g_ptrs, g + gzl * sigma, mask=cm)
                        dmu = gzl
                        draw = gzl * e * er
                    else:
                        x = tl.load(s_ptr + rb + (xc + col + cj)[None, :], mask=cm, other=0.0)
                        r = (x - mu) / sigma
                        nlp += tl.sum(tl.where(cm, 0.5 * (r * r) + tl.log(sigma), 0.0), axis=1)
                        tl.store(g_ptrs, g + r / sigma, mask=cm)
                        dmu = -r / sigma
                        draw = (1.0 - r * r) / sigma * er
                    tl.store(s_ptr + rb + (pp0 + cj)[None, :], dmu, mask=cm)
                    tl.store(s_ptr + rb + (pp0 + d + cj)[None, :], draw, mask=cm)
                u += nlp
                tl.debug_barrier()
                _mlp_bwd(s_ptr, w_ptr, lin_ptr, linp_ptr, mlp_ptr, gm, pp0, pp1, gt + col_above, TOT,
                         BB, KC, NC, EC, PREC)
        if SPACE_EPS:  # the top layer: z_L = eps_L
            d = tl.load(lay_ptr + 4 * (L - 1))
            col = tl.load(lay_ptr + 4 * (L - 1) + 1)
            for j0 in range(0, d, EC):
                cj = col + j0 + tl.arange(0, EC)
                cm = (j0 + tl.arange(0, EC) < d)[None, :]
                g_ptrs = s_ptr + rb + (gc + cj)[None, :]
                g = tl.load(g_ptrs, mask=cm, other=0.0)
                gzl = tl.load(s_ptr + rb + (gz + cj)[None, :], mask=cm, other=0.0)
                tl.store(g_ptrs, g + gzl, mask=cm)
        tl.debug_barrier()
        return u

    # ------------------------------------------------------------------ step pieces

    @triton.jit
    def _propose(s_ptr, lay_ptr, layf_ptr, src_x, src_g, dst, rows, B, L, seed, step_off, TOT,
                 BB: tl.constexpr, EC: tl.constexpr):
        """S[:, dst:] = (X - h g) + c xi, xi by the problem.py layout; returns sum xi^2 [BB]."""
        rb = tl.arange(0, BB)[:, None] * TOT
        sxi = tl.zeros((BB,), dtype=tl.float32)
        for l in range(0, L):
            d = tl.load(lay_ptr + 4 * l)
            col = tl.load(lay_ptr + 4 * l + 1)
            h = tl.load(layf_ptr + 8 * l)
            c = tl.load(layf_ptr + 8 * l + 1)
            layer_start = col.to(tl.int64) * B  # B * (d_1 + ... + d_{l-1}), in int64
            for j0 in range(0, d, EC):
                cl = j0 + tl.arange(0, EC)
                cm = (cl < d)[None, :]
                cj = (col + cl)[None, :]
                x = tl.load(s_ptr + rb + src_x + cj, mask=cm, other=0.0)
                g = tl.load(s_ptr + rb + src_g + cj, mask=cm, other=0.0)
                xi = tl.randn(seed, step_off + layer_start + rows[:, None] * d + cl[None, :])
                tl.store(s_ptr + rb + dst + cj, (x - h * g) + c * xi, mask=cm)
                xi = tl.where(cm, xi, 0.0)
                sxi += tl.sum(xi * xi, axis=1)
        return sxi

    @triton.jit
    def _grad_norm(s_ptr, lay_ptr, gc, L, TOT, BB: tl.constexpr, EC: tl.constexpr):
        rb = tl.arange(0, BB)[:, None] * TOT
        gsq = tl.zeros((BB,), dtype=tl.float32)
        for l in range(0, L):
            d = tl.load(lay_ptr + 4 * l)
            col = tl.load(lay_ptr + 4 * l + 1)
            for j0 in range(0, d, EC):
                cl = j0 + tl.arange(0, EC)
                cm = (cl < d)[None, :]
                g = tl.load(s_ptr + rb + (gc + col + cl)[None, :], mask=cm, other=0.0)
                gsq += tl.sum(g * g, axis=1)
        return tl.sqrt(gsq)

    # ------------------------------------------------------------------ the chain

    @triton.jit(do_not_specialize=["B", "L", "D", "n_steps", "stride", "joint", "n_blocks", "seed", "offset"])
    def prior_chain_kernel(
        x_ptr,        # float32 [B*D]: start state, layer-major ([B, d_1] then [B, d_2] ...)
        out_ptr,      # float32 [B*D]: final state, same layout
        w_ptr,        # float32: packed W^T, W and bias of every Linear
        lin_ptr,      # int32 [n_linear, 8]: wt_off, w_off, b_off, in, out, act, a_col, h_col
        linp_ptr,     # float32 [n_linear]: activation parameter
        mlp_ptr,      # int32 [n_mlp, 2]: first Linear, number of Linears
        lay_ptr,      # int32 [L, 4]: d_l, column in concat(z), term MLP or -1, Gaussian MLP or -1
        layf_ptr,     # float32 [L, 8]: h_l = s_l^2/2, c_l = s_l tau, q_l, sigma floor, 2 (s_l tau)^2
        reg_ptr,      # int32 [8]: scratch columns of X, G, X', G', Z, GZ, ping, pong
        scratch_ptr,  # float32 [programs, BB, TOT]: per-program scratch
        stats_ptr,    # float32 [n_steps, n_blocks, 4]: per block sum of U, |grad U|, accepts
        B,            # chains
        L,            # latent layers
        D,            # sum of d_l
        TOT,          # scratch columns per chain
        n_steps,      # K
        stride,       # Philox counters per step: B*D (+ B with MALA)
        joint,        # MLP of the joint term, or -1
        n_blocks,     # ceil(B / BB)
        sign,         # energy_sign
        seed,         # Philox key (64-bit, not specialised)
        offset,       # first counter of step 0 (64-bit, not specialised; added to philox_ptr[1])
        philox_ptr,   # int64 [2]: seed (bit pattern) and base offset, read when PHILOX_FROM_PTR
        SPACE_EPS: tl.constexpr,  # sample eps (else z)
        GAUSS: tl.constexpr,      # inter-layer Gaussians (else base_sigma / none)
        MALA: tl.constexpr,       # Metropolis-adjusted
        STATS: tl.constexpr,      # write per-step statistics
        BB: tl.constexpr,         # chains per block (>= 16 for tl.dot)
        KC: tl.constexpr,         # GEMM reduction chunk
        NC: tl.constexpr,         # GEMM output chunk
        EC: tl.constexpr,         # element-wise column chunk
        PREC: tl.constexpr,       # tl.dot input_precision, or "bf16" (bf16 operands; "bf16-emulated" interpreted)
        PHILOX_FROM_PTR: tl.constexpr,  # seed and offset from philox_ptr (graph-safe)
    ):
        if PHILOX_FROM_PTR:
            seed = tl.load(philox_ptr)
            offset = tl.load(philox_ptr + 1) + offset
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        s_ptr = scratch_ptr + pid.to(tl.int64) * BB * TOT
        rb = tl.arange(0, BB)[:, None] * TOT
        xc = tl.load(reg_ptr + 0)
        gc = tl.load(reg_ptr + 1)
        xp = tl.load(reg_ptr + 2)
        gp = tl.load(reg_ptr + 3)
        stride64 = stride.to(tl.int64)
        noise_end = D.to(tl.int64) * B  # counter of the first MALA uniform within a step
        for blk in range(pid, n_blocks, nprog):
            rows = tl.arange(0, BB).to(tl.int64) + blk * BB
            rmask = rows < B
            # load the start state into X
            for l in range(0, L):
                d = tl.load(lay_ptr + 4 * l)
                col = tl.load(lay_ptr + 4 * l + 1)
                for j0 in range(0, d, EC):
                    cl = j0 + tl.arange(0, EC)
                    cm = (cl < d)[None, :]
                    v = tl.load(x_ptr + col.to(tl.int64) * B + rows[:, None] * d + cl[None, :],
                                mask=rmask[:, None] & cm, other=0.0)
                    tl.store(s_ptr + rb + (xc + col + cl)[None, :], v, mask=cm)
            tl.debug_barrier()

            if MALA:
                u = tl.zeros((BB,), dtype=tl.float32)
                sxi = tl.zeros((BB,), dtype=tl.float32)
                # iteration k evaluates the candidate (k = 0: the start, else step k-1's
                # proposal), decides step k-1, then proposes step k
                for k in range(0, n_steps + 1):
                    cx = xp
                    cg = gp
                    if k == 0:
                        cx = xc
                        cg = gc
                    up = _energy_grad(s_ptr, w_ptr, lin_ptr, linp_ptr, mlp_ptr, lay_ptr, layf_ptr, reg_ptr,
                                      cx, cg, L, joint, sign, TOT, SPACE_EPS, GAUSS, BB, KC, NC, EC, PREC)
                    if k == 0:
                        u = up
                    else:
                        step_off = offset + (k - 1) * stride64
                        log_q_bwd = tl.zeros((BB,), dtype=tl.float32)
                        for l in range(0, L):
                            d = tl.load(lay_ptr + 4 * l)
                            col = tl.load(lay_ptr + 4 * l + 1)
                            h = tl.load(layf_ptr + 8 * l)
                            den = tl.load(layf_ptr + 8 * l + 4)
                            ssq = tl.zeros((BB,), dtype=tl.float32)
                            for j0 in range(0, d, EC):
                                cl = j0 + tl.arange(0, EC)
                                cm = (cl < d)[None, :]
                                cj = (col + cl)[None, :]
                                x = tl.load(s_ptr + rb + xc + cj, mask=cm, other=0.0)
                                xq = tl.load(s_ptr + rb + xp + cj, mask=cm, other=0.0)
                                gq = tl.load(s_ptr + rb + gp + cj, mask=cm, other=0.0)
                                t = (x - xq) + h * gq
                                ssq += tl.sum(t * t, axis=1)
                            log_q_bwd += ssq / den
                        log_alpha = ((u - up) + (-log_q_bwd)) - (-0.5 * sxi)
                        uni = tl.rand(seed, step_off + noise_end + rows)
                        accept = tl.log(uni) < log_alpha
                        for l in range(0, L):
                            d = tl.load(lay_ptr + 4 * l)
                            col = tl.load(lay_ptr + 4 * l + 1)
                            for j0 in range(0, d, EC):
                                cl = j0 + tl.arange(0, EC)
                                cm = (cl < d)[None, :]
                                cj = (col + cl)[None, :]
                                x = tl.load(s_ptr + rb + xc + cj, mask=cm, other=0.0)
                                xq = tl.load(s_ptr + rb + xp + cj, mask=cm, other=0.0)
                                g = tl.load(s_ptr + rb + gc + cj, mask=cm, other=0.0)
                                gq = tl.load(s_ptr + rb + gp + cj, mask=cm, other=0.0)
                                tl.store(s_ptr + rb + xc + cj, tl.where(accept[:, None], xq, x), mask=cm)
                                tl.store(s_ptr + rb + gc + cj, tl.where(accept[:, None], gq, g), mask=cm)
                        u = tl.where(accept, up, u)
                        tl.debug_barrier()
                        if STATS:
                            n_acc = tl.sum(tl.where(rmask & accept, 1.0, 0.0), axis=0)
                            tl.store(stats_ptr + ((k - 1) * n_blocks + blk) * 4 + 2, n_acc)
                    if k < n_steps:
                        step_off = offset + k * stride64
                        if STATS:
                            gn = _grad_norm(s_ptr, lay_ptr, gc, L, TOT, BB, EC)
                            base = stats_ptr + (k * n_blocks + blk) * 4
                            tl.store(base, tl.sum(tl.where(rmask, u, 0.0), axis=0))
                            tl.store(base + 1, tl.sum(tl.where(rmask, gn, 0.0), axis=0))
                        sxi = _propose(s_ptr, lay_ptr, layf_ptr, xc, gc, xp, rows, B, L, seed, step_off,
                                       TOT, BB, EC)
                        tl.debug_barrier()
            else:
                for k in range(0, n_steps):
                    u = _energy_grad(s_ptr, w_ptr, lin_ptr, linp_ptr, mlp_ptr, lay_ptr, layf_ptr, reg_ptr,
                                     xc, gc, L, joint, sign, TOT, SPACE_EPS, GAUSS, BB, KC, NC, EC, PREC)
                    step_off = offset + k * stride64
                    if STATS:
                        gn = _grad_norm(s_ptr, lay_ptr, gc, L, TOT, BB, EC)
                        base = stats_ptr + (k * n_blocks + blk) * 4
                        tl.store(base, tl.sum(tl.where(rmask, u, 0.0), axis=0))
                        tl.store(base + 1, tl.sum(tl.where(rmask, gn, 0.0), axis=0))
                    _propose(s_ptr, lay_ptr, layf_ptr, xc, gc, xc, rows, B, L, seed, step_off, TOT, BB, EC)
                    tl.debug_barrier()

            # write the final state
            for l in range(0, L):
                d = tl.load(lay_ptr + 4 * l)
                col = tl.load(lay_ptr + 4 * l + 1)
                for j0 in range(0, d, EC):
                    cl = j0 + tl.arange(0, EC)
                    cm = (cl < d)[None, :]
                    v = tl.load(s_ptr + rb + (xc + col + cl)[None, :], mask=cm, other=0.0)
                    tl.store(out_ptr + col.to(tl.int64) * B + rows[:, None] * d + cl[None, :], v,
                             mask=rmask[:, None] & cm)
            tl.debug_barrier()
