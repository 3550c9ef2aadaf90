// The CPU kernels, written once and compiled once per instruction set: this header assembles them
// from their layers and fills the IsaOps table (kernels.h) that bindings.cpp dispatches through.
//
// Why one compilation per ISA and not one: setup.py builds with the compiler's baseline flags
// (x86-64 = SSE2), so one binary must run everywhere and still use AVX-512 where it exists. Each of
// chain_avx512*.cpp (the bf16 ones included), chain_avx2*.cpp and chain_generic.cpp includes the
// system headers, then sets `#pragma GCC target(...)` for its instruction set and the macros below,
// then includes this file, which opens its own namespace. bindings.cpp picks one table at run time
// with __builtin_cpu_supports (JEBM_ISA=generic|avx2|avx2-narrow|avx512 overrides, for tests). This
// is GCC's function multiversioning done per translation unit: the layers instantiate no
// standard-library templates and every helper has internal linkage (anonymous namespace), so no
// AVX-512 instruction can leak into the code a CPU without it runs.
//
// Data layout: a block of NB chains is held feature-major, [features, NB]: row j of a layer holds
// that feature for NB chains. A Linear layer on a block is the GEMM out[N, NB] = W[N, K] x in[K, NB]
// (gemm.h). Wide blocks (NB = 32 AVX-512, 16 AVX2, 8 generic: whole vectors of chains) run the GEMM
// along the chains; narrow blocks (NB = 4 or 8, too few chains to fill a vector) run it along the
// output features. Element-wise work (activations, noise, updates, the Gaussians' terms) runs over
// a block's rows as one flat array of V-float vectors, whatever NB; per-chain sums (energies,
// norms, MALA) run in chain vectors of min(NB, V) lanes, each chain's terms in row order. So each
// chain's arithmetic never depends on V, on the block, on the build or on the thread count: every
// output sums its products in the same k order and every element-wise formula is the same
// (tests/test_cpu_isa.py checks the narrow builds against the wide ones bit for bit).
// bindings.cpp plans each call: equal chain ranges per thread, whole wide blocks, the rest on the
// cheapest narrow blocks (chain_range runs one piece on the calling thread). Chains are
// independent, so the chain loop has no barrier at all.
//
// The layers, each depending only on those above it:
//   simd.h              vector types and the per-ISA primitives (load, broadcast, FMA, sqrt)
//   vector_math.h       exp, log, log1p, tanh, erf on float vectors
//   philox_simd.h       Philox4x32-10, uniforms and Box-Muller normals on V counters
//   activations_simd.h  each activation's value and derivative
//   gemm.h              the register-tiled GEMMs (wide and narrow blocks), weight panel packing
//   packed_model.h      the packed model and the per-thread scratch
//   mlp.h               an MLP's forward pass and input gradient on a chain block
//   energy.h            U and dU/dx of a chain block
//   chain.h             the fused K-step chain, eval, the thread loop over blocks
//   update.h            the multi-layer update and the Philox fills over contiguous arrays
//
// Expected macros: JEBM_NS (namespace), JEBM_VW (floats per vector), JEBM_FMA (512, 256, 128 or 0:
// the FMA instructions' width in bits; 128 = AVX2's FMA on 4-float vectors), JEBM_NB (chains per
// block: a multiple of JEBM_VW, or a divisor of it for a narrow build), JEBM_TILE_R (GEMM tile
// rows: output rows of a wide block, output vectors of a narrow one), JEBM_ISA_NAME; optional:
// JEBM_BF16 (1: the GEMMs multiply bf16 pairs with AVX512-BF16's vdpbf16ps into fp32 sums, gemm.h;
// everything else stays fp32).
#if !defined(JEBM_NS) || !defined(JEBM_VW) || !defined(JEBM_FMA) || !defined(JEBM_TILE_R) || \
    !defined(JEBM_NB) || !defined(JEBM_ISA_NAME)
#error "isa_kernels.h is included by a chain_<isa>.cpp after it defines the JEBM_* macros"
#endif
#ifndef JEBM_BF16
#define JEBM_BF16 0
#endif
#if JEBM_BF16 && JEBM_FMA != 512
#error "the bf16 GEMMs are AVX-512 code (JEBM_FMA 512)"
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
    uniform_pairs, activation,
};

}  // namespace
}  // namespace JEBM_NS
}  // namespace jebm
