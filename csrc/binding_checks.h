// Argument checks shared by the pybind11 bindings of the CPU (bindings.cpp) and CUDA
// (cuda_bindings.cpp) kernels: every size, scalar and Philox counter range is checked here, on the
// host, before a kernel or a pointer sees it. A failed check throws std::invalid_argument, which
// pybind11 turns into a Python ValueError.
#pragma once

#include <math.h>
#include <stdint.h>

#include <stdexcept>
#include <string>

namespace jebm {

constexpr int64_t kMaxBatch = int64_t(1) << 31;   // chains, and Langevin steps
constexpr int64_t kMaxElems = int64_t(1) << 40;   // B * D

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

}  // namespace jebm
