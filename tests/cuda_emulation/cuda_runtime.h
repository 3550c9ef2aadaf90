// A host stand-in for <cuda_runtime.h>: just enough of CUDA to run csrc/cuda_*.cu's kernels on the
// CPU, for tests/test_cuda_build.py on machines without a GPU. Compiled with g++ -x c++ and this
// directory first on the include path, the kernel source is the one nvcc builds, unchanged.
//
// Execution model: a launch runs its blocks one after another; a block's threads are fibers
// (ucontext) on one OS thread. Between two barriers every thread runs its whole segment, and the
// threads run in a freshly shuffled order each time, so a missing __syncthreads before reading
// what another thread wrote shows up as a wrong result (a race the hardware might hide) rather than
// being masked by a fixed order. A barrier that not every thread of the block reaches is reported
// (the hardware would hang or be undefined). __shfl_xor_sync is a block-wide exchange: the kernels
// call it only from code every thread executes, and the emulator checks that they all arrive.
// Shared memory is the __shared__ namespace-scope arrays (plain globals here, one block at a time).
#pragma once

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__
#define __align__(n) alignas(n)

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

typedef void* cudaStream_t;
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1 };

inline const char* cudaGetErrorString(cudaError_t) { return "emulated CUDA error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
    memcpy(dst, src, n);
    return cudaSuccess;
}

template <class T>
inline T __ldg(const T* p) { return *p; }

namespace jebm_emu {

constexpr size_t kStack = 64 * 1024;  // per thread; the deepest call chain is ~6 small frames

struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    bool done = false;
    bool waiting = false;   // at a barrier
    dim3 tid;
};

inline std::vector<Fiber> g_fibers;
inline ucontext_t g_sched;
inline int g_cur = 0;
inline dim3 g_block_idx, g_block_dim, g_grid_dim;
inline const std::function<void()>* g_body = nullptr;
inline std::vector<float> g_shfl;
inline std::mt19937 g_rng(12345);
inline std::string g_error;

inline void trampoline() {
    (*g_body)();
    g_fibers[g_cur].done = true;  // uc_link returns to the scheduler
}

inline void barrier() {
    g_fibers[g_cur].waiting = true;
    swapcontext(&g_fibers[g_cur].ctx, &g_sched);
}

// Runs body() once per thread of every block of the grid.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& body) {
    const int n = (int)(block.x * block.y * block.z);
    g_grid_dim = grid;
    g_block_dim = block;
    g_body = &body;
    g_fibers.resize(n);
    g_shfl.assign(n, 0.0f);
    std::vector<int> order(n);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                g_block_idx = dim3(bx, by, bz);
                for (int t = 0; t < n; ++t) {
                    Fiber& f = g_fibers[t];
                    f.stack.resize(kStack);
                    f.done = f.waiting = false;
                    f.tid = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack.data();
                    f.ctx.uc_stack.ss_size = f.stack.size();
                    f.ctx.uc_link = &g_sched;
                    makecontext(&f.ctx, trampoline, 0);
                    order[t] = t;
                }
                for (;;) {
                    std::shuffle(order.begin(), order.end(), g_rng);
                    for (int t : order) {
                        if (g_fibers[t].done) continue;
                        g_cur = t;
                        g_fibers[t].waiting = false;
                        swapcontext(&g_sched, &g_fibers[t].ctx);
                    }
                    int done = 0, waiting = 0;
                    for (const Fiber& f : g_fibers) {
                        done += f.done;
                        waiting += f.waiting;
                    }
                    if (done == n) break;
                    if (done != 0 || waiting != n) {
                        g_error = "a barrier (__syncthreads / __shfl_xor_sync) was not reached by every thread "
                                  "of the block: " + std::to_string(waiting) + " waiting, " + std::to_string(done) +
                                  " finished of " + std::to_string(n);
                        fprintf(stderr, "jebm cuda emulation: %s\n", g_error.c_str());
                        abort();
                    }
                }
            }
    g_body = nullptr;
}

}  // namespace jebm_emu

#define threadIdx (jebm_emu::g_fibers[jebm_emu::g_cur].tid)
#define blockIdx (jebm_emu::g_block_idx)
#define blockDim (jebm_emu::g_block_dim)
#define gridDim (jebm_emu::g_grid_dim)

inline void __syncthreads() { jebm_emu::barrier(); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    const int t = (int)threadIdx.x;
    jebm_emu::g_shfl[t] = v;
    jebm_emu::barrier();
    const float r = jebm_emu::g_shfl[(t & ~31) | ((t & 31) ^ lane_mask)];
    jebm_emu::barrier();
    return r;
}

#define JEBM_LAUNCH(kernel, grid, block, stream, ...) \
    jebm_emu::launch(dim3(grid), dim3(block), [&]() { kernel(__VA_ARGS__); })
