// The kernels of isa_kernels.h for AVX-512 (F, DQ, BW, VL): 16 floats per vector, blocks of 32
// chains, a 12 x 2 register tile (24 zmm accumulators). Chosen at run time by bindings.cpp, which
// runs the last chains of a call (fewer than 32) on the narrow AVX-512 kernels.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi,bmi2,popcnt,f16c")
#define JEBM_NS avx512
#define JEBM_VW 16
#define JEBM_FMA 512
#define JEBM_TILE_R 12
#define JEBM_NB 32
#define JEBM_ISA_NAME "avx512"
#include "isa_kernels.h"
#pragma GCC pop_options

namespace jebm {
const IsaOps* isa_avx512() { return &avx512::kOps; }
}  // namespace jebm
#else
namespace jebm {
const IsaOps* isa_avx512() { return nullptr; }
}  // namespace jebm
#endif
