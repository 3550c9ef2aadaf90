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

void chain_block(const Model& M, Work& W, const ChainArgs& A, int64_t b0, int nb) {
    const ModelDesc& d = M.d;
    const int L = d.L;
    const int64_t B = A.B;
    for (int l = 0; l < L; ++l) load_rows(A.x[l], d.dims[l], b0, nb, W.X + (size_t)M.off[l] * NB);
    if (d.decoder >= 0) load_rows(A.xobs, d.P, b0, nb, W.XO);
    float *X = W.X, *G = W.G, *XP = W.XP, *GP = W.GP, *U = W.U, *UP = W.UP;
    const vu lane = lane_index();
    if (A.K > 0) eval_block(M, W, X, U, G, nullptr, nullptr);
    for (int64_t k = 0; k < A.K; ++k) {
        if (A.st_energy) {
            for (int i = 0; i < nb; ++i) A.st_energy[k * B + b0 + i] = U[i];
            for (int c = 0; c < TC; ++c) st(W.lane + c * V, vsqrt(sum_sq_rows(G, M.D, c)));
            for (int i = 0; i < nb; ++i) A.st_gnorm[k * B + b0 + i] = W.lane[i];
        }
        const uint64_t base = A.offset + (uint64_t)k * A.stride;
        // the proposal x - h g + c xi, xi at the problem.py layout
        for (int l = 0; l < L; ++l) {
            const int dl = d.dims[l];
            const vf h = splat(A.h[l]), cc = splat(A.c[l]);
            vu inc[TC];
            for (int c = 0; c < TC; ++c) inc[c] = (lane + (uint32_t)(c * V)) * (uint32_t)dl;
            const uint64_t lbase = base + (uint64_t)B * M.off[l] + (uint64_t)b0 * dl;
            for (int j = 0; j < dl; ++j) {
                for (int c = 0; c < TC; ++c) {
                    const size_t i = (size_t)(M.off[l] + j) * NB + c * V;
                    const vf xi = normal_vec(A.seed, lbase + j, inc[c]);
                    st(XP + i, (ld(X + i) - h * ld(G + i)) + cc * xi);
                    if (A.mala) st(W.XI + i, xi);
                }
            }
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
        for (int c = 0; c < TC; ++c) {
            vf qf = vf{}, qb = vf{};
            for (int l = 0; l < L; ++l) {
                const vf h = splat(A.h[l]);
                vf sf = vf{}, sb = vf{};
                for (int j = 0; j < d.dims[l]; ++j) {
                    const size_t i = (size_t)(M.off[l] + j) * NB + c * V;
                    const vf xi = ld(W.XI + i);
                    sf = sf + xi * xi;
                    const vf r = (ld(X + i) - ld(XP + i)) + h * ld(GP + i);
                    sb = sb + r * r;
                }
                qf = qf + sf;
                qb = qb + sb / A.mala_den[l];
            }
            const vf log_q_fwd = -0.5f * qf;
            const vf log_q_bwd = -qb;
            const vf la = ((ld(U + c * V) - ld(UP + c * V)) + log_q_bwd) - log_q_fwd;
            const vf un = uniform_vec(A.seed, ubase + (uint64_t)(c * V), lane);
            const vi acc = vlog(un) < la;
            st(U + c * V, sel(acc, ld(UP + c * V), ld(U + c * V)));
            for (int r = 0; r < M.D; ++r) {
                const size_t i = (size_t)r * NB + c * V;
                st(X + i, sel(acc, ld(XP + i), ld(X + i)));
                st(G + i, sel(acc, ld(GP + i), ld(G + i)));
            }
            if (A.st_accept) {
                for (int i = 0; i < V; ++i) {
                    const int lane_i = c * V + i;
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

int run_chain(const void* mp, const ChainArgs* A) {
    const Model& M = *(const Model*)mp;
    return for_each_block(M, A->B, A->nthreads, [&](Work& W, int64_t b0, int nb) { chain_block(M, W, *A, b0, nb); });
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
