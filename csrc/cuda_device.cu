// Small CUDA runtime queries for cuda_bindings.cpp, which includes no CUDA header: the current
// device and its SM count (to size the prior chain's grid), and what kind of memory an address is
// (so that no host address or another device's memory ever reaches a kernel).
#include <cuda_runtime.h>

#include "cuda_kernels.h"

namespace jebm {
namespace cuda {

const char* current_device(int* device, int* sm_count) {
    cudaError_t e = cudaGetDevice(device);
    if (e != cudaSuccess) return cudaGetErrorString(e);
    e = cudaDeviceGetAttribute(sm_count, cudaDevAttrMultiProcessorCount, *device);
    if (e != cudaSuccess) return cudaGetErrorString(e);
    return nullptr;
}

const char* pointer_info(const void* p, int* kind, int* device) {
    cudaPointerAttributes attr;
    const cudaError_t e = cudaPointerGetAttributes(&attr, p);
    if (e != cudaSuccess) {
        cudaGetLastError();  // clear this (non-sticky) error so the next launch does not report it
        return cudaGetErrorString(e);
    }
    *device = attr.device;
    if (attr.type == cudaMemoryTypeDevice) {
        *kind = 1;
    } else if (attr.type == cudaMemoryTypeManaged) {
        *kind = 2;
    } else {
        *kind = 0;
    }
    return nullptr;
}

}  // namespace cuda
}  // namespace jebm
