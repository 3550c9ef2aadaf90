// The GEMM of the CPU kernels: out[N, NB] = W[N, K] x in[K, NB] on a block of NB chains held
// feature-major (row n holds feature n of the NB chains), and the packing of W (or W^T) it reads.
//
// Two register tilings, one per kind of block (simd.h), both summing every output in the same
// order -- out = init, then out = fma(W[n][k], in[k], out) for k = 0, 1, ..., K-1 -- so a chain's
// arithmetic is the same in either (the narrow kernels equal the wide ones bit for bit):
// - wide blocks (NB a multiple of V): along the chains. A TR x TC tile (TR output rows x TC
//   vectors of chains); each broadcast weight feeds TC FMAs. Panels of TR rows, packed [k][r].
// - narrow blocks (NB < V: 4 or 8 chains, too few to fill a vector): along the output features.
//   A tile of R vectors of V features x NB chains; each broadcast input feeds R FMAs, each weight
//   vector NB. Panels of TR * V rows (zero-padded to whole vectors), packed [k][r]; the tile is
//   transposed to the block's [row][chain] layout in registers when it is stored.
// Part of isa_kernels.h (uses simd.h).
#pragma once
#ifndef JEBM_ISA_KERNELS
#error "gemm.h is a layer of the CPU kernels: include isa_kernels.h (from a chain_<isa>.cpp)"
#endif


enum { INIT_ZERO = 0, INIT_BIAS = 1, INIT_ACC = 2 };

// Floats of one packed N x K matrix (and of its bias copy, N rounded up likewise).
constexpr size_t panel_rows(int N) { return kFeatureGemm ? round_up((size_t)N, V) : (size_t)N; }
inline size_t packed_floats(int N, int K) { return panel_rows(N) * (size_t)K; }

// Packs the N x K matrix M (M[n][k] = W[n*K + k], or W[k*N + n] when `transposed`) in panels of
// P rows (TR, or TR * V zero-padded to whole vectors in narrow blocks), each [k][r]; the panel of
// rows n0.. starts at n0 * K.
void pack_panels(const float* W, int N, int K, bool transposed, float* dst) {
    constexpr int P = kFeatureGemm ? TR * V : TR;
    for (int n0 = 0; n0 < N; n0 += P) {
        const int real = N - n0 < P ? N - n0 : P;
        const int R = kFeatureGemm ? (int)round_up((size_t)real, V) : real;
        float* p = dst + (size_t)n0 * K;
        for (int k = 0; k < K; ++k)
            for (int r = 0; r < R; ++r)
                p[(size_t)k * R + r] = r >= real ? 0.0f
                                       : transposed ? W[(size_t)k * N + n0 + r] : W[(size_t)(n0 + r) * K + k];
    }
}

// ------------------------------------------------------------------------------ wide blocks

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

// ------------------------------------------------------------------------------ narrow blocks
// A tile's registers hold acc[r][b] = features r*V .. r*V+V-1 of chain b; the block holds rows of
// NB chains. to_rows turns the NB vectors of one r into the V*NB floats of rows r*V.. (NB vectors,
// row-major), from_rows does the reverse (INIT_ACC).

#if JEBM_FMA == 512
// log2(NB) rounds of two-source permutes. After round l the NB vectors are indexed (g, h), g a
// group of S = 2^l chains, h a chunk of V/S features; lane c + S*i holds chain g*S + c, feature
// h*(V/S) + i. Round 0 is the tile, the last round the rows.
struct TrIdx {
    int fwd[6][2][16];   // [round][h % 2][lane]
    int inv[6][2][16];   // [round][g' % 2][lane]
};
constexpr TrIdx make_tr_idx() {
    TrIdx t{};
    for (int l = 1; (1 << l) <= NB && (1 << l) <= V; ++l) {
        const int S = 1 << l, Sp = S / 2, F = V / S;
        for (int hb = 0; hb < 2; ++hb)
            for (int lane = 0; lane < V; ++lane) {
                const int c = lane % S, i = lane / S;
                t.fwd[l][hb][lane] = (c / Sp) * 16 + (c % Sp) + Sp * (hb * F + i);
            }
        for (int gb = 0; gb < 2; ++gb)
            for (int lane = 0; lane < V; ++lane) {
                const int c = lane % Sp, i = lane / Sp;  // lane of a round-(l-1) vector
                t.inv[l][gb][lane] = (i >= F ? 16 : 0) + (gb * Sp + c) + S * (i % F);
            }
    }
    return t;
}
constexpr TrIdx kTr = make_tr_idx();

JEBM_INLINE void to_rows(const vf* a, vf* o) {
    vf cur[NB], nxt[NB];
    for (int b = 0; b < NB; ++b) cur[b] = a[b];
#pragma GCC unroll 4
    for (int l = 1; (1 << l) <= NB; ++l) {
        const int S = 1 << l, Sp = S / 2, G = NB / S;
        const __m512i i0 = _mm512_loadu_si512(kTr.fwd[l][0]), i1 = _mm512_loadu_si512(kTr.fwd[l][1]);
        for (int g = 0; g < G; ++g)
            for (int h = 0; h < S; ++h)
                nxt[g * S + h] = (vf)_mm512_permutex2var_ps((__m512)cur[(2 * g) * Sp + h / 2], h % 2 ? i1 : i0,
                                                            (__m512)cur[(2 * g + 1) * Sp + h / 2]);
        for (int b = 0; b < NB; ++b) cur[b] = nxt[b];
    }
    for (int b = 0; b < NB; ++b) o[b] = cur[b];
}

JEBM_INLINE void from_rows(const vf* o, vf* a) {
    vf cur[NB], nxt[NB];
    for (int b = 0; b < NB; ++b) cur[b] = o[b];
#pragma GCC unroll 4
    for (int l = 0; (2 << l) <= NB; ++l) {
        const int L = __builtin_ctz(NB) - l;  // undo round L
        const int S = 1 << L, Sp = S / 2, G = NB / S;
        const __m512i i0 = _mm512_loadu_si512(kTr.inv[L][0]), i1 = _mm512_loadu_si512(kTr.inv[L][1]);
        // round-(L-1) vector (g', h') from round-L vectors (g'/2, 2h') and (g'/2, 2h'+1)
        for (int gp = 0; gp < 2 * G; ++gp)
            for (int hp = 0; hp < Sp; ++hp)
                nxt[gp * Sp + hp] = (vf)_mm512_permutex2var_ps((__m512)cur[(gp / 2) * S + 2 * hp], gp % 2 ? i1 : i0,
                                                               (__m512)cur[(gp / 2) * S + 2 * hp + 1]);
        for (int b = 0; b < NB; ++b) cur[b] = nxt[b];
    }
    for (int b = 0; b < NB; ++b) a[b] = cur[b];
}
#elif JEBM_FMA == 256 && JEBM_VW == 8 && JEBM_NB == 4
// 8 features x 4 chains <-> 8 rows of 4 chains (two rows per vector)
JEBM_INLINE void to_rows(const vf* a, vf* o) {
    const __m256 t0 = _mm256_unpacklo_ps((__m256)a[0], (__m256)a[1]), t1 = _mm256_unpackhi_ps((__m256)a[0], (__m256)a[1]);
    const __m256 t2 = _mm256_unpacklo_ps((__m256)a[2], (__m256)a[3]), t3 = _mm256_unpackhi_ps((__m256)a[2], (__m256)a[3]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);  // rows 0|4, 1|5
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);  // rows 2|6, 3|7
    o[0] = (vf)_mm256_permute2f128_ps(u0, u1, 0x20);
    o[1] = (vf)_mm256_permute2f128_ps(u2, u3, 0x20);
    o[2] = (vf)_mm256_permute2f128_ps(u0, u1, 0x31);
    o[3] = (vf)_mm256_permute2f128_ps(u2, u3, 0x31);
}
JEBM_INLINE void from_rows(const vf* o, vf* a) {
    const __m256 u0 = _mm256_permute2f128_ps((__m256)o[0], (__m256)o[2], 0x20);  // rows 0|4
    const __m256 u1 = _mm256_permute2f128_ps((__m256)o[0], (__m256)o[2], 0x31);  // rows 1|5
    const __m256 u2 = _mm256_permute2f128_ps((__m256)o[1], (__m256)o[3], 0x20);  // rows 2|6
    const __m256 u3 = _mm256_permute2f128_ps((__m256)o[1], (__m256)o[3], 0x31);  // rows 3|7
    const __m256 t0 = _mm256_unpacklo_ps(u0, u1), t1 = _mm256_unpackhi_ps(u0, u1);
    const __m256 t2 = _mm256_unpacklo_ps(u2, u3), t3 = _mm256_unpackhi_ps(u2, u3);
    a[0] = (vf)_mm256_shuffle_ps(t0, t2, 0x44);
    a[1] = (vf)_mm256_shuffle_ps(t0, t2, 0xEE);
    a[2] = (vf)_mm256_shuffle_ps(t1, t3, 0x44);
    a[3] = (vf)_mm256_shuffle_ps(t1, t3, 0xEE);
}
#else
JEBM_INLINE void to_rows(const vf* a, vf* o) {
    float* of = (float*)o;
    for (int i = 0; i < V; ++i)
        for (int b = 0; b < NB; ++b) of[i * NB + b] = a[b][i];
}
JEBM_INLINE void from_rows(const vf* o, vf* a) {
    const float* of = (const float*)o;
    for (int b = 0; b < NB; ++b)
        for (int i = 0; i < V; ++i) a[b][i] = of[i * NB + b];
}
#endif

// out[rows, NB] (=|+=) W_panel[R*V, K] x in[K, NB] for rows <= R*V output rows; the panel is
// packed [k][R*V] (its rows past `rows` are zeros), bias (if any) holds R*V values.
template <int R>
inline void ftile(const float* __restrict w, int K, const float* __restrict in, float* __restrict out, int rows,
                  int mode, const float* __restrict bias) {
    vf acc[R][NB];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
        const int m = rows - r * V < V ? rows - r * V : V;  // rows of this vector, > 0
        if (mode == INIT_ACC) {
            vf o[NB];
            for (int q = 0; q < NB; ++q) {
                const int left = m * NB - q * V;  // floats of this tile's rows in o[q]
                o[q] = left >= V ? ld(out + ((size_t)r * V) * NB + q * V)
                                 : left > 0 ? ldp(out + ((size_t)r * V) * NB + q * V, left) : vf{};
            }
            from_rows(o, acc[r]);
        } else {
            const vf b0 = mode == INIT_BIAS ? ld(bias + r * V) : vf{};
#pragma GCC unroll 8
            for (int b = 0; b < NB; ++b) acc[r][b] = b0;
        }
    }
    const size_t P = (size_t)R * V;
    for (int k = 0; k < K; ++k) {
        // each weight is read once per tile: a narrow block streams the whole model through the
        // cache every step, so fetch 4 rows ahead (+10% from L3 on Zen 5 with 4 chains)
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) __builtin_prefetch(w + (size_t)(k + 4) * P + r * V, 0, 3);
        vf wv[R];
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) wv[r] = ld(w + (size_t)k * P + r * V);
#pragma GCC unroll 8
        for (int b = 0; b < NB; ++b) {
            const vf x = splat(in[(size_t)k * NB + b]);
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r) acc[r][b] = vfma(wv[r], x, acc[r][b]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
        const int m = rows - r * V < V ? rows - r * V : V;
        vf o[NB];
        to_rows(acc[r], o);
        float* dst = out + ((size_t)r * V) * NB;
        for (int q = 0; q < NB; ++q) {
            const int left = m * NB - q * V;
            if (left >= V)
                st(dst + q * V, o[q]);
            else if (left > 0)
                stp(dst + q * V, o[q], left);
        }
    }
}

// ------------------------------------------------------------------------------ dispatch

template <int R>
inline void tile_rem(int r, const float* w, int K, const float* in, float* out, int rows, int mode,
                     const float* bias) {
    if (r == R) {
        if constexpr (kFeatureGemm)
            ftile<R>(w, K, in, out, rows, mode, bias);
        else
            gemm_tile<R>(w, K, in, out, mode, bias);
    } else if constexpr (R > 1) {
        tile_rem<R - 1>(r, w, K, in, out, rows, mode, bias);
    }
}

// out[N, NB] = W[N, K] x in[K, NB] (+ bias, or += out); `packed` from pack_panels, `bias` (if any)
// holds panel_rows(N) values (zero-padded).
void gemm(const float* packed, int N, int K, const float* in, float* out, int mode, const float* bias) {
    constexpr int P = kFeatureGemm ? TR * V : TR;
    int n = 0;
    for (; n + P <= N; n += P) {
        if constexpr (kFeatureGemm)
            ftile<TR>(packed + (size_t)n * K, K, in, out + (size_t)n * NB, P, mode, bias ? bias + n : nullptr);
        else
            gemm_tile<TR>(packed + (size_t)n * K, K, in, out + (size_t)n * NB, mode, bias ? bias + n : nullptr);
    }
    if (n < N) {
        const int rows = N - n;
        const int R = kFeatureGemm ? (rows + V - 1) / V : rows;
        // wide: fewer than TR rows; narrow: up to TR vectors (fewer than TR * V rows)
        constexpr int RMAX = kFeatureGemm ? TR : (TR > 1 ? TR - 1 : 1);
        tile_rem<RMAX>(R, packed + (size_t)n * K, K, in, out + (size_t)n * NB, rows, mode, bias ? bias + n : nullptr);
    }
}
