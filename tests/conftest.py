import os

import pytest
import torch

# Without a GPU, Triton kernels run only under its interpreter; it reads this variable when a
# kernel is decorated, so it must be set before any test module imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def cuda_builds():
    """Every test build of csrc (cuda_emulation/builds.py), started at once: they overlap on the
    cores; each test waits for the one it needs."""
    from concurrent.futures import ThreadPoolExecutor

    from cuda_emulation import builds
    if builds.CXX is None:
        pytest.skip("no C++ compiler (g++/c++) on PATH")
    builds.write_generated_headers(builds.ROOT)
    pool = ThreadPoolExecutor(max_workers=3)
    futures = {"headers": pool.submit(builds.build_header_program), "emulator": pool.submit(builds.build_emulator)}
    if builds.NVCC:
        futures["nvcc"] = pool.submit(builds.build_nvcc)
    yield futures
    pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def cuda_emu(cuda_builds):
    """csrc's CUDA kernels and bindings emulated on the host, as an importable ``_cuda`` module."""
    from cuda_emulation import builds
    return builds.load_emulator(cuda_builds["emulator"].result())


@pytest.fixture(params=["cpu", "triton", "cuda"])
def backend(request):
    """Each fused backend as a ``backend_runners.Runner``: the cuda one on a GPU, or csrc's CUDA
    kernels emulated on the host where there is none (so every op test runs it somewhere)."""
    import backend_runners
    return backend_runners.runner(request.param, request)
