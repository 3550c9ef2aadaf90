// The interface between bindings.cpp (validation, dispatch) and the kernel files compiled once per
// instruction set (chain_avx512*.cpp, chain_avx2*.cpp, chain_generic.cpp, all from isa_kernels.h).
//
// Only plain structs with fixed-size arrays and raw pointers cross it: the ISA-specific
// translation units instantiate no standard-library templates, so no inline function compiled for
// AVX-512 can be merged by the linker into code that runs on a CPU without it.
// Everything here has been validated by bindings.cpp before a kernel sees it.
#pragma once

#include <stdint.h>

#include "jebm_common.h"

namespace jebm {

struct MLPDesc {
    int n_layers;                       // Linear layers, 1..kMaxLinear
    int sizes[kMaxLinear + 1];          // in, hidden..., out
    const float* w[kMaxLinear];         // [sizes[i+1], sizes[i]] row-major (nn.Linear layout)
    const float* b[kMaxLinear];         // [sizes[i+1]] or nullptr
    int act;                            // between layers
    int out_act;                        // after the last layer
    float act_param;                    // leaky slope / softplus beta / ELU alpha
};

// The energy: U(x) = sign * (sum_l f_l(z_l) + f_0(concat z)) + base(x) + decoder term + extra,
// z = x (z-space) or z = z(eps) (eps-space); see energy.h for each term.
struct ModelDesc {
    int L;
    int dims[kMaxLatent];
    int n_mlps;
    MLPDesc mlps[kMaxMLPs];
    int term[kMaxLatent];               // MLP index of f_l, or -1
    int joint;                          // MLP index of f_0, or -1
    int n_gauss;                        // L - 1 or 0
    int gauss[kMaxLatent];              // MLP index of p(z_l | z_{l+1}) for l < L-1
    float sigma_floor[kMaxLatent];
    int space;                          // 0: z, 1: eps
    float energy_sign;
    int has_base;                       // base_sigma given (z-space, no Gaussians)
    int base_on[kMaxLatent];            // 0 where base_sigma is inf
    float base_den[kMaxLatent];         // 2 * base_sigma^2
    int has_ps;                         // langevin(prior_sigma=...) given
    float ps_den[kMaxLatent];           // 2 * prior_sigma^2
    int decoder;                        // MLP index of an MLP decoder g (posterior), or -1
    int P;                              // pixels of the decoder's output
    float dec_den;                      // 2 * sigma_x^2
};

struct ChainArgs {
    int64_t B;
    const float* x[kMaxLatent];         // [B, d_l] start
    float* out[kMaxLatent];             // [B, d_l] final state
    int64_t K;
    float h[kMaxLatent];                // s_l^2 / 2
    float c[kMaxLatent];                // s_l * tau
    float mala_den[kMaxLatent];         // 2 (s_l tau)^2
    int mala;
    uint64_t seed, offset, stride;
    const float* xobs;                  // [B, P] with an MLP decoder, else nullptr
    float* st_energy;                   // [K, B] per chain and step, or nullptr
    float* st_gnorm;                    // [K, B] or nullptr
    uint8_t* st_accept;                 // [K, B] (MALA) or nullptr
    int nthreads;
};

struct EvalArgs {
    int64_t B;
    const float* x[kMaxLatent];         // [B, d_l]
    const float* ext_u;                 // [B] added to U, or nullptr
    const float* ext_g;                 // [B, d_1] added to dU/dz_1, or nullptr
    const float* xobs;                  // [B, P] with an MLP decoder
    float* u;                           // [B]
    float* g[kMaxLatent];               // [B, d_l]
    float* z1;                          // [B, d_1]: z_1 of x (eps-space), or nullptr
    int only_z1;                        // compute z1 only
    int nthreads;
};

struct UpdateArgs {
    int L;
    int64_t B;
    int64_t dims[kMaxLatent];
    const float* x[kMaxLatent];
    const float* g[kMaxLatent];
    float* out[kMaxLatent];
    float* noise[kMaxLatent];           // normals drawn, or nullptr each
    float* uniform;                     // [B] MALA uniforms at offset + B*D, or nullptr
    float h[kMaxLatent];
    float c[kMaxLatent];
    uint64_t seed, offset;
    int nthreads;
};

// One instruction set's kernels. Return codes: 0 ok, 1 out of memory.
struct IsaOps {
    const char* name;
    int vector_width;                   // floats per vector
    int block_chains;                   // chains per block in the fused kernels
    void* (*pack)(const ModelDesc*);    // nullptr when out of memory
    void (*release)(void*);
    // A thread's scratch for chain_range (nullptr when out of memory), and its release.
    void* (*work_alloc)(const void* model);
    void (*work_free)(void* work);
    // Chains b0 .. b0 + n - 1 of the call, in blocks of block_chains, on the calling thread.
    void (*chain_range)(const void* model, void* work, const ChainArgs*, int64_t b0, int64_t n);
    int (*eval)(const void* model, const EvalArgs*);
    void (*update)(const UpdateArgs*);
    void (*randn)(uint64_t seed, uint64_t offset, int64_t n, float* out, int nthreads);
    void (*rand)(uint64_t seed, uint64_t offset, int64_t n, float* out, int nthreads);
    void (*uniform_pairs)(uint64_t seed, uint64_t offset, int64_t n, float* u1, float* u2, int nthreads);
    void (*activation)(int act, float param, const float* in, int64_t n, float* value, float* deriv);
};

const IsaOps* isa_generic();
const IsaOps* isa_avx2();     // nullptr where not compiled (non-x86)
const IsaOps* isa_avx512();   // nullptr where not compiled (non-x86)
const IsaOps* isa_avx2_narrow();      // AVX2, blocks of 4 chains (small batches); nullptr where not compiled
const IsaOps* isa_avx512_narrow();    // AVX-512, blocks of 4 chains; nullptr where not compiled
const IsaOps* isa_avx512_narrow8();   // AVX-512, blocks of 8 chains; nullptr where not compiled
// AVX-512 with AVX512-BF16: the GEMMs in bf16 pairs (vdpbf16ps, fp32 sums), wide and narrow blocks;
// nullptr where not compiled (non-x86, a compiler without AVX512-BF16)
const IsaOps* isa_avx512_bf16();
const IsaOps* isa_avx512_bf16_narrow8();
const IsaOps* isa_avx512_bf16_narrow();

}  // namespace jebm
