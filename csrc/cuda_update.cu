// CUDA: the multi-layer fused Langevin update, every latent layer in one launch.
//
//     out_l = (x_l - h_l * g_l) + c_l * xi_l,   h_l = s_l^2 / 2,  c_l = s_l * tau,
//     xi = tl.randn(seed, offset + B * (d_1 + ... + d_{l-1}) + i)    (the problem.py layout)
//
// The same operation as jebm_kernels/update/triton.py and the cpu backend's multi_layer_update: grid
// (blocks, L + 1), axis y picks the layer, the extra row L draws the B MALA uniforms
// tl.rand(seed, offset + B * D + b). Optionally the normals are written out (MALA's proposal
// density needs them). Every normal and uniform comes from philox.h, the header that
// tests/test_cuda_build.py compiles and checks on the host against jebm_kernels.philox, and each
// element is computed in the reference's order of float32 operations: nvcc runs with
// --fmad=false, so x - h * g is rounded twice, exactly as torch's two kernels round it.
//
// One thread per element (Philox's ten rounds plus log/cos, ~100 operations per normal, outweigh
// the 12-16 bytes moved), 256 threads a block, grid-stride loops capped at 65535 blocks per layer;
// every layer and the uniforms in one launch, where the reference runs ~130 element-wise torch ops
// of noise and update per step. No host sync. Seed and offset are 64-bit kernel arguments, or, for
// CUDA graphs (which capture arguments by value), read from a device int64 [seed, offset] tensor
// that the caller advances between replays (as update/triton.py's PHILOX_FROM_PTR); the kernel's
// own `offset` argument is then added to that base.
#include <cuda_runtime.h>

#include "cuda_kernels.h"

namespace jebm {
namespace cuda {
namespace {

__global__ void __launch_bounds__(kThreads) update_kernel(const UpdateArgsDev a) {
    const int l = blockIdx.y;
    // graph-safe form: seed and base offset read from device memory, which the caller advances
    const uint64_t seed = a.philox ? (uint64_t)a.philox[0] : a.seed;
    const uint64_t offset = a.philox ? (uint64_t)a.philox[1] + a.offset : a.offset;
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (l < a.L) {
        const int64_t n = a.B * a.dims[l];
        const float* __restrict__ x = a.x[l];
        const float* __restrict__ g = a.g[l];
        float* out = a.out[l];
        float* noise = a.noise[l];
        const float h = a.h[l], c = a.c[l];
        const uint64_t base = offset + (uint64_t)a.start[l];
        for (int64_t i = first; i < n; i += step) {
            const float xi = philox_normal(seed, base + (uint64_t)i);
            out[i] = (x[i] - h * g[i]) + c * xi;
            if (noise) noise[i] = xi;
        }
    } else if (a.uniform) {
        const uint64_t base = offset + (uint64_t)a.total;
        for (int64_t i = first; i < a.B; i += step) a.uniform[i] = philox_uniform(seed, base + (uint64_t)i);
    }
}

}  // namespace

const char* launch_update(const UpdateArgsDev& a, void* stream) {
    int64_t most = a.uniform ? a.B : 1;
    for (int l = 0; l < a.L; ++l)
        if (a.B * a.dims[l] > most) most = a.B * a.dims[l];
    int64_t blocks = (most + kThreads - 1) / kThreads;
    if (blocks > 65535) blocks = 65535;
    const dim3 grid((unsigned)blocks, (unsigned)(a.L + 1));
    JEBM_LAUNCH(update_kernel, grid, kThreads, (cudaStream_t)stream, a);
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace cuda
}  // namespace jebm
