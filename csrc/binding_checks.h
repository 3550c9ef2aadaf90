// Argument checks shared by the pybind11 bindings of the CPU (bindings.cpp) and CUDA
// (cuda_bindings.cpp) kernels: every size, scalar, activation and Philox counter range, and the
// layout of a prior (its latent dims, MLPs, terms, Gaussians, base and prior sigmas), is checked
// here, on the host, before a kernel or a pointer sees it. What stays in each binding is only what
// differs: where an address may point (host memory, or device memory of the current GPU), how the
// weights are passed (addresses, or offsets into one device buffer) and what each kernel derives
// from the checked values. A failed check throws std::invalid_argument, which pybind11 turns into a
// Python ValueError. Host-only (standard-library strings and vectors): never included by the
// per-ISA kernel units or by nvcc.
#pragma once

#include <math.h>
#include <stdint.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "jebm_common.h"

namespace jebm {

constexpr int64_t kMaxBatch = int64_t(1) << 31;   // chains, and Langevin steps
constexpr int64_t kMaxElems = int64_t(1) << 40;   // B * D
constexpr int64_t kMaxMatrix = int64_t(1) << 28;  // floats in one weight matrix

[[noreturn]] inline void bad(const std::string& msg) { throw std::invalid_argument(msg); }

inline int64_t check_count(int64_t v, int64_t lo, int64_t hi, const std::string& what) {
    if (v < lo || v > hi)
        bad(what + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + std::to_string(v));
    return v;
}

inline float finite_float(double v, const std::string& what) {
    if (!std::isfinite(v) || std::fabs(v) > 3.0e38) bad(what + " must be a finite float32 value, got " + std::to_string(v));
    return static_cast<float>(v);
}

// offset + n counters must stay inside the 64-bit Philox counter.
inline void check_counters(uint64_t offset, unsigned __int128 n, const std::string& what) {
    const unsigned __int128 end = (unsigned __int128)offset + n;
    if (end > ((unsigned __int128)1 << 64)) bad(what + ": offset + counters used run past the 64-bit Philox counter");
}

// A non-null address aligned for T; whether it is host or device memory is the caller's check.
template <class T>
T* aligned_address(uint64_t p, const std::string& what) {
    if (p == 0) bad(what + " is a null address");
    if (p % alignof(T) != 0) bad(what + " is not aligned for its element type");
    return reinterpret_cast<T*>(static_cast<uintptr_t>(p));
}

inline std::string layer_name(const std::string& what, int l) { return what + "[" + std::to_string(l) + "]"; }

// n must be L: one address (or value) per latent layer.
inline void check_per_layer(size_t n, int L, const std::string& what, const char* kind) {
    if ((int64_t)n != L)
        bad(what + ": need one " + kind + " per latent layer (" + std::to_string(L) + "), got " + std::to_string(n));
}

// dst[l] = v[l] as finite float32, one per latent layer.
inline void layer_scalars(const std::vector<double>& v, int L, float* dst, const std::string& what) {
    check_per_layer(v.size(), L, what, "value");
    for (int l = 0; l < L; ++l) dst[l] = finite_float(v[l], what);
}

// ------------------------------------------------------------------------------ activations

inline int check_activation_code(int64_t act, const std::string& what) {
    return (int)check_count(act, 0, ACT_COUNT - 1, what);
}

// The parameter of an MLP's activations (act between layers, out_act after the last): finite, and
// a softplus beta must not be 0.
inline float check_activation_param(int act, int out_act, double param, const std::string& what) {
    const float p = finite_float(param, what);
    if ((act == ACT_SOFTPLUS || out_act == ACT_SOFTPLUS) && p == 0.0f) bad(what + ": softplus needs beta != 0");
    return p;
}

// ------------------------------------------------------------------------------ a prior's layout

// One MLP's shape and activations (its weights' addresses or offsets are each binding's own).
struct CheckedMLP {
    int n_layers;                   // Linear layers, 1..kMaxLinear
    int sizes[kMaxLinear + 1];      // in, hidden..., out: each in [1, kMaxWidth]
    int act, out_act;               // activation codes
    float param;                    // their parameter
};

inline CheckedMLP check_mlp(const std::vector<int64_t>& sizes, int64_t act, double param, int64_t out_act,
                            const std::string& nm) {
    CheckedMLP m{};
    m.n_layers = (int)check_count((int64_t)sizes.size() - 1, 1, kMaxLinear, nm + ": number of Linear layers");
    for (int l = 0; l <= m.n_layers; ++l)
        m.sizes[l] = (int)check_count(sizes[l], 1, kMaxWidth, nm + ": width " + std::to_string(l));
    for (int l = 0; l < m.n_layers; ++l)
        if ((int64_t)m.sizes[l] * m.sizes[l + 1] > kMaxMatrix) bad(nm + ": weight matrix too large");
    m.act = check_activation_code(act, nm + ": activation code");
    m.out_act = check_activation_code(out_act, nm + ": output activation code");
    m.param = check_activation_param(m.act, m.out_act, param, nm + ": activation parameter");
    return m;
}

// Which MLP is which term of the energy, and the Gaussian parts, checked against the latent dims:
//   U = sign * (sum_l f_l(z_l) + f_0(concat z)) + [z-space] -log p_beta(z) or the base Gaussian
//       + [eps-space] |eps|^2 / 2 + prior_sigma's |x_l|^2 / (2 prior_sigma_l^2)
struct PriorLayout {
    int L;
    int dims[kMaxLatent];
    int D;                          // sum of dims, <= kMaxWidth
    int term[kMaxLatent];           // MLP of f_l (d_l -> 1), or -1
    int joint;                      // MLP of f_0 (D -> 1), or -1
    int n_gauss;                    // L - 1, or 0 with base_sigma
    int gauss[kMaxLatent];          // MLP of p(z_l | z_{l+1}) (d_{l+1} -> 2 d_l), l < n_gauss
    float sigma_floor[kMaxLatent];
    int space;                      // 0: z, 1: eps
    float energy_sign;
    int has_base;                   // base_sigma given (z-space, no Gaussians)
    double base_sigma[kMaxLatent];  // > 0; inf: no base term on that layer
    int has_prior_sigma;
    double prior_sigma[kMaxLatent]; // finite, > 0
};

// mlps[i]: the MLPs already checked by check_mlp.
inline PriorLayout check_prior_layout(const std::vector<int64_t>& dims, const std::vector<CheckedMLP>& mlps,
                                      const std::vector<int64_t>& terms, int64_t joint,
                                      const std::vector<int64_t>& gauss, const std::vector<double>& floors,
                                      int64_t space, double energy_sign, const std::vector<double>& base_sigma,
                                      const std::vector<double>& prior_sigma) {
    PriorLayout p{};
    p.L = (int)check_count((int64_t)dims.size(), 1, kMaxLatent, "number of latent layers");
    int64_t D = 0;
    for (int l = 0; l < p.L; ++l) {
        p.dims[l] = (int)check_count(dims[l], 1, kMaxWidth, "latent dim " + std::to_string(l + 1));
        D += p.dims[l];
    }
    if (D > kMaxWidth) bad("the latent dims add up to more than " + std::to_string(kMaxWidth));
    p.D = (int)D;
    // MLP i, which must map in -> out
    auto mlp_of = [&](int64_t i, int in, int out, const std::string& what) -> int {
        if (i < 0 || i >= (int64_t)mlps.size()) bad(what + ": MLP index " + std::to_string(i) + " out of range");
        const CheckedMLP& m = mlps[i];
        if (m.sizes[0] != in || m.sizes[m.n_layers] != out)
            bad(what + " must map " + std::to_string(in) + " -> " + std::to_string(out) + ", got " +
                std::to_string(m.sizes[0]) + " -> " + std::to_string(m.sizes[m.n_layers]));
        return (int)i;
    };
    if ((int64_t)terms.size() != p.L) bad("need one layer term index (-1 = none) per latent layer");
    for (int l = 0; l < p.L; ++l)
        p.term[l] = terms[l] == -1 ? -1 : mlp_of(terms[l], p.dims[l], 1, "layer term " + std::to_string(l + 1));
    p.joint = joint == -1 ? -1 : mlp_of(joint, p.D, 1, "the joint term");
    if (!gauss.empty() && (int64_t)gauss.size() != p.L - 1)
        bad("need L - 1 = " + std::to_string(p.L - 1) + " inter-layer Gaussians, got " + std::to_string(gauss.size()));
    if (floors.size() != gauss.size()) bad("need one sigma floor per Gaussian");
    p.n_gauss = (int)gauss.size();
    for (int l = 0; l < p.L; ++l) p.gauss[l] = -1;
    for (int l = 0; l < p.n_gauss; ++l) {
        p.gauss[l] = mlp_of(gauss[l], p.dims[l + 1], 2 * p.dims[l], "Gaussian " + std::to_string(l + 1));
        p.sigma_floor[l] = finite_float(floors[l], "sigma floor");
    }
    p.space = (int)check_count(space, 0, 1, "space (0 = z, 1 = eps)");
    p.energy_sign = finite_float(energy_sign, "energy_sign");
    p.has_base = base_sigma.empty() ? 0 : 1;
    if (p.has_base) {
        if ((int64_t)base_sigma.size() != p.L) bad("base_sigma needs one value per layer");
        if (p.n_gauss) bad("give either inter-layer Gaussians or base_sigma, not both");
        if (p.space != 0) bad("base_sigma priors are sampled in z-space");
        for (int l = 0; l < p.L; ++l) {
            if (!(base_sigma[l] > 0)) bad("base_sigma must be > 0 (inf: no base term)");
            p.base_sigma[l] = base_sigma[l];
        }
    } else if (p.n_gauss != p.L - 1) {
        bad("need L - 1 inter-layer Gaussians (or base_sigma)");
    }
    if (p.space == 1 && p.n_gauss != p.L - 1) bad("eps-space needs the inter-layer Gaussians");
    p.has_prior_sigma = prior_sigma.empty() ? 0 : 1;
    if (p.has_prior_sigma) {
        if ((int64_t)prior_sigma.size() != p.L) bad("prior_sigma needs one value per layer");
        for (int l = 0; l < p.L; ++l) {
            if (!(std::isfinite(prior_sigma[l]) && prior_sigma[l] > 0)) bad("prior_sigma must be finite and > 0");
            p.prior_sigma[l] = prior_sigma[l];
        }
    }
    return p;
}

// ------------------------------------------------------------------------------ a chain's scalars

// B chains of D floats each.
inline int64_t check_batch(int64_t B, int64_t D) {
    check_count(B, 1, kMaxBatch, "batch B");
    if (B * D > kMaxElems) bad("B * D too large");
    return B;
}

// The sizes and scalars of a whole-chain call, into the kernel's argument struct (ChainArgs or
// ChainArgsDev: B, K, h, c, mala_den, mala, seed, offset, stride): B chains of D floats, K steps,
// per layer h = s^2 / 2, c = s tau and (MALA) 2 (s tau)^2 > 0; step k draws B * D normals (and B
// uniforms with MALA) from counter offset + k * stride, all inside the 64-bit counter.
template <class ChainArgsT>
void check_chain_scalars(ChainArgsT& a, int L, int64_t D, int64_t B, int64_t K, const std::vector<double>& h,
                         const std::vector<double>& c, const std::vector<double>& mala_den, bool mala,
                         uint64_t seed, uint64_t offset) {
    a.B = check_batch(B, D);
    a.K = check_count(K, 0, kMaxBatch, "n_steps K");
    layer_scalars(h, L, a.h, "h (s^2 / 2)");
    layer_scalars(c, L, a.c, "c (s tau)");
    a.mala = mala ? 1 : 0;
    if (mala) {
        layer_scalars(mala_den, L, a.mala_den, "mala_den (2 (s tau)^2)");
        for (int l = 0; l < L; ++l)
            if (!(a.mala_den[l] > 0)) bad("mala_den must be > 0");
    }
    a.seed = seed;
    a.offset = offset;
    a.stride = (uint64_t)B * (uint64_t)D + (mala ? (uint64_t)B : 0);
    check_counters(offset, (unsigned __int128)a.stride * (uint64_t)K, "chain");
}

// The sizes and scalars of a multi-layer update, into UpdateArgs or UpdateArgsDev (L, B, dims, h,
// c, seed, offset); the address lists must hold one per layer (noise: none, or one per layer).
// Returns D, the sum of the dims.
template <class UpdateArgsT>
int64_t check_update_scalars(UpdateArgsT& a, int64_t B, const std::vector<int64_t>& dims,
                             const std::vector<uint64_t>& x, const std::vector<uint64_t>& g,
                             const std::vector<uint64_t>& out, const std::vector<uint64_t>& noise, bool uniform,
                             const std::vector<double>& h, const std::vector<double>& c, uint64_t seed,
                             uint64_t offset) {
    a.L = (int)check_count((int64_t)dims.size(), 1, kMaxLatent, "number of layers");
    int64_t D = 0;
    for (int l = 0; l < a.L; ++l) {
        a.dims[l] = check_count(dims[l], 1, kMaxWidth, "dim " + std::to_string(l));
        D += a.dims[l];
    }
    a.B = check_batch(B, D);
    check_per_layer(x.size(), a.L, "x", "address");
    check_per_layer(g.size(), a.L, "g", "address");
    check_per_layer(out.size(), a.L, "out", "address");
    if (!noise.empty()) check_per_layer(noise.size(), a.L, "noise", "address");
    layer_scalars(h, a.L, a.h, "h");
    layer_scalars(c, a.L, a.c, "c");
    a.seed = seed;
    a.offset = offset;
    check_counters(offset, (unsigned __int128)(B * D + (uniform ? B : 0)), "update");
    return D;
}

}  // namespace jebm
