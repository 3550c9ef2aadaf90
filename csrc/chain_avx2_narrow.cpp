// The narrow kernels of isa_kernels.h for AVX2 + FMA: blocks of 4 chains; the GEMM runs along the
// output features (8-float vectors, a 3 x 4 tile: 12 ymm accumulators), the element-wise loops over
// the block's rows as flat 8-float vectors. For small batches and the last chains of a call:
// bindings.cpp runs those here when the wide kernels would leave threads idle or most lanes empty
// (batch 8 on 2 threads is one half-empty 16-chain block of avx2, but two blocks here, one per
// thread). Every chain does the same operations in the same order as in avx2/avx512 (FMA
// included), so the results are bitwise those of the wide kernels (tests/test_cpu_isa.py checks it).
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,popcnt,f16c")
#define JEBM_NS avx2_narrow
#define JEBM_VW 8
#define JEBM_FMA 256
#define JEBM_TILE_R 3
#define JEBM_NB 4
#define JEBM_ISA_NAME "avx2-narrow"
#include "isa_kernels.h"
#pragma GCC pop_options

namespace jebm {
const IsaOps* isa_avx2_narrow() { return &avx2_narrow::kOps; }
}  // namespace jebm
#else
namespace jebm {
const IsaOps* isa_avx2_narrow() { return nullptr; }
}  // namespace jebm
#endif
