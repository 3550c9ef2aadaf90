// The narrow kernels of isa_kernels.h for AVX-512: blocks of 4 chains; the GEMM runs along the
// output features (16-float vectors, a 6 x 4 tile: 24 zmm accumulators), the element-wise loops
// over the block's rows as flat 16-float vectors. bindings.cpp runs small batches and the last
// chains of a call (fewer than the 32 of a wide block) here; the results are bitwise those of the
// wide kernels (tests/test_cpu_isa.py).
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi,bmi2,popcnt,f16c")
#define JEBM_NS avx512_narrow
#define JEBM_VW 16
#define JEBM_FMA 512
#define JEBM_TILE_R 6
#define JEBM_NB 4
#define JEBM_ISA_NAME "avx512-narrow"
#include "isa_kernels.h"
#pragma GCC pop_options

namespace jebm {
const IsaOps* isa_avx512_narrow() { return &avx512_narrow::kOps; }
}  // namespace jebm
#else
namespace jebm {
const IsaOps* isa_avx512_narrow() { return nullptr; }
}  // namespace jebm
#endif
