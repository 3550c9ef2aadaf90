// The fused chain: a block's K Langevin (or MALA) steps, from the start state to the final one,
// with its per-chain statistics; the single evaluation (eval, z1); and the OpenMP loop that hands
// whole blocks of NB chains to the threads (chains are independent: no barrier).
// Part of isa_kernels.h (uses energy.h, philox_simd.h).
#pragma once
#ifndef JEBM_ISA_KERNELS
#error "chain.h is a layer of the CPU kernels: include isa_kernels.h (from a chain_<isa>.cpp)"
#endif


// rows [d, NB] <- chains b0..b0+nb-1 of src [B, d]; lanes past nb are zero.
void load_rows(const float* src, int d, int64_t b0, int nb, float* dst) {
    for (int j = 0; j < d; ++j)
        for (int i = nb; i < NB; ++i) dst[(size_t)j * NB + i] = 0.0f;
    for (int i = 0; i < nb; ++i) {
        const float* s = src + (size_t)(b0 + i) * d;
        for (int j = 0; j < d; ++j) dst[(size_t)j * NB + i] = s[j];
    }
}

void store_rows(const float* rows, int d, int64_t b0, int nb, float* dst) {
    for (int i = 0; i < nb; ++i) {
        float* o = dst + (size_t)(b0 + i) * d;
        for (int j = 0; j < d; ++j) o[j] = rows[(size_t)j * NB + i];
    }
}

// The Philox counter increments of a layer's noise over one vector of a block's rows: element
// (row j, chain b) of layer l draws counter lbase + b * d_l + j (problem.py's layout). A vector at
// flat index i of the layer's rows (j0 = i / NB, b0 = i % NB) covers lanes (i + t): counters
// lbase + j0 + inc[t], inc[t] = ((b0 + t) % NB) * d_l + (b0 + t) / NB. b0 takes NB / V values in a
// wide block (one pattern per vector of chains), only 0 in a narrow one (V / NB rows per vector).
constexpr int kIncPatterns = NB > V ? NB / V : 1;
inline void noise_increments(int dl, vu* inc) {
    for (int p = 0; p < kIncPatterns; ++p)
        for (int t = 0; t < V; ++t) {
            const uint32_t q = (uint32_t)(p * V + t);
            inc[p][t] = (q % NB) * (uint32_t)dl + q / NB;
        }
}

void chain_block(const Model& M, Work& W, const ChainArgs& A, int64_t b0, int nb) {
    const ModelDesc& d = M.d;
    const int L = d.L;
    const int64_t B = A.B;
    for (int l = 0; l < L; ++l) load_rows(A.x[l], d.dims[l], b0, nb, W.X + (size_t)M.off[l] * NB);
    if (d.decoder >= 0) load_rows(A.xobs, d.P, b0, nb, W.XO);
    float *X = W.X, *G = W.G, *XP = W.XP, *GP = W.GP, *U = W.U, *UP = W.UP;
    const vu lane = lane_index();
    vu incs[kMaxLatent][kIncPatterns];
    for (int l = 0; l < L; ++l) noise_increments(d.dims[l], incs[l]);
    if (A.K > 0) eval_block(M, W, X, U, G, nullptr, nullptr);
    for (int64_t k = 0; k < A.K; ++k) {
        if (A.st_energy) {
            for (int i = 0; i < nb; ++i) A.st_energy[k * B + b0 + i] = U[i];
            for (int c = 0; c < TC; ++c) stc(W.lane + c * CV, csqrt(sum_sq_rows(G, M.D, c)));
            for (int i = 0; i < nb; ++i) A.st_gnorm[k * B + b0 + i] = W.lane[i];
        }
        const uint64_t base = A.offset + (uint64_t)k * A.stride;
        // the proposal x - h g + c xi, xi at the problem.py layout, over each layer's rows
        for (int l = 0; l < L; ++l) {
            const int dl = d.dims[l];
            const float h = A.h[l], cc = A.c[l];
            const uint64_t lbase = base + (uint64_t)B * M.off[l] + (uint64_t)b0 * dl;
            const size_t o = (size_t)M.off[l] * NB;
            const float *x = X + o, *g = G + o;
            float *xp = XP + o, *xi_out = W.XI + o;
            const bool mala = A.mala;
            const vu* inc = incs[l];
            for_normals((size_t)dl * NB, A.seed, [&](size_t i) { return lbase + i / NB; },
                        [&](size_t i) { return inc[(i % NB) / V % kIncPatterns]; },
                        [&](size_t i, int m, vf xi) {
                            stp(xp + i, (ldp(x + i, m) - h * ldp(g + i, m)) + cc * xi, m);
                            if (mala) stp(xi_out + i, xi, m);
                        });
        }
        if (!A.mala) {
            float* t = X;
            X = XP;
            XP = t;
            if (k + 1 < A.K) eval_block(M, W, X, U, G, nullptr, nullptr);
            continue;
        }
        eval_block(M, W, XP, UP, GP, nullptr, nullptr);
        const uint64_t ubase = base + (uint64_t)B * M.D + (uint64_t)b0;
        // log of each chain's uniform (counter ubase + chain), flat
        for (int i = 0; i < NB; i += V) st(W.lane + i, vlog(uniform_vec(A.seed, ubase + (uint64_t)i, lane)));
        for (int c = 0; c < TC; ++c) {
            cf qf = cf{}, qb = cf{};
            for (int l = 0; l < L; ++l) {
                const float h = A.h[l];
                cf sf = cf{}, sb = cf{};
                for (int j = 0; j < d.dims[l]; ++j) {
                    const size_t i = (size_t)(M.off[l] + j) * NB + c * CV;
                    const cf xi = ldc(W.XI + i);
                    sf = sf + xi * xi;
                    const cf r = (ldc(X + i) - ldc(XP + i)) + h * ldc(GP + i);
                    sb = sb + r * r;
                }
                qf = qf + sf;
                qb = qb + sb / A.mala_den[l];
            }
            const cf log_q_fwd = -0.5f * qf;
            const cf log_q_bwd = -qb;
            const cf la = ((ldc(U + c * CV) - ldc(UP + c * CV)) + log_q_bwd) - log_q_fwd;
            const ci acc = ldc(W.lane + c * CV) < la;
            stc(U + c * CV, selc(acc, ldc(UP + c * CV), ldc(U + c * CV)));
            for (int r = 0; r < M.D; ++r) {
                const size_t i = (size_t)r * NB + c * CV;
                stc(X + i, selc(acc, ldc(XP + i), ldc(X + i)));
                stc(G + i, selc(acc, ldc(GP + i), ldc(G + i)));
            }
            if (A.st_accept) {
                for (int i = 0; i < CV; ++i) {
                    const int lane_i = c * CV + i;
                    if (lane_i < nb) A.st_accept[k * B + b0 + lane_i] = acc[i] ? 1 : 0;
                }
            }
        }
    }
    for (int l = 0; l < L; ++l) store_rows(X + (size_t)M.off[l] * NB, d.dims[l], b0, nb, A.out[l]);
}

// Runs fn(W, b0, nb) on every block of NB chains (the last one holding nb <= NB), the blocks shared
// by the threads, each thread with its own scratch. Returns 1 if a thread's scratch could not be
// allocated (its blocks are then skipped; the caller reports out of memory).
template <class Fn>
int for_each_block(const Model& M, int64_t B, int nthreads, Fn fn) {
    const int64_t nblk = (B + NB - 1) / NB;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        Work W;
        const bool ok = alloc_work(M, W);
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t blk = 0; blk < nblk; ++blk) {
            if (!ok) continue;
            const int64_t b0 = blk * NB;
            fn(W, b0, (int)(B - b0 < NB ? B - b0 : NB));
        }
        if (ok) free(W.mem);
    }
    return failed;
}

// A thread's scratch, kept by the caller between calls (bindings.cpp schedules the blocks).
void* work_alloc(const void* mp) {
    Work* W = (Work*)malloc(sizeof(Work));
    if (!W) return nullptr;
    if (!alloc_work(*(const Model*)mp, *W)) {
        free(W);
        return nullptr;
    }
    return W;
}

void work_free(void* p) {
    Work* W = (Work*)p;
    if (!W) return;
    free(W->mem);
    free(W);
}

// Chains b0 .. b0 + n - 1 of a call, in blocks of NB (the last one holding the rest), on the
// calling thread with its scratch from work_alloc.
void chain_range(const void* mp, void* work, const ChainArgs* A, int64_t b0, int64_t n) {
    const Model& M = *(const Model*)mp;
    Work& W = *(Work*)work;
    for (int64_t s = 0; s < n; s += NB) chain_block(M, W, *A, b0 + s, (int)(n - s < NB ? n - s : NB));
}

int run_eval(const void* mp, const EvalArgs* A) {
    const Model& M = *(const Model*)mp;
    const ModelDesc& d = M.d;
    return for_each_block(M, A->B, A->nthreads, [&](Work& W, int64_t b0, int nb) {
        for (int l = 0; l < d.L; ++l) load_rows(A->x[l], d.dims[l], b0, nb, W.X + (size_t)M.off[l] * NB);
        if (A->only_z1) {
            const float* z1 = W.X;
            if (d.space == 1) {
                z_of_eps(M, W, W.X);
                z1 = W.Z;
            }
            store_rows(z1, d.dims[0], b0, nb, A->z1);
            return;
        }
        if (d.decoder >= 0) load_rows(A->xobs, d.P, b0, nb, W.XO);
        const float* eu = nullptr;
        const float* eg = nullptr;
        if (A->ext_u) {
            for (int i = 0; i < NB; ++i) W.UP[i] = i < nb ? A->ext_u[b0 + i] : 0.0f;
            load_rows(A->ext_g, d.dims[0], b0, nb, W.GP);
            eu = W.UP;
            eg = W.GP;
        }
        eval_block(M, W, W.X, W.U, W.G, eu, eg);
        for (int i = 0; i < nb; ++i) A->u[b0 + i] = W.U[i];
        for (int l = 0; l < d.L; ++l) store_rows(W.G + (size_t)M.off[l] * NB, d.dims[l], b0, nb, A->g[l]);
        if (A->z1) store_rows(d.space == 1 ? W.Z : W.X, d.dims[0], b0, nb, A->z1);
    });
}
