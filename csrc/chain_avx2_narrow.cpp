// The kernels of isa_kernels.h with AVX2's FMA on 4-float vectors: blocks of 4 chains, a 12 x 1
// register tile (12 xmm accumulators). For small batches only: bindings.cpp runs a call with these
// when the wide kernels would leave threads idle or most lanes empty (batch 8 on 2 threads is one
// half-empty 16-chain block of avx2, but two full blocks here, one per thread). Every lane does the
// same operations in the same order as in avx2/avx512 (FMA included), so the results are
// bitwise those of the wide kernels (tests/test_cpu_isa.py checks it).
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
#define JEBM_VW 4
#define JEBM_FMA 128
#define JEBM_TILE_R 12
#define JEBM_TILE_C 1
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
