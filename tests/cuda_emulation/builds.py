"""Builds of csrc that the tests make without setup.py, cached under build/test-cuda/<hash of sources
and tools>: nvcc of every .cu file (sm_80, sm_90), the CUDA kernels emulated on the host (the
unchanged sources compiled by g++ against cuda_runtime.h here, each block's threads as fibers)
as an importable ``_cuda`` module, and the shared-headers program. conftest.py's ``cuda_builds``
and ``cuda_emu`` fixtures start them; test_cuda_build.py explains what each proves."""
import glob
import hashlib
import importlib.util
import os
import runpy
import shutil
import subprocess
import sys
import sysconfig

import pytest

EMU = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(EMU))
CSRC = os.path.join(ROOT, "csrc")
CU_FILES = sorted(glob.glob(os.path.join(CSRC, "*.cu")))
ARCHS = ("80", "90")


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




def load_emulator(so: str):
    """Import the emulated ``_cuda`` module built at ``so``."""
    spec = importlib.util.spec_from_file_location("_cuda", so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
