// The activations of the CPU kernels on V lanes: each one's value and derivative as torch's CPU
// kernels compute them (forward of torch.nn.functional, autograd's derivative) -- the formulas of
// jebm_common.h's act_scalar, which follows torch's CUDA kernels where the two differ (ELU) --
// built from vector_math.h. act_rows applies one to a block's rows in place; activation() is the
// entry point the bindings expose for tests. Adding an activation: one `if constexpr` branch in
// act_v and one case in act_rows.
// Part of isa_kernels.h (uses simd.h, vector_math.h).
#pragma once
#ifndef JEBM_ISA_KERNELS
#error "activations_simd.h is a layer of the CPU kernels: include isa_kernels.h (from a chain_<isa>.cpp)"
#endif

template <int ACT>
JEBM_INLINE vf act_v(float p, vf a, vf& d) {
    if constexpr (ACT == ACT_LEAKY_RELU) {
        const vi pos = a > 0.0f;
        d = sel(pos, splat(1.0f), splat(p));
        return sel(pos, a, a * p);
    } else if constexpr (ACT == ACT_RELU) {
        const vi pos = a > 0.0f;
        d = sel(pos, splat(1.0f), splat(0.0f));
        return sel(pos, a, sel(a != a, a, splat(0.0f)));
    } else if constexpr (ACT == ACT_GELU) {
        // a Phi(a) = a (1 + erf(x)) / 2, x = a / sqrt(2); e1 = 1 + erf(x) from verf's two fits
        // directly: 1 + x P(x^2) below 1, else erfc(|x|) = exp(-x^2) Q(1/|x|) / |x| (0 from 4 on)
        // and e1 = 2 - erfc or erfc by the sign (no cancellation on the negative side)
        const vf x = a * kSqrt1_2;
        const vf x2 = x * x;
        const vf ex = vexp_nonpos(-x2);  // exp(-a^2 / 2): erfc's factor and the normal density
        const vf ax = vabs(x);
        const vi small = ax < 1.0f;
        const vf e1_small = 1.0f + erf_small_poly(x2) * x;
        // |a| < sqrt 2 holds for most pre-activations of an MLP energy: a vector all there skips
        // erfc's fit (a division and ten FMAs) that the select would discard (same bits)
        const vf e1 = all_set(small) ? e1_small : sel(small, e1_small, erfc_big(ax, ex, x > 0.0f));
        d = sel(a != a, a, 0.5f * e1 + a * (kInvSqrt2Pi * ex));
        return sel(a != a, a, (a * 0.5f) * e1);
    } else if constexpr (ACT == ACT_GELU_TANH) {
        const vf a2 = a * a;
        const vf inner = kSqrt2OverPi * (a + kGeluTanhC * a2 * a);
        const vf t = vtanh(inner);
        const vf dinner = kSqrt2OverPi * (1.0f + 3.0f * kGeluTanhC * a2);
        d = 0.5f * (1.0f + t) + 0.5f * a * (1.0f - t * t) * dinner;
        return 0.5f * a * (1.0f + t);
    } else if constexpr (ACT == ACT_SILU) {
        const vf e1 = 1.0f + vexp(-a);
        const vf s = 1.0f / e1;
        d = s * (1.0f + a * (1.0f - s));
        return a / e1;
    } else if constexpr (ACT == ACT_SOFTPLUS) {
        const vf ab = a * p;
        const vi lin = ab > kSoftplusThreshold;
        const vf e = vexp(sel(lin, splat(0.0f), ab));
        d = sel(lin, splat(1.0f), e / (e + 1.0f));
        return sel(lin, a, vlog1p(e) / p);
    } else if constexpr (ACT == ACT_TANH) {
        const vf t = vtanh(a);
        d = 1.0f - t * t;
        return t;
    } else if constexpr (ACT == ACT_ELU) {
        // torch's CPU kernels (cpu/Elu.h, elu_backward): a where a >= 0, else expm1(a) * alpha (so
        // -0 stays -0 and NaN stays NaN); the derivative alpha * exp(a) where a <= 0, else 1
        // (NaN: 1, as torch's)
        d = sel(a <= 0.0f, p * vexp(a), splat(1.0f));
        return sel(a >= 0.0f, a, vexpm1_neg(a) * p);
    } else {
        d = splat(1.0f);
        return a;
    }
}

template <int ACT>
void act_rows_t(float p, float* buf, float* der, size_t n) {
    flat_for(n, [&](size_t i, int m) {
        vf d;
        const vf v = act_v<ACT>(p, ldp(buf + i, m), d);
        stp(buf + i, v, m);
        stp(der + i, d, m);
    });
}

// buf[n] <- act(buf), der[n] <- act'(buf).
static_assert(ACT_COUNT == 9, "a new activation code: add its branch to act_v and its case here");
void act_rows(int act, float p, float* buf, float* der, size_t n) {
    switch (act) {
    case ACT_LEAKY_RELU: act_rows_t<ACT_LEAKY_RELU>(p, buf, der, n); break;
    case ACT_GELU: act_rows_t<ACT_GELU>(p, buf, der, n); break;
    case ACT_GELU_TANH: act_rows_t<ACT_GELU_TANH>(p, buf, der, n); break;
    case ACT_SILU: act_rows_t<ACT_SILU>(p, buf, der, n); break;
    case ACT_SOFTPLUS: act_rows_t<ACT_SOFTPLUS>(p, buf, der, n); break;
    case ACT_TANH: act_rows_t<ACT_TANH>(p, buf, der, n); break;
    case ACT_RELU: act_rows_t<ACT_RELU>(p, buf, der, n); break;
    case ACT_ELU: act_rows_t<ACT_ELU>(p, buf, der, n); break;
    default: act_rows_t<ACT_IDENTITY>(p, buf, der, n); break;
    }
}

void activation(int act, float p, const float* in, int64_t n, float* value, float* deriv) {
    float buf[V], der[V];
    for (int64_t i = 0; i < n; i += V) {
        const int64_t m = n - i < V ? n - i : V;
        for (int t = 0; t < V; ++t) buf[t] = t < m ? in[i + t] : 0.0f;
        act_rows(act, p, buf, der, V);
        for (int64_t t = 0; t < m; ++t) {
            value[i + t] = buf[t];
            deriv[i + t] = der[t];
        }
    }
}
