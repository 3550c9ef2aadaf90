// The CPU kernels, written once and compiled once per instruction set.
//
// Why three compilations and not one: setup.py builds with the compiler's baseline flags (x86-64 =
// SSE2), so one binary must run everywhere and still use AVX-512 where it exists. Each of
// chain_avx512.cpp, chain_avx2.cpp and chain_generic.cpp includes the system headers, then sets
// `#pragma GCC target(...)` for its instruction set, then includes this file inside its own
// namespace with its own vector width and register tile. bindings.cpp picks one table at run time
// with __builtin_cpu_supports (JEBM_ISA=generic|avx2|avx512 overrides, for tests). This is GCC's
// function multiversioning done per translation unit: the code below instantiates no
// standard-library templates and every helper has internal linkage (static / anonymous), so no
// AVX-512 instruction can leak into the code a CPU without it runs.
//
// Data layout: chains are the vector lanes. A block of NB = TC * V chains is held feature-major,
// [features, NB]: row j of a layer holds that feature for NB chains. Each chain's arithmetic then
// never depends on V, on the block or on the thread count (every lane accumulates its dot
// products in the same k order), and odd dims (1, 3, 17, 129) cost no padding. A Linear layer on
// a block is the GEMM out[N, NB] = W[N, K] x in[K, NB]: a register tile of TR output rows x TC
// vectors of chains, the K loop broadcasting packed weights (each broadcast feeds TC FMAs) and
// loading TC vectors of the input row. Weights are packed once per call into TR-row panels for the
// forward (W) and for the input-gradient (W^T) GEMMs. Each thread owns whole blocks and runs all K
// steps of them: chains are independent, so the chain loop has no barrier at all.
//
// Expected macros: JEBM_NS (namespace), JEBM_VW (floats per vector), JEBM_FMA (512, 256, 128 or 0:
// the FMA instructions' width in bits; 128 = AVX2's FMA on 4-float vectors),
// JEBM_TILE_R, JEBM_TILE_C.

namespace jebm {
namespace JEBM_NS {
namespace {

#define JEBM_INLINE inline __attribute__((always_inline))

constexpr int V = JEBM_VW;
constexpr int TC = JEBM_TILE_C;
constexpr int NB = V * TC;
constexpr int TR = JEBM_TILE_R;

typedef float vf __attribute__((vector_size(V * 4)));
typedef int32_t vi __attribute__((vector_size(V * 4)));
typedef uint32_t vu __attribute__((vector_size(V * 4)));
typedef uint64_t vu64 __attribute__((vector_size(V * 8)));
typedef int64_t vi64 __attribute__((vector_size(V * 8)));
typedef double vd __attribute__((vector_size(V * 8)));

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
JEBM_INLINE vf vmax(vf a, vf b) { return sel(a > b, a, b); }

// ---------------------------------------------------------------- float vector math (~1-2 ulp)

// exp: Cephes expf (range reduction by ln 2 in two parts, degree-6 polynomial); the 2^n scaling is
// split in two so results down to the subnormal range round once; overflow gives inf, NaN stays.
JEBM_INLINE vf vexp(vf x) {
    const vf xc = sel(x > 88.7228317f, splat(88.7228317f), sel(x < -103.972084f, splat(-103.972084f), x));
    const vf n = vround(xc * 1.44269504088896341f);
    vf r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = vfma(p, r, splat(1.3981999507e-3f));
    p = vfma(p, r, splat(8.3334519073e-3f));
    p = vfma(p, r, splat(4.1665795894e-2f));
    p = vfma(p, r, splat(1.6666665459e-1f));
    p = vfma(p, r, splat(5.0000001201e-1f));
    vf y = vfma(p, r * r, r) + 1.0f;
    const vi ni = __builtin_convertvector(n, vi);
    const vi n1 = ni >> 1;
    const vi n2 = ni - n1;
    y = y * (vf)((n1 + 127) << 23);
    y = y * (vf)((n2 + 127) << 23);
    y = sel(x > 88.7228317f, splat(__builtin_inff()), y);
    y = sel(x < -103.972084f, splat(0.0f), y);
    return sel(x != x, x, y);
}

// log: Cephes logf (mantissa in [sqrt(1/2), sqrt(2)), degree-8 polynomial); subnormals are
// rescaled first; 0 -> -inf, negative -> NaN, inf -> inf.
JEBM_INLINE vf vlog(vf x) {
    const vi sub = x < 1.17549435e-38f;
    vf xs = sel(sub, x * 8388608.0f, x);
    vi bits = (vi)xs;
    vi e = ((bits >> 23) & 0xff) - 126;
    e = e - (sub & 23);
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
    vf r = m + y;
    r = r + ef * 0.693359375f;
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
JEBM_INLINE vf verf_ex(vf x, vf ex) {
    const vf a = vabs(x);
    const vf x2 = x * x;
    vf p = splat(7.933493808589787e-05f);
    p = vfma(p, x2, splat(-0.0008034846623087843f));
    p = vfma(p, x2, splat(0.005191218373780532f));
    p = vfma(p, x2, splat(-0.026855399449717487f));
    p = vfma(p, x2, splat(0.11283625725009266f));
    p = vfma(p, x2, splat(-0.37612629877665305f));
    p = vfma(p, x2, splat(1.1283791665931497f));
    const vf small = p * x;
    const vf ac = sel(a < 1.0f, splat(1.0f), a);
    const vf t = 1.0f / ac;
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
    vf big = 1.0f - ex * q * t;
    big = sel(a >= 4.0f, splat(1.0f), big);
    const vf bigs = (vf)((vi)big | ((vi)x & (int32_t)0x80000000));
    const vf r = sel(a < 1.0f, small, bigs);
    return sel(x != x, x, r);
}

JEBM_INLINE vf verf(vf x) { return verf_ex(x, vexp(-(x * x))); }

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

// ---------------------------------------------------------------------------------- activations

template <int ACT>
JEBM_INLINE vf act_v(float p, vf a, vf& d) {
    if constexpr (ACT == ACT_LEAKY_RELU) {
        const vi pos = a > 0.0f;
        d = sel(pos, splat(1.0f), splat(p));
        return sel(pos, a, a * p);
    } else if constexpr (ACT == ACT_RELU) {
        const vi pos = a > 0.0f;
        d = sel(pos, splat(1.0f), splat(0.0f));
        return sel(pos, a, sel(a != a, a, splat(0.0f)));
    } else if constexpr (ACT == ACT_GELU) {
        const vf x = a * kSqrt1_2;
        const vf ex = vexp(-(x * x));  // exp(-a^2 / 2): erf's tail and the normal density
        const vf e1 = 1.0f + verf_ex(x, ex);
        d = 0.5f * e1 + a * (kInvSqrt2Pi * ex);
        return (a * 0.5f) * e1;
    } else if constexpr (ACT == ACT_GELU_TANH) {
        const vf a2 = a * a;
        const vf inner = kSqrt2OverPi * (a + kGeluTanhC * a2 * a);
        const vf t = vtanh(inner);
        const vf dinner = kSqrt2OverPi * (1.0f + 3.0f * kGeluTanhC * a2);
        d = 0.5f * (1.0f + t) + 0.5f * a * (1.0f - t * t) * dinner;
        return 0.5f * a * (1.0f + t);
    } else if constexpr (ACT == ACT_SILU) {
        const vf e1 = 1.0f + vexp(-a);
        const vf s = 1.0f / e1;
        d = s * (1.0f + a * (1.0f - s));
        return a / e1;
    } else if constexpr (ACT == ACT_SOFTPLUS) {
        const vf ab = a * p;
        const vi lin = ab > kSoftplusThreshold;
        const vf e = vexp(sel(lin, splat(0.0f), ab));
        d = sel(lin, splat(1.0f), e / (e + 1.0f));
        return sel(lin, a, vlog1p(e) / p);
    } else if constexpr (ACT == ACT_TANH) {
        const vf t = vtanh(a);
        d = 1.0f - t * t;
        return t;
    } else {
        d = splat(1.0f);
        return a;
    }
}

template <int ACT>
void act_rows_t(float p, float* buf, float* der, size_t n) {
    for (size_t i = 0; i < n; i += V) {
        vf d;
        const vf v = act_v<ACT>(p, ld(buf + i), d);
        st(buf + i, v);
        st(der + i, d);
    }
}

// buf[n] <- act(buf), der[n] <- act'(buf); n a multiple of V.
void act_rows(int act, float p, float* buf, float* der, size_t n) {
    switch (act) {
    case ACT_LEAKY_RELU: act_rows_t<ACT_LEAKY_RELU>(p, buf, der, n); break;
    case ACT_GELU: act_rows_t<ACT_GELU>(p, buf, der, n); break;
    case ACT_GELU_TANH: act_rows_t<ACT_GELU_TANH>(p, buf, der, n); break;
    case ACT_SILU: act_rows_t<ACT_SILU>(p, buf, der, n); break;
    case ACT_SOFTPLUS: act_rows_t<ACT_SOFTPLUS>(p, buf, der, n); break;
    case ACT_TANH: act_rows_t<ACT_TANH>(p, buf, der, n); break;
    case ACT_RELU: act_rows_t<ACT_RELU>(p, buf, der, n); break;
    default: act_rows_t<ACT_IDENTITY>(p, buf, der, n); break;
    }
}

// ----------------------------------------------------------------------------------------- GEMM

enum { INIT_ZERO = 0, INIT_BIAS = 1, INIT_ACC = 2 };

// out[R, NB] (=|+=) W_panel[R, K] x in[K, NB]; the panel is packed [k][r].
template <int R>
inline void gemm_tile(const float* __restrict w, int K, const float* __restrict in, float* __restrict out,
                      int mode, const float* __restrict bias) {
    vf acc[R][TC];
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int c = 0; c < TC; ++c)
            acc[r][c] = mode == INIT_ACC ? ld(out + r * NB + c * V) : (mode == INIT_BIAS ? splat(bias[r]) : vf{});
    }
    for (int k = 0; k < K; ++k) {
        vf a[TC];
#pragma GCC unroll 4
        for (int c = 0; c < TC; ++c) a[c] = ld(in + (size_t)k * NB + c * V);
        const float* wk = w + (size_t)k * R;
#pragma GCC unroll 32
        for (int r = 0; r < R; ++r) {
            const vf b = splat(wk[r]);
#pragma GCC unroll 4
            for (int c = 0; c < TC; ++c) acc[r][c] = vfma(b, a[c], acc[r][c]);
        }
    }
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int c = 0; c < TC; ++c) st(out + r * NB + c * V, acc[r][c]);
    }
}

template <int R>
inline void gemm_rem(int r, const float* w, int K, const float* in, float* out, int mode, const float* bias) {
    if (r == R) {
        gemm_tile<R>(w, K, in, out, mode, bias);
    } else if constexpr (R > 1) {
        gemm_rem<R - 1>(r, w, K, in, out, mode, bias);
    }
}

// out[N, NB] = W[N, K] x in[K, NB] (+ bias, or += out); `packed` from pack_panels.
void gemm(const float* packed, int N, int K, const float* in, float* out, int mode, const float* bias) {
    int n = 0;
    for (; n + TR <= N; n += TR)
        gemm_tile<TR>(packed + (size_t)n * K, K, in, out + (size_t)n * NB, mode, bias ? bias + n : nullptr);
    if (n < N) {
        if constexpr (TR > 1)
            gemm_rem<TR - 1>(N - n, packed + (size_t)n * K, K, in, out + (size_t)n * NB, mode,
                             bias ? bias + n : nullptr);
    }
}

// Packs the N x K matrix M (M[n][k] = W[n*K + k], or W[k*N + n] when `transposed`) in TR-row
// panels, each [k][r]; the panel of rows n0.. starts at n0 * K.
void pack_panels(const float* W, int N, int K, bool transposed, float* dst) {
    for (int n0 = 0; n0 < N; n0 += TR) {
        const int R = N - n0 < TR ? N - n0 : TR;
        float* p = dst + (size_t)n0 * K;
        for (int k = 0; k < K; ++k)
            for (int r = 0; r < R; ++r)
                p[(size_t)k * R + r] = transposed ? W[(size_t)k * N + n0 + r] : W[(size_t)(n0 + r) * K + k];
    }
}

// ------------------------------------------------------------------------------------ the model

struct PMLP {
    int nl;
    int sz[kMaxLinear + 1];
    int act, out_act;
    float p;
    float* fw[kMaxLinear];   // W_i panels (forward)
    float* bw[kMaxLinear];   // W_i^T panels (input gradient)
    float* bias[kMaxLinear]; // copies, or nullptr
    int maxw;
};

struct Model {
    ModelDesc d;
    PMLP m[kMaxMLPs];
    int D;
    int off[kMaxLatent + 1];
    int go_rows;             // rows of the output-gradient scratch
    float* mem;
};

struct MWork {
    float* a[kMaxLinear];    // layer outputs (after activation) [sz[i+1], NB]
    float* d[kMaxLinear];    // activation derivatives
    float* t0;
    float* t1;
};

struct Work {
    float *X, *G, *XP, *GP, *XI, *Z, *GZ;
    float* S[kMaxLatent];
    float* E[kMaxLatent];
    float* XO;
    float* GO;
    float* U;
    float* UP;
    float* lane;             // NB scratch
    MWork mw[kMaxMLPs];
    float* mem;
};

void* pack_model(const ModelDesc* desc) {
    Model* M = (Model*)malloc(sizeof(Model));
    if (!M) return nullptr;
    M->d = *desc;
    size_t total = 0;
    for (int i = 0; i < desc->n_mlps; ++i) {
        const MLPDesc& md = desc->mlps[i];
        for (int l = 0; l < md.n_layers; ++l) {
            const size_t nk = (size_t)md.sizes[l] * md.sizes[l + 1];
            total += 2 * nk + (size_t)md.sizes[l + 1] + 32;
        }
    }
    float* mem = nullptr;
    if (posix_memalign((void**)&mem, 64, (total ? total : 1) * sizeof(float)) != 0) {
        free(M);
        return nullptr;
    }
    M->mem = mem;
    float* cur = mem;
    for (int i = 0; i < desc->n_mlps; ++i) {
        const MLPDesc& md = desc->mlps[i];
        PMLP& pm = M->m[i];
        pm.nl = md.n_layers;
        pm.act = md.act;
        pm.out_act = md.out_act;
        pm.p = md.act_param;
        pm.maxw = 1;
        for (int l = 0; l <= md.n_layers; ++l) {
            pm.sz[l] = md.sizes[l];
            if (md.sizes[l] > pm.maxw) pm.maxw = md.sizes[l];
        }
        for (int l = 0; l < md.n_layers; ++l) {
            const int N = md.sizes[l + 1], K = md.sizes[l];
            pm.fw[l] = cur;
            pack_panels(md.w[l], N, K, false, cur);
            cur += (size_t)N * K + 16;
            pm.bw[l] = cur;
            pack_panels(md.w[l], K, N, true, cur);
            cur += (size_t)N * K + 16;
            if (md.b[l]) {
                pm.bias[l] = cur;
                __builtin_memcpy(cur, md.b[l], (size_t)N * sizeof(float));
            } else {
                pm.bias[l] = nullptr;
            }
            cur += N;
        }
    }
    M->D = 0;
    for (int l = 0; l < desc->L; ++l) {
        M->off[l] = M->D;
        M->D += desc->dims[l];
    }
    M->off[desc->L] = M->D;
    int go = 1;
    for (int l = 0; l < desc->L; ++l)
        if (2 * desc->dims[l] > go) go = 2 * desc->dims[l];
    if (desc->decoder >= 0 && desc->P > go) go = desc->P;
    M->go_rows = go;
    return M;
}

void release_model(void* p) {
    Model* M = (Model*)p;
    if (!M) return;
    free(M->mem);
    free(M);
}

// Carves one block's workspace out of `base` (or only counts, when base is null); floats.
size_t carve(const Model& M, float* base, Work* w) {
    size_t n = 0;
    auto take = [&](size_t rows) -> float* {
        float* p = base ? base + n : nullptr;
        n += rows * NB + 16;  // 16 floats apart: each region starts 64-byte aligned
        return p;
    };
    const ModelDesc& d = M.d;
    Work tmp;
    Work& W = w ? *w : tmp;
    W.X = take(M.D);
    W.G = take(M.D);
    W.XP = take(M.D);
    W.GP = take(M.D);
    W.XI = take(M.D);
    W.Z = take(M.D);
    W.GZ = take(M.D);
    for (int l = 0; l < d.L; ++l) {
        W.S[l] = take(d.dims[l]);
        W.E[l] = take(d.dims[l]);
    }
    W.XO = take(d.decoder >= 0 ? d.P : 1);
    W.GO = take(M.go_rows);
    W.U = take(1);
    W.UP = take(1);
    W.lane = take(1);
    for (int i = 0; i < d.n_mlps; ++i) {
        const PMLP& pm = M.m[i];
        for (int l = 0; l < pm.nl; ++l) {
            W.mw[i].a[l] = take(pm.sz[l + 1]);
            W.mw[i].d[l] = take(pm.sz[l + 1]);
        }
        W.mw[i].t0 = take(pm.maxw);
        W.mw[i].t1 = take(pm.maxw);
    }
    return n;
}

bool alloc_work(const Model& M, Work& W) {
    const size_t n = carve(M, nullptr, nullptr);
    float* mem = nullptr;
    if (posix_memalign((void**)&mem, 64, n * sizeof(float)) != 0) return false;
    __builtin_memset(mem, 0, n * sizeof(float));  // padding lanes start finite
    carve(M, mem, &W);
    W.mem = mem;
    return true;
}

// ------------------------------------------------------------------------- MLP on a chain block

void mlp_fwd(const PMLP& m, MWork& w, const float* in) {
    const float* cur = in;
    for (int i = 0; i < m.nl; ++i) {
        gemm(m.fw[i], m.sz[i + 1], m.sz[i], cur, w.a[i], m.bias[i] ? INIT_BIAS : INIT_ZERO, m.bias[i]);
        const int act = i + 1 < m.nl ? m.act : m.out_act;
        if (act != ACT_IDENTITY) act_rows(act, m.p, w.a[i], w.d[i], (size_t)m.sz[i + 1] * NB);
        cur = w.a[i];
    }
}

inline void mul_rows(float* dst, const float* a, const float* b, size_t n) {
    for (size_t i = 0; i < n; i += V) st(dst + i, ld(a + i) * ld(b + i));
}

// gin[in, NB] += d out / d in ^T gout[out, NB], with the activations of the last mlp_fwd.
void mlp_bwd(const PMLP& m, MWork& w, const float* gout, float* gin) {
    const float* cur = gout;
    const int L = m.nl;
    if (m.out_act != ACT_IDENTITY) {
        mul_rows(w.t0, gout, w.d[L - 1], (size_t)m.sz[L] * NB);
        cur = w.t0;
    }
    for (int i = L - 1; i >= 0; --i) {
        if (i == 0) {
            gemm(m.bw[0], m.sz[0], m.sz[1], cur, gin, INIT_ACC, nullptr);
        } else {
            float* nxt = cur == w.t0 ? w.t1 : w.t0;
            gemm(m.bw[i], m.sz[i], m.sz[i + 1], cur, nxt, INIT_ZERO, nullptr);
            if (m.act != ACT_IDENTITY) mul_rows(nxt, nxt, w.d[i - 1], (size_t)m.sz[i] * NB);
            cur = nxt;
        }
    }
}

// ---------------------------------------------------------------------- energy and its gradient

// eps-space: Z <- z(x) top-down; keeps sigma (S) and exp(raw) (E) for the backward pass.
void z_of_eps(const Model& M, Work& W, const float* x) {
    const ModelDesc& d = M.d;
    const int L = d.L;
    __builtin_memcpy(W.Z + (size_t)M.off[L - 1] * NB, x + (size_t)M.off[L - 1] * NB,
                     (size_t)d.dims[L - 1] * NB * sizeof(float));
    for (int l = L - 2; l >= 0; --l) {
        const int gi = d.gauss[l];
        const PMLP& g = M.m[gi];
        MWork& gw = W.mw[gi];
        mlp_fwd(g, gw, W.Z + (size_t)M.off[l + 1] * NB);
        const float* out = gw.a[g.nl - 1];
        const size_t dl = (size_t)d.dims[l] * NB;
        const float fl = d.sigma_floor[l];
        const float* xl = x + (size_t)M.off[l] * NB;
        float* zl = W.Z + (size_t)M.off[l] * NB;
        for (size_t i = 0; i < dl; i += V) {
            const vf e = vexp(ld(out + dl + i));
            const vf s = e + fl;
            st(W.E[l] + i, e);
            st(W.S[l] + i, s);
            st(zl + i, ld(out + i) + s * ld(xl + i));
        }
    }
}

JEBM_INLINE vf sum_sq_rows(const float* p, int rows, int c) {
    vf acc = vf{};
    for (int j = 0; j < rows; ++j) {
        const vf v = ld(p + (size_t)j * NB + c * V);
        acc = acc + v * v;
    }
    return acc;
}

// u[NB] = U(x), gx[D, NB] = dU/dx for one block; x is the sampled variable (z or eps).
// ext_u [NB] and ext_g [d_1, NB] (the conv decoder's term from autograd) are optional.
void eval_block(const Model& M, Work& W, const float* x, float* u, float* gx, const float* ext_u,
                const float* ext_g) {
    const ModelDesc& d = M.d;
    const int L = d.L;
    const bool eps = d.space == 1;
    const float* z = x;
    float* gz = gx;
    if (eps) {
        z_of_eps(M, W, x);
        z = W.Z;
        gz = W.GZ;
    }
    __builtin_memset(gz, 0, (size_t)M.D * NB * sizeof(float));
    vf T[TC], Ub[TC];
    for (int c = 0; c < TC; ++c) T[c] = Ub[c] = vf{};
    float* GO = W.GO;
    for (int c = 0; c < TC; ++c) st(GO + c * V, splat(d.energy_sign));  // row 0: dU/df = sign
    // sum_l f_l(z_l) + f_0(concat z): each term's forward, then its input-gradient
    for (int l = 0; l < L; ++l) {
        const int ti = d.term[l];
        if (ti < 0) continue;
        const PMLP& m = M.m[ti];
        mlp_fwd(m, W.mw[ti], z + (size_t)M.off[l] * NB);
        const float* o = W.mw[ti].a[m.nl - 1];
        for (int c = 0; c < TC; ++c) T[c] = T[c] + ld(o + c * V);
        mlp_bwd(m, W.mw[ti], GO, gz + (size_t)M.off[l] * NB);
    }
    if (d.joint >= 0) {
        const PMLP& m = M.m[d.joint];
        mlp_fwd(m, W.mw[d.joint], z);
        const float* o = W.mw[d.joint].a[m.nl - 1];
        for (int c = 0; c < TC; ++c) T[c] = T[c] + ld(o + c * V);
        mlp_bwd(m, W.mw[d.joint], GO, gz);
    }
    // -log p_beta(z) (z-space) or ||eps||^2 / 2 (eps-space, its gradient added at the end)
    if (!eps && !d.has_base) {  // N(0, I) on top, the inter-layer Gaussians below
        const float* zt = z + (size_t)M.off[L - 1] * NB;
        float* gt = gz + (size_t)M.off[L - 1] * NB;
        for (int c = 0; c < TC; ++c) Ub[c] = 0.5f * sum_sq_rows(zt, d.dims[L - 1], c);
        for (size_t i = 0; i < (size_t)d.dims[L - 1] * NB; i += V) st(gt + i, ld(gt + i) + ld(zt + i));
        for (int l = 0; l < L - 1; ++l) {
            const int gi = d.gauss[l];
            const PMLP& g = M.m[gi];
            mlp_fwd(g, W.mw[gi], z + (size_t)M.off[l + 1] * NB);
            const float* out = W.mw[gi].a[g.nl - 1];
            const int dl = d.dims[l];
            const float fl = d.sigma_floor[l];
            const float* zl = z + (size_t)M.off[l] * NB;
            float* gl = gz + (size_t)M.off[l] * NB;
            for (int c = 0; c < TC; ++c) {
                vf acc = vf{};
                for (int j = 0; j < dl; ++j) {
                    const size_t i = (size_t)j * NB + c * V;
                    const vf mu = ld(out + i);
                    const vf e = vexp(ld(out + (size_t)dl * NB + i));
                    const vf s = e + fl;
                    const vf r = (ld(zl + i) - mu) / s;
                    acc = acc + (0.5f * r * r + vlog(s));
                    const vf rs = r / s;
                    st(gl + i, ld(gl + i) + rs);
                    st(GO + i, -rs);
                    st(GO + (size_t)dl * NB + i, ((1.0f - r * r) / s) * e);
                }
                Ub[c] = Ub[c] + acc;
            }
            mlp_bwd(g, W.mw[gi], GO, gz + (size_t)M.off[l + 1] * NB);
        }
    } else if (!eps && d.has_base) {
        for (int l = 0; l < L; ++l) {
            if (!d.base_on[l]) continue;
            const float den = d.base_den[l];
            const float two_over = 2.0f / den;
            const float* zl = z + (size_t)M.off[l] * NB;
            float* gl = gz + (size_t)M.off[l] * NB;
            for (int c = 0; c < TC; ++c) Ub[c] = Ub[c] + sum_sq_rows(zl, d.dims[l], c) / den;
            for (size_t i = 0; i < (size_t)d.dims[l] * NB; i += V) st(gl + i, ld(gl + i) + ld(zl + i) * two_over);
        }
    } else if (eps) {
        for (int c = 0; c < TC; ++c) {
            vf acc = vf{};
            for (int l = 0; l < L; ++l) acc = acc + sum_sq_rows(x + (size_t)M.off[l] * NB, d.dims[l], c);
            Ub[c] = 0.5f * acc;
        }
    }
    vf Uv[TC];
    for (int c = 0; c < TC; ++c) Uv[c] = d.energy_sign * T[c] + Ub[c];
    // the posterior's ||x - g(z_1)||^2 / (2 sigma_x^2): an MLP decoder here, or given from outside
    if (d.decoder >= 0) {
        const PMLP& m = M.m[d.decoder];
        mlp_fwd(m, W.mw[d.decoder], z);
        const float* o = W.mw[d.decoder].a[m.nl - 1];
        const float den = d.dec_den;
        const float gscale = -2.0f / den;
        for (int c = 0; c < TC; ++c) {
            vf acc = vf{};
            for (int p = 0; p < d.P; ++p) {
                const size_t i = (size_t)p * NB + c * V;
                const vf diff = ld(W.XO + i) - ld(o + i);
                acc = acc + diff * diff;
                st(GO + i, diff * gscale);
            }
            Uv[c] = Uv[c] + acc / den;
        }
        mlp_bwd(m, W.mw[d.decoder], GO, gz);
    }
    if (ext_u) {
        for (int c = 0; c < TC; ++c) Uv[c] = Uv[c] + ld(ext_u + c * V);
        for (size_t i = 0; i < (size_t)d.dims[0] * NB; i += V) st(gz + i, ld(gz + i) + ld(ext_g + i));
    }
    if (eps) {
        // back through z_l = mu_l(z_{l+1}) + sigma_l(z_{l+1}) eps_l, bottom layer first, so that
        // dU/dz_{l+1} is complete before it is pushed further up
        for (int l = 0; l < L - 1; ++l) {
            const int gi = d.gauss[l];
            const PMLP& g = M.m[gi];
            const size_t dl = (size_t)d.dims[l] * NB;
            const float* gzl = gz + (size_t)M.off[l] * NB;
            const float* xl = x + (size_t)M.off[l] * NB;
            float* gxl = gx + (size_t)M.off[l] * NB;
            for (size_t i = 0; i < dl; i += V) {
                const vf gv = ld(gzl + i);
                st(gxl + i, gv * ld(W.S[l] + i) + ld(xl + i));
                st(GO + i, gv);
                st(GO + dl + i, gv * ld(xl + i) * ld(W.E[l] + i));
            }
            mlp_bwd(g, W.mw[gi], GO, gz + (size_t)M.off[l + 1] * NB);
        }
        const size_t top = (size_t)M.off[L - 1] * NB;
        for (size_t i = 0; i < (size_t)d.dims[L - 1] * NB; i += V)
            st(gx + top + i, ld(gz + top + i) + ld(x + top + i));
    }
    if (d.has_ps) {
        for (int l = 0; l < L; ++l) {
            const float den = d.ps_den[l];
            const float two_over = 2.0f / den;
            const float* xl = x + (size_t)M.off[l] * NB;
            float* gl = gx + (size_t)M.off[l] * NB;
            for (int c = 0; c < TC; ++c) Uv[c] = Uv[c] + sum_sq_rows(xl, d.dims[l], c) / den;
            for (size_t i = 0; i < (size_t)d.dims[l] * NB; i += V) st(gl + i, ld(gl + i) + ld(xl + i) * two_over);
        }
    }
    for (int c = 0; c < TC; ++c) st(u + c * V, Uv[c]);
}

// ------------------------------------------------------------------------- block in/out, chains

// rows [d, NB] <- chains b0..b0+nb-1 of src [B, d]; lanes past nb are zero.
void load_rows(const float* src, int d, int64_t b0, int nb, float* dst) {
    for (int j = 0; j < d; ++j)
        for (int i = nb; i < NB; ++i) dst[(size_t)j * NB + i] = 0.0f;
    for (int i = 0; i < nb; ++i) {
        const float* s = src + (size_t)(b0 + i) * d;
        for (int j = 0; j < d; ++j) dst[(size_t)j * NB + i] = s[j];
    }
}

void store_rows(const float* rows, int d, int64_t b0, int nb, float* dst) {
    for (int i = 0; i < nb; ++i) {
        float* o = dst + (size_t)(b0 + i) * d;
        for (int j = 0; j < d; ++j) o[j] = rows[(size_t)j * NB + i];
    }
}

void chain_block(const Model& M, Work& W, const ChainArgs& A, int64_t b0, int nb) {
    const ModelDesc& d = M.d;
    const int L = d.L;
    const int64_t B = A.B;
    for (int l = 0; l < L; ++l) load_rows(A.x[l], d.dims[l], b0, nb, W.X + (size_t)M.off[l] * NB);
    if (d.decoder >= 0) load_rows(A.xobs, d.P, b0, nb, W.XO);
    float *X = W.X, *G = W.G, *XP = W.XP, *GP = W.GP, *U = W.U, *UP = W.UP;
    const vu lane = lane_index();
    if (A.K > 0) eval_block(M, W, X, U, G, nullptr, nullptr);
    for (int64_t k = 0; k < A.K; ++k) {
        if (A.st_energy) {
            for (int i = 0; i < nb; ++i) A.st_energy[k * B + b0 + i] = U[i];
            for (int c = 0; c < TC; ++c) st(W.lane + c * V, vsqrt(sum_sq_rows(G, M.D, c)));
            for (int i = 0; i < nb; ++i) A.st_gnorm[k * B + b0 + i] = W.lane[i];
        }
        const uint64_t base = A.offset + (uint64_t)k * A.stride;
        // the proposal x - h g + c xi, xi at the problem.py layout
        for (int l = 0; l < L; ++l) {
            const int dl = d.dims[l];
            const vf h = splat(A.h[l]), cc = splat(A.c[l]);
            vu inc[TC];
            for (int c = 0; c < TC; ++c) inc[c] = (lane + (uint32_t)(c * V)) * (uint32_t)dl;
            const uint64_t lbase = base + (uint64_t)B * M.off[l] + (uint64_t)b0 * dl;
            for (int j = 0; j < dl; ++j) {
                for (int c = 0; c < TC; ++c) {
                    const size_t i = (size_t)(M.off[l] + j) * NB + c * V;
                    const vf xi = normal_vec(A.seed, lbase + j, inc[c]);
                    st(XP + i, (ld(X + i) - h * ld(G + i)) + cc * xi);
                    if (A.mala) st(W.XI + i, xi);
                }
            }
        }
        if (!A.mala) {
            float* t = X;
            X = XP;
            XP = t;
            if (k + 1 < A.K) eval_block(M, W, X, U, G, nullptr, nullptr);
            continue;
        }
        eval_block(M, W, XP, UP, GP, nullptr, nullptr);
        const uint64_t ubase = base + (uint64_t)B * M.D + (uint64_t)b0;
        for (int c = 0; c < TC; ++c) {
            vf qf = vf{}, qb = vf{};
            for (int l = 0; l < L; ++l) {
                const vf h = splat(A.h[l]);
                vf sf = vf{}, sb = vf{};
                for (int j = 0; j < d.dims[l]; ++j) {
                    const size_t i = (size_t)(M.off[l] + j) * NB + c * V;
                    const vf xi = ld(W.XI + i);
                    sf = sf + xi * xi;
                    const vf r = (ld(X + i) - ld(XP + i)) + h * ld(GP + i);
                    sb = sb + r * r;
                }
                qf = qf + sf;
                qb = qb + sb / A.mala_den[l];
            }
            const vf log_q_fwd = -0.5f * qf;
            const vf log_q_bwd = -qb;
            const vf la = ((ld(U + c * V) - ld(UP + c * V)) + log_q_bwd) - log_q_fwd;
            const vf un = uniform_vec(A.seed, ubase + (uint64_t)(c * V), lane);
            const vi acc = vlog(un) < la;
            st(U + c * V, sel(acc, ld(UP + c * V), ld(U + c * V)));
            for (int r = 0; r < M.D; ++r) {
                const size_t i = (size_t)r * NB + c * V;
                st(X + i, sel(acc, ld(XP + i), ld(X + i)));
                st(G + i, sel(acc, ld(GP + i), ld(G + i)));
            }
            if (A.st_accept) {
                for (int i = 0; i < V; ++i) {
                    const int lane_i = c * V + i;
                    if (lane_i < nb) A.st_accept[k * B + b0 + lane_i] = acc[i] ? 1 : 0;
                }
            }
        }
    }
    for (int l = 0; l < L; ++l) store_rows(X + (size_t)M.off[l] * NB, d.dims[l], b0, nb, A.out[l]);
}

// Runs fn(W, b0, nb) on every block of NB chains (the last one holding nb <= NB), the blocks shared
// by the threads, each thread with its own scratch. Returns 1 if a thread's scratch could not be
// allocated (its blocks are then skipped; the caller reports out of memory).
template <class Fn>
int for_each_block(const Model& M, int64_t B, int nthreads, Fn fn) {
    const int64_t nblk = (B + NB - 1) / NB;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        Work W;
        const bool ok = alloc_work(M, W);
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t blk = 0; blk < nblk; ++blk) {
            if (!ok) continue;
            const int64_t b0 = blk * NB;
            fn(W, b0, (int)(B - b0 < NB ? B - b0 : NB));
        }
        if (ok) free(W.mem);
    }
    return failed;
}

int run_chain(const void* mp, const ChainArgs* A) {
    const Model& M = *(const Model*)mp;
    return for_each_block(M, A->B, A->nthreads, [&](Work& W, int64_t b0, int nb) { chain_block(M, W, *A, b0, nb); });
}

int run_eval(const void* mp, const EvalArgs* A) {
    const Model& M = *(const Model*)mp;
    const ModelDesc& d = M.d;
    return for_each_block(M, A->B, A->nthreads, [&](Work& W, int64_t b0, int nb) {
        for (int l = 0; l < d.L; ++l) load_rows(A->x[l], d.dims[l], b0, nb, W.X + (size_t)M.off[l] * NB);
        if (A->only_z1) {
            const float* z1 = W.X;
            if (d.space == 1) {
                z_of_eps(M, W, W.X);
                z1 = W.Z;
            }
            store_rows(z1, d.dims[0], b0, nb, A->z1);
            return;
        }
        if (d.decoder >= 0) load_rows(A->xobs, d.P, b0, nb, W.XO);
        const float* eu = nullptr;
        const float* eg = nullptr;
        if (A->ext_u) {
            for (int i = 0; i < NB; ++i) W.UP[i] = i < nb ? A->ext_u[b0 + i] : 0.0f;
            load_rows(A->ext_g, d.dims[0], b0, nb, W.GP);
            eu = W.UP;
            eg = W.GP;
        }
        eval_block(M, W, W.X, W.U, W.G, eu, eg);
        for (int i = 0; i < nb; ++i) A->u[b0 + i] = W.U[i];
        for (int l = 0; l < d.L; ++l) store_rows(W.G + (size_t)M.off[l] * NB, d.dims[l], b0, nb, A->g[l]);
        if (A->z1) store_rows(d.space == 1 ? W.Z : W.X, d.dims[0], b0, nb, A->z1);
    });
}

// ------------------------------------------------------------ contiguous streams and the update

constexpr int64_t kChunk = 4096;  // elements per OpenMP work item (a multiple of every V)

// out[0..n) = normals (or uniforms) at counters start + i.
template <bool NORMAL>
void fill_stream(uint64_t seed, uint64_t start, int64_t n, float* out, int nthreads) {
    const vu lane = lane_index();
    const int64_t nchunk = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nchunk > 1)
    for (int64_t ch = 0; ch < nchunk; ++ch) {
        const int64_t end = (ch + 1) * kChunk < n ? (ch + 1) * kChunk : n;
        for (int64_t i = ch * kChunk; i < end; i += V) {
            const vf v = NORMAL ? normal_vec(seed, start + (uint64_t)i, lane) : uniform_vec(seed, start + (uint64_t)i, lane);
            if (i + V <= end) {
                st(out + i, v);
            } else {
                for (int64_t t = 0; t < end - i; ++t) out[i + t] = v[t];
            }
        }
    }
}

void randn(uint64_t seed, uint64_t offset, int64_t n, float* out, int nthreads) {
    fill_stream<true>(seed, offset, n, out, nthreads);
}

void rand_(uint64_t seed, uint64_t offset, int64_t n, float* out, int nthreads) {
    fill_stream<false>(seed, offset, n, out, nthreads);
}

void update(const UpdateArgs* a) {
    const vu lane = lane_index();
    uint64_t start = a->offset;
    int64_t total = 0;
    for (int l = 0; l < a->L; ++l) total += a->B * a->dims[l];
    for (int l = 0; l < a->L; ++l) {
        const int64_t n = a->B * a->dims[l];
        const float* x = a->x[l];
        const float* g = a->g[l];
        float* out = a->out[l];
        float* nz = a->noise[l];
        const float hs = a->h[l], cs = a->c[l];
        const int64_t nchunk = (n + kChunk - 1) / kChunk;
        const uint64_t lstart = start;
#pragma omp parallel for schedule(static) num_threads(a->nthreads) if (nchunk > 1)
        for (int64_t ch = 0; ch < nchunk; ++ch) {
            const int64_t end = (ch + 1) * kChunk < n ? (ch + 1) * kChunk : n;
            for (int64_t i = ch * kChunk; i < end; i += V) {
                const vf xi = normal_vec(a->seed, lstart + (uint64_t)i, lane);
                if (i + V <= end) {
                    st(out + i, (ld(x + i) - hs * ld(g + i)) + cs * xi);
                    if (nz) st(nz + i, xi);
                } else {
                    for (int64_t t = 0; t < end - i; ++t) {
                        out[i + t] = (x[i + t] - hs * g[i + t]) + cs * xi[t];
                        if (nz) nz[i + t] = xi[t];
                    }
                }
            }
        }
        start += (uint64_t)n;
    }
    if (a->uniform) fill_stream<false>(a->seed, a->offset + (uint64_t)total, a->B, a->uniform, a->nthreads);
}

void activation(int act, float p, const float* in, int64_t n, float* value, float* deriv) {
    float buf[V], der[V];
    for (int64_t i = 0; i < n; i += V) {
        const int64_t m = n - i < V ? n - i : V;
        for (int t = 0; t < V; ++t) buf[t] = t < m ? in[i + t] : 0.0f;
        act_rows(act, p, buf, der, V);
        for (int64_t t = 0; t < m; ++t) {
            value[i + t] = buf[t];
            deriv[i + t] = der[t];
        }
    }
}

const IsaOps kOps = {
    JEBM_ISA_NAME, V, NB, pack_model, release_model, run_chain, run_eval, update, randn, rand_, activation,
};

}  // namespace
}  // namespace JEBM_NS
}  // namespace jebm
