// The kernels of isa_kernels.h for the compiler's baseline (SSE2 on x86-64, whatever the target
// offers elsewhere): 4 floats per vector, blocks of 8 chains, a 6 x 2 register tile, multiply and
// add without FMA. Runs on any CPU; bindings.cpp uses it when neither AVX2 nor AVX-512 is there.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#define JEBM_NS generic
#define JEBM_VW 4
#define JEBM_FMA 0
#define JEBM_TILE_R 6
#define JEBM_NB 8
#define JEBM_ISA_NAME "generic"
#include "isa_kernels.h"

namespace jebm {
const IsaOps* isa_generic() { return &generic::kOps; }
}  // namespace jebm
