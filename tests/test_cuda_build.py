"""The CUDA backend (csrc/*.cu, jebm_kernels._cuda, jebm_kernels/cuda.py), checked every way a
machine without a GPU allows, plus the GPU parity tests that run where there is one.

Without a GPU:
1. nvcc compiles every .cu file for sm_80 and sm_90 (the flags setup.py uses; skipped, with a
   message, where nvcc is absent).
2. The shared headers on the host: csrc/philox.h and jebm_common.h's scalar functions -- exactly
   what the kernels call -- compiled by g++ into tests/cuda_emulation/shared_headers_main.cpp and
   compared with jebm_kernels.philox (Philox words and uniforms bit for bit, normals to float
   rounding of log/cos) and with torch's activations and autograd derivatives, every activation
   of jebm_kernels/activation_table.py (the codes are csrc/generated/activation_codes.h, written
   here by the generator setup.py runs).
3. The kernels themselves, emulated: the unchanged source of cuda_prior_chain.cu and
   cuda_update.cu, with cuda_bindings.cpp, compiled by g++ against tests/cuda_emulation/
   cuda_runtime.h (each block's 256 threads are fibers; __syncthreads is a barrier; threads run in
   a freshly shuffled order between barriers so a missing barrier shows as a wrong result; a
   barrier not every thread reaches aborts). jebm_kernels/cuda.py drives that module exactly as it
   drives the real one, on CPU tensors, and the chains are compared with the reference element by
   element: odd shapes (dims 1, 3, 17, 129, a 300-wide layer: several GEMM passes and chunks),
   4- and 8-chain blocks, more chain blocks than grid blocks, both spaces, the joint term, every
   activation, out-activations, no-bias layers, base_sigma with inf, prior_sigma, MALA decisions,
   and the multi-layer update (its normals and uniforms against the reference stream). ELU is also
   driven through the binding directly on a prior written out in torch (tests/binding_reference.py).
   What emulation cannot show: warp-level timing, real memory-ordering bugs that a barrier does
   not cover, device libm rounding (expf/logf/cosf/erff differ from glibc by an ulp or two), and
   speed. Those need the GPU tests below.
4. The bindings refuse garbage with ValueError/TypeError before any address is used; the real
   module without a GPU raises RuntimeError with the CUDA runtime's message; the backend reports
   itself unavailable and langevin(backend="cuda") says why.

With a GPU (skipped here): the cuda backend against the reference on the device.

Cost: the compiles (nvcc for two architectures ~25-40 s of CPU, the emulated module ~20 s) run
concurrently and are cached under build/test-cuda/<hash of sources and tools>; the emulated
chains are short (3-8 steps, a few blocks: ~0.05-0.15 s per block and step).

Tolerance |cuda - reference| <= 2e-5 + 2e-5 |reference| and the MALA margin: as
test_cpu_backend.py explains (float32 rounding only; a wrong term fails by orders of magnitude).
"""
import glob
import hashlib
import importlib.util
import math
import os
import runpy
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

import jebm_kernels as jk
import functools

from jebm_kernels import activation_table
from jebm_kernels import extension
from jebm_kernels.chain import autograd_energy_and_grad, run_chain
from jebm_kernels.philox import philox_rand, philox_randint4x, philox_randn
from jebm_kernels.prior_chain import cuda as prior_chain_cuda
from jebm_kernels.problem import info_from_stats, make_problem
from jebm_kernels.spec import ACTIVATIONS, GaussianSpec, PriorSpec
from jebm_kernels.update import cuda as update_cuda
from jebm_kernels.update.reference import propose as reference_proposal

import binding_reference
import helpers
from helpers import assert_close_where, make_mlp, make_prior, reference_mala_trace, start

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(ROOT, "csrc")
EMU = os.path.join(HERE, "cuda_emulation")
CU_FILES = sorted(glob.glob(os.path.join(CSRC, "*.cu")))
ARCHS = ("80", "90")
ATOL = RTOL = 2e-5
MARGIN = 1e-3
GPU = torch.cuda.is_available() and extension.cuda_error() is None


def find_nvcc():
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


NVCC = find_nvcc()
CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


# ------------------------------------------------------------------------------------- the builds

def _version(tool):
    try:
        return subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _cache_dir(kind, files, tools):
    h = hashlib.sha256(kind.encode())
    for f in sorted(files):
        h.update(f.encode())
        with open(f, "rb") as fh:
            h.update(fh.read())
    for t in tools:
        h.update(_version(t).encode())
    h.update(sys.version.encode())
    d = os.path.join(ROOT, "build", "test-cuda", f"{kind}-{h.hexdigest()[:16]}")
    os.makedirs(d, exist_ok=True)
    return d


def _run_all(cmds):
    """Runs the commands concurrently; returns [(cmd, returncode, output)]."""
    procs = [(c, subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)) for c in cmds]
    return [(c, p.returncode, out) for c, p in procs for out in [p.communicate()[0]]]


# csrc/generated/activation_codes.h, written from jebm_kernels/activation_table.py by the generator
# setup.py runs (the builds here compile csrc without setup.py)
write_generated_headers = runpy.run_path(os.path.join(CSRC, "generate_activation_codes.py"))["write_header"]


def _headers():
    return glob.glob(os.path.join(CSRC, "*.h")) + glob.glob(os.path.join(CSRC, "generated", "*.h"))


def build_nvcc():
    """nvcc -c of every .cu for sm_80 and sm_90, one call per file (--threads: both archs at once)."""
    d = _cache_dir("nvcc", CU_FILES + _headers(), [NVCC])
    marker = os.path.join(d, "ok")
    if os.path.exists(marker):
        with open(marker) as fh:
            return fh.read()
    cmds = [[NVCC, "-c", f, "-o", os.path.join(d, os.path.basename(f) + ".o"), "-O3", "-std=c++17", "--fmad=false",
             "--threads", "0", "-Xcompiler", "-fPIC", "-I" + CSRC, "-Xptxas", "-v",
             *[f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]] for f in CU_FILES]
    results = _run_all(cmds)
    failed = [f"{' '.join(c)}\n{out}" for c, rc, out in results if rc]
    if failed:
        raise AssertionError("nvcc failed:\n" + "\n".join(failed))
    log = "\n".join(out for _, _, out in results)
    with open(marker, "w") as fh:
        fh.write(log)
    return log


def build_emulator():
    """The extension module _cuda with the kernels run on the host (tests/cuda_emulation)."""
    sources = [os.path.join(CSRC, n) for n in ("cuda_prior_chain.cu", "cuda_update.cu", "cuda_bindings.cpp")]
    sources.append(os.path.join(EMU, "emulated_device.cpp"))
    d = _cache_dir("emulator", sources + _headers() + [os.path.join(EMU, "cuda_runtime.h")], [CXX])
    so = os.path.join(d, "_cuda" + sysconfig.get_config_var("EXT_SUFFIX"))
    if os.path.exists(so):
        return so
    pybind11 = pytest.importorskip("pybind11", reason="pybind11 (the test extra) compiles the emulated bindings")
    inc = ["-I" + EMU, "-I" + CSRC, "-I" + sysconfig.get_paths()["include"], "-I" + pybind11.get_include()]
    cmds, objs = [], []
    for src in sources:
        obj = os.path.join(d, os.path.basename(src) + ".o")
        objs.append(obj)
        lang = ["-x", "c++"] if src.endswith(".cu") else []
        # the kernels at -O1 (they run), the pybind11 bindings at -O0 (they compile 3x faster)
        opt = "-O0" if src.endswith("bindings.cpp") else "-O1"
        cmds.append([CXX, opt, "-std=c++17", "-fPIC", "-fvisibility=hidden", "-c", *inc, *lang, src, "-o", obj])
    failed = [f"{' '.join(c)}\n{out}" for c, rc, out in _run_all(cmds) if rc]
    if failed:
        raise AssertionError("building the emulated module failed:\n" + "\n".join(failed))
    tmp = so + ".tmp"
    r = subprocess.run([CXX, "-shared", *objs, "-o", tmp], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    os.replace(tmp, so)
    return so


def build_header_program():
    src = os.path.join(EMU, "shared_headers_main.cpp")
    d = _cache_dir("headers", [src] + _headers(), [CXX])
    exe = os.path.join(d, "shared_headers")
    if not os.path.exists(exe):
        # -ffp-contract=off: as the CPU extension and nvcc --fmad=false, no implicit FMA
        r = subprocess.run([CXX, "-O2", "-std=c++17", "-ffp-contract=off", "-I" + CSRC, src, "-o", exe + ".tmp"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        os.replace(exe + ".tmp", exe)
    return exe


@pytest.fixture(scope="module")
def builds():
    """Every build, started at once (they overlap on the cores); each test waits for its own."""
    if CXX is None:
        pytest.skip("no C++ compiler (g++/c++) on PATH")
    write_generated_headers(ROOT)
    pool = ThreadPoolExecutor(max_workers=3)
    futures = {"headers": pool.submit(build_header_program), "emulator": pool.submit(build_emulator)}
    if NVCC:
        futures["nvcc"] = pool.submit(build_nvcc)
    yield futures
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def emu(builds):
    so = builds["emulator"].result()
    spec = importlib.util.spec_from_file_location("_cuda", so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert np.array_equal(rec["uniform"], philox_rand(seed, offset, n).numpy()), "uniforms differ"
    normal = torch.from_numpy(rec["normal"].copy())
    ref = philox_randn(seed, offset, n)
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

def run_emulated(emu, energy, z, *, hybrid=False, accept_record=None, **kw):
    kw.setdefault("generator", (2**63 + 977, 2**32 - 3))  # seed past 2^63, counter low word wraps
    kw.setdefault("noise_scale", 1.0)
    kw.setdefault("prior_sigma", None)
    kw.setdefault("mala", False)
    ref, ref_info = jk.langevin(energy, z, backend="reference", return_info=True, **kw)
    problem, _ = make_problem(energy, z, return_info=True, **kw)
    if hybrid:
        out, stats = run_chain(problem, autograd_energy_and_grad(problem), functools.partial(update_cuda.propose, ext=emu))
    else:
        assert prior_chain_cuda.kernel_reason(problem) is None, prior_chain_cuda.kernel_reason(problem)
        out, stats = prior_chain_cuda.run(problem, accept_record=accept_record, ext=emu)
    info = info_from_stats(problem, stats)
    return ref, ref_info, problem.restructure(out), info


def check_close(out, ref, what):
    helpers.check_close(out, ref, what, atol=ATOL, rtol=RTOL, who="cuda (emulated)")


@pytest.mark.parametrize("dims,B,sms,space,joint,hidden", [
    ((1,), 1, 1, "z", False, (7,)),              # 4-chain block, 3 rows of padding
    ((129,), 7, 1, "z", True, (40, 33)),         # 8-chain block (B > 4 x SMs), one chain of padding
    ((3, 17), 17, 1, "eps", True, (24,)),        # three 8-chain blocks on a grid of two
    ((17, 300), 5, 4, "z", False, (300,)),       # 300 wide: two GEMM passes and two input chunks
    ((17, 100, 1), 3, 2, "eps", True, (20,)),    # three layers, a 1-wide top
])
def test_emulated_prior_chain_odd_shapes(emu, monkeypatch, dims, B, sms, space, joint, hidden):
    monkeypatch.setenv("JEBM_EMU_SMS", str(sms))
    spec = make_prior(dims, hidden=hidden, space=space, joint=joint, seed=len(dims) + B, gauss_hidden=(19,))
    steps = [0.3 / (1 + l) for l in range(len(dims))]
    ref, ref_info, out, info = run_emulated(emu, jk.PriorEnergy(spec), start(B, dims), n_steps=4, step_size=steps,
                                            noise_scale=0.9)
    check_close(out, ref, f"dims {dims} B={B} {space} joint={joint}")
    helpers.check_info(info, ref_info)


def test_emulated_every_activation_and_out_activation(emu, monkeypatch):
    """Each activation as the hidden one of some MLP, and output activations, in short chains of
    four activations each (the spaces alternate) that share the cost of the emulation."""
    monkeypatch.setenv("JEBM_EMU_SMS", "1")
    gen = torch.Generator().manual_seed(9)
    acts = list(ACTIVATIONS)
    chunks = [(acts[i:i + 4] + acts)[:4] for i in range(0, len(acts), 4)]  # the last one topped up
    outs = [("tanh", "identity"), ("softplus", "gelu_tanh")]
    for i, chunk in enumerate(chunks):
        space, out_acts = ("z", "eps")[i % 2], outs[i % 2]
        dims = (3, 17)
        terms = (make_mlp([3, 12, 12, 1], chunk[0], out_act=out_acts[0], gen=gen, bias=False),
                 make_mlp([17, 12, 1], chunk[1], out_act=out_acts[1], gen=gen))
        joint = make_mlp([20, 9, 1], chunk[2], gen=gen)
        gauss = (GaussianSpec(make_mlp([17, 10, 6], chunk[3], gen=gen, gain=0.5), 0.01),)
        spec = PriorSpec(dims, terms, joint, gauss, space=space, energy_sign=-1.0)
        ref, ref_info, out, info = run_emulated(emu, jk.PriorEnergy(spec), start(3, dims), n_steps=3,
                                                step_size=[0.3, 0.2])
        check_close(out, ref, f"activations {chunk}, outputs {out_acts}, {space}")
        helpers.check_info(info, ref_info)


@pytest.mark.parametrize("space", ["z", "eps"])
def test_emulated_elu_chain_through_the_binding(emu, monkeypatch, space):
    """ELU in every MLP of a prior written out in torch (tests/binding_reference.py: odd widths, the
    joint term, the Gaussian in eps-space), the emulated kernel driven through the binding directly,
    against the reference backend on the same energy: ELU end to end without the Python backends."""
    monkeypatch.setenv("JEBM_EMU_SMS", "1")
    prior = binding_reference.HandPrior("elu", space, seed=8)
    B, K, s, tau = 5, 4, (0.3, 0.2), 0.9
    z = start(B, prior.dims)
    ref, info = jk.langevin(prior.energy, z, n_steps=K, step_size=list(s), noise_scale=tau,
                            generator=(2**63 + 977, 2**32 - 3), backend="reference", return_info=True)
    args, weights = prior.cuda_model_args()
    model = emu.Model(**args)
    _, _, _, nbytes = model.plan(B)
    workspace = torch.zeros(nbytes // 4 + 4)
    out = [torch.empty_like(t) for t in z]
    model.chain(B, [t.data_ptr() for t in z], [t.data_ptr() for t in out], K, [v * v / 2 for v in s],
                [v * tau for v in s], [], False, info["seed"], info["offset"], workspace.data_ptr(), nbytes, 0, 0, 0,
                0)
    del weights
    check_close(out, ref, f"ELU, {space}-space, through the emulated binding")


def test_emulated_base_sigma_inf_joint_only_prior_sigma_and_sequential(emu, monkeypatch):
    monkeypatch.setenv("JEBM_EMU_SMS", "1")
    gen = torch.Generator().manual_seed(4)
    spec = PriorSpec((5, 4), (None, None), joint_term=make_mlp([9, 16, 1], "gelu", gen=gen),
                     energy_sign=1.0, base_sigma=(2.0, math.inf))
    ref, _, out, _ = run_emulated(emu, jk.PriorEnergy(spec), start(7, (5, 4)), n_steps=4, step_size=0.2,
                                  prior_sigma=[1.0, 3.0])
    check_close(out, ref, "joint term only, base_sigma (2, inf), prior_sigma (1, 3)")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 30), nn.SiLU(), nn.Linear(30, 30), nn.SiLU(), nn.Linear(30, 1))
    ref, ref_info, out, info = run_emulated(emu, net, torch.randn(6, 20), n_steps=4, step_size=0.4, prior_sigma=1.0)
    check_close(out, ref, "LEBM-style nn.Sequential with prior_sigma")
    helpers.check_info(info, ref_info)


def test_emulated_prior_chain_reads_seed_and_offset_from_memory(emu, monkeypatch):
    """The graph-safe form: seed and base offset from a tensor, the problem's offset added."""
    monkeypatch.setenv("JEBM_EMU_SMS", "1")
    spec = make_prior((3, 1), hidden=(9,), space="eps", seed=3, gauss_hidden=(7,))
    z = start(1, spec.dims)
    seed, offset = 2**64 - 2, 2**33 + 5
    kw = dict(n_steps=4, step_size=0.3, noise_scale=1.0, prior_sigma=None, mala=True, return_info=False)
    ref = jk.langevin(jk.PriorEnergy(spec), z, generator=(seed, offset), backend="reference", **kw)
    problem, _ = make_problem(jk.PriorEnergy(spec), z, generator=(12345, 100), **kw)  # another seed
    philox = torch.tensor([seed - 2**64, offset - 100], dtype=torch.int64)
    problem.philox = philox
    out, _ = prior_chain_cuda.run(problem, ext=emu)
    check_close(out, ref, "eps-space (3, 1), B=1, MALA, seed and offset from memory")


def test_emulated_mala_decisions_match_except_at_the_threshold(emu, monkeypatch):
    monkeypatch.setenv("JEBM_EMU_SMS", "1")
    spec = make_prior((3, 17), hidden=(16,), space="eps", seed=17, gauss_hidden=(12,))
    energy = jk.PriorEnergy(spec)
    B, K = 9, 8
    z = start(B, spec.dims)
    kw = dict(n_steps=K, step_size=0.9, noise_scale=1.0, prior_sigma=None, mala=True, return_info=True)
    problem, _ = make_problem(energy, z, generator=(99, 0), **kw)
    ref_x, ref_dec, ref_margin = reference_mala_trace(problem)
    record = torch.zeros(K, B, dtype=torch.uint8)
    problem, _ = make_problem(energy, z, generator=(99, 0), **kw)
    out, stats = prior_chain_cuda.run(problem, accept_record=record, ext=emu)
    rate = float(ref_dec.float().mean())
    assert 0.2 < rate < 0.95, f"accept rate {rate}: choose a step size that makes decisions matter"
    dec = record.bool()
    diverged = torch.zeros(B, dtype=torch.bool)
    for k in range(K):
        differ = (dec[k] != ref_dec[k]) & ~diverged
        if differ.any():
            assert float(ref_margin[k][differ].max()) < MARGIN, f"step {k}: a decision differs away from the threshold"
            diverged |= differ
    assert int(diverged.sum()) <= 1
    for l, (a, b) in enumerate(zip(out, ref_x)):
        assert_close_where(a[~diverged], b[~diverged], atol=ATOL, rtol=RTOL, what=f"MALA layer {l + 1}")
    acc = stats[:, 2].float()
    assert torch.allclose(acc, dec.float().mean(1)), "per-step accept rates are the recorded decisions' means"
    print(f"emulated MALA: accept rate {rate:.2f}, threshold flips {int(diverged.sum())}")


def test_emulated_multi_layer_update_draws_the_reference_stream(emu):
    B, dims = 5, [3, 17]
    gen = torch.Generator().manual_seed(2)
    x = [torch.randn(B, d, generator=gen) for d in dims]
    g = [torch.randn(B, d, generator=gen) for d in dims]
    energy = lambda zs: sum((t ** 2).sum(-1) for t in zs)  # noqa: E731 (only the problem's layout matters)
    problem, _ = make_problem(energy, x, n_steps=3, step_size=[0.3, 0.2], noise_scale=0.7, prior_sigma=None,
                              generator=(2**64 - 5, 2**32 - 40), mala=True, return_info=False)
    for k in range(problem.n_steps):
        ref_prop, ref_noise, ref_uniform = reference_proposal(problem, x, g, k)
        out = [torch.empty(B, d) for d in dims]
        noise = [torch.empty(B, d) for d in dims]
        uniform = torch.empty(B)
        emu.multi_layer_update(B, dims, [t.data_ptr() for t in x], [t.data_ptr() for t in g],
                               [t.data_ptr() for t in out], [t.data_ptr() for t in noise], uniform.data_ptr(),
                               [s * s / 2 for s in problem.step_sizes], [s * 0.7 for s in problem.step_sizes],
                               problem.seed, problem.offset + k * problem.stride, 0, 0)
        assert torch.equal(uniform, ref_uniform), "MALA uniforms are tl.rand at offset + B*D + b"
        for l in range(len(dims)):
            assert_close_where(noise[l], ref_noise[l], atol=2e-6, what=f"step {k} normals, layer {l + 1}")
            assert_close_where(out[l], ref_prop[l], atol=4e-6, rtol=1e-6, what=f"step {k} move, layer {l + 1}")
    # the graph-safe form: seed and base offset read from memory, the argument added
    philox = torch.tensor([problem.seed - 2**64, problem.offset - 7], dtype=torch.int64)
    again = [torch.empty(B, d) for d in dims]
    emu.multi_layer_update(B, dims, [t.data_ptr() for t in x], [t.data_ptr() for t in g],
                           [t.data_ptr() for t in again], [], 0, [s * s / 2 for s in problem.step_sizes],
                           [s * 0.7 for s in problem.step_sizes], 0, 7, philox.data_ptr(), 0)
    ref_prop, _, _ = reference_proposal(problem, x, g, 0)
    for l in range(len(dims)):
        assert_close_where(again[l], ref_prop[l], atol=4e-6, rtol=1e-6, what=f"seed from memory, layer {l + 1}")


def test_emulated_hybrid_chain_for_any_energy_with_mala(emu):
    """A non-fusable energy: autograd gradients, the emulated update kernel for every move."""
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(3)) * 0.3

    def energy(zs):
        a, b = zs
        return 0.5 * (a ** 2).sum(-1) + torch.cosh(b @ w[:3, :3]).sum(-1) + (a[:, :3] * b).sum(-1) * 0.1

    z = start(6, (4, 3))
    ref, ref_info, out, info = run_emulated(emu, energy, z, hybrid=True, n_steps=6, step_size=0.5, mala=True)
    check_close(out, ref, "hybrid chain (autograd + emulated update), MALA")
    assert info["accept"] == ref_info["accept"]


# ------------------------------------------------------------------------------- on a GPU

needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU and the built jebm_kernels._cuda "
                               f"(GPU: {torch.cuda.is_available()}, extension: {extension.cuda_error() or 'built'})")


def to_cuda(spec: PriorSpec) -> PriorSpec:
    def mv(m):
        return None if m is None else type(m)(tuple(w.cuda() for w in m.weights),
                                               tuple(None if b is None else b.cuda() for b in m.biases),
                                               m.activation, m.act_param, m.out_activation)
    return PriorSpec(spec.dims, tuple(mv(t) for t in spec.layer_terms), mv(spec.joint_term),
                     tuple(GaussianSpec(mv(g.mlp), g.sigma_floor) for g in spec.gaussians),
                     spec.space, spec.energy_sign, spec.base_sigma)


def run_gpu(energy, z, **kw):
    kw.setdefault("generator", (2**63 + 977, 2**32 - 3))
    ref, ref_info = jk.langevin(energy, z, backend="reference", return_info=True, **kw)
    out, info = jk.langevin(energy, z, backend="cuda", return_info=True, **kw)
    assert info["backend"] == "cuda"
    return ref, ref_info, out, info


def gpu_close(out, ref, what):
    helpers.check_close(out, ref, what, atol=ATOL, rtol=RTOL, who="cuda")


@needs_gpu
@pytest.mark.parametrize("dims,B,space,joint", [
    ((1,), 1, "z", False), ((129,), 7, "z", True), ((3, 17), 100, "z", True), ((3, 17), 7, "eps", False),
    ((17, 100, 1), 7, "eps", True), ((100, 3), 1, "eps", True), ((129, 17, 3), 100, "eps", False),
])
def test_gpu_odd_shapes_both_spaces(dims, B, space, joint):
    spec = to_cuda(make_prior(dims, hidden=(40, 33), space=space, joint=joint, seed=len(dims) + B))
    z = [t.cuda() for t in start(B, dims)]
    ref, ref_info, out, info = run_gpu(jk.PriorEnergy(spec), z, n_steps=60,
                                       step_size=[0.3 / (1 + l) for l in range(len(dims))], noise_scale=0.9)
    gpu_close(out, ref, f"GPU dims {dims} B={B} {space} joint={joint}")
    helpers.check_info(info, ref_info)


@needs_gpu
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_gpu_every_activation(act):
    spec = to_cuda(make_prior((3, 17), hidden=(24, 24), act=act, seed=ACTIVATIONS.index(act)))
    z = [t.cuda() for t in start(7, spec.dims)]
    ref, ref_info, out, info = run_gpu(jk.PriorEnergy(spec), z, n_steps=40, step_size=[0.3, 0.2])
    gpu_close(out, ref, f"GPU activation {act}")
    helpers.check_info(info, ref_info)


@needs_gpu
def test_gpu_cvpr_prior_and_auto_picks_cuda():
    gen = torch.Generator().manual_seed(11)
    spec = to_cuda(PriorSpec((128, 100), (make_mlp([128, 200, 200, 200, 1], gen=gen),
                                          make_mlp([100, 100, 100, 1], gen=gen)),
                             gaussians=(GaussianSpec(make_mlp([100, 200, 200, 200, 200, 256], gen=gen, gain=0.5),
                                                     0.01),)))
    z = [t.cuda() for t in start(100, spec.dims)]
    ref, ref_info, out, info = run_gpu(jk.PriorEnergy(spec), z, n_steps=60, step_size=0.4)
    gpu_close(out, ref, "GPU CVPR prior B=100")
    helpers.check_info(info, ref_info)
    _, info = jk.langevin(jk.PriorEnergy(spec), z, n_steps=2, step_size=0.4, return_info=True)
    assert info["backend"] == "cuda"


@needs_gpu
@pytest.mark.parametrize("dims,B,space", [((17,), 100, "z"), ((3, 17), 100, "eps"), ((129,), 7, "z")])
def test_gpu_mala_decisions_match_except_at_the_threshold(dims, B, space):
    spec = to_cuda(make_prior(dims, hidden=(32, 32), space=space, seed=B))
    energy = jk.PriorEnergy(spec)
    z = [t.cuda() for t in start(B, dims)]
    K = 60
    kw = dict(n_steps=K, step_size=1.0 if B == 100 else 0.8, noise_scale=1.0, prior_sigma=None, mala=True,
              return_info=True)
    problem, _ = make_problem(energy, z, generator=(99, 0), **kw)
    ref_x, ref_dec, ref_margin = reference_mala_trace(problem)
    problem, _ = make_problem(energy, z, generator=(99, 0), **kw)
    record = torch.zeros(K, B, dtype=torch.uint8, device="cuda")
    with torch.cuda.device(problem.device):
        out, _ = prior_chain_cuda.run(problem, accept_record=record)
    dec = record.bool()
    diverged = torch.zeros(B, dtype=torch.bool, device="cuda")
    for k in range(K):
        differ = (dec[k] != ref_dec[k]) & ~diverged
        if differ.any():
            assert float(ref_margin[k][differ].max()) < MARGIN
            diverged |= differ
    assert int(diverged.sum()) <= max(1, B // 10)
    for l, (a, b) in enumerate(zip(out, ref_x)):
        assert_close_where(a[~diverged], b[~diverged], atol=ATOL, rtol=RTOL, what=f"GPU MALA layer {l + 1}")


@needs_gpu
@pytest.mark.parametrize("mala", [False, True])
def test_gpu_hybrid_posterior_conv_decoder(mala):
    torch.manual_seed(4)
    spec = to_cuda(make_prior((6, 4), hidden=(20,), space="eps", seed=9))
    dec = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Unflatten(1, (2, 4, 4)),
                        nn.ConvTranspose2d(2, 1, 4, stride=2, padding=1), nn.Tanh()).cuda()
    x_obs = torch.rand(7, 1, 8, 8, device="cuda") * 2 - 1
    energy = jk.PosteriorEnergy(spec, dec, x_obs, 0.3)
    z = [t.cuda() for t in start(7, spec.dims)]
    ref, ref_info, out, info = run_gpu(energy, z, n_steps=30, step_size=0.05, mala=mala)
    gpu_close(out, ref, f"GPU posterior, conv decoder, mala={mala}")
    if mala:
        assert info["accept"] == ref_info["accept"]
