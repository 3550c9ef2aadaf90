// The emulated device for tests/cuda_emulation: csrc/cuda_device.cu's two queries, answered for
// host memory. Every address counts as device memory of device 0 (the emulated kernels read and
// write host memory); JEBM_EMU_SMS sets the SM count the launch plan sees (default 1), so a test
// can make the grid smaller than the number of chain blocks.
#include <cuda_runtime.h>

#include "cuda_kernels.h"

namespace jebm {
namespace cuda {

const char* current_device(int* device, int* sm_count) {
    const char* sms = getenv("JEBM_EMU_SMS");
    *device = 0;
    *sm_count = sms && atoi(sms) > 0 ? atoi(sms) : 1;
    return nullptr;
}

const char* pointer_info(const void*, int* kind, int* device) {
    *kind = 1;
    *device = 0;
    return nullptr;
}

}  // namespace cuda
}  // namespace jebm
