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
        for (size_t i = 0; i < dl; i += V) {
            const vf e = vexp(ld(out + dl + i));
            const vf s = e + fl;
            st(W.E[l] + i, e);
            st(W.S[l] + i, s);
            st(zl + i, ld(out + i) + s * ld(xl + i));
        }
    }
}

JEBM_INLINE vf sum_sq_rows(const float* p, int rows, int c) {
    vf acc = vf{};
    for (int j = 0; j < rows; ++j) {
        const vf v = ld(p + (size_t)j * NB + c * V);
        acc = acc + v * v;
    }
    return acc;
}

// An isotropic Gaussian term on one layer's rows: U += |x_l|^2 / den per chain (added to u[TC]),
// dU/dx_l += 2 x_l / den (base_sigma and prior_sigma, den = 2 sigma^2).
JEBM_INLINE void add_isotropic_gaussian(const float* xl, float* gl, int rows, float den, vf* u) {
    const float two_over = 2.0f / den;
    for (int c = 0; c < TC; ++c) u[c] = u[c] + sum_sq_rows(xl, rows, c) / den;
    for (size_t i = 0; i < (size_t)rows * NB; i += V) st(gl + i, ld(gl + i) + ld(xl + i) * two_over);
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
    vf T[TC], Ub[TC];
    for (int c = 0; c < TC; ++c) T[c] = Ub[c] = vf{};
    float* GO = W.GO;
    for (int c = 0; c < TC; ++c) st(GO + c * V, splat(d.energy_sign));  // row 0: dU/df = sign
    // sum_l f_l(z_l) + f_0(concat z): each term's forward, then its input-gradient
    for (int l = 0; l < L; ++l) {
        const int ti = d.term[l];
        if (ti < 0) continue;
        const PMLP& m = M.m[ti];
        mlp_fwd(m, W.mw[ti], z + (size_t)M.off[l] * NB);
        const float* o = W.mw[ti].a[m.nl - 1];
        for (int c = 0; c < TC; ++c) T[c] = T[c] + ld(o + c * V);
        mlp_bwd(m, W.mw[ti], GO, gz + (size_t)M.off[l] * NB);
    }
    if (d.joint >= 0) {
        const PMLP& m = M.m[d.joint];
        mlp_fwd(m, W.mw[d.joint], z);
        const float* o = W.mw[d.joint].a[m.nl - 1];
        for (int c = 0; c < TC; ++c) T[c] = T[c] + ld(o + c * V);
        mlp_bwd(m, W.mw[d.joint], GO, gz);
    }
    // -log p_beta(z) (z-space) or ||eps||^2 / 2 (eps-space, its gradient added at the end)
    if (!eps && !d.has_base) {  // N(0, I) on top, the inter-layer Gaussians below
        const float* zt = z + (size_t)M.off[L - 1] * NB;
        float* gt = gz + (size_t)M.off[L - 1] * NB;
        for (int c = 0; c < TC; ++c) Ub[c] = 0.5f * sum_sq_rows(zt, d.dims[L - 1], c);
        for (size_t i = 0; i < (size_t)d.dims[L - 1] * NB; i += V) st(gt + i, ld(gt + i) + ld(zt + i));
        for (int l = 0; l < L - 1; ++l) {
            const int gi = d.gauss[l];
            const PMLP& g = M.m[gi];
            mlp_fwd(g, W.mw[gi], z + (size_t)M.off[l + 1] * NB);
            const float* out = W.mw[gi].a[g.nl - 1];
            const int dl = d.dims[l];
            const float fl = d.sigma_floor[l];
            const float* zl = z + (size_t)M.off[l] * NB;
            float* gl = gz + (size_t)M.off[l] * NB;
            for (int c = 0; c < TC; ++c) {
                vf acc = vf{};
                for (int j = 0; j < dl; ++j) {
                    const size_t i = (size_t)j * NB + c * V;
                    const vf mu = ld(out + i);
                    const vf e = vexp(ld(out + (size_t)dl * NB + i));
                    const vf s = e + fl;
                    const vf r = (ld(zl + i) - mu) / s;
                    acc = acc + (0.5f * r * r + vlog(s));
                    const vf rs = r / s;
                    st(gl + i, ld(gl + i) + rs);
                    st(GO + i, -rs);
                    st(GO + (size_t)dl * NB + i, ((1.0f - r * r) / s) * e);
                }
                Ub[c] = Ub[c] + acc;
            }
            mlp_bwd(g, W.mw[gi], GO, gz + (size_t)M.off[l + 1] * NB);
        }
    } else if (!eps && d.has_base) {
        for (int l = 0; l < L; ++l)
            if (d.base_on[l])
                add_isotropic_gaussian(z + (size_t)M.off[l] * NB, gz + (size_t)M.off[l] * NB, d.dims[l], d.base_den[l], Ub);
    } else if (eps) {
        for (int c = 0; c < TC; ++c) {
            vf acc = vf{};
            for (int l = 0; l < L; ++l) acc = acc + sum_sq_rows(x + (size_t)M.off[l] * NB, d.dims[l], c);
            Ub[c] = 0.5f * acc;
        }
    }
    vf Uv[TC];
    for (int c = 0; c < TC; ++c) Uv[c] = d.energy_sign * T[c] + Ub[c];
    // the posterior's ||x - g(z_1)||^2 / (2 sigma_x^2): an MLP decoder here, or given from outside
    if (d.decoder >= 0) {
        const PMLP& m = M.m[d.decoder];
        mlp_fwd(m, W.mw[d.decoder], z);
        const float* o = W.mw[d.decoder].a[m.nl - 1];
        const float den = d.dec_den;
        const float gscale = -2.0f / den;
        for (int c = 0; c < TC; ++c) {
            vf acc = vf{};
            for (int p = 0; p < d.P; ++p) {
                const size_t i = (size_t)p * NB + c * V;
                const vf diff = ld(W.XO + i) - ld(o + i);
                acc = acc + diff * diff;
                st(GO + i, diff * gscale);
            }
            Uv[c] = Uv[c] + acc / den;
        }
        mlp_bwd(m, W.mw[d.decoder], GO, gz);
    }
    if (ext_u) {
        for (int c = 0; c < TC; ++c) Uv[c] = Uv[c] + ld(ext_u + c * V);
        for (size_t i = 0; i < (size_t)d.dims[0] * NB; i += V) st(gz + i, ld(gz + i) + ld(ext_g + i));
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
            for (size_t i = 0; i < dl; i += V) {
                const vf gv = ld(gzl + i);
                st(gxl + i, gv * ld(W.S[l] + i) + ld(xl + i));
                st(GO + i, gv);
                st(GO + dl + i, gv * ld(xl + i) * ld(W.E[l] + i));
            }
            mlp_bwd(g, W.mw[gi], GO, gz + (size_t)M.off[l + 1] * NB);
        }
        const size_t top = (size_t)M.off[L - 1] * NB;
        for (size_t i = 0; i < (size_t)d.dims[L - 1] * NB; i += V)
            st(gx + top + i, ld(gz + top + i) + ld(x + top + i));
    }
    if (d.has_ps) {
        for (int l = 0; l < L; ++l)
            add_isotropic_gaussian(x + (size_t)M.off[l] * NB, gx + (size_t)M.off[l] * NB, d.dims[l], d.ps_den[l], Uv);
    }
    for (int c = 0; c < TC; ++c) st(u + c * V, Uv[c]);
}
