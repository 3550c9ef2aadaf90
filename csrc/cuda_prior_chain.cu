// CUDA: the whole prior chain of a PriorSpec -- every one of the K Langevin (or MALA) steps,
// forward and hand-written input-gradient of every MLP, noise and update -- in ONE launch.
//
// The same math, term by term and in the same order of float32 operations where it matters, as
// the cpu backend (energy.h: eval_block, chain.h: chain_block) and the Triton kernel
// (jebm_kernels/prior_chain/triton_kernel.py: _energy_grad, _propose, the MALA loop); see cuda_kernels.h for U.
// The noise is philox.h's philox_normal / philox_uniform (tl.randn / tl.rand) at the problem.py
// layout: step k, layer l, chain b, feature j draws counter
//     offset + k * stride + B * (d_1 + ... + d_{l-1}) + b * d_l + j,
// the MALA uniform of chain b is counter offset + k * stride + B * D + b, all in uint64.
// The activations are jebm_common.h's act_scalar, the scalar host/device code the CPU tests run.
// nvcc compiles with --fmad=false: no implicit contraction, so the element-wise formulas round as
// the reference's separate torch kernels do; the GEMMs use explicit fmaf.
//
// GPU design, for the CVPR prior (L = 2, d = (128, 100), f_1 128-200-200-200-1, f_2 100-100-100-1,
// Gaussian MLP 100-200-200-200-200-256, batch 100, K = 60); design reasoning, not measurements
// (BENCHMARKS.md holds what was measured).
// * One block = BC chains (4, or 8 for batches above 4 chains per SM) and 256 threads; it runs all
//   K steps of its chains with the step loop inside the kernel. Chains never interact, so there is
//   no grid-wide synchronisation; __syncthreads separates the phases within a block. B = 100 runs
//   as 25 blocks of 4 chains on 25 SMs; B = 1000 as 125 blocks of 8.
// * Per-chain state lives in a scratch matrix in global memory, [rows][BC] (feature-major, a row
//   holds one feature of the block's BC chains): X, G, the MALA proposal X', G', eps-space Z, GZ,
//   the upstream gradient GO, two ping-pong rows T0/T1 for the backward, and per Linear its output
//   and act'. ~5,900 rows for CVPR: 94 KB per block of 4 chains, written and re-read by the same
//   SM. Only the grid's blocks have scratch (the grid is capped at 2 blocks per SM and loops over
//   chain blocks): memory is bounded for any B.
// * Where the weights live: one packed buffer in global memory (jebm_kernels/prior_chain/packing.py)
//   with both W^T (forward: column n of a layer reads W^T[k][n], coalesced across the threads that
//   own consecutive n) and W (input gradient, likewise), 2.6 MB for CVPR, read with __ldg by every
//   block once per energy evaluation, small enough to stay in L2 for the whole chain.
// * GEMM (out[BC, N] = in[BC, K] @ M[K, N]): the block's input rows are staged through shared
//   memory in chunks of KC = 256 features (BC floats each, read as broadcasts); thread n keeps BC
//   accumulators, one weight load feeds BC FMAs. Narrow layers (N <= 128) split the reduction over
//   G = 256 / N thread groups (powers of two) and combine them by a fixed tree in shared memory, so
//   a 100-wide layer still uses 200 threads and a scalar output (N = 1) all 256; the summation
//   order is fixed by N alone, so results are deterministic run to run.
// * Seed, offset and every counter are 64-bit: offsets past 2^32 and chains of any length are exact.
//   They are kernel arguments, or read from a device int64 [seed, base offset] tensor (the offset
//   argument is added to the base) so that a captured launch draws fresh noise once the caller
//   advances that tensor. The model's tables are a __grid_constant__ kernel parameter (22 KB with
//   the arguments, in the constant bank, every read warp-uniform): the launch copies nothing from
//   the host.
// * Resources (nvcc 13, -Xptxas -v): 128 registers per thread and 16.8 KB of shared memory per block, so
//   two 256-thread blocks fit an SM, which is what the grid cap assumes.
#include <cuda_runtime.h>

#include "cuda_kernels.h"

namespace jebm {
namespace cuda {
namespace {

constexpr int NT = kThreads;
constexpr int NWARPS = NT / 32;
constexpr int KC = 256;  // input features staged in shared memory per GEMM chunk

enum Epilogue { EPI_FWD = 0, EPI_MUL = 1, EPI_ACC = 2 };

// Shared memory, sized for the larger chain block (16.8 KB) and declared once at namespace scope,
// so that the helpers below, compiled once each, address it as shared memory rather than through
// generic pointers. __noinline__: with every GEMM call site inlined, nvcc took 210 s for the two
// architectures on the 2-core development machine; compiled once each, 24 s.
constexpr int BCMAX = kChainsLarge;
__shared__ __align__(16) float s_in[KC * BCMAX];   // a GEMM's staged input chunk, [k][chain]
__shared__ __align__(16) float s_red[NT * BCMAX];  // split-K partial sums
__shared__ float s_warp[NWARPS][BCMAX];   // per-warp partial sums of per-chain reductions
__shared__ float s_u[BCMAX];              // U at the current state
__shared__ float s_up[BCMAX];             // U at the MALA proposal
__shared__ float s_sxi[BCMAX];            // |xi|^2 of the proposal
__shared__ float s_sum[BCMAX];            // the last chain_sums result
__shared__ int s_acc[BCMAX];              // MALA decisions

// Every thread contributes v for chain (threadIdx.x % BC); out[c] = the block's sum for chain c,
// in a fixed order (lanes by xor-shuffle, then warps 0..7). Ends synchronised.
template <int BC>
__device__ void chain_sums(float v, float* out) {
#pragma unroll
    for (int o = 16; o >= BC; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane < BC) s_warp[warp][lane] = v;
    __syncthreads();
    if (threadIdx.x < BC) {
        float t = 0.0f;
        for (int w = 0; w < NWARPS; ++w) t += s_warp[w][threadIdx.x];
        out[threadIdx.x] = t;
    }
    __syncthreads();
}

// out rows n < N (each BC floats): acc[c] = sum_k in[k][c] * M[k * N + n], then
//   EPI_FWD: a = acc + bias[n]; out = act(a); aux (if not null) = act'(a)
//   EPI_MUL: out = acc * aux[n][c]  (aux null: out = acc)
//   EPI_ACC: out += acc
// `in` and `out` are scratch rows of this block and never overlap. Ends synchronised.
template <int BC>
__device__ __noinline__ void gemm(const float* __restrict__ M, int N, int K, const float* in, float* out, int epi,
                     const float* __restrict__ bias, int act, float p, float* aux) {
    int G = 1;  // thread groups that split the reduction: the largest power of two with G * N <= NT
    while (G < NT && 2 * G * N <= NT) G *= 2;
    const int cols = NT / G;
    const int g = threadIdx.x / cols, nl = threadIdx.x % cols;
    for (int n0 = 0; n0 < N; n0 += cols) {
        const int n = n0 + nl;
        const bool on = n < N;
        float acc[BC];
#pragma unroll
        for (int c = 0; c < BC; ++c) acc[c] = 0.0f;
        for (int k0 = 0; k0 < K; k0 += KC) {
            const int kc = K - k0 < KC ? K - k0 : KC;
            __syncthreads();  // the previous chunk (or phase) is done with s_in and `in` is written
            for (int i = threadIdx.x; i < kc * BC; i += NT) s_in[i] = in[(size_t)k0 * BC + i];
            __syncthreads();
            if (on) {
                const float* m = M + (size_t)k0 * N + n;
#pragma unroll 4
                for (int k = g; k < kc; k += G) {
                    const float w = __ldg(m + (size_t)k * N);
                    const float* v = s_in + k * BC;
#pragma unroll
                    for (int c = 0; c < BC; ++c) acc[c] = fmaf(w, v[c], acc[c]);
                }
            }
        }
        if (G > 1) {
#pragma unroll
            for (int c = 0; c < BC; ++c) s_red[threadIdx.x * BC + c] = acc[c];
            __syncthreads();
            for (int half = G / 2; half >= 1; half >>= 1) {
                if (g < half) {
#pragma unroll
                    for (int c = 0; c < BC; ++c) s_red[threadIdx.x * BC + c] += s_red[(threadIdx.x + half * cols) * BC + c];
                }
                __syncthreads();
            }
#pragma unroll
            for (int c = 0; c < BC; ++c) acc[c] = s_red[threadIdx.x * BC + c];
        }
        if (g == 0 && on) {
            float* o = out + (size_t)n * BC;
            if (epi == EPI_FWD) {
                const float b = bias ? __ldg(bias + n) : 0.0f;
                float* d = aux ? aux + (size_t)n * BC : nullptr;
#pragma unroll
                for (int c = 0; c < BC; ++c) {
                    float der;
                    const float a = bias ? acc[c] + b : acc[c];
                    o[c] = act_scalar(act, p, a, &der);
                    if (d) d[c] = der;
                }
            } else if (epi == EPI_MUL) {
                const float* d = aux ? aux + (size_t)n * BC : nullptr;
#pragma unroll
                for (int c = 0; c < BC; ++c) o[c] = d ? acc[c] * d[c] : acc[c];
            } else {
#pragma unroll
                for (int c = 0; c < BC; ++c) o[c] = o[c] + acc[c];
            }
        }
    }
    __syncthreads();
}

// Forward of MLP mi on the rows at `in`; returns the scratch row of its output.
template <int BC>
__device__ __noinline__ int64_t mlp_fwd(const ModelDev& M, const float* W, int mi, const float* in, float* S) {
    const MLPDev m = M.mlp[mi];
    const float* cur = in;
    int64_t row = 0;
    for (int i = m.first; i < m.first + m.count; ++i) {
        const LinearDev& ln = M.lin[i];
        float* out = S + ln.out_row * BC;
        gemm<BC>(W + ln.wt_off, ln.n_out, ln.n_in, cur, out, EPI_FWD, ln.b_off >= 0 ? W + ln.b_off : nullptr,
                 ln.act, ln.param, ln.der_row >= 0 ? S + ln.der_row * BC : nullptr);
        cur = out;
        row = ln.out_row;
    }
    return row;
}

// gin rows += (d out / d in)^T gout, with the activations of MLP mi's last forward; gout has the
// last Linear's n_out rows. Uses T0 and T1.
template <int BC>
__device__ __noinline__ void mlp_bwd(const ModelDev& M, const float* W, int mi, const float* gout, float* gin, float* S) {
    const MLPDev m = M.mlp[mi];
    float* t0 = S + M.rT0 * BC;
    float* t1 = S + M.rT1 * BC;
    const int last = m.first + m.count - 1;
    const float* cur = gout;
    const LinearDev& ll = M.lin[last];
    if (ll.der_row >= 0) {  // the output activation
        const float* d = S + ll.der_row * BC;
        for (int i = threadIdx.x; i < ll.n_out * BC; i += NT) t0[i] = gout[i] * d[i];
        __syncthreads();
        cur = t0;
    }
    for (int i = last; i >= m.first; --i) {
        const LinearDev& ln = M.lin[i];
        if (i == m.first) {
            gemm<BC>(W + ln.w_off, ln.n_in, ln.n_out, cur, gin, EPI_ACC, nullptr, 0, 0.0f, nullptr);
        } else {
            float* nxt = cur == t0 ? t1 : t0;
            const LinearDev& prev = M.lin[i - 1];
            gemm<BC>(W + ln.w_off, ln.n_in, ln.n_out, cur, nxt, EPI_MUL, nullptr, 0, 0.0f,
                     prev.der_row >= 0 ? S + prev.der_row * BC : nullptr);
            cur = nxt;
        }
    }
}

// An energy term f (MLP mi, one output) at the rows `in`: adds sign * df/din into the rows `gdst`;
// returns sign * f of chain threadIdx.x for the threads 0..BC-1 (0 for the others).
template <int BC>
__device__ __noinline__ float scalar_term(const ModelDev& M, const float* W, int mi, const float* in, float* gdst,
                                          float* S) {
    const int64_t orow = mlp_fwd<BC>(M, W, mi, in, S);
    float* go = S + M.rGO * BC;
    float f = 0.0f;
    if (threadIdx.x < BC) {
        f = M.sign * S[orow * BC + threadIdx.x];
        go[threadIdx.x] = M.sign;  // dU/df
    }
    __syncthreads();
    mlp_bwd<BC>(M, W, mi, go, gdst, S);
    return f;
}

// U at the rows rx (into u[BC]) and dU/dx into the rows rg.
template <int BC>
__device__ __noinline__ void energy_grad(const ModelDev& M, const float* W, float* S, int64_t rx, int64_t rg, float* u) {
    const float* X = S + rx * BC;
    float* G = S + rg * BC;
    float* Z = S + M.rZ * BC;
    float* GZ = S + M.rGZ * BC;
    float* GO = S + M.rGO * BC;
    const bool eps = M.space_eps != 0;
    const int L = M.L;
    float part = 0.0f;  // this thread's share of U for chain threadIdx.x % BC

    // 1. the quadratic terms q_l |x_l|^2 / 2 start G; GZ starts at 0
    for (int l = 0; l < L; ++l) {
        const float q = M.q[l];
        const size_t o = (size_t)M.off[l] * BC;
        float ss = 0.0f;
        for (int i = threadIdx.x; i < M.dims[l] * BC; i += NT) {
            const float x = X[o + i];
            ss += x * x;
            G[o + i] = q * x;
            if (eps) GZ[o + i] = 0.0f;
        }
        if (q != 0.0f) part += ss * (0.5f * q);
    }
    __syncthreads();

    // 2. eps-space: z(eps) top-down, z_L = eps_L, z_l = mu_l + sigma_l * eps_l
    if (eps) {
        const size_t top = (size_t)M.off[L - 1] * BC;
        for (int i = threadIdx.x; i < M.dims[L - 1] * BC; i += NT) Z[top + i] = X[top + i];
        __syncthreads();
        for (int l = L - 2; l >= 0; --l) {
            const int d = M.dims[l];
            const size_t o = (size_t)M.off[l] * BC;
            const int64_t orow = mlp_fwd<BC>(M, W, M.gauss[l], Z + (size_t)M.off[l + 1] * BC, S);
            const float* mu = S + orow * BC;
            const float* raw = mu + (size_t)d * BC;
            const float fl = M.floor[l];
            for (int i = threadIdx.x; i < d * BC; i += NT) {
                const float sg = expf(raw[i]) + fl;
                Z[o + i] = mu[i] + sg * X[o + i];
            }
            __syncthreads();
        }
    }
    const float* zin = eps ? Z : X;
    float* gt = eps ? GZ : G;

    // 3. the energy terms f_l(z_l) and the joint term f_0(concat z): their gradient into gt
    for (int l = 0; l < L; ++l)
        if (M.term[l] >= 0)
            part += scalar_term<BC>(M, W, M.term[l], zin + (size_t)M.off[l] * BC, gt + (size_t)M.off[l] * BC, S);
    if (M.joint >= 0) part += scalar_term<BC>(M, W, M.joint, zin, gt, S);

    // 4. the inter-layer Gaussians, bottom-up (eps-space: dU/dz_{l+1} is complete before it is
    //    carried further up)
    if (M.has_gauss) {
        for (int l = 0; l < L - 1; ++l) {
            const int gm = M.gauss[l];
            const int d = M.dims[l];
            const size_t o = (size_t)M.off[l] * BC;
            int64_t orow;
            if (eps) {
                orow = M.lin[M.mlp[gm].first + M.mlp[gm].count - 1].out_row;  // its forward ran in step 2
            } else {
                orow = mlp_fwd<BC>(M, W, gm, X + (size_t)M.off[l + 1] * BC, S);
            }
            const float* mu = S + orow * BC;
            const float* raw = mu + (size_t)d * BC;
            const float fl = M.floor[l];
            float nlp = 0.0f;
            for (int i = threadIdx.x; i < d * BC; i += NT) {
                const float e = expf(raw[i]);
                const float sg = e + fl;
                float dmu, draw;
                if (eps) {
                    const float gz = GZ[o + i];
                    G[o + i] = G[o + i] + gz * sg;
                    dmu = gz;
                    draw = gz * X[o + i] * e;
                } else {
                    const float r = (X[o + i] - mu[i]) / sg;
                    nlp += 0.5f * r * r + logf(sg);
                    const float rs = r / sg;
                    G[o + i] = G[o + i] + rs;
                    dmu = -rs;
                    draw = ((1.0f - r * r) / sg) * e;
                }
                GO[i] = dmu;
                GO[(size_t)d * BC + i] = draw;
            }
            part += nlp;
            __syncthreads();
            mlp_bwd<BC>(M, W, gm, GO, gt + (size_t)M.off[l + 1] * BC, S);
        }
    }
    if (eps) {  // the top layer: z_L = eps_L
        const size_t top = (size_t)M.off[L - 1] * BC;
        for (int i = threadIdx.x; i < M.dims[L - 1] * BC; i += NT) G[top + i] = G[top + i] + GZ[top + i];
    }
    __syncthreads();
    chain_sums<BC>(part, u);
}

// dst rows = (X - h G) + c xi for the block's chains b0.. (xi = 0 past B); returns this thread's
// share of |xi|^2 for chain threadIdx.x % BC. dst may be X (in place: each element is read and
// written by one thread). Ends synchronised.
template <int BC>
__device__ __noinline__ float propose(const ModelDev& M, const ChainArgsDev& a, float* S, int64_t rx, int64_t rg,
                                      int64_t rdst, int64_t b0, uint64_t seed, uint64_t step_off) {
    const float* X = S + rx * BC;
    const float* G = S + rg * BC;
    float* Y = S + rdst * BC;
    float sxi = 0.0f;
    for (int l = 0; l < M.L; ++l) {
        const int d = M.dims[l];
        const size_t o = (size_t)M.off[l] * BC;
        const float h = a.h[l], c = a.c[l];
        const uint64_t lbase = step_off + (uint64_t)a.B * (uint64_t)M.off[l];
        for (int i = threadIdx.x; i < d * BC; i += NT) {
            const int j = i / BC;
            const int64_t b = b0 + i % BC;
            const float xi = b < a.B ? philox_normal(seed, lbase + (uint64_t)b * (uint64_t)d + (uint64_t)j) : 0.0f;
            Y[o + i] = (X[o + i] - h * G[o + i]) + c * xi;
            sxi += xi * xi;
        }
    }
    __syncthreads();
    return sxi;
}

template <int BC>
__global__ void __launch_bounds__(NT) prior_chain_kernel(const __grid_constant__ ChainArgsDev a,
                                                         const __grid_constant__ ModelDev M) {
    const float* W = a.weights;
    float* S = a.scratch + (size_t)blockIdx.x * (size_t)M.rows * BC;
    const int L = M.L;
    const int c_own = threadIdx.x % BC;
    // graph-safe form: (seed, base offset) read from device memory once
    const uint64_t seed = a.philox ? (uint64_t)a.philox[0] : a.seed;
    const uint64_t offset = a.philox ? (uint64_t)a.philox[1] + a.offset : a.offset;
    for (int64_t blk = blockIdx.x; blk < a.n_blocks; blk += gridDim.x) {
        const int64_t b0 = blk * BC;
        const int nb = a.B - b0 < BC ? (int)(a.B - b0) : BC;
        // the start state into X (chains past B: zeros)
        for (int l = 0; l < L; ++l) {
            const int d = M.dims[l];
            const size_t o = (size_t)M.off[l] * BC;
            for (int i = threadIdx.x; i < d * BC; i += NT) {
                const int c = i % BC;
                S[M.rX * BC + o + i] = c < nb ? a.x[l][(size_t)(b0 + c) * d + i / BC] : 0.0f;
            }
        }
        __syncthreads();
        if (a.K > 0) energy_grad<BC>(M, W, S, M.rX, M.rG, s_u);
        for (int64_t k = 0; k < a.K; ++k) {
            const uint64_t step_off = offset + (uint64_t)k * a.stride;
            if (a.stats) {  // at the state the step starts from
                float gsq = 0.0f;
                for (int i = threadIdx.x; i < M.D * BC; i += NT) {
                    const float gv = S[M.rG * BC + i];
                    gsq += gv * gv;
                }
                chain_sums<BC>(gsq, s_sum);
                if (threadIdx.x == 0) {
                    float su = 0.0f, sg = 0.0f;
                    for (int c = 0; c < nb; ++c) {
                        su += s_u[c];
                        sg += sqrtf(s_sum[c]);
                    }
                    float* st = a.stats + ((size_t)k * a.n_blocks + blk) * 3;
                    st[0] = su;
                    st[1] = sg;
                    st[2] = 0.0f;
                }
            }
            if (!a.mala) {
                propose<BC>(M, a, S, M.rX, M.rG, M.rX, b0, seed, step_off);
                if (k + 1 < a.K) energy_grad<BC>(M, W, S, M.rX, M.rG, s_u);
                continue;
            }
            const float sxi = propose<BC>(M, a, S, M.rX, M.rG, M.rXP, b0, seed, step_off);
            chain_sums<BC>(sxi, s_sxi);
            energy_grad<BC>(M, W, S, M.rXP, M.rGP, s_up);
            // log q(x | x') = -sum_l |x - x' + h_l g'|^2 / (2 (s_l tau)^2); log q(x' | x) = -|xi|^2 / 2
            float qb = 0.0f;
            for (int l = 0; l < L; ++l) {
                const size_t o = (size_t)M.off[l] * BC;
                const float h = a.h[l];
                const float den = a.mala_den[l];
                float ss = 0.0f;
                for (int i = threadIdx.x; i < M.dims[l] * BC; i += NT) {
                    const float t = (S[M.rX * BC + o + i] - S[M.rXP * BC + o + i]) + h * S[M.rGP * BC + o + i];
                    ss += t * t;
                }
                qb += ss / den;
            }
            chain_sums<BC>(qb, s_sum);
            if (threadIdx.x < BC) {
                const int c = threadIdx.x;
                const float log_q_bwd = -s_sum[c];
                const float log_q_fwd = -0.5f * s_sxi[c];
                const float log_alpha = ((s_u[c] - s_up[c]) + log_q_bwd) - log_q_fwd;
                int acc = 0;
                if (c < nb) {
                    const float un = philox_uniform(seed, step_off + (uint64_t)a.B * (uint64_t)M.D + (uint64_t)(b0 + c));
                    acc = logf(un) < log_alpha ? 1 : 0;
                    if (a.accept) a.accept[(size_t)k * a.B + b0 + c] = (uint8_t)acc;
                }
                s_acc[c] = acc;
            }
            __syncthreads();
            if (s_acc[c_own]) {  // every element a thread touches below belongs to chain c_own
                for (int i = threadIdx.x; i < M.D * BC; i += NT) {
                    S[M.rX * BC + i] = S[M.rXP * BC + i];
                    S[M.rG * BC + i] = S[M.rGP * BC + i];
                }
            }
            if (threadIdx.x < BC && s_acc[threadIdx.x]) s_u[threadIdx.x] = s_up[threadIdx.x];
            if (a.stats && threadIdx.x == 0) {
                float n_acc = 0.0f;
                for (int c = 0; c < nb; ++c) n_acc += (float)s_acc[c];
                a.stats[((size_t)k * a.n_blocks + blk) * 3 + 2] = n_acc;
            }
            __syncthreads();
        }
        // the final state
        for (int l = 0; l < L; ++l) {
            const int d = M.dims[l];
            const size_t o = (size_t)M.off[l] * BC;
            for (int i = threadIdx.x; i < d * BC; i += NT) {
                const int c = i % BC;
                if (c < nb) a.out[l][(size_t)(b0 + c) * d + i / BC] = S[M.rX * BC + o + i];
            }
        }
        __syncthreads();
    }
}

}  // namespace

const char* launch_prior_chain(const ModelDev& model, const ChainArgsDev& a, int chains, int64_t grid, void* stream) {
    const cudaStream_t st = (cudaStream_t)stream;
    if (chains == kChainsLarge) {
        JEBM_LAUNCH(prior_chain_kernel<kChainsLarge>, (unsigned)grid, NT, st, a, model);
    } else {
        JEBM_LAUNCH(prior_chain_kernel<kChainsSmall>, (unsigned)grid, NT, st, a, model);
    }
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace cuda
}  // namespace jebm
