// The noise of the CPU kernels: Philox4x32-10 on V counters at once, its uniforms, and the
// Box-Muller normals of tl.randn(seed, offset): the stream of philox.h (scalar) and
// jebm_kernels/philox.py, the words and uniforms bit for bit, the normals to the rounding of
// log/cos (evaluated here in double and rounded once).
// Part of isa_kernels.h (uses simd.h).
#pragma once
#ifndef JEBM_ISA_KERNELS
#error "philox_simd.h is a layer of the CPU kernels: include isa_kernels.h (from a chain_<isa>.cpp)"
#endif

// ------------------------------------------------------ double vector math for Box-Muller's log/cos
// The normal is sqrtf(-2 logf(u1)) * cosf(2 pi u2) in float32 as torch/Triton compute it; log and
// cos are evaluated here in double and rounded once, i.e. correctly rounded but for rare ties,
// so the stream agrees with any faithful logf/cosf to the last bit almost always.

// log(u) for u in [1e-7, 1) (positive normal floats): 2 atanh(s) series, s^2 <= 0.0295, to
// s^12/13: truncation < 1e-12 relative.
JEBM_INLINE vf vlog_bm(vf u) {
    vi bits = (vi)u;
    vi e = ((bits >> 23) & 0xff) - 127;
    vf m = (vf)((bits & 0x7fffff) | 0x3f800000);  // [1, 2)
    const vi big = m > 1.41421356f;
    m = sel(big, m * 0.5f, m);
    e = e - big;
    const vd md = __builtin_convertvector(m, vd);
    const vd ed = __builtin_convertvector(e, vd);
    const vd f = md - 1.0;
    const vd s = f / (f + 2.0);
    const vd s2 = s * s;
    vd p = vd{} + 1.0 / 13.0;
    p = vdfma(p, s2, vd{} + 1.0 / 11.0);
    p = vdfma(p, s2, vd{} + 1.0 / 9.0);
    p = vdfma(p, s2, vd{} + 1.0 / 7.0);
    p = vdfma(p, s2, vd{} + 1.0 / 5.0);
    p = vdfma(p, s2, vd{} + 1.0 / 3.0);
    p = vdfma(p, s2, vd{} + 1.0);
    const vd r = ed * 0.69314718055994530942 + 2.0 * s * p;
    return __builtin_convertvector(r, vf);
}

// cos(t) for t in [0, 2 pi]: q = round(t / (pi/2)) read from the low mantissa bits of
// t * 2/pi + 1.5 * 2^52 (no double->int conversion, which AVX2 lacks), Cody-Waite reduction,
// Taylor series to r^12 (cos) and r^13 (sin) on |r| <= pi/4: error < 5e-13, far below float's ulp.
JEBM_INLINE vf vcos_bm(vf t) {
    const vd x = __builtin_convertvector(t, vd);
    const vd big = x * 0.63661977236758134308 + 6755399441055744.0;
    const vd q = big - 6755399441055744.0;
    const vi64 qi = (vi64)big & 3;
    const vd r = (x - q * 1.5707963267948966) - q * 6.123233995736766e-17;
    const vd r2 = r * r;
    vd c = vd{} + 1.0 / 479001600.0;               // 1/12!
    c = vdfma(c, r2, vd{} - 1.0 / 3628800.0);
    c = vdfma(c, r2, vd{} + 1.0 / 40320.0);
    c = vdfma(c, r2, vd{} - 1.0 / 720.0);
    c = vdfma(c, r2, vd{} + 1.0 / 24.0);
    c = vdfma(c, r2, vd{} - 0.5);
    c = vdfma(c, r2, vd{} + 1.0);
    vd s = vd{} + 1.0 / 6227020800.0;              // 1/13!
    s = vdfma(s, r2, vd{} - 1.0 / 39916800.0);
    s = vdfma(s, r2, vd{} + 1.0 / 362880.0);
    s = vdfma(s, r2, vd{} - 1.0 / 5040.0);
    s = vdfma(s, r2, vd{} + 1.0 / 120.0);
    s = vdfma(s, r2, vd{} - 1.0 / 6.0);
    s = (s * r2) * r + r;
    // quadrant 0: c, 1: -s, 2: -c, 3: s; bit operations only (a select on 64-bit lanes is
    // scalarised by GCC for AVX2)
    const vi64 swap = -(qi & 1);
    const vi64 sign = ((qi + 1) & 2) << 62;
    const vd v = (vd)((((vi64)c & ~swap) | ((vi64)s & swap)) ^ sign);
    return __builtin_convertvector(v, vf);
}

// ------------------------------------------------------------------------------ Philox, vectorised

// hi, lo = the 64-bit products a[i] * m split in two words: two 32x32->64 multiplies (even and
// odd lanes) and two blends; the generic fallback lets the compiler widen.
JEBM_INLINE void mulhilo(vu a, uint32_t m, vu& hi, vu& lo) {
#if JEBM_FMA == 512
    const __m512i va = (__m512i)a, vm = _mm512_set1_epi32((int)m);
    const __m512i pe = _mm512_mul_epu32(va, vm);
    const __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(va, 32), vm);
    hi = (vu)_mm512_mask_blend_epi32((__mmask16)0xAAAA, _mm512_srli_epi64(pe, 32), po);
    lo = (vu)_mm512_mask_blend_epi32((__mmask16)0xAAAA, pe, _mm512_slli_epi64(po, 32));
#elif JEBM_FMA == 256
    const __m256i va = (__m256i)a, vm = _mm256_set1_epi32((int)m);
    const __m256i pe = _mm256_mul_epu32(va, vm);
    const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(va, 32), vm);
    hi = (vu)_mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
    lo = (vu)_mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
#elif defined(__SSE2__) && JEBM_VW == 4
    const __m128i va = (__m128i)a, vm = _mm_set1_epi32((int)m);
    const __m128i pe = _mm_mul_epu32(va, vm);                      // [lo0 hi0 lo2 hi2]
    const __m128i po = _mm_mul_epu32(_mm_srli_epi64(va, 32), vm);  // [lo1 hi1 lo3 hi3]
    const __m128 h = _mm_shuffle_ps((__m128)pe, (__m128)po, _MM_SHUFFLE(3, 1, 3, 1));  // hi0 hi2 hi1 hi3
    const __m128 l = _mm_shuffle_ps((__m128)pe, (__m128)po, _MM_SHUFFLE(2, 0, 2, 0));
    hi = (vu)_mm_shuffle_epi32((__m128i)h, _MM_SHUFFLE(3, 1, 2, 0));
    lo = (vu)_mm_shuffle_epi32((__m128i)l, _MM_SHUFFLE(3, 1, 2, 0));
#else
    const vu64 p = __builtin_convertvector(a, vu64) * (uint64_t)m;
    lo = __builtin_convertvector(p, vu);
    hi = __builtin_convertvector(p >> 32, vu);
#endif
}

// Words 0 and 1 for the V counters (start + inc[i]) (64-bit start, 32-bit lane increments).
JEBM_INLINE void philox_vec(uint64_t seed, uint64_t start, vu inc, vu& w0, vu& w1) {
    vu c0 = (vu{} + (uint32_t)start) + inc;
    vu c1 = (vu{} + (uint32_t)(start >> 32)) - (vu)(c0 < inc);  // carry
    vu c2 = vu{}, c3 = vu{};
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int i = 0; i < kPhiloxRounds; ++i) {
        vu hb, lb, ha, la;
        mulhilo(c2, kPhiloxRoundB, hb, lb);
        mulhilo(c0, kPhiloxRoundA, ha, la);
        const vu n0 = hb ^ c1 ^ k0;
        const vu n2 = ha ^ c3 ^ k1;
        c1 = lb;
        c3 = la;
        c0 = n0;
        c2 = n2;
        k0 += kPhiloxKeyA;
        k1 += kPhiloxKeyB;
    }
    w0 = c0;
    w1 = c1;
}

JEBM_INLINE vf uniform_of(vu w) {
    vi x = (vi)w;
    x = x < 0 ? ~x : x;
    return __builtin_convertvector(x, vf) * kUniformScale;
}


// V normals at counters start + inc[i], exactly as philox_randn builds them.
JEBM_INLINE vf normal_vec(uint64_t seed, uint64_t start, vu inc) {
    vu w0, w1;
    philox_vec(seed, start, inc, w0, w1);
    vf u1 = uniform_of(w0);
    const vf u2 = uniform_of(w1);
    u1 = sel(u1 < kMinUniform, splat(kMinUniform), u1);  // torch.clamp_min(u1, 1e-7)
    const vf r = vsqrt(-2.0f * vlog_bm(u1));
    return r * vcos_bm(kTwoPi * u2);
}

JEBM_INLINE vf uniform_vec(uint64_t seed, uint64_t start, vu inc) {
    vu w0, w1;
    philox_vec(seed, start, inc, w0, w1);
    return uniform_of(w0);
}

inline vu lane_index() {
    vu r;
    for (int i = 0; i < V; ++i) r[i] = (uint32_t)i;
    return r;
}

// The normals of n flat elements, one vector at a time: vector i draws counters start(i) + inc(i)
// and is handed to put(i, m, xi) (m: its elements, V but for the last).
template <class S, class I, class P>
JEBM_INLINE void for_normals(size_t n, uint64_t seed, S start, I inc, P put) {
    flat_for(n, [&](size_t i, int m) { put(i, m, normal_vec(seed, start(i), inc(i))); });
}
