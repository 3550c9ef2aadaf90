// The tables both extension modules (jebm_kernels._C and jebm_kernels._cuda) report to Python,
// built in one place so the two cannot drift apart:
//   act_codes()  activation name -> code, from the generated header (kActivationNames), so
//                jebm_kernels can check at import that an extension was built from the current
//                jebm_kernels/activation_table.py;
//   limits()     the sizes the kernels accept: the keys both modules share (each module adds its
//                own). Every maximum is inclusive: the bindings accept a value up to and including it.
#pragma once

#include <pybind11/pybind11.h>

#include "binding_checks.h"
#include "jebm_common.h"

namespace jebm {

inline pybind11::dict activation_codes_dict() {
    pybind11::dict d;
    for (int code = 0; code < ACT_COUNT; ++code) d[kActivationNames[code]] = code;
    return d;
}

inline pybind11::dict shared_limits_dict() {
    pybind11::dict d;
    d["max_latent"] = (int)kMaxLatent;                // latent layers L
    d["max_linear_per_mlp"] = (int)kMaxLinear;        // Linear layers in one MLP
    d["max_mlps"] = (int)kMaxMLPs;                    // MLPs in one model
    d["max_width"] = (long long)kMaxWidth;            // any layer width, latent dim, sum of dims, pixels
    d["max_batch"] = (long long)kMaxBatch;            // chains B
    d["max_steps"] = (long long)kMaxBatch;            // Langevin steps K
    d["max_matrix"] = (long long)kMaxMatrix;          // floats in one weight matrix
    d["max_elements"] = (long long)kMaxElems;         // B * D
    return d;
}

}  // namespace jebm
