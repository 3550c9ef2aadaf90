// The energy of one chain block and its gradient: U(x) and dU/dx for x = z or eps, as kernels.h's
// ModelDesc states it -- the layer and joint terms, -log p_beta (inter-layer Gaussians) or the base
// Gaussian, eps-space's z(eps) and its chain rule, prior_sigma, the MLP decoder's reconstruction
// term and an external (autograd) term.
// Part of isa_kernels.h (uses mlp.h, vector_math.h).
#pragma once
#ifndef JEBM_ISA_KERNELS
#error "energy.h is a layer of the CPU kernels: include isa_kernels.h (from a chain_<isa>.cpp)"
#endif


// eps-space: Z <- z(x) top-down; keeps sigma (S) and exp(raw) (E) for the backward pass.
void z_of_eps(const Model& M, Work& W, const float* x) {
    const ModelDesc& d = M.d;
    const int L = d.L;
    __builtin_memcpy(W.Z + (size_t)M.off[L - 1] * NB, x + (size_t)M.off[L - 1] * NB,
                     (size_t)d.dims[L - 1] * NB * sizeof(float));
    for (int l = L - 2; l >= 0; --l) {
        const int gi = d.gauss[l];
        const PMLP& g = M.m[gi];
        MWork& gw = W.mw[gi];
        mlp_fwd(g, gw, W.Z + (size_t)M.off[l + 1] * NB);
        const float* out = gw.a[g.nl - 1];
        const size_t dl = (size_t)d.dims[l] * NB;
        const float fl = d.sigma_floor[l];
        const float* xl = x + (size_t)M.off[l] * NB;
        float* zl = W.Z + (size_t)M.off[l] * NB;
        float* El = W.E[l];
        float* Sl = W.S[l];
        flat_for(dl, [&](size_t i, int m) {
            const vf e = vexp(ldp(out + dl + i, m));
            const vf s = e + fl;
            stp(El + i, e, m);
            stp(Sl + i, s, m);
            stp(zl + i, ldp(out + i, m) + s * ldp(xl + i, m), m);
        });
    }
}

// sum_j p[j]^2 of chain vector c over `rows` rows, in row order (one chain's sum, whatever NB).
JEBM_INLINE cf sum_sq_rows(const float* p, int rows, int c) {
    cf acc = cf{};
    for (int j = 0; j < rows; ++j) {
        const cf v = ldc(p + (size_t)j * NB + c * CV);
        acc = acc + v * v;
    }
    return acc;
}

// sum_j p[j] of chain vector c over `rows` rows, in row order.
JEBM_INLINE cf sum_rows(const float* p, int rows, int c) {
    cf acc = cf{};
    for (int j = 0; j < rows; ++j) acc = acc + ldc(p + (size_t)j * NB + c * CV);
    return acc;
}

// a[i] += b[i] over n floats
JEBM_INLINE void add_rows(float* a, const float* b, size_t n) {
    flat_for(n, [&](size_t i, int m) { stp(a + i, ldp(a + i, m) + ldp(b + i, m), m); });
}

// An isotropic Gaussian term on one layer's rows: U += |x_l|^2 / den per chain (added to u[TC]),
// dU/dx_l += 2 x_l / den (base_sigma and prior_sigma, den = 2 sigma^2).
JEBM_INLINE void add_isotropic_gaussian(const float* xl, float* gl, int rows, float den, cf* u) {
    const float two_over = 2.0f / den;
    for (int c = 0; c < TC; ++c) u[c] = u[c] + sum_sq_rows(xl, rows, c) / den;
    flat_for((size_t)rows * NB, [&](size_t i, int m) { stp(gl + i, ldp(gl + i, m) + ldp(xl + i, m) * two_over, m); });
}

// u[NB] = U(x), gx[D, NB] = dU/dx for one block; x is the sampled variable (z or eps).
// ext_u [NB] and ext_g [d_1, NB] (the conv decoder's term from autograd) are optional.
void eval_block(const Model& M, Work& W, const float* x, float* u, float* gx, const float* ext_u,
                const float* ext_g) {
    const ModelDesc& d = M.d;
    const int L = d.L;
    const bool eps = d.space == 1;
    const float* z = x;
    float* gz = gx;
    if (eps) {
        z_of_eps(M, W, x);
        z = W.Z;
        gz = W.GZ;
    }
    __builtin_memset(gz, 0, (size_t)M.D * NB * sizeof(float));
    cf T[TC], Ub[TC];
    for (int c = 0; c < TC; ++c) T[c] = Ub[c] = cf{};
    float* GO = W.GO;
    for (int c = 0; c < TC; ++c) stc(GO + c * CV, splatc(d.energy_sign));  // row 0: dU/df = sign
    // sum_l f_l(z_l) + f_0(concat z): each term's forward, then its input-gradient
    for (int l = 0; l < L; ++l) {
        const int ti = d.term[l];
        if (ti < 0) continue;
        const PMLP& m = M.m[ti];
        mlp_fwd(m, W.mw[ti], z + (size_t)M.off[l] * NB);
        const float* o = W.mw[ti].a[m.nl - 1];
        for (int c = 0; c < TC; ++c) T[c] = T[c] + ldc(o + c * CV);
        mlp_bwd(m, W.mw[ti], GO, gz + (size_t)M.off[l] * NB);
    }
    if (d.joint >= 0) {
        const PMLP& m = M.m[d.joint];
        mlp_fwd(m, W.mw[d.joint], z);
        const float* o = W.mw[d.joint].a[m.nl - 1];
        for (int c = 0; c < TC; ++c) T[c] = T[c] + ldc(o + c * CV);
        mlp_bwd(m, W.mw[d.joint], GO, gz);
    }
    // -log p_beta(z) (z-space) or ||eps||^2 / 2 (eps-space, its gradient added at the end)
    if (!eps && !d.has_base) {  // N(0, I) on top, the inter-layer Gaussians below
        const float* zt = z + (size_t)M.off[L - 1] * NB;
        float* gt = gz + (size_t)M.off[L - 1] * NB;
        for (int c = 0; c < TC; ++c) Ub[c] = 0.5f * sum_sq_rows(zt, d.dims[L - 1], c);
        add_rows(gt, zt, (size_t)d.dims[L - 1] * NB);
        for (int l = 0; l < L - 1; ++l) {
            const int gi = d.gauss[l];
            const PMLP& g = M.m[gi];
            mlp_fwd(g, W.mw[gi], z + (size_t)M.off[l + 1] * NB);
            const float* out = W.mw[gi].a[g.nl - 1];
            const int dl = d.dims[l];
            const size_t n = (size_t)dl * NB;
            const float fl = d.sigma_floor[l];
            const float* zl = z + (size_t)M.off[l] * NB;
            float* gl = gz + (size_t)M.off[l] * NB;
            float* TT = W.TT;
            // element-wise: the log-density terms (summed per chain below), dU/dz_l, dU/d(mu, raw)
            flat_for(n, [&](size_t i, int m) {
                const vf mu = ldp(out + i, m);
                const vf e = vexp(ldp(out + n + i, m));
                const vf s = e + fl;
                const vf r = (ldp(zl + i, m) - mu) / s;
                stp(TT + i, 0.5f * r * r + vlog(s), m);
                const vf rs = r / s;
                stp(gl + i, ldp(gl + i, m) + rs, m);
                stp(GO + i, -rs, m);
                stp(GO + n + i, ((1.0f - r * r) / s) * e, m);
            });
            for (int c = 0; c < TC; ++c) Ub[c] = Ub[c] + sum_rows(TT, dl, c);
            mlp_bwd(g, W.mw[gi], GO, gz + (size_t)M.off[l + 1] * NB);
        }
    } else if (!eps && d.has_base) {
        for (int l = 0; l < L; ++l)
            if (d.base_on[l])
                add_isotropic_gaussian(z + (size_t)M.off[l] * NB, gz + (size_t)M.off[l] * NB, d.dims[l], d.base_den[l], Ub);
    } else if (eps) {
        for (int c = 0; c < TC; ++c) {
            cf acc = cf{};
            for (int l = 0; l < L; ++l) acc = acc + sum_sq_rows(x + (size_t)M.off[l] * NB, d.dims[l], c);
            Ub[c] = 0.5f * acc;
        }
    }
    cf Uv[TC];
    for (int c = 0; c < TC; ++c) Uv[c] = d.energy_sign * T[c] + Ub[c];
    // the posterior's ||x - g(z_1)||^2 / (2 sigma_x^2): an MLP decoder here, or given from outside
    if (d.decoder >= 0) {
        const PMLP& m = M.m[d.decoder];
        mlp_fwd(m, W.mw[d.decoder], z);
        const float* o = W.mw[d.decoder].a[m.nl - 1];
        const float den = d.dec_den;
        const float gscale = -2.0f / den;
        const float* XO = W.XO;
        flat_for((size_t)d.P * NB, [&](size_t i, int mm) { stp(GO + i, (ldp(XO + i, mm) - ldp(o + i, mm)) * gscale, mm); });
        for (int c = 0; c < TC; ++c) {
            cf acc = cf{};
            for (int p = 0; p < d.P; ++p) {
                const size_t i = (size_t)p * NB + c * CV;
                const cf diff = ldc(XO + i) - ldc(o + i);
                acc = acc + diff * diff;
            }
            Uv[c] = Uv[c] + acc / den;
        }
        mlp_bwd(m, W.mw[d.decoder], GO, gz);
    }
    if (ext_u) {
        for (int c = 0; c < TC; ++c) Uv[c] = Uv[c] + ldc(ext_u + c * CV);
        add_rows(gz, ext_g, (size_t)d.dims[0] * NB);
    }
    if (eps) {
        // back through z_l = mu_l(z_{l+1}) + sigma_l(z_{l+1}) eps_l, bottom layer first, so that
        // dU/dz_{l+1} is complete before it is pushed further up
        for (int l = 0; l < L - 1; ++l) {
            const int gi = d.gauss[l];
            const PMLP& g = M.m[gi];
            const size_t dl = (size_t)d.dims[l] * NB;
            const float* gzl = gz + (size_t)M.off[l] * NB;
            const float* xl = x + (size_t)M.off[l] * NB;
            float* gxl = gx + (size_t)M.off[l] * NB;
            const float* Sl = W.S[l];
            const float* El = W.E[l];
            flat_for(dl, [&](size_t i, int m) {
                const vf gv = ldp(gzl + i, m);
                stp(gxl + i, gv * ldp(Sl + i, m) + ldp(xl + i, m), m);
                stp(GO + i, gv, m);
                stp(GO + dl + i, gv * ldp(xl + i, m) * ldp(El + i, m), m);
            });
            mlp_bwd(g, W.mw[gi], GO, gz + (size_t)M.off[l + 1] * NB);
        }
        const size_t top = (size_t)M.off[L - 1] * NB;
        flat_for((size_t)d.dims[L - 1] * NB,
                 [&](size_t i, int m) { stp(gx + top + i, ldp(gz + top + i, m) + ldp(x + top + i, m), m); });
    }
    if (d.has_ps) {
        for (int l = 0; l < L; ++l)
            add_isotropic_gaussian(x + (size_t)M.off[l] * NB, gx + (size_t)M.off[l] * NB, d.dims[l], d.ps_den[l], Uv);
    }
    for (int c = 0; c < TC; ++c) stc(u + c * CV, Uv[c]);
}
