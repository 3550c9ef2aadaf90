// The CPU kernels, written once and compiled once per instruction set: this header assembles them
// from their layers and fills the IsaOps table (kernels.h) that bindings.cpp dispatches through.
//
// Why one compilation per ISA and not one: setup.py builds with the compiler's baseline flags
// (x86-64 = SSE2), so one binary must run everywhere and still use AVX-512 where it exists. Each of
// chain_avx512.cpp, chain_avx2.cpp, chain_avx2_narrow.cpp and chain_generic.cpp includes the
// system headers, then sets `#pragma GCC target(...)` for its instruction set and the macros below,
// then includes this file, which opens its own namespace. bindings.cpp picks one table at run time
// with __builtin_cpu_supports (JEBM_ISA=generic|avx2|avx2-narrow|avx512 overrides, for tests). This
// is GCC's function multiversioning done per translation unit: the layers instantiate no
// standard-library templates and every helper has internal linkage (anonymous namespace), so no
// AVX-512 instruction can leak into the code a CPU without it runs.
//
// Data layout: chains are the vector lanes. A block of NB = TC * V chains is held feature-major,
// [features, NB]: row j of a layer holds that feature for NB chains. Each chain's arithmetic then
// never depends on V, on the block or on the thread count (every lane accumulates its dot
// products in the same k order), and odd dims (1, 3, 17, 129) cost no padding. A Linear layer on
// a block is the GEMM out[N, NB] = W[N, K] x in[K, NB] (gemm.h). Each thread owns whole blocks and
// runs all K steps of them: chains are independent, so the chain loop has no barrier at all.
//
// The layers, each depending only on those above it:
//   simd.h              vector types and the per-ISA primitives (load, broadcast, FMA, sqrt)
//   vector_math.h       exp, log, log1p, tanh, erf on float vectors
//   philox_simd.h       Philox4x32-10, uniforms and Box-Muller normals on V counters
//   activations_simd.h  each activation's value and derivative
//   gemm.h              the register-tiled GEMM on a chain block, weight panel packing
//   packed_model.h      the packed model and the per-thread scratch
//   mlp.h               an MLP's forward pass and input gradient on a chain block
//   energy.h            U and dU/dx of a chain block
//   chain.h             the fused K-step chain, eval, the thread loop over blocks
//   update.h            the multi-layer update and the Philox fills over contiguous arrays
//
// Expected macros: JEBM_NS (namespace), JEBM_VW (floats per vector), JEBM_FMA (512, 256, 128 or 0:
// the FMA instructions' width in bits; 128 = AVX2's FMA on 4-float vectors), JEBM_TILE_R,
// JEBM_TILE_C, JEBM_ISA_NAME.
#if !defined(JEBM_NS) || !defined(JEBM_VW) || !defined(JEBM_FMA) || !defined(JEBM_TILE_R) || \
    !defined(JEBM_NB) || !defined(JEBM_ISA_NAME)
#error "isa_kernels.h is included by a chain_<isa>.cpp after it defines the JEBM_* macros"
#endif
#define JEBM_ISA_KERNELS 1

namespace jebm {
namespace JEBM_NS {
namespace {

#include "simd.h"
#include "vector_math.h"
#include "philox_simd.h"
#include "activations_simd.h"
#include "gemm.h"
#include "packed_model.h"
#include "mlp.h"
#include "energy.h"
#include "chain.h"
#include "update.h"

const IsaOps kOps = {
    JEBM_ISA_NAME, V, NB, pack_model, release_model, work_alloc, work_free, chain_range, run_eval, update, randn, rand_,
    activation,
};

}  // namespace
}  // namespace JEBM_NS
}  // namespace jebm
