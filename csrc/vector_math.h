// Float vector math of the CPU kernels (~1-2 ulp): exp, expm1, log, log1p, tanh, erf on V lanes, for
// the activations and the inter-layer Gaussians. Cephes-style range reductions and polynomials; IEEE
// special values (inf, NaN, subnormals) handled explicitly, since no libm call can be vectorised here.
// Part of isa_kernels.h (uses simd.h).
#pragma once
#ifndef JEBM_ISA_KERNELS
#error "vector_math.h is a layer of the CPU kernels: include isa_kernels.h (from a chain_<isa>.cpp)"
#endif

// x = n ln 2 + r, |r| <= ln 2 / 2 (ln 2 in two parts, n an integer-valued float), and expm1(r) as
// r + r^2 P(r): Cephes expf's reduction and degree-6 polynomial, shared by vexp and vexpm1_neg.
JEBM_INLINE vf exp_reduce(vf xc, vf& n) {
    n = vround(xc * 1.44269504088896341f);
    vf r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    return r;
}
JEBM_INLINE vf expm1_reduced(vf r) {
    vf p = splat(1.9875691500e-4f);
    p = vfma(p, r, splat(1.3981999507e-3f));
    p = vfma(p, r, splat(8.3334519073e-3f));
    p = vfma(p, r, splat(4.1665795894e-2f));
    p = vfma(p, r, splat(1.6666665459e-1f));
    p = vfma(p, r, splat(5.0000001201e-1f));
    return vfma(p, r * r, r);
}

// exp: Cephes expf (range reduction by ln 2 in two parts, degree-6 polynomial); the 2^n scaling is
// split in two so results down to the subnormal range round once; overflow gives inf, NaN stays.
JEBM_INLINE vf vexp(vf x) {
    const vf xc = sel(x > 88.7228317f, splat(88.7228317f), sel(x < -103.972084f, splat(-103.972084f), x));
    vf n;
    const vf r = exp_reduce(xc, n);
    vf y = expm1_reduced(r) + 1.0f;
    const vi ni = __builtin_convertvector(n, vi);
    const vi n1 = ni >> 1;
    const vi n2 = ni - n1;
    y = y * (vf)((n1 + 127) << 23);
    y = y * (vf)((n2 + 127) << 23);
    y = sel(x > 88.7228317f, splat(__builtin_inff()), y);
    y = sel(x < -103.972084f, splat(0.0f), y);
    return sel(x != x, x, y);
}

// exp for x <= 0 or NaN (GELU's exp(-x^2)): vexp without the overflow and subnormal paths; results
// below the normal range (x < -87.34) are 0, NaN gives 0.
JEBM_INLINE vf vexp_nonpos(vf x) {
    const vf xc = vmax(x, splat(-87.33654f));
    vf n;
    const vf r = exp_reduce(xc, n);
    const vf y = (expm1_reduced(r) + 1.0f) * (vf)((__builtin_convertvector(n, vi) + 127) << 23);
    return sel(x < -87.33654f, splat(0.0f), y);
}

// expm1 for x <= 0 (ELU's negative side; x > 0 gives expm1(0) = 0, the caller selects there):
// expm1(x) = 2^n expm1(r) + (2^n - 1) with exp_reduce's n and r. Both terms are exact (a power of
// two times expm1(r); 2^n - 1 for n >= -24), so the sum rounds once: ~1 ulp, no cancellation
// near 0 (n = 0: expm1(r) itself). Below -17.5, e^x is under half an ulp of 1: -1. NaN stays.
JEBM_INLINE vf vexpm1_neg(vf x) {
    const vf xc = sel(x > 0.0f, splat(0.0f), sel(x < -17.5f, splat(-17.5f), x));
    vf n;
    const vf em = expm1_reduced(exp_reduce(xc, n));
    const vf two_n = (vf)((__builtin_convertvector(n, vi) + 127) << 23);
    const vf y = em * two_n + (two_n - 1.0f);
    return sel(x != x, x, sel(x < -17.5f, splat(-1.0f), y));
}

// Cephes logf's core (mantissa in [sqrt(1/2), sqrt(2)), degree-8 polynomial) for a normal
// positive float whose exponent field is e_shift above the true one (vlog's rescaled subnormals);
// no special cases.
JEBM_INLINE vf vlog_core(vf xs, vi e_shift) {
    const vi bits = (vi)xs;
    vi e = ((bits >> 23) & 0xff) - 126;
    e = e - e_shift;
    vf m = (vf)((bits & (int32_t)0x807fffff) | 0x3f000000);  // [0.5, 1)
    const vi small = m < 0.707106781186547524f;
    e = e + small;  // small is -1 where true
    m = sel(small, m + m - 1.0f, m - 1.0f);
    const vf z = m * m;
    vf y = splat(7.0376836292e-2f);
    y = vfma(y, m, splat(-1.1514610310e-1f));
    y = vfma(y, m, splat(1.1676998740e-1f));
    y = vfma(y, m, splat(-1.2420140846e-1f));
    y = vfma(y, m, splat(1.4249322787e-1f));
    y = vfma(y, m, splat(-1.6668057665e-1f));
    y = vfma(y, m, splat(2.0000714765e-1f));
    y = vfma(y, m, splat(-2.4999993993e-1f));
    y = vfma(y, m, splat(3.3333331174e-1f));
    y = y * m * z;
    const vf ef = __builtin_convertvector(e, vf);
    y = y + ef * -2.12194440e-4f;
    y = y - 0.5f * z;
    const vf r = m + y;
    return r + ef * 0.693359375f;
}

// log of a normal positive float (Box-Muller's u1 in [1e-7, 1)): the core alone.
JEBM_INLINE vf vlog_normal(vf x) { return vlog_core(x, (vi)splat(0.0f)); }

// log: subnormals are rescaled first; 0 -> -inf, negative -> NaN, inf -> inf.
JEBM_INLINE vf vlog(vf x) {
    const vi sub = x < 1.17549435e-38f;
    vf r = vlog_core(sel(sub, x * 8388608.0f, x), sub & 23);
    r = sel(x == 0.0f, splat(-__builtin_inff()), r);
    r = sel(x < 0.0f, splat(__builtin_nanf("")), r);
    r = sel(x == __builtin_inff(), x, r);
    return sel(x != x, x, r);
}

// log1p(y) for y >= 0 (softplus): Goldberg's log(1+y) * y / ((1+y) - 1).
JEBM_INLINE vf vlog1p(vf y) {
    const vf u = y + 1.0f;
    const vf d = u - 1.0f;
    return sel(d == 0.0f, y, vlog(u) * (y / sel(d == 0.0f, splat(1.0f), d)));
}

// tanh: Cephes tanhf: odd polynomial below 0.625, 1 - 2 / (exp(2|x|) + 1) above.
JEBM_INLINE vf vtanh(vf x) {
    const vf z = vabs(x);
    const vf x2 = x * x;
    vf p = splat(-5.70498872745e-3f);
    p = vfma(p, x2, splat(2.06390887954e-2f));
    p = vfma(p, x2, splat(-5.37397155531e-2f));
    p = vfma(p, x2, splat(1.33314422036e-1f));
    p = vfma(p, x2, splat(-3.33332819422e-1f));
    const vf small = vfma(p * x2, x, x);
    const vf big = 1.0f - 2.0f / (vexp(z + z) + 1.0f);
    const vf bigs = (vf)((vi)big | ((vi)x & (int32_t)0x80000000));
    return sel(z > 0.625f, bigs, small);
}

// erf: x P(x^2) below 1; 1 - exp(-x^2) Q(1/x) / x up to 4 (least-squares fits, checked against
// mpmath to 9e-8 relative in float); 1 beyond. `ex` must be exp(-x^2) (GELU shares it with its
// density).
// erf(x) / x for |x| < 1, as a polynomial in x^2
JEBM_INLINE vf erf_small_poly(vf x2) {
    vf p = splat(7.933493808589787e-05f);
    p = vfma(p, x2, splat(-0.0008034846623087843f));
    p = vfma(p, x2, splat(0.005191218373780532f));
    p = vfma(p, x2, splat(-0.026855399449717487f));
    p = vfma(p, x2, splat(0.11283625725009266f));
    p = vfma(p, x2, splat(-0.37612629877665305f));
    return vfma(p, x2, splat(1.1283791665931497f));
}

// exp(-x^2) Q(t) t, t = 1 / max(|x|, 1): erfc(|x|) for 1 <= |x| < 4 (`ex` = exp(-x^2))
JEBM_INLINE vf erfc_fit(vf a, vf ex) {
    const vf t = 1.0f / vmax(a, splat(1.0f));
    const vf s = t - 0.625f;
    vf q = splat(-0.0486558197f);
    q = vfma(q, s, splat(0.0548653837f));
    q = vfma(q, s, splat(-0.0243373427f));
    q = vfma(q, s, splat(-0.0112171124f));
    q = vfma(q, s, splat(0.0495836435f));
    q = vfma(q, s, splat(-0.0779847354f));
    q = vfma(q, s, splat(0.0721030653f));
    q = vfma(q, s, splat(-0.00129544891f));
    q = vfma(q, s, splat(-0.171585664f));
    q = vfma(q, s, splat(0.48952479f));
    return ex * q * t;
}

// 1 + erf(x) for |x| = a >= 1 (`positive`: x > 0): 2 - erfc(a) or erfc(a), erfc 0 from 4 on
JEBM_INLINE vf erfc_big(vf a, vf ex, vi positive) {
    const vf c = sel(a >= 4.0f, splat(0.0f), erfc_fit(a, ex));
    return sel(positive, 2.0f - c, c);
}

JEBM_INLINE vf verf_ex(vf x, vf ex) {
    const vf a = vabs(x);
    const vf x2 = x * x;
    const vf small = erf_small_poly(x2) * x;
    vf big = 1.0f - erfc_fit(a, ex);
    big = sel(a >= 4.0f, splat(1.0f), big);
    const vf bigs = (vf)((vi)big | ((vi)x & (int32_t)0x80000000));
    const vf r = sel(a < 1.0f, small, bigs);
    return sel(x != x, x, r);
}

JEBM_INLINE vf verf(vf x) { return verf_ex(x, vexp(-(x * x))); }
