// The scalar functions of csrc/philox.h and csrc/jebm_common.h -- the ones the CUDA kernels call,
// marked JEBM_HD (__host__ __device__ under nvcc) -- run on the host, for
// tests/test_cuda_build.py to compare with jebm_kernels.philox and torch.
//
//   shared_headers philox SEED OFFSET N   -> N x (uint32 w0, uint32 w1, float normal, float uniform)
//   shared_headers act CODE PARAM N       -> reads N float32 from stdin, writes N x (value, deriv)
// Binary, native byte order, on stdout.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jebm_common.h"

int main(int argc, char** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s philox SEED OFFSET N | act CODE PARAM N\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "philox") == 0) {
        const uint64_t seed = strtoull(argv[2], nullptr, 10);
        const uint64_t offset = strtoull(argv[3], nullptr, 10);
        const long n = strtol(argv[4], nullptr, 10);
        for (long i = 0; i < n; ++i) {
            const uint64_t counter = offset + (uint64_t)i;
            const jebm::Philox4 w = jebm::philox4x32_10(seed, counter);
            const float normal = jebm::philox_normal(seed, counter);
            const float uniform = jebm::philox_uniform(seed, counter);
            fwrite(&w.w0, 4, 1, stdout);
            fwrite(&w.w1, 4, 1, stdout);
            fwrite(&normal, 4, 1, stdout);
            fwrite(&uniform, 4, 1, stdout);
        }
        return 0;
    }
    if (strcmp(argv[1], "act") == 0) {
        const int code = atoi(argv[2]);
        const float param = strtof(argv[3], nullptr);
        const long n = strtol(argv[4], nullptr, 10);
        for (long i = 0; i < n; ++i) {
            float a;
            if (fread(&a, 4, 1, stdin) != 1) return 3;
            float deriv;
            const float value = jebm::act_scalar(code, param, a, &deriv);
            fwrite(&value, 4, 1, stdout);
            fwrite(&deriv, 4, 1, stdout);
        }
        return 0;
    }
    return 2;
}
