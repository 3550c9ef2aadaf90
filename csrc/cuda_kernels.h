// The interface between cuda_bindings.cpp (host compiler: validation, planning) and the CUDA
// kernels (cuda_update.cu, cuda_prior_chain.cu, cuda_device.cu, compiled by nvcc).
//
// No CUDA header is included here: the bindings are compiled by the host C++ compiler with
// pybind11 only, and every CUDA runtime call lives in a .cu file behind a plain function that
// returns nullptr on success or the runtime's error string. Streams cross as `void*`
// (a cudaStream_t, i.e. torch.cuda.current_stream().cuda_stream). Everything in these structs has
// been validated by cuda_bindings.cpp before a launcher sees it.
#pragma once

#include <stdint.h>

#include "jebm_common.h"

namespace jebm {
namespace cuda {

// Threads per block of every kernel: 8 warps. The prior chain's GEMMs give each thread one output
// column (for all chains of the block), so 256 covers the papers' widths (100 - 256) in one pass.
constexpr int kThreads = 256;
// Linear layers in one model, over all its MLPs (the CVPR prior has 9): the table is a kernel
// parameter (constant bank: the warp-uniform reads are broadcasts), 56 bytes a layer.
constexpr int kMaxLinearTotal = 256;
// Chains per block of the prior chain kernel: 4 for batches that leave SMs free (the papers'
// B = 100 runs as 25 blocks), 8 when there are enough chains to fill the GPU (weights read from
// L2 once per block and step are then shared by twice as many chains).
constexpr int kChainsSmall = 4;
constexpr int kChainsLarge = 8;

struct LinearDev {
    int64_t wt_off;     // W^T [n_in, n_out] row-major in the weight buffer (forward GEMM)
    int64_t w_off;      // W [n_out, n_in] row-major (input-gradient GEMM)
    int64_t b_off;      // bias [n_out], or -1
    int64_t out_row;    // scratch row of the output (after the activation)
    int64_t der_row;    // scratch row of act'(pre-activation), or -1 for identity
    int n_in, n_out;
    int act;            // jebm::Act code
    float param;        // LeakyReLU slope / Softplus beta / ELU alpha
};

struct MLPDev {
    int first;          // index of its first Linear in ModelDev::lin
    int count;          // number of Linears
};

// The energy of a PriorSpec (plus langevin's prior_sigma), in the sampled variables x (z or eps):
//   U = sign * (sum_l f_l(z_l) + f_0(concat z)) + sum_l q_l |x_l|^2 / 2
//       + [z-space, Gaussians] sum_{l<L} sum_j ((z_l - mu_l) / sigma_l)^2 / 2 + log sigma_l
// with z = x (z-space) or z = z(eps) (eps-space: z_L = eps_L, z_l = mu_l + sigma_l * eps_l),
// (mu_l, raw_l) = Gaussian MLP_l(z_{l+1}), sigma_l = exp(raw_l) + floor_l. Every pure quadratic
// term (the top N(0, I), base_sigma, prior_sigma, eps's |eps|^2 / 2) is folded into q_l on the host,
// as the Triton kernel does.
struct ModelDev {
    int L, D;
    int dims[kMaxLatent];
    int off[kMaxLatent + 1];        // first row of layer l in concat(z)
    int n_mlps, n_linear;
    int term[kMaxLatent];           // MLP of f_l, or -1
    int joint;                      // MLP of f_0, or -1
    int gauss[kMaxLatent];          // MLP of p(z_l | z_{l+1}) for l < L - 1, or -1
    float floor[kMaxLatent];
    float q[kMaxLatent];
    int space_eps;                  // 1: sample eps
    int has_gauss;                  // the inter-layer Gaussians are part of U (z-space) / of z(eps)
    float sign;                     // energy_sign
    // scratch rows of one chain (a block holds rows x chains floats, row-major: [row][chain])
    int64_t rX, rG, rXP, rGP, rZ, rGZ, rGO, rT0, rT1, rows;
    MLPDev mlp[kMaxMLPs];
    LinearDev lin[kMaxLinearTotal];
};

struct ChainArgsDev {
    int64_t B, K;
    const float* x[kMaxLatent];     // [B, d_l] start
    float* out[kMaxLatent];         // [B, d_l] final state
    float h[kMaxLatent];            // s_l^2 / 2
    float c[kMaxLatent];            // s_l * tau
    float mala_den[kMaxLatent];     // 2 (s_l tau)^2
    int mala;
    uint64_t seed, offset, stride;  // step k's noise starts at counter offset + k * stride
    float* stats;                   // [K, n_blocks, 3]: per block sums of U, |grad U|, accepts; or null
    uint8_t* accept;                // [K, B] MALA decisions, or null
    int64_t n_blocks;               // ceil(B / chains per block)
    float* scratch;                 // [grid, rows, chains per block]
    const float* weights;           // the packed weight buffer
    const int64_t* philox;          // device [seed (bit pattern), base offset] or null: then seed and
                                    // offset come from there (base + offset), as in UpdateArgsDev
};

struct UpdateArgsDev {
    int L;
    int64_t B;
    int64_t dims[kMaxLatent];
    int64_t start[kMaxLatent];      // B * (d_1 + ... + d_{l-1}): layer l's first noise counter
    int64_t total;                  // B * D: the first MALA uniform's counter
    const float* x[kMaxLatent];
    const float* g[kMaxLatent];
    float* out[kMaxLatent];         // may alias x
    float* noise[kMaxLatent];       // normals drawn, or null each
    float* uniform;                 // [B] MALA uniforms, or null
    float h[kMaxLatent];
    float c[kMaxLatent];
    uint64_t seed, offset;
    const int64_t* philox;          // device [seed (bit pattern), base offset] or null: then seed and
                                    // offset come from there (base + offset), for CUDA graphs
};

// Kernel launches go through this macro so that tests/cuda_emulation can run the same kernel
// source on the host (each block's threads as fibers, __syncthreads as a barrier).
#ifndef JEBM_LAUNCH
#define JEBM_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

// cuda_device.cu
const char* current_device(int* device, int* sm_count);
// kind: 0 not CUDA memory (host, unregistered), 1 device memory, 2 managed; *device its device.
const char* pointer_info(const void* p, int* kind, int* device);

// cuda_update.cu
const char* launch_update(const UpdateArgsDev& a, void* stream);

// cuda_prior_chain.cu: launches `grid` blocks of `chains` (kChainsSmall or kChainsLarge) chains
// each. The model travels as a kernel parameter (__grid_constant__, ~15 KB: CUDA >= 12.1 allows
// 32 KB on sm_70+): no host-to-device copy, so the launch can be captured in a CUDA graph.
const char* launch_prior_chain(const ModelDev& model, const ChainArgsDev& a, int chains, int64_t grid,
                               void* stream);

}  // namespace cuda
}  // namespace jebm
