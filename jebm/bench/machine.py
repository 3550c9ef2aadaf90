"""What a benchmark records about the machine: the CPU and software (``machine``), the busy CPU
time of the whole machine and of this process (``cpu_seconds``), the fp32 FMA peak measured by a
small C program compiled at run time (``FmaPeak``) and torch's matmul rate (``matmul_rate``)."""
from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

import jebm_kernels as jk
from jebm_kernels.precision import cpu_flags

from .timing import time_calls

__all__ = ["machine", "cpu_seconds", "FmaPeak", "matmul_rate", "load_average"]


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _lscpu() -> dict:
    out = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except Exception:
        text = ""
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def _cpu_flags() -> list[str]:
    return sorted(f for f in cpu_flags() if f.startswith(("avx", "fma", "amx")))


def machine() -> dict:
    """CPU model, cores, SIMD flags, torch / Python versions, backends, GPU, load average."""
    ls = _lscpu()
    info = {
        "cpu_model": ls.get("Model name") or platform.processor() or "unknown",
        "cpus": os.cpu_count(),
        "cores_per_socket": ls.get("Core(s) per socket"),
        "threads_per_core": ls.get("Thread(s) per core"),
        "sockets": ls.get("Socket(s)"),
        "simd_flags": _cpu_flags(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "jebm_kernels_backends": jk.available_backends(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": load_average(),
    }
    try:
        import torchebm
        info["torchebm"] = getattr(torchebm, "__version__", "installed")
    except Exception:
        info["torchebm"] = None
    return info


def cpu_seconds() -> dict | None:
    """CPU seconds the whole machine has been busy (/proc/stat: all but idle and iowait) and that
    this process and its children have used. The difference over a run is other work's share:
    unlike the load average, it does not count the benchmark's own threads."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz  # user nice system idle iowait irq softirq steal
    import resource
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return {"machine": busy, "own": own}


class FmaPeak:
    """ctypes handle on an FMA-peak C program (``benchmarks/fma_peak.c``), compiled into a
    temporary directory with OpenMP; ``lib`` is None and ``reason`` says why when it cannot be."""

    def __init__(self, source: Path):
        self.lib = None
        self.reason = None
        self.compile_cmd = None
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            self.reason = f"no C compiler (cc) found to build {source}"
            return
        if not Path(source).is_file():
            self.reason = f"{source}: no such file"
            return
        self._tmp = tempfile.TemporaryDirectory(prefix="jebm-fma-")
        so = Path(self._tmp.name) / "fma_peak.so"
        cmd = [cc, "-O2", "-fopenmp", "-shared", "-fPIC", str(source), "-o", str(so)]
        self.compile_cmd = " ".join(cmd)
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            self.reason = f"compiling {Path(source).name} failed: {res.stderr.strip()[:500]}"
            return
        lib = ctypes.CDLL(str(so))
        lib.fma_peak_gflops.restype = ctypes.c_double
        lib.fma_peak_gflops.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_int,
                                        ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_float)]
        lib.fma_peak_isa_bits.restype = ctypes.c_int
        lib.fma_peak_max_threads.restype = ctypes.c_int
        self.lib = lib
        self.isa_bits = lib.fma_peak_isa_bits()
        if self.isa_bits == 0:
            self.reason = "this CPU has neither AVX-512F nor AVX2+FMA"
            self.lib = None

    def gflops(self, seconds: float, threads: int = 0) -> tuple[float, int]:
        """Best rate of a few runs of about ``seconds`` each, and the thread count."""
        used, sink = ctypes.c_int(0), ctypes.c_float(0)
        iters = 100_000
        rate = self.lib.fma_peak_gflops(iters, threads, 0, ctypes.byref(used), ctypes.byref(sink))
        # size one run to ``seconds``: rate GFLOP/s, each iteration does 2*lanes*16*threads FLOPs
        flops_per_iter = 2 * (self.isa_bits // 32) * 16 * used.value
        iters = max(10_000, int(rate * 1e9 * seconds / flops_per_iter))
        best = 0.0
        for _ in range(5):
            best = max(best, self.lib.fma_peak_gflops(iters, threads, 0, ctypes.byref(used), ctypes.byref(sink)))
        return best, used.value


def matmul_rate(when: str, n: int = 2048, repeats: int = 7) -> dict:
    """torch's n x n fp32 matmul rate (the best of ``repeats``), for context."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    best = min(time_calls(lambda: a @ b, rounds=repeats, warmup=1)[1])
    return {"when": when, "n": n, "gflops": 2 * n ** 3 / best / 1e9, "seconds": best,
            "threads": torch.get_num_threads()}
