/* Peak fp32 FMA throughput of this machine, for the benchmark suite's "% of FMA peak" column.
 *
 * Every OpenMP thread runs N_ACC independent dependency chains acc_i = acc_i * a + b of vector
 * FMAs. N_ACC = 16 chains cover FMA latency (4-5 cycles) x FMA pipes (2) with room to spare,
 * so the loop is bound by FMA throughput, not latency. One FMA counts as 2 FLOPs per lane.
 *
 * Two kernels, chosen at run time with __builtin_cpu_supports (so one build is safe on any
 * x86-64 CPU, and a CPU without AVX-512 is measured with AVX2, not killed by SIGILL):
 *   AVX-512F: 16 floats per zmm;   AVX2 + FMA: 8 floats per ymm.
 *
 * Built at benchmark start by benchmarks/conftest.py:
 *     cc -O2 -fopenmp -shared -fPIC fma_peak.c -o <tmp>.so
 * and called through ctypes.
 */
#include <immintrin.h>
#include <omp.h>

#define N_ACC 16

/* One thread's loop; returns a value that depends on every FMA, so nothing is optimised away. */
__attribute__((target("avx512f"))) static float loop_avx512(long iters, int tid) {
    const __m512 a = _mm512_set1_ps(0.9999999f), b = _mm512_set1_ps(1.0e-7f);
    __m512 acc[N_ACC];
    for (int i = 0; i < N_ACC; ++i) acc[i] = _mm512_set1_ps(1.0f + 0.001f * (float)(i + tid));
    for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 16
        for (int i = 0; i < N_ACC; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    }
    __m512 s = acc[0];
    for (int i = 1; i < N_ACC; ++i) s = _mm512_add_ps(s, acc[i]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static float loop_avx2(long iters, int tid) {
    const __m256 a = _mm256_set1_ps(0.9999999f), b = _mm256_set1_ps(1.0e-7f);
    __m256 acc[N_ACC];
    for (int i = 0; i < N_ACC; ++i) acc[i] = _mm256_set1_ps(1.0f + 0.001f * (float)(i + tid));
    for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 16
        for (int i = 0; i < N_ACC; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    }
    __m256 s = acc[0];
    for (int i = 1; i < N_ACC; ++i) s = _mm256_add_ps(s, acc[i]);
    float lanes[8];
    _mm256_storeu_ps(lanes, s);
    float total = 0.0f;
    for (int i = 0; i < 8; ++i) total += lanes[i];
    return total;
}

/* The widest ISA this CPU runs: 512 (AVX-512F), 256 (AVX2 + FMA) or 0 (neither). */
int fma_peak_isa_bits(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 256;
    return 0;
}

int fma_peak_max_threads(void) { return omp_get_max_threads(); }

/* Runs `iters` iterations of N_ACC vector FMAs on each of `threads` threads (<= 0: OpenMP's
 * default team) with the ISA of `isa_bits` (<= 0: the widest this CPU runs). Returns GFLOP/s
 * over the wall time of the parallel region, or -1 if the ISA is not available.
 * *threads_used gets the team size, *sink the reduced accumulators. */
double fma_peak_gflops(long iters, int threads, int isa_bits, int *threads_used, float *sink) {
    int best = fma_peak_isa_bits();
    if (isa_bits <= 0) isa_bits = best;
    if (isa_bits > best || (isa_bits != 512 && isa_bits != 256)) return -1.0;
    if (threads <= 0) threads = omp_get_max_threads();
    int team = 1;
    float total = 0.0f;
    double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
#pragma omp single
        team = omp_get_num_threads();
        int tid = omp_get_thread_num();
        total += (isa_bits == 512) ? loop_avx512(iters, tid) : loop_avx2(iters, tid);
    }
    double t1 = omp_get_wtime();
    if (threads_used) *threads_used = team;
    if (sink) *sink = total;
    int lanes = isa_bits / 32;
    return 2.0 * lanes * N_ACC * (double)iters * (double)team / (t1 - t0) / 1e9;
}
