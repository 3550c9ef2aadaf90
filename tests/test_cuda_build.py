"""The CUDA sources (csrc/*.cu, jebm_kernels._cuda), checked every way a machine without a GPU allows.

1. nvcc compiles every .cu file for sm_80 and sm_90 (the flags setup.py uses; skipped, with a
   message, where nvcc is absent).
2. The shared headers on the host: csrc/philox.h and jebm_common.h's scalar functions -- exactly
   what the kernels call -- compiled by g++ into tests/cuda_emulation/shared_headers_main.cpp and
   compared with jebm_kernels.philox (Philox words and uniforms bit for bit, normals to float
   rounding of log/cos) and with torch's activations and autograd derivatives, every activation
   of jebm_kernels/activation_table.py (the codes are csrc/generated/activation_codes.h, written
   by the generator setup.py runs).
3. The kernels emulated on the host (tests/cuda_emulation: the unchanged sources compiled by g++
   against cuda_runtime.h; each block's 256 threads are fibers; __syncthreads is a barrier; threads
   run in a freshly shuffled order between barriers so a missing barrier shows as a wrong result; a
   barrier not every thread reaches aborts). Here: the launch plans (4- and 8-chain blocks, more
   chain blocks than grid blocks, a 300-wide layer: two GEMM passes and input chunks). The op tests
   (test_prior_chain.py, test_posterior_chain.py, test_update.py) run the same emulated module as
   their "cuda" backend wherever there is no GPU, and the real one where there is.
   What emulation cannot show: warp-level timing, real memory-ordering bugs that a barrier does
   not cover, device libm rounding (expf/logf/cosf/erff differ from glibc by an ulp or two), and
   speed. Those need a GPU.
4. The bindings refuse garbage with ValueError/TypeError before any address is used; the real
   module without a GPU raises RuntimeError with the CUDA runtime's message; the backend reports
   itself unavailable and langevin(backend="cuda") says why.

Cost: the compiles (nvcc for two architectures ~25-40 s of CPU, the emulated module ~20 s) run
concurrently and are cached under build/test-cuda/<hash of sources and tools> (conftest.py's
cuda_builds fixture, cuda_emulation/builds.py).

Tolerance |cuda - reference| <= 2e-5 + 2e-5 |reference|: as test_prior_chain.py explains.
"""
import math
import os
import subprocess

import binding_reference
import helpers
import numpy as np
import pytest
import torch
from backend_runners import ATOL, RTOL, EmulatedCudaRunner
from cuda_emulation.builds import ARCHS, CU_FILES, NVCC
from helpers import assert_close_where, make_prior, start

import jebm_kernels as jk
from jebm_kernels import activation_table, extension
from jebm_kernels.philox import philox_randint4x, torch_philox_rand, torch_philox_randn

pytestmark = pytest.mark.slow  # nvcc and the host emulation compile csrc first


@pytest.fixture(scope="module")
def builds(cuda_builds):
    return cuda_builds


@pytest.fixture(scope="module")
def emu(cuda_emu):
    return cuda_emu


# ------------------------------------------------------------------------- the shared headers

@pytest.mark.parametrize("seed,offset,n", [(0, 0, 300), (2**63 + 99, 2**32 - 100, 300), (2**64 - 1, 2**63 + 11, 64)])
def test_shared_philox_header_on_the_host(builds, seed, offset, n):
    exe = builds["headers"].result()
    raw = subprocess.run([exe, "philox", str(seed), str(offset), str(n)], capture_output=True, check=True).stdout
    rec = np.frombuffer(raw, dtype=np.dtype([("w0", "<u4"), ("w1", "<u4"), ("normal", "<f4"), ("uniform", "<f4")]))
    assert len(rec) == n
    w0, w1, _, _ = philox_randint4x(seed, offset, n)
    assert np.array_equal(rec["w0"].astype(np.int64), w0.numpy()), "Philox word 0 differs from jebm_kernels.philox"
    assert np.array_equal(rec["w1"].astype(np.int64), w1.numpy()), "Philox word 1 differs"
    assert np.array_equal(rec["uniform"], torch_philox_rand(seed, offset, n).numpy()), "uniforms differ"
    normal = torch.from_numpy(rec["normal"].copy())
    ref = torch_philox_randn(seed, offset, n)
    # the words and uniforms are exact; glibc's and torch's logf/cosf differ by an ulp on a
    # quarter of the values: |n| < 6, so 2e-6 is ~4 ulp (test_philox.py's bound against Triton)
    assert float((normal - ref).abs().max()) <= 2e-6


@pytest.mark.parametrize("act", binding_reference.ACTIVATIONS)
def test_shared_activation_header_on_the_host(builds, act):
    exe = builds["headers"].result()
    param = binding_reference.TEST_PARAM[act]
    a = torch.cat([torch.linspace(-25, 25, 20_001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 1e4])])
    raw = subprocess.run([exe, "act", str(activation_table.CODES[act]), repr(param), str(a.numel())],
                         input=a.numpy().tobytes(), capture_output=True, check=True).stdout
    vd = torch.from_numpy(np.frombuffer(raw, dtype="<f4").reshape(-1, 2).copy()).double()
    leaf = a.double().requires_grad_(True)
    y = binding_reference.torch_activation(leaf, act, param)
    (g,) = torch.autograd.grad(y.sum(), leaf)
    # against torch in float64: float32 results of ~1-2 ulp (test_cpu_bindings.py's bound)
    assert_close_where(vd[:, 0], y.detach(), atol=2e-6, rtol=4e-7, what=f"{act} value")
    assert_close_where(vd[:, 1], g, atol=2e-6, rtol=4e-7, what=f"{act} derivative")


def test_act_codes_and_limits_of_the_cuda_bindings(emu):
    """The CUDA bindings (emulated here, and the real module where it is built) report the codes of
    jebm_kernels/activation_table.py and the same shared limits as _C."""
    modules = [emu]
    if extension.cuda_error() is None:
        from jebm_kernels import _cuda
        modules.append(_cuda)
    for m in modules:
        assert m.act_codes() == activation_table.CODES
        lim = m.limits()
        assert {"max_latent", "max_linear_per_mlp", "max_mlps", "max_linear_total", "max_width", "max_batch",
                "max_steps", "chains_per_block", "threads"} <= set(lim)
        try:
            from jebm_kernels import _C
        except ImportError:
            continue
        shared = set(lim) & set(_C.limits())
        assert {k: lim[k] for k in shared} == {k: _C.limits()[k] for k in shared}


# ---------------------------------------------------------------------------- nvcc, both archs

def test_nvcc_compiles_every_cu_file_for_sm80_and_sm90(builds):
    if "nvcc" not in builds:
        pytest.skip("nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin): the CUDA sources were not compiled")
    log = builds["nvcc"].result()
    assert len(CU_FILES) >= 3
    for arch in ARCHS:
        assert f"for 'sm_{arch}'" in log
    # every kernel fits the resources a launch of 256 threads needs on both architectures
    for line in log.splitlines():
        if "Used" in line and "registers" in line:
            assert int(line.split("Used")[1].split("registers")[0]) <= 255, line
    print(f"nvcc: {len(CU_FILES)} files for sm_{' and sm_'.join(ARCHS)}")


def test_the_installed_build_has_the_cuda_extension_where_nvcc_is():
    """setup.py builds jebm_kernels._cuda where nvcc is found (unless JEBM_CUDA=0): a build that
    failed silently would leave GPU users without the backend."""
    if NVCC is None:
        pytest.skip("nvcc not found: setup.py builds no CUDA extension here")
    if os.environ.get("JEBM_CUDA") == "0":
        pytest.skip("JEBM_CUDA=0")
    assert extension.cuda_error() is None, (
        f"nvcc is at {NVCC} but jebm_kernels._cuda is missing ({extension.cuda_error()}): "
        "run `pip install -e .` and read its warnings")


# ------------------------------------------------------------------- without a GPU: refusals

@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_backend_unavailable_without_a_gpu_says_why():
    assert "cuda" not in jk.available_backends()
    with pytest.raises(RuntimeError, match="cuda.*not available here"):
        jk.langevin(lambda z: (z ** 2).sum(-1), torch.randn(3, 2), n_steps=1, step_size=0.1, backend="cuda")


@pytest.mark.skipif(torch.cuda.is_available() or extension.cuda_error() is not None,
                    reason="needs the built extension and no GPU")
def test_real_module_without_a_gpu_raises_runtime_error():
    from jebm_kernels import _cuda
    with pytest.raises(RuntimeError, match="CUDA error"):
        _cuda.device()
    t = torch.zeros(8)
    with pytest.raises(RuntimeError, match="CUDA error"):
        _cuda.multi_layer_update(2, [4], [t.data_ptr()], [t.data_ptr()], [t.data_ptr()], [], 0, [0.1], [0.1],
                                 1, 0, 0, 0)
    with pytest.raises(ValueError, match="batch B"):  # validated before the runtime is asked
        _cuda.multi_layer_update(-1, [4], [1], [1], [1], [], 0, [0.1], [0.1], 1, 0, 0, 0)


def _garbage(emu):
    """name -> call that must raise ValueError/TypeError (emulated module: every address is
    'device memory', so everything up to the launch is checked)."""
    keep = []

    def buf(n):
        t = torch.zeros(max(n, 1))
        keep.append(t)
        return t.data_ptr()

    w = buf(1000)
    good = dict(dims=[3, 2], mlps=[([3, 5, 1], [0, 100], [20, 120], [40, -1], 1, 0.2, 0),
                                   ([2, 5, 6], [200, 300], [220, 330], [240, 360], 1, 0.2, 0)],
                terms=[0, -1], joint=-1, gaussians=[1], sigma_floors=[0.01], space=0, energy_sign=-1.0,
                base_sigma=[], prior_sigma=[], weights=w, weights_numel=1000)

    def model(**over):
        return lambda: emu.Model(**(good | over))

    m = emu.Model(**good)
    x = [buf(8 * 3), buf(8 * 2)]
    _, _, n_blocks, nbytes = m.plan(8)
    ws = torch.zeros(nbytes // 4 + 64)
    keep.append(ws)
    chain = dict(B=8, x=x, out=x, K=2, h=[0.1, 0.1], c=[0.1, 0.1], mala_den=[], mala=False, seed=1, offset=0,
                 workspace=ws.data_ptr(), workspace_bytes=nbytes, stats=0, stats_numel=0, accept_record=0, stream=0)

    def run(**over):
        return lambda: m.chain(**(chain | over))

    upd = dict(B=2, dims=[4], x=[buf(8)], g=[buf(8)], out=[buf(8)], noise=[], uniform=0, h=[0.1], c=[0.1], seed=1,
               offset=0, philox=0, stream=0)

    def update(**over):
        return lambda: emu.multi_layer_update(**(upd | over))

    cases = {
        "no layers": model(dims=[]),
        "zero dim": model(dims=[0, 2]),
        "weight offset past the buffer": model(mlps=[([3, 5, 1], [0, 998], [20, 120], [40, -1], 1, 0.2, 0),
                                                     good["mlps"][1]]),
        "negative offset": model(mlps=[([3, 5, 1], [-5, 100], [20, 120], [40, -1], 1, 0.2, 0), good["mlps"][1]]),
        "missing offsets": model(mlps=[([3, 5, 1], [0], [20, 120], [40, -1], 1, 0.2, 0), good["mlps"][1]]),
        "bad activation": model(mlps=[([3, 5, 1], [0, 100], [20, 120], [40, -1], 9, 0.2, 0), good["mlps"][1]]),
        "softplus beta 0": model(mlps=[([3, 5, 1], [0, 100], [20, 120], [40, -1], 5, 0.0, 0), good["mlps"][1]]),
        "nan parameter": model(mlps=[([3, 5, 1], [0, 100], [20, 120], [40, -1], 1, math.nan, 0), good["mlps"][1]]),
        "term of the wrong width": model(terms=[1, -1]),
        "term index out of range": model(terms=[7, -1]),
        "Gaussian missing": model(gaussians=[], sigma_floors=[]),
        "eps-space with base_sigma": model(gaussians=[], sigma_floors=[], base_sigma=[1.0, 1.0], space=1),
        "bad space": model(space=2),
        "prior_sigma 0": model(prior_sigma=[0.0, 1.0]),
        "null weights": model(weights=0),
        "too many Linear layers": model(mlps=[([3] + [1] * 300, [0] * 300, [0] * 300, [-1] * 300, 1, 0.2, 0)],
                                        terms=[-1, -1], gaussians=[1]),
        "wrong type": model(dims="abc"),
        "batch 0": run(B=0),
        "x per layer": run(x=x[:1]),
        "null out": run(out=[x[0], 0]),
        "misaligned x": run(x=[x[0] + 2, x[1]]),
        "K negative": run(K=-1),
        "nan step": run(h=[math.nan, 0.1]),
        "MALA without densities": run(mala=True, mala_den=[]),
        "MALA density 0": run(mala=True, mala_den=[0.0, 1.0]),
        "workspace too small": run(workspace_bytes=nbytes - 4),
        "stats too small": run(stats=buf(4), stats_numel=4),
        "accept without MALA": run(accept_record=buf(16)),
        "counter overflow": run(offset=2**64 - 10),
        "update: L = 0": update(dims=[], x=[], g=[], out=[], h=[], c=[]),
        "update: g per layer": update(g=[]),
        "update: noise per layer": update(noise=[buf(8), buf(8)]),
        "update: inf c": update(c=[math.inf]),
        "update: counter overflow": update(offset=2**64 - 4),
        "update: null x": update(x=[0]),
        "update: seed too big": update(seed=2**64),
    }
    return cases, keep


def test_bindings_refuse_garbage_before_touching_an_address(emu):
    cases, keep = _garbage(emu)
    accepted = []
    for name, call in cases.items():
        try:
            call()
            accepted.append(name)
        except (ValueError, TypeError) as exc:
            assert str(exc), name
    del keep
    assert not accepted, f"accepted garbage: {accepted}"


# ------------------------------------------------------------------------- emulated kernels

@pytest.mark.parametrize("dims,B,sms,space,joint,hidden", [
    ((1,), 1, 1, "z", False, (7,)),              # 4-chain block, 3 rows of padding
    ((129,), 7, 1, "z", True, (40, 33)),         # 8-chain block (B > 4 x SMs), one chain of padding
    ((3, 17), 17, 1, "eps", True, (24,)),        # three 8-chain blocks on a grid of two
    ((17, 300), 5, 4, "z", False, (300,)),       # 300 wide: two GEMM passes and two input chunks
    ((17, 100, 1), 3, 2, "eps", True, (20,)),    # three layers, a 1-wide top
])
def test_emulated_launch_plans(emu, monkeypatch, dims, B, sms, space, joint, hidden):
    monkeypatch.setenv("JEBM_EMU_SMS", str(sms))
    spec = make_prior(dims, hidden=hidden, space=space, joint=joint, seed=len(dims) + B, gauss_hidden=(19,))
    kw = dict(n_steps=4, step_size=[0.3 / (1 + l) for l in range(len(dims))], noise_scale=0.9, prior_sigma=None,
              mala=False, generator=(2**63 + 977, 2**32 - 3), return_info=True)
    ref, ref_info = jk.langevin(jk.PriorEnergy(spec), start(B, dims), backend="reference", **kw)
    out, info = EmulatedCudaRunner(emu).langevin(jk.PriorEnergy(spec), start(B, dims), **kw)
    helpers.check_close(out, ref, f"dims {dims} B={B} {space} joint={joint}", atol=ATOL, rtol=RTOL,
                        who="cuda (emulated)")
    helpers.check_info(info, ref_info)
