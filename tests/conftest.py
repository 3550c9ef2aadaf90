import os

import pytest
import torch

# Without a GPU, Triton kernels run only under its interpreter; it reads this variable when a
# kernel is decorated, so it must be set before any test module imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


class _Builds:
    """The test builds of csrc (cuda_emulation/builds.py), each started on first need on a shared
    pool, so builds asked for together overlap on the cores and none is built twice."""

    def __init__(self):
        self.pool = None
        self.futures = {}

    def start(self, name: str):
        from concurrent.futures import ThreadPoolExecutor

        from cuda_emulation import builds
        if builds.CXX is None:
            pytest.skip("no C++ compiler (g++/c++) on PATH")
        if self.pool is None:
            builds.write_generated_headers(builds.ROOT)
            self.pool = ThreadPoolExecutor(max_workers=3)
        if name not in self.futures:
            fn = {"headers": builds.build_header_program, "emulator": builds.build_emulator,
                  "nvcc": builds.build_nvcc}[name]
            self.futures[name] = self.pool.submit(fn)
        return self.futures[name]

    def shutdown(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)


_BUILDS = _Builds()


def pytest_sessionfinish(session, exitstatus):
    _BUILDS.shutdown()


@pytest.fixture(scope="session")
def cuda_builds():
    """Every test build of csrc, started at once (nvcc's only where it is installed); each test
    waits for the one it needs."""
    from cuda_emulation import builds
    return {name: _BUILDS.start(name) for name in ["headers", "emulator"] + (["nvcc"] if builds.NVCC else [])}


@pytest.fixture(scope="session")
def cuda_emu():
    """csrc's CUDA kernels and bindings emulated on the host, as an importable ``_cuda`` module
    (only the emulator is built for it)."""
    from cuda_emulation import builds
    return builds.load_emulator(_BUILDS.start("emulator").result())


@pytest.fixture(params=["cpu", "triton", "cuda"])
def backend(request):
    """Each fused backend as a ``backend_runners.Runner``: the cuda one on a GPU, or csrc's CUDA
    kernels emulated on the host where there is none (so every op test runs it somewhere)."""
    import backend_runners
    return backend_runners.runner(request.param, request)


def pytest_collection_modifyitems(config, items):
    """A backend run by an interpreter or an emulation (Triton's, csrc's CUDA on the host) is slow
    beyond 16 chains, or through a conv decoder: the fast tier (``-m "not slow"``) checks those
    backends' parity on the small shapes, the full suite on all of them."""
    import backend_runners
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        batch = params.get("B", params.get("batch", 0))
        if params.get("backend") in ("triton", "cuda") and not backend_runners.GPU and (
                batch > 16 or params.get("decoder") == "conv"):
            item.add_marker(pytest.mark.slow)
