// The noise of the CPU kernels: Philox4x32-10 on V counters at once, its uniforms, and the
// Box-Muller normals of tl.randn(seed, offset): the stream of philox.h (scalar) and
// jebm_kernels/philox.py, the words and uniforms bit for bit, the normals to the rounding of
// log/cos (evaluated here in double and rounded once).
// Part of isa_kernels.h (uses simd.h and vector_math.h).
#pragma once
#ifndef JEBM_ISA_KERNELS
#error "philox_simd.h is a layer of the CPU kernels: include isa_kernels.h (from a chain_<isa>.cpp)"
#endif

// ------------------------------------------------------------------------ Box-Muller's log and cos
// The normal is sqrtf(-2 logf(u1)) * cosf(2 pi u2) in float32 as torch/Triton compute it. log is
// Cephes' logf (vector_math.h's vlog_normal: vlog without its special cases, u1 being a normal
// float in [1e-7, 1)), within an ulp; cos is evaluated in double and rounded once, i.e. correctly rounded
// but for rare ties (float polynomials would be off by an ulp for ~16% of arguments). The normals
// agree with a faithful logf/cosf to the last bit for ~97% of counters and are within 2 ulp.


// cos(t) for t in [0, 2 pi], in double: cos(t) = (-1)^(k+1) sin(s) with s = t - (2k+1) pi/2 in
// [-pi/2, pi/2] (k = round((t - pi/2) / pi), read from the low mantissa bits of its rounding sum:
// no double->int conversion, which AVX2 lacks), pi/2 in two parts, sin's Taylor series to s^15:
// error < 7e-12, far below float's ulp; near cos's zeros s is small and sin(s) keeps its relative
// accuracy.
JEBM_INLINE vf vcos_bm(vf t) {
    const vd x = __builtin_convertvector(t, vd);
    const vd big = (x * 0.31830988618379067154 - 0.5) + 6755399441055744.0;
    const vd k = big - 6755399441055744.0;
    const vd m = k * 2.0 + 1.0;
    vd s = vdfma(m, vd{} - 1.5707963267948966, x);
    s = vdfma(m, vd{} - 6.123233995736766e-17, s);
    const vd s2 = s * s;
    vd p = vd{} - 1.0 / 1307674368000.0;            // -1/15!
    p = vdfma(p, s2, vd{} + 1.0 / 6227020800.0);    // 1/13!
    p = vdfma(p, s2, vd{} - 1.0 / 39916800.0);      // -1/11!
    p = vdfma(p, s2, vd{} + 1.0 / 362880.0);        // 1/9!
    p = vdfma(p, s2, vd{} - 1.0 / 5040.0);          // -1/7!
    p = vdfma(p, s2, vd{} + 1.0 / 120.0);           // 1/5!
    p = vdfma(p, s2, vd{} - 1.0 / 6.0);             // -1/3!
    const vd v = vdfma(p * s2, s, s);
    const vi64 sign = (((vi64)big + 1) & 1) << 63;   // k even: -sin(s)
    return __builtin_convertvector((vd)((vi64)v ^ sign), vf);
}

// ------------------------------------------------------------------------------ Philox, vectorised

// hi, lo = the 64-bit products a[i] * m split in two words: two 32x32->64 multiplies (even and
// odd lanes) and the words put in place (AVX-512: one merge-masked in-lane shuffle per word, in
// place of a shift and a blend); the generic fallback lets the compiler widen.
JEBM_INLINE void mulhilo(vu a, uint32_t m, vu& hi, vu& lo) {
#if JEBM_FMA == 512
    const __m512i va = (__m512i)a, vm = _mm512_set1_epi32((int)m);
    const __m512i pe = _mm512_mul_epu32(va, vm);                         // [lo0 hi0 lo2 hi2 ..]
    const __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(va, 32), vm);  // [lo1 hi1 lo3 hi3 ..]
    hi = (vu)_mm512_mask_shuffle_epi32(po, (__mmask16)0x5555, pe, _MM_PERM_DDBB);  // even lanes: pe's hi words
    lo = (vu)_mm512_mask_shuffle_epi32(pe, (__mmask16)0xAAAA, po, _MM_PERM_CCAA);  // odd lanes: po's lo words
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

// Words 0 and 1 for U vectors of V counters (start[u] + inc[u][i]: 64-bit starts, 32-bit lane
// increments), the U computations interleaved so that the rounds' multiplies overlap. The first
// round's c2, c3 are 0 and the last round's c2, c3 are not needed: their multiplies are skipped.
template <int U>
JEBM_INLINE void philox_multi(uint64_t seed, const uint64_t* start, const vu* inc, vu* w0, vu* w1) {
    vu c0[U], c1[U], c2[U], c3[U];
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
        c0[u] = (vu{} + (uint32_t)start[u]) + inc[u];
        c1[u] = (vu{} + (uint32_t)(start[u] >> 32)) - (vu)(c0[u] < inc[u]);  // carry
        c2[u] = c3[u] = vu{};
    }
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
#pragma GCC unroll 10
    for (int i = 0; i < kPhiloxRounds; ++i) {
#pragma GCC unroll 8
        for (int u = 0; u < U; ++u) {
            vu hb = vu{}, lb = vu{}, ha = vu{}, la = vu{};
            if (i > 0) mulhilo(c2[u], kPhiloxRoundB, hb, lb);
            if (i + 1 < kPhiloxRounds) mulhilo(c0[u], kPhiloxRoundA, ha, la);
            const vu n0 = hb ^ c1[u] ^ k0;
            const vu n2 = ha ^ c3[u] ^ k1;
            c1[u] = lb;
            c3[u] = la;
            c0[u] = n0;
            c2[u] = n2;
        }
        k0 += kPhiloxKeyA;
        k1 += kPhiloxKeyB;
    }
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
        w0[u] = c0[u];
        w1[u] = c1[u];
    }
}

JEBM_INLINE void philox_vec(uint64_t seed, uint64_t start, vu inc, vu& w0, vu& w1) {
    philox_multi<1>(seed, &start, &inc, &w0, &w1);
}

JEBM_INLINE vf uniform_of(vu w) {
    vi x = (vi)w;
    x = x < 0 ? ~x : x;
    return __builtin_convertvector(x, vf) * kUniformScale;
}


JEBM_INLINE vf box_muller_vec(vu w0, vu w1) {
    vf u1 = uniform_of(w0);
    const vf u2 = uniform_of(w1);
    u1 = sel(u1 < kMinUniform, splat(kMinUniform), u1);  // torch.clamp_min(u1, 1e-7)
    const vf r = vsqrt(-2.0f * vlog_normal(u1));
    return r * vcos_bm(kTwoPi * u2);
}

// V normals at counters start + inc[i], as philox_randn builds them.
JEBM_INLINE vf normal_vec(uint64_t seed, uint64_t start, vu inc) {
    vu w0, w1;
    philox_vec(seed, start, inc, w0, w1);
    return box_muller_vec(w0, w1);
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

// Vectors of normals computed together (independent Philox streams in flight): 4 where the ISA
// has 32 vector registers, 2 where it has 16.
constexpr int kNormalsU = JEBM_FMA == 512 ? 4 : 2;

// The normals of n flat elements: vector i (i a multiple of V) draws counters start(i) + inc(i)
// and is handed to put(i, m, xi) (m: its elements, V but for the last).
template <class S, class I, class P>
JEBM_INLINE void for_normals(size_t n, uint64_t seed, S start, I inc, P put) {
    constexpr int U = kNormalsU;
    size_t i = 0;
    for (; i + (size_t)U * V <= n; i += (size_t)U * V) {
        uint64_t st[U];
        vu in[U], w0[U], w1[U];
#pragma GCC unroll 8
        for (int u = 0; u < U; ++u) {
            st[u] = start(i + (size_t)u * V);
            in[u] = inc(i + (size_t)u * V);
        }
        philox_multi<U>(seed, st, in, w0, w1);
#pragma GCC unroll 8
        for (int u = 0; u < U; ++u) put(i + (size_t)u * V, V, box_muller_vec(w0[u], w1[u]));
    }
    for (; i < n; i += V) put(i, n - i < (size_t)V ? (int)(n - i) : V, normal_vec(seed, start(i), inc(i)));
}
