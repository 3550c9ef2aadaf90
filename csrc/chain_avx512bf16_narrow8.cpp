// The narrow kernels of isa_kernels.h for AVX-512 with AVX512-BF16: blocks of 8 chains, the GEMM
// along the output features in bf16 pairs (a 3 x 8 tile of vdpbf16ps: 24 zmm accumulators), the
// rest as avx512-narrow8. bindings.cpp runs small batches and the last chains of a bf16 Model's
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
#define JEBM_NS avx512_bf16_narrow8
#define JEBM_VW 16
#define JEBM_FMA 512
#define JEBM_TILE_R 3
#define JEBM_NB 8
#define JEBM_BF16 1
#define JEBM_ISA_NAME "avx512-bf16-narrow8"
#include "isa_kernels.h"
#pragma GCC pop_options

namespace jebm {
const IsaOps* isa_avx512_bf16_narrow8() { return &avx512_bf16_narrow8::kOps; }
}  // namespace jebm
#else
namespace jebm {
const IsaOps* isa_avx512_bf16_narrow8() { return nullptr; }
}  // namespace jebm
#endif
