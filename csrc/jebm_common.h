// Per-element math shared by every kernel: the activation codes (generated from the one table,
// jebm_kernels/activation_table.py), each activation's value and derivative exactly as torch
// defines them (forward of torch.nn.functional, backward of autograd), and the size limits the
// bindings enforce. Scalar, host and (under nvcc) device: the CUDA kernels call act_scalar; the CPU
// kernels use vectorised versions of the same formulas (activations_simd.h). Both are tested
// against torch.
#pragma once

#include "generated/activation_codes.h"  // enum Act, kActivationNames: written by setup.py
#include "philox.h"

namespace jebm {

constexpr float kSoftplusThreshold = 20.0f;
constexpr float kSqrt1_2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;      // 1 / sqrt(2 pi)
constexpr float kSqrt2OverPi = 0.79788456080286535588f;     // sqrt(2 / pi)
constexpr float kGeluTanhC = 0.044715f;

// Limits the bindings check before any kernel runs (sizes fit int32 index arithmetic).
constexpr int kMaxLinear = 16;        // Linear layers per MLP
constexpr int kMaxLatent = 16;        // latent layers L
constexpr int kMaxMLPs = 64;          // MLPs in one model
constexpr long long kMaxWidth = 1 << 20;   // any layer width, latent dim or pixel count

// value = act(a); *deriv = d act / d a, as torch's autograd computes it.
static_assert(ACT_COUNT == 9, "a new activation code: add its case here and in activations_simd.h");
JEBM_HD float act_scalar(int act, float p, float a, float* deriv) {
    switch (act) {
    case ACT_LEAKY_RELU:
        *deriv = a > 0.0f ? 1.0f : p;
        return a > 0.0f ? a : a * p;
    case ACT_RELU:
        *deriv = a > 0.0f ? 1.0f : 0.0f;
        return a > 0.0f ? a : (a != a ? a : 0.0f);
    case ACT_GELU: {
        const float cdf = 0.5f * (1.0f + erff(a * kSqrt1_2));
        const float pdf = kInvSqrt2Pi * expf(-0.5f * a * a);
        *deriv = cdf + a * pdf;
        return a * cdf;
    }
    case ACT_GELU_TANH: {
        const float a2 = a * a;
        const float inner = kSqrt2OverPi * (a + kGeluTanhC * a2 * a);
        const float t = tanhf(inner);
        const float dinner = kSqrt2OverPi * (1.0f + 3.0f * kGeluTanhC * a2);
        *deriv = 0.5f * (1.0f + t) + 0.5f * a * (1.0f - t * t) * dinner;
        return 0.5f * a * (1.0f + t);
    }
    case ACT_SILU: {
        const float s = 1.0f / (1.0f + expf(-a));
        *deriv = s * (1.0f + a * (1.0f - s));
        return a * s;
    }
    case ACT_SOFTPLUS: {
        const float ab = a * p;
        if (ab > kSoftplusThreshold) {
            *deriv = 1.0f;
            return a;
        }
        const float e = expf(ab);
        *deriv = e / (e + 1.0f);
        return log1pf(e) / p;
    }
    case ACT_TANH: {
        const float t = tanhf(a);
        *deriv = 1.0f - t * t;
        return t;
    }
    case ACT_ELU:
        // torch's CUDA kernels (ActivationEluKernel.cu): a where a > 0, else expm1(a) * alpha; the
        // derivative alpha * exp(a) where a <= 0 (elu_backward, is_result=false), else 1. (Torch's
        // CPU kernel takes a >= 0 for the first branch: the two differ only in the sign of a zero
        // result when alpha < 0.)
        *deriv = a <= 0.0f ? p * expf(a) : 1.0f;
        return a > 0.0f ? a : expm1f(a) * p;
    default:
        *deriv = 1.0f;
        return a;
    }
}

}  // namespace jebm
