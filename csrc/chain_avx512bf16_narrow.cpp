// The narrow kernels of isa_kernels.h for AVX-512 with AVX512-BF16: blocks of 4 chains, the GEMM
// along the output features in bf16 pairs (a 6 x 4 tile of vdpbf16ps: 24 zmm accumulators), the
// rest as avx512-narrow. bindings.cpp runs small batches and the last chains of a bf16 Model's
// call here; the results are bitwise those of the wide bf16 kernels (tests/test_cpu_bf16.py).
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
#define JEBM_NS avx512_bf16_narrow
#define JEBM_VW 16
#define JEBM_FMA 512
#define JEBM_TILE_R 6
#define JEBM_NB 4
#define JEBM_BF16 1
#define JEBM_ISA_NAME "avx512-bf16-narrow"
#include "isa_kernels.h"
#pragma GCC pop_options

namespace jebm {
const IsaOps* isa_avx512_bf16_narrow() { return &avx512_bf16_narrow::kOps; }
}  // namespace jebm
#else
namespace jebm {
const IsaOps* isa_avx512_bf16_narrow() { return nullptr; }
}  // namespace jebm
#endif
