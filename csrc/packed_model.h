// The model as the CPU kernels hold it: each MLP's weights packed into forward (W) and
// input-gradient (W^T) panels (gemm.h), the layer offsets of concat(z); and the per-thread scratch
// of one chain block (Work), carved out of one aligned allocation. A model is packed once per
// version of the weights (jebm_kernels/prior_chain/cpu.py keeps _C.Model objects), once per build
// it runs on (bindings.cpp packs each on first use).
// Part of isa_kernels.h (uses gemm.h; ModelDesc from kernels.h).
#pragma once
#ifndef JEBM_ISA_KERNELS
#error "packed_model.h is a layer of the CPU kernels: include isa_kernels.h (from a chain_<isa>.cpp)"
#endif


struct PMLP {
    int nl;
    int sz[kMaxLinear + 1];
    int act, out_act;
    float p;
    float* fw[kMaxLinear];   // W_i panels (forward)
    float* bw[kMaxLinear];   // W_i^T panels (input gradient)
    float* bias[kMaxLinear]; // copies, or nullptr
    int maxw;
};

struct Model {
    ModelDesc d;
    PMLP m[kMaxMLPs];
    int D;
    int off[kMaxLatent + 1];
    int go_rows;             // rows of the output-gradient scratch
    float* mem;
};

struct MWork {
    float* a[kMaxLinear];    // layer outputs (after activation) [sz[i+1], NB]
    float* d[kMaxLinear];    // activation derivatives
    float* t0;
    float* t1;
};

struct Work {
    float *X, *G, *XP, *GP, *XI, *Z, *GZ;
    float* S[kMaxLatent];
    float* E[kMaxLatent];
    float* XO;
    float* GO;
    float* U;
    float* UP;
    float* lane;             // NB scratch
    float* TT;               // [max d_l, NB]: per-element terms before their per-chain sums
    MWork mw[kMaxMLPs];
    float* mem;
};

void* pack_model(const ModelDesc* desc) {
    Model* M = (Model*)malloc(sizeof(Model));
    if (!M) return nullptr;
    M->d = *desc;
    size_t total = 0;
    for (int i = 0; i < desc->n_mlps; ++i) {
        const MLPDesc& md = desc->mlps[i];
        for (int l = 0; l < md.n_layers; ++l) {
            const int N = md.sizes[l + 1], K = md.sizes[l];
            total += round_up(packed_floats(N, K), 16) + round_up(packed_floats(K, N), 16) +
                     round_up(panel_rows(N), 16) + 48;
        }
    }
    float* mem = nullptr;
    if (posix_memalign((void**)&mem, 64, (total ? total : 1) * sizeof(float)) != 0) {
        free(M);
        return nullptr;
    }
    M->mem = mem;
    float* cur = mem;
    for (int i = 0; i < desc->n_mlps; ++i) {
        const MLPDesc& md = desc->mlps[i];
        PMLP& pm = M->m[i];
        pm.nl = md.n_layers;
        pm.act = md.act;
        pm.out_act = md.out_act;
        pm.p = md.act_param;
        pm.maxw = 1;
        for (int l = 0; l <= md.n_layers; ++l) {
            pm.sz[l] = md.sizes[l];
            if (md.sizes[l] > pm.maxw) pm.maxw = md.sizes[l];
        }
        for (int l = 0; l < md.n_layers; ++l) {
            const int N = md.sizes[l + 1], K = md.sizes[l];
            // every panel 64-byte aligned
            pm.fw[l] = cur;
            pack_panels(md.w[l], N, K, false, cur);
            cur += round_up(packed_floats(N, K), 16) + 16;
            pm.bw[l] = cur;
            pack_panels(md.w[l], K, N, true, cur);
            cur += round_up(packed_floats(K, N), 16) + 16;
            if (md.b[l]) {
                pm.bias[l] = cur;
                __builtin_memcpy(cur, md.b[l], (size_t)N * sizeof(float));
                for (size_t r = (size_t)N; r < panel_rows(N); ++r) cur[r] = 0.0f;
            } else {
                pm.bias[l] = nullptr;
            }
            cur += round_up(panel_rows(N), 16) + 16;
        }
    }
    M->D = 0;
    for (int l = 0; l < desc->L; ++l) {
        M->off[l] = M->D;
        M->D += desc->dims[l];
    }
    M->off[desc->L] = M->D;
    int go = 1;
    for (int l = 0; l < desc->L; ++l)
        if (2 * desc->dims[l] > go) go = 2 * desc->dims[l];
    if (desc->decoder >= 0 && desc->P > go) go = desc->P;
    M->go_rows = go;
    return M;
}

void release_model(void* p) {
    Model* M = (Model*)p;
    if (!M) return;
    free(M->mem);
    free(M);
}

// Carves one block's workspace out of `base` (or only counts, when base is null); floats.
size_t carve(const Model& M, float* base, Work* w) {
    size_t n = 0;
    auto take = [&](size_t rows) -> float* {
        float* p = base ? base + n : nullptr;
        n += round_up(rows * NB, 16) + 16;  // each region starts 64-byte aligned, whole vectors
        return p;
    };
    const ModelDesc& d = M.d;
    Work tmp;
    Work& W = w ? *w : tmp;
    W.X = take(M.D);
    W.G = take(M.D);
    W.XP = take(M.D);
    W.GP = take(M.D);
    W.XI = take(M.D);
    W.Z = take(M.D);
    W.GZ = take(M.D);
    for (int l = 0; l < d.L; ++l) {
        W.S[l] = take(d.dims[l]);
        W.E[l] = take(d.dims[l]);
    }
    W.XO = take(d.decoder >= 0 ? d.P : 1);
    W.GO = take(M.go_rows);
    W.U = take(1);
    W.UP = take(1);
    W.lane = take(1);
    int dmax = 1;
    for (int l = 0; l < d.L; ++l)
        if (d.dims[l] > dmax) dmax = d.dims[l];
    W.TT = take(dmax);
    for (int i = 0; i < d.n_mlps; ++i) {
        const PMLP& pm = M.m[i];
        for (int l = 0; l < pm.nl; ++l) {
            W.mw[i].a[l] = take(pm.sz[l + 1]);
            W.mw[i].d[l] = take(pm.sz[l + 1]);
        }
        W.mw[i].t0 = take(pm.maxw);
        W.mw[i].t1 = take(pm.maxw);
    }
    return n;
}

bool alloc_work(const Model& M, Work& W) {
    const size_t n = carve(M, nullptr, nullptr);
    float* mem = nullptr;
    if (posix_memalign((void**)&mem, 64, n * sizeof(float)) != 0) return false;
    __builtin_memset(mem, 0, n * sizeof(float));  // padding lanes start finite
    carve(M, mem, &W);
    W.mem = mem;
    return true;
}
