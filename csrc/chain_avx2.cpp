// The kernels of isa_kernels.h for AVX2 + FMA: 8 floats per vector, blocks of 16 chains, a 6 x 2
// register tile (12 ymm accumulators). Chosen at run time by bindings.cpp.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,popcnt,f16c")
#define JEBM_NS avx2
#define JEBM_VW 8
#define JEBM_FMA 256
#define JEBM_TILE_R 6
#define JEBM_NB 16
#define JEBM_ISA_NAME "avx2"
#include "isa_kernels.h"
#pragma GCC pop_options

namespace jebm {
const IsaOps* isa_avx2() { return &avx2::kOps; }
}  // namespace jebm
#else
namespace jebm {
const IsaOps* isa_avx2() { return nullptr; }
}  // namespace jebm
#endif
