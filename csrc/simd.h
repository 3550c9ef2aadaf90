// The SIMD layer of the CPU kernels: the vector types (V floats, the chains of one vector), loads,
// stores, broadcast, select, and the few operations each instruction set spells differently (FMA,
// sqrt, double FMA). Everything above this layer is written once in GCC vector extensions and
// these helpers, so it compiles unchanged for every JEBM_VW / JEBM_FMA a chain_<isa>.cpp sets.
// Part of isa_kernels.h: included inside the ISA's namespace, after the system headers.
#pragma once
#ifndef JEBM_ISA_KERNELS
#error "simd.h is a layer of the CPU kernels: include isa_kernels.h (from a chain_<isa>.cpp)"
#endif

#define JEBM_INLINE inline __attribute__((always_inline))

// V: floats per vector, the width of every element-wise loop (activations, noise, updates), which
// run over a block's rows as one flat array. NB: chains per block. CV: lanes of a chain vector,
// the width of the per-chain reductions (energies, norms, MALA), which must sum each chain's terms
// in the same order whatever the block: CV = V when a block holds whole vectors of chains (the
// wide kernels, TC chain vectors per block), CV = NB in a narrow block (NB < V: 4 or 8 chains).
// The GEMM of a wide block runs along the chains (each weight broadcast to V chains), that of a
// narrow block along the output features (each input broadcast to V features): kFeatureGemm.
constexpr int V = JEBM_VW;
constexpr int NB = JEBM_NB;
constexpr int CV = NB < V ? NB : V;
constexpr int TC = NB / CV;
constexpr int TR = JEBM_TILE_R;
constexpr bool kFeatureGemm = NB < V;
static_assert(NB % CV == 0 && (NB >= V ? NB % V == 0 : V % NB == 0), "NB: a multiple of V, or a divisor of it");

typedef float vf __attribute__((vector_size(V * 4)));
typedef int32_t vi __attribute__((vector_size(V * 4)));
typedef uint32_t vu __attribute__((vector_size(V * 4)));
typedef uint64_t vu64 __attribute__((vector_size(V * 8)));
typedef int64_t vi64 __attribute__((vector_size(V * 8)));
typedef double vd __attribute__((vector_size(V * 8)));
typedef float cf __attribute__((vector_size(CV * 4)));   // one chain vector (= vf in wide blocks)
typedef int32_t ci __attribute__((vector_size(CV * 4)));

JEBM_INLINE vf ld(const float* p) {
    vf v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}
JEBM_INLINE void st(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
// A true broadcast (vbroadcastss, from memory where the operand is there). Not `vf{} + s`: without
// fast-math the compiler must execute that addition (0 + -0 is +0), an extra op per broadcast.
JEBM_INLINE vf splat(float s) {
#if JEBM_FMA == 512
    return (vf)_mm512_set1_ps(s);
#elif JEBM_FMA == 256
    return (vf)_mm256_set1_ps(s);
#elif defined(__SSE2__) && JEBM_VW == 4
    return (vf)_mm_set1_ps(s);
#else
    return s - vf{};  // x - 0 == x for every x, so this one folds to a broadcast
#endif
}
JEBM_INLINE vf sel(vi m, vf a, vf b) { return m ? a : b; }

// Flat loops over n floats that need not be a multiple of V (a narrow block's rows): full vectors,
// then one partial one; ldp/stp read and write only the m floats that belong to the array.
JEBM_INLINE vf ldp(const float* p, int m) {
    if (m == V) return ld(p);
    vf v = vf{};
    __builtin_memcpy(&v, p, (size_t)m * sizeof(float));
    return v;
}
JEBM_INLINE void stp(float* p, vf v, int m) {
    if (m == V)
        st(p, v);
    else
        __builtin_memcpy(p, &v, (size_t)m * sizeof(float));
}
template <class F>
JEBM_INLINE void flat_for(size_t n, F f) {
    size_t i = 0;
    for (; i + V <= n; i += V) f(i, V);
    if (i < n) f(i, (int)(n - i));
}

// Chain vectors: CV chains' values of one row of a block.
JEBM_INLINE cf ldc(const float* p) {
    cf v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}
JEBM_INLINE void stc(float* p, cf v) { __builtin_memcpy(p, &v, sizeof v); }
JEBM_INLINE cf splatc(float s) {
#if JEBM_NB >= JEBM_VW
    return splat(s);
#else
    return s - cf{};
#endif
}
JEBM_INLINE cf selc(ci m, cf a, cf b) { return m ? a : b; }

#if JEBM_FMA == 512
JEBM_INLINE vf vfma(vf a, vf b, vf c) { return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
JEBM_INLINE vf vsqrt(vf a) { return (vf)_mm512_sqrt_ps((__m512)a); }
#elif JEBM_FMA == 256
JEBM_INLINE vf vfma(vf a, vf b, vf c) { return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
JEBM_INLINE vf vsqrt(vf a) { return (vf)_mm256_sqrt_ps((__m256)a); }
#elif JEBM_FMA == 128
JEBM_INLINE vf vfma(vf a, vf b, vf c) { return (vf)_mm_fmadd_ps((__m128)a, (__m128)b, (__m128)c); }
JEBM_INLINE vf vsqrt(vf a) { return (vf)_mm_sqrt_ps((__m128)a); }
#else
JEBM_INLINE vf vfma(vf a, vf b, vf c) { return a * b + c; }
JEBM_INLINE vf vsqrt(vf a) {
#if defined(__SSE2__) && JEBM_VW == 4
    return (vf)_mm_sqrt_ps((__m128)a);
#else
    vf r;
    for (int i = 0; i < V; ++i) r[i] = sqrtf(a[i]);
    return r;
#endif
}
#endif

// Round to nearest (ties to even) for |x| < 2^22; exact under -ffp-contract=off.
JEBM_INLINE vf vround(vf x) { return (x + 12582912.0f) - 12582912.0f; }
JEBM_INLINE vd vroundd(vd x) { return (x + 6755399441055744.0) - 6755399441055744.0; }

// a * b + c on double vectors (V doubles: two native registers), fused where the ISA has FMA.
JEBM_INLINE vd vdfma(vd a, vd b, vd c) {
#if JEBM_FMA == 128  // 4 doubles: one ymm register
    return (vd)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#elif JEBM_FMA == 512 || JEBM_FMA == 256
#if JEBM_FMA == 512
    typedef __m512d half;
#define JEBM_FMAD _mm512_fmadd_pd
#else
    typedef __m256d half;
#define JEBM_FMAD _mm256_fmadd_pd
#endif
    half x[2], y[2], z[2];
    __builtin_memcpy(x, &a, sizeof a);
    __builtin_memcpy(y, &b, sizeof b);
    __builtin_memcpy(z, &c, sizeof c);
    z[0] = JEBM_FMAD(x[0], y[0], z[0]);
    z[1] = JEBM_FMAD(x[1], y[1], z[1]);
#undef JEBM_FMAD
    vd r;
    __builtin_memcpy(&r, z, sizeof r);
    return r;
#else
    return a * b + c;
#endif
}
JEBM_INLINE vf vabs(vf x) { return (vf)((vi)x & 0x7fffffff); }
// every lane of a comparison's mask set (a branch that skips work no lane needs)
JEBM_INLINE bool all_set(vi m) {
#if JEBM_FMA == 512
    return _mm512_test_epi32_mask((__m512i)m, (__m512i)m) == (__mmask16)0xFFFF;
#elif JEBM_FMA == 256
    return _mm256_movemask_ps((__m256)m) == 0xFF;
#else
    for (int i = 0; i < V; ++i)
        if (!m[i]) return false;
    return true;
#endif
}
JEBM_INLINE vf vmax(vf a, vf b) { return sel(a > b, a, b); }
// sqrt of a chain vector (correctly rounded, as vsqrt)
JEBM_INLINE cf csqrt(cf a) {
#if JEBM_NB >= JEBM_VW
    return vsqrt(a);
#else
    cf r = a;
    for (int i = 0; i < CV; ++i) r[i] = __builtin_sqrtf(a[i]);
    return r;
#endif
}
JEBM_INLINE constexpr size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }
