// The element-wise kernels over contiguous arrays: the multi-layer update
// x - h g + c xi (xi at the problem.py noise layout, optional MALA uniforms) and the plain Philox
// fills (philox_randn / philox_rand / philox_uniform_pairs), OpenMP over fixed chunks so results never depend on threads.
// Part of isa_kernels.h (uses philox_simd.h).
#pragma once
#ifndef JEBM_ISA_KERNELS
#error "update.h is a layer of the CPU kernels: include isa_kernels.h (from a chain_<isa>.cpp)"
#endif


constexpr int64_t kChunk = 4096;  // elements per OpenMP work item (a multiple of every V)

// out[0..n) = normals (or uniforms) at counters start + i.
template <bool NORMAL>
void fill_stream(uint64_t seed, uint64_t start, int64_t n, float* out, int nthreads) {
    const vu lane = lane_index();
    const int64_t nchunk = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nchunk > 1)
    for (int64_t ch = 0; ch < nchunk; ++ch) {
        const int64_t end = (ch + 1) * kChunk < n ? (ch + 1) * kChunk : n;
        const int64_t c0 = ch * kChunk;
        if (NORMAL) {
            for_normals((size_t)(end - c0), seed, [&](size_t i) { return start + (uint64_t)(c0 + (int64_t)i); },
                        [&](size_t) { return lane; }, [&](size_t i, int m, vf v) { stp(out + c0 + i, v, m); });
        } else {
            for (int64_t i = c0; i < end; i += V)
                stp(out + i, uniform_vec(seed, start + (uint64_t)i, lane), end - i < V ? (int)(end - i) : V);
        }
    }
}

// u1[0..n), u2[0..n) = the two uniforms Box-Muller takes at counters start + i (words 0 and 1):
// the torch reference applies its own Box-Muller to them, so its normals stay bit for bit its own.
void uniform_pairs(uint64_t seed, uint64_t start, int64_t n, float* u1, float* u2, int nthreads) {
    const vu lane = lane_index();
    const int64_t nchunk = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nchunk > 1)
    for (int64_t ch = 0; ch < nchunk; ++ch) {
        const int64_t end = (ch + 1) * kChunk < n ? (ch + 1) * kChunk : n;
        for (int64_t i = ch * kChunk; i < end; i += V) {
            vu w0, w1;
            philox_vec(seed, start + (uint64_t)i, lane, w0, w1);
            const int m = end - i < V ? (int)(end - i) : V;
            stp(u1 + i, uniform_of(w0), m);
            stp(u2 + i, uniform_of(w1), m);
        }
    }
}

void randn(uint64_t seed, uint64_t offset, int64_t n, float* out, int nthreads) {
    fill_stream<true>(seed, offset, n, out, nthreads);
}

void rand_(uint64_t seed, uint64_t offset, int64_t n, float* out, int nthreads) {
    fill_stream<false>(seed, offset, n, out, nthreads);
}

void update(const UpdateArgs* a) {
    const vu lane = lane_index();
    uint64_t start = a->offset;
    int64_t total = 0;
    for (int l = 0; l < a->L; ++l) total += a->B * a->dims[l];
    for (int l = 0; l < a->L; ++l) {
        const int64_t n = a->B * a->dims[l];
        const float* x = a->x[l];
        const float* g = a->g[l];
        float* out = a->out[l];
        float* nz = a->noise[l];
        const float hs = a->h[l], cs = a->c[l];
        const int64_t nchunk = (n + kChunk - 1) / kChunk;
        const uint64_t lstart = start;
#pragma omp parallel for schedule(static) num_threads(a->nthreads) if (nchunk > 1)
        for (int64_t ch = 0; ch < nchunk; ++ch) {
            const int64_t end = (ch + 1) * kChunk < n ? (ch + 1) * kChunk : n;
            const int64_t c0 = ch * kChunk;
            for_normals((size_t)(end - c0), a->seed, [&](size_t i) { return lstart + (uint64_t)(c0 + (int64_t)i); },
                        [&](size_t) { return lane; }, [&](size_t j, int m, vf xi) {
                            const size_t i = (size_t)c0 + j;
                            stp(out + i, (ldp(x + i, m) - hs * ldp(g + i, m)) + cs * xi, m);
                            if (nz) stp(nz + i, xi, m);
                        });
        }
        start += (uint64_t)n;
    }
    if (a->uniform) fill_stream<false>(a->seed, a->offset + (uint64_t)total, a->B, a->uniform, a->nthreads);
}
