// The kernels of isa_kernels.h for AVX-512 with AVX512-BF16: the avx512 build (16 floats per
// vector, blocks of 32 chains, a 12 x 2 register tile) with bf16 GEMMs, vdpbf16ps on bf16 pairs
// into fp32 sums (gemm.h); activations, noise, updates and energies as in fp32. bindings.cpp runs a
// Model's chains here when it is made with bf16=True, the last chains of a call (fewer than 32) on
// the narrow bf16 kernels; its eval stays on the fp32 build.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

// GCC 10 is the first with AVX512-BF16; an older compiler leaves this build out (nullptr)
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__clang__) || __GNUC__ >= 10)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi,bmi2,popcnt,f16c,avx512bf16")
#define JEBM_NS avx512_bf16
#define JEBM_VW 16
#define JEBM_FMA 512
#define JEBM_TILE_R 12
#define JEBM_NB 32
#define JEBM_BF16 1
#define JEBM_ISA_NAME "avx512-bf16"
#include "isa_kernels.h"
#pragma GCC pop_options

namespace jebm {
const IsaOps* isa_avx512_bf16() { return &avx512_bf16::kOps; }
}  // namespace jebm
#else
namespace jebm {
const IsaOps* isa_avx512_bf16() { return nullptr; }
}  // namespace jebm
#endif
