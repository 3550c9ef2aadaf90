// The GEMM of the CPU kernels: out[N, NB] = W[N, K] x in[K, NB] on a block of NB chains held
// feature-major, as a TR x TC register tile (TR output rows x TC vectors of chains; each broadcast
// weight feeds TC FMAs), and the packing of W (or W^T) into the TR-row panels it reads.
// Every chain lane sums its dot products in the same k order at any V, block or thread count.
// Part of isa_kernels.h (uses simd.h).
#pragma once
#ifndef JEBM_ISA_KERNELS
#error "gemm.h is a layer of the CPU kernels: include isa_kernels.h (from a chain_<isa>.cpp)"
#endif


enum { INIT_ZERO = 0, INIT_BIAS = 1, INIT_ACC = 2 };

// out[R, NB] (=|+=) W_panel[R, K] x in[K, NB]; the panel is packed [k][r].
template <int R>
inline void gemm_tile(const float* __restrict w, int K, const float* __restrict in, float* __restrict out,
                      int mode, const float* __restrict bias) {
    vf acc[R][TC];
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int c = 0; c < TC; ++c)
            acc[r][c] = mode == INIT_ACC ? ld(out + r * NB + c * V) : (mode == INIT_BIAS ? splat(bias[r]) : vf{});
    }
    for (int k = 0; k < K; ++k) {
        vf a[TC];
#pragma GCC unroll 4
        for (int c = 0; c < TC; ++c) a[c] = ld(in + (size_t)k * NB + c * V);
        const float* wk = w + (size_t)k * R;
#pragma GCC unroll 32
        for (int r = 0; r < R; ++r) {
            const vf b = splat(wk[r]);
#pragma GCC unroll 4
            for (int c = 0; c < TC; ++c) acc[r][c] = vfma(b, a[c], acc[r][c]);
        }
    }
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int c = 0; c < TC; ++c) st(out + r * NB + c * V, acc[r][c]);
    }
}

template <int R>
inline void gemm_rem(int r, const float* w, int K, const float* in, float* out, int mode, const float* bias) {
    if (r == R) {
        gemm_tile<R>(w, K, in, out, mode, bias);
    } else if constexpr (R > 1) {
        gemm_rem<R - 1>(r, w, K, in, out, mode, bias);
    }
}

// out[N, NB] = W[N, K] x in[K, NB] (+ bias, or += out); `packed` from pack_panels.
void gemm(const float* packed, int N, int K, const float* in, float* out, int mode, const float* bias) {
    int n = 0;
    for (; n + TR <= N; n += TR)
        gemm_tile<TR>(packed + (size_t)n * K, K, in, out + (size_t)n * NB, mode, bias ? bias + n : nullptr);
    if (n < N) {
        if constexpr (TR > 1)
            gemm_rem<TR - 1>(N - n, packed + (size_t)n * K, K, in, out + (size_t)n * NB, mode,
                             bias ? bias + n : nullptr);
    }
}

// Packs the N x K matrix M (M[n][k] = W[n*K + k], or W[k*N + n] when `transposed`) in TR-row
// panels, each [k][r]; the panel of rows n0.. starts at n0 * K.
void pack_panels(const float* W, int N, int K, bool transposed, float* dst) {
    for (int n0 = 0; n0 < N; n0 += TR) {
        const int R = N - n0 < TR ? N - n0 : TR;
        float* p = dst + (size_t)n0 * K;
        for (int k = 0; k < K; ++k)
            for (int r = 0; r < R; ++r)
                p[(size_t)k * R + r] = transposed ? W[(size_t)k * N + n0 + r] : W[(size_t)(n0 + r) * K + k];
    }
}
