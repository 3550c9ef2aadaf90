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
// The bf16 builds (JEBM_BF16, AVX512-BF16) keep both tilings and their order but multiply bf16
// pairs: W and the input are rounded to bf16 (to nearest even, as torch's .bfloat16(); denormals
// count as zero, as vdpbf16ps reads them), packed as pairs along k in one 32-bit word (k even in the
// low half; an odd K gets a zero weight and input),
// and each step is out = vdpbf16ps(out, W pair, in pair) for kp = 0, 1, ..., ceil(K/2)-1: the two
// products are exact in fp32 and added to the fp32 sum one after the other, the same instruction on
// the same pairs in the same order in either tiling (the narrow bf16 kernels equal the wide ones bit
// for bit). The input is converted to pairs per GEMM, a chunk of k at a time (a stack buffer: no
// allocation), each chunk after the first accumulating onto the fp32 output.
// Part of isa_kernels.h (uses simd.h).
#pragma once
#ifndef JEBM_ISA_KERNELS
#error "gemm.h is a layer of the CPU kernels: include isa_kernels.h (from a chain_<isa>.cpp)"
#endif


enum { INIT_ZERO = 0, INIT_BIAS = 1, INIT_ACC = 2 };

// Rows of one packed matrix's panels (and of its bias copy): N, rounded up to whole vectors in
// narrow blocks.
constexpr size_t panel_rows(int N) { return kFeatureGemm ? round_up((size_t)N, V) : (size_t)N; }

#if JEBM_BF16
// A uint32 that may alias the float storage the model's panel pointers point into.
typedef uint32_t __attribute__((__may_alias__)) word_t;

// bf16 of x in the low 16 bits: round to nearest even, a NaN stays a (quiet) NaN, as torch rounds.
JEBM_INLINE uint32_t bf16_bits(float x) {
    uint32_t u;
    __builtin_memcpy(&u, &x, sizeof u);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;
    return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}

// Words (4 bytes, as a float) of one packed N x K matrix: panel rows x ceil(K/2) pairs.
inline size_t packed_floats(int N, int K) { return panel_rows(N) * (size_t)((K + 1) / 2); }

// Packs the N x K matrix M (M[n][k] = W[n*K + k], or W[k*N + n] when `transposed`) as bf16 pairs
// along k, word (kp, n) = bf16(M[n][2kp]) | bf16(M[n][2kp+1]) << 16 (a zero past K), in panels of
// P rows (TR, or TR * V zero-padded to whole vectors in narrow blocks), each [kp][r]; the panel of
// rows n0.. starts at word n0 * ceil(K/2).
void pack_panels(const float* W, int N, int K, bool transposed, float* dst) {
    constexpr int P = kFeatureGemm ? TR * V : TR;
    const int KP = (K + 1) / 2;
    auto at = [&](int n, int k) -> uint32_t {
        return k >= K ? 0u : bf16_bits(transposed ? W[(size_t)k * N + n] : W[(size_t)n * K + k]);
    };
    for (int n0 = 0; n0 < N; n0 += P) {
        const int real = N - n0 < P ? N - n0 : P;
        const int R = kFeatureGemm ? (int)round_up((size_t)real, V) : real;
        word_t* p = (word_t*)dst + (size_t)n0 * KP;
        for (int kp = 0; kp < KP; ++kp)
            for (int r = 0; r < R; ++r)
                p[(size_t)kp * R + r] = r >= real ? 0u : at(n0 + r, 2 * kp) | at(n0 + r, 2 * kp + 1) << 16;
    }
}
#else
// Floats of one packed N x K matrix.
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
#endif

// ------------------------------------------------------------------------------ wide blocks

// A wide tile's accumulators: R output rows x TC vectors of chains.
template <int R>
JEBM_INLINE void wide_init(vf (&acc)[R][TC], const float* __restrict out, int mode, const float* __restrict bias) {
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int c = 0; c < TC; ++c)
            acc[r][c] = mode == INIT_ACC ? ld(out + r * NB + c * V) : (mode == INIT_BIAS ? splat(bias[r]) : vf{});
    }
}
template <int R>
JEBM_INLINE void wide_store(const vf (&acc)[R][TC], float* __restrict out) {
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int c = 0; c < TC; ++c) st(out + r * NB + c * V, acc[r][c]);
    }
}

// out[R, NB] (=|+=) W_panel[R, K] x in[K, NB]; the panel is packed [k][r].
template <int R>
inline void gemm_tile(const float* __restrict w, int K, const float* __restrict in, float* __restrict out,
                      int mode, const float* __restrict bias) {
    vf acc[R][TC];
    wide_init<R>(acc, out, mode, bias);
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
    wide_store<R>(acc, out);
}

#if JEBM_BF16
// out[R, NB] (=|+=) W_panel[R, 2 KP] x in[2 KP, NB] in bf16 pairs: the panel packed [kp][r], the
// input words [kp][NB] (pair_rows). Each panel word is broadcast to TC vectors of 16 chains' pairs.
template <int R>
inline void gemm_tile_bf16(const word_t* __restrict w, int KP, const word_t* __restrict in, float* __restrict out,
                           int mode, const float* __restrict bias) {
    vf acc[R][TC];
    wide_init<R>(acc, out, mode, bias);
    for (int kp = 0; kp < KP; ++kp) {
        __m512i a[TC];
#pragma GCC unroll 4
        for (int c = 0; c < TC; ++c) a[c] = _mm512_loadu_si512(in + (size_t)kp * NB + c * V);
        const word_t* wk = w + (size_t)kp * R;
#pragma GCC unroll 32
        for (int r = 0; r < R; ++r) {
            const __m512bh b = (__m512bh)_mm512_set1_epi32((int)wk[r]);
#pragma GCC unroll 4
            for (int c = 0; c < TC; ++c) acc[r][c] = (vf)_mm512_dpbf16_ps((__m512)acc[r][c], (__m512bh)a[c], b);
        }
    }
    wide_store<R>(acc, out);
}
#endif

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

// A narrow tile's accumulators: R vectors of V output features x NB chains; `rows` (<= R*V) of
// them belong to the output.
template <int R>
JEBM_INLINE void narrow_init(vf (&acc)[R][NB], const float* __restrict out, int rows, int mode,
                             const float* __restrict bias) {
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
}
template <int R>
JEBM_INLINE void narrow_store(const vf (&acc)[R][NB], float* __restrict out, int rows) {
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

// out[rows, NB] (=|+=) W_panel[R*V, K] x in[K, NB] for rows <= R*V output rows; the panel is
// packed [k][R*V] (its rows past `rows` are zeros), bias (if any) holds R*V values.
template <int R>
inline void ftile(const float* __restrict w, int K, const float* __restrict in, float* __restrict out, int rows,
                  int mode, const float* __restrict bias) {
    vf acc[R][NB];
    narrow_init<R>(acc, out, rows, mode, bias);
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
    narrow_store<R>(acc, out, rows);
}

#if JEBM_BF16
// out[rows, NB] (=|+=) W_panel[R*V, 2 KP] x in[2 KP, NB] in bf16 pairs: the panel packed
// [kp][R*V] (V features x 2 k per vector), the input words [kp][NB]; each chain's input pair is
// broadcast to the R feature vectors.
template <int R>
inline void ftile_bf16(const word_t* __restrict w, int KP, const word_t* __restrict in, float* __restrict out,
                       int rows, int mode, const float* __restrict bias) {
    vf acc[R][NB];
    narrow_init<R>(acc, out, rows, mode, bias);
    const size_t P = (size_t)R * V;
    for (int kp = 0; kp < KP; ++kp) {
        // a narrow block streams the whole model through the cache every step (as ftile)
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) __builtin_prefetch(w + (size_t)(kp + 4) * P + r * V, 0, 3);
        __m512i wv[R];
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) wv[r] = _mm512_loadu_si512(w + (size_t)kp * P + r * V);
#pragma GCC unroll 8
        for (int b = 0; b < NB; ++b) {
            const __m512bh x = (__m512bh)_mm512_set1_epi32((int)in[(size_t)kp * NB + b]);
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r) acc[r][b] = (vf)_mm512_dpbf16_ps((__m512)acc[r][b], (__m512bh)wv[r], x);
        }
    }
    narrow_store<R>(acc, out, rows);
}
#endif

// ------------------------------------------------------------------------------ dispatch

#if JEBM_BF16
template <int R>
inline void tile_rem(int r, const word_t* w, int KP, const word_t* in, float* out, int rows, int mode,
                     const float* bias) {
    if (r == R) {
        if constexpr (kFeatureGemm)
            ftile_bf16<R>(w, KP, in, out, rows, mode, bias);
        else
            gemm_tile_bf16<R>(w, KP, in, out, mode, bias);
    } else if constexpr (R > 1) {
        tile_rem<R - 1>(r, w, KP, in, out, rows, mode, bias);
    }
}

// The 16-bit lanes vpermw / vpermt2w take from vcvtne2ps2bf16's output (the rows' bf16 in memory
// order) to make pair words. NB <= 16: 32 floats are 16 / NB pairs of rows, word i = pair i / NB,
// chain i % NB. NB = 32: one row per converted vector, words of chains 16h .. 16h + 15 from the low
// row (source 1) and the high row (source 2, lanes 32..).
struct PairIdx {
    int16_t one[32];
    int16_t two[2][32];
};
constexpr PairIdx make_pair_idx() {
    PairIdx t{};
    constexpr int nb = NB < 16 ? NB : 16;
    for (int i = 0; i < 16; ++i) {
        const int j = i / nb, b = i % nb;
        t.one[2 * i] = (int16_t)(2 * j * nb + b);
        t.one[2 * i + 1] = (int16_t)((2 * j + 1) * nb + b);
        for (int h = 0; h < 2; ++h) {
            t.two[h][2 * i] = (int16_t)(16 * h + i);
            t.two[h][2 * i + 1] = (int16_t)(32 + 16 * h + i);
        }
    }
    return t;
}
constexpr PairIdx kPair = make_pair_idx();
static_assert(NB == 32 || (NB <= 16 && 16 % NB == 0), "pair_rows: blocks of 32 chains, or of a divisor of 16");

// Pairs kp0 .. kp0 + n - 1 of the input rows in[K, NB] as words [n][NB]: bf16(in[2kp][b]) low,
// bf16(in[2kp+1][b]) high (zero past K). vcvtne2ps2bf16 rounds 32 floats to nearest even (as
// bf16_bits, except that an fp32 denormal counts as zero: vdpbf16ps ignores bf16 denormals anyway),
// one permute interleaves them: a third of the bit arithmetic's instructions.
void pair_rows(const float* __restrict in, int K, int kp0, int n, word_t* __restrict words) {
    const int k0 = 2 * kp0;
    const float* src = in + (size_t)k0 * NB;
    if constexpr (NB == 32) {
        const __m512i i0 = _mm512_loadu_si512(kPair.two[0]), i1 = _mm512_loadu_si512(kPair.two[1]);
        for (int j = 0; j < n; ++j) {
            const float* lo = src + (size_t)(2 * j) * NB;
            const __m512i L = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(lo + 16), _mm512_loadu_ps(lo));
            const __m512i H = k0 + 2 * j + 1 < K ? (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(lo + 48), _mm512_loadu_ps(lo + 32))
                                                 : _mm512_setzero_si512();
            _mm512_storeu_si512(words + (size_t)j * NB, _mm512_permutex2var_epi16(L, i0, H));
            _mm512_storeu_si512(words + (size_t)j * NB + 16, _mm512_permutex2var_epi16(L, i1, H));
        }
    } else {
        // the rows as one flat array: rows k0 .. min(K, k0 + 2n) - 1, then zeros (masked loads)
        const int rows = K - k0 < 2 * n ? K - k0 : 2 * n;
        const int total = rows * NB, nw = n * NB;
        const __m512i idx = _mm512_loadu_si512(kPair.one);
        auto part = [&](int f) -> __m512 {
            if (f + 16 <= total) return _mm512_loadu_ps(src + f);
            if (f >= total) return _mm512_setzero_ps();
            return _mm512_maskz_loadu_ps((__mmask16)((1u << (total - f)) - 1), src + f);
        };
        for (int w = 0; w < nw; w += 16) {
            const __m512i r = _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(part(2 * w + 16), part(2 * w)));
            if (w + 16 <= nw)
                _mm512_storeu_si512(words + w, r);
            else
                _mm512_mask_storeu_epi32(words + w, (__mmask16)((1u << (nw - w)) - 1), r);
        }
    }
}

// out[N, NB] = W[N, K] x in[K, NB] (+ bias, or += out) in bf16 pairs; `packed` from pack_panels,
// `bias` (if any) holds panel_rows(N) values (zero-padded). The input is paired a chunk of kChunk
// pairs at a time (a stack buffer of kChunk * NB words), every chunk after the first accumulating
// onto `out`: the fp32 sums are those of one pass.
void gemm(const float* packed, int N, int K, const float* in, float* out, int mode, const float* bias) {
    constexpr int P = kFeatureGemm ? TR * V : TR;
    constexpr int kChunk = 128;
    alignas(64) word_t inb[kChunk * NB];
    const word_t* pw = (const word_t*)packed;
    const int KP = (K + 1) / 2;
    for (int c0 = 0; c0 < KP; c0 += kChunk) {
        const int n = KP - c0 < kChunk ? KP - c0 : kChunk;
        pair_rows(in, K, c0, n, inb);
        // (INIT_BIAS always comes with a bias; the test tells GCC so, which otherwise warns of a null one)
        const int m = c0 ? INIT_ACC : mode == INIT_BIAS && !bias ? INIT_ZERO : mode;
        int r0 = 0;
        for (; r0 + P <= N; r0 += P) {
            const word_t* w = pw + (size_t)r0 * KP + (size_t)c0 * P;
            if constexpr (kFeatureGemm)
                ftile_bf16<TR>(w, n, inb, out + (size_t)r0 * NB, P, m, bias ? bias + r0 : nullptr);
            else
                gemm_tile_bf16<TR>(w, n, inb, out + (size_t)r0 * NB, m, bias ? bias + r0 : nullptr);
        }
        if (r0 < N) {
            const int rows = N - r0;
            const int R = kFeatureGemm ? (rows + V - 1) / V : rows;
            const int width = kFeatureGemm ? R * V : rows;  // this panel's rows
            constexpr int RMAX = kFeatureGemm ? TR : (TR > 1 ? TR - 1 : 1);
            tile_rem<RMAX>(R, pw + (size_t)r0 * KP + (size_t)c0 * width, n, inb, out + (size_t)r0 * NB, rows, m,
                           bias ? bias + r0 : nullptr);
        }
    }
}
#else
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
#endif
