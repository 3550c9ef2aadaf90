// Philox4x32-10 and the normals of Triton's tl.randn(seed, offset), one element at a time.
//
// Bit for bit the stream of jebm_kernels/philox.py (and of triton/language/random.py):
//   key     = (seed & 0xffffffff, seed >> 32)
//   counter = (offset & 0xffffffff, offset >> 32, 0, 0)        one counter per element
//   ten rounds; words 0 and 1 become uniforms by
//       u = (int32 bitcast, ~ for negatives) * 4.6566127342e-10f
//   and one normal by Box-Muller, in float32, in this order:
//       sqrtf(-2 * logf(max(u1, 1e-7f))) * cosf(6.283185307179586f * u2).
// The words and uniforms are exact everywhere; the normal is as exact as the logf/cosf of the
// platform (the CPU kernels compute log and cos in double and round once, see philox_simd.h).
//
// Usable from host code and, later, CUDA device code: JEBM_HD is `static inline` on the host
// (internal linkage: every translation unit, whatever its target ISA, keeps its own copy, so the
// linker can never hand an AVX-512 copy to generic code) and `__host__ __device__` under nvcc.
#pragma once

#include <stdint.h>
#include <math.h>

#if defined(__CUDACC__)
#define JEBM_HD static __host__ __device__ __forceinline__
#else
#define JEBM_HD static inline
#endif

namespace jebm {

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr int kPhiloxRounds = 10;
// Triton's scale: the largest float with MAX_INT32 * scale < 1.0f.
constexpr float kUniformScale = 4.6566127342e-10f;
constexpr float kTwoPi = 6.283185307179586f;
constexpr float kMinUniform = 1.0e-7f;

struct Philox4 {
    uint32_t w0, w1, w2, w3;
};

// The four words for one 64-bit counter under one 64-bit seed.
JEBM_HD Philox4 philox4x32_10(uint64_t seed, uint64_t counter) {
    uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = 0u, c3 = 0u;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int i = 0; i < kPhiloxRounds; ++i) {
        const uint64_t pb = (uint64_t)c2 * kPhiloxRoundB;
        const uint64_t pa = (uint64_t)c0 * kPhiloxRoundA;
        const uint32_t n0 = (uint32_t)(pb >> 32) ^ c1 ^ k0;
        const uint32_t n2 = (uint32_t)(pa >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)pb;
        c3 = (uint32_t)pa;
        c0 = n0;
        c2 = n2;
        k0 += kPhiloxKeyA;
        k1 += kPhiloxKeyB;
    }
    return Philox4{c0, c1, c2, c3};
}

// Triton's uint_to_uniform_float: a float in [0, 1).
JEBM_HD float philox_uniform_of(uint32_t w) {
    int32_t x = (int32_t)w;
    if (x < 0) x = ~x;
    return (float)x * kUniformScale;
}

JEBM_HD float box_muller(float u1, float u2) {
    u1 = u1 < kMinUniform ? kMinUniform : u1;
    const float r = sqrtf(-2.0f * logf(u1));
    return r * cosf(kTwoPi * u2);
}

// tl.randn(seed, counter) and tl.rand(seed, counter).
JEBM_HD float philox_normal(uint64_t seed, uint64_t counter) {
    const Philox4 w = philox4x32_10(seed, counter);
    return box_muller(philox_uniform_of(w.w0), philox_uniform_of(w.w1));
}

JEBM_HD float philox_uniform(uint64_t seed, uint64_t counter) {
    return philox_uniform_of(philox4x32_10(seed, counter).w0);
}

}  // namespace jebm
