// One MLP on a chain block: its forward pass (GEMMs and activations, keeping every layer's output
// and activation derivative) and its input gradient (the transposed GEMMs, scaled by those
// derivatives). The energy terms, the inter-layer Gaussians and the MLP decoder all go through here.
// Part of isa_kernels.h (uses gemm.h, activations_simd.h, packed_model.h).
#pragma once
#ifndef JEBM_ISA_KERNELS
#error "mlp.h is a layer of the CPU kernels: include isa_kernels.h (from a chain_<isa>.cpp)"
#endif


void mlp_fwd(const PMLP& m, MWork& w, const float* in) {
    const float* cur = in;
    for (int i = 0; i < m.nl; ++i) {
        gemm(m.fw[i], m.sz[i + 1], m.sz[i], cur, w.a[i], m.bias[i] ? INIT_BIAS : INIT_ZERO, m.bias[i]);
        const int act = i + 1 < m.nl ? m.act : m.out_act;
        if (act != ACT_IDENTITY) act_rows(act, m.p, w.a[i], w.d[i], (size_t)m.sz[i + 1] * NB);
        cur = w.a[i];
    }
}

inline void mul_rows(float* dst, const float* a, const float* b, size_t n) {
    flat_for(n, [&](size_t i, int m) { stp(dst + i, ldp(a + i, m) * ldp(b + i, m), m); });
}

// gin[in, NB] += d out / d in ^T gout[out, NB], with the activations of the last mlp_fwd.
void mlp_bwd(const PMLP& m, MWork& w, const float* gout, float* gin) {
    const float* cur = gout;
    const int L = m.nl;
    if (m.out_act != ACT_IDENTITY) {
        mul_rows(w.t0, gout, w.d[L - 1], (size_t)m.sz[L] * NB);
        cur = w.t0;
    }
    for (int i = L - 1; i >= 0; --i) {
        if (i == 0) {
            gemm(m.bw[0], m.sz[0], m.sz[1], cur, gin, INIT_ACC, nullptr);
        } else {
            float* nxt = cur == w.t0 ? w.t1 : w.t0;
            gemm(m.bw[i], m.sz[i], m.sz[i + 1], cur, nxt, INIT_ZERO, nullptr);
            if (m.act != ACT_IDENTITY) mul_rows(nxt, nxt, w.d[i - 1], (size_t)m.sz[i] * NB);
            cur = nxt;
        }
    }
}
