"""Measurement helpers shared by the benchmark modules and conftest.py: the machine description,
the FMA-peak and matmul measurements, the time-budgeted pedantic runner, recorded skips, and
``RUN_INFO``, which conftest.py writes into the JSON under the key ``"jebm"``.

Environment:
- ``JEBM_BENCH_QUICK=1``: batch 8 only, K = 5, small time budget: checks the suite end to end.
- ``JEBM_BENCH_BUDGET_S``: seconds of timed calls aimed at per benchmark (default 2; quick 0.2).
- ``JEBM_BENCH_THREADS``: torch's intra-op threads (default: torch's own, one per core).
"""
from __future__ import annotations

import ctypes
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from .configs import BATCHES, N_STEPS, QUICK

HERE = Path(__file__).resolve().parent
BUDGET_S = float(os.environ.get("JEBM_BENCH_BUDGET_S", "0.2" if QUICK else "2.0"))
MIN_ROUNDS = 2 if QUICK else 3
MAX_ROUNDS = 100
SLOW_CALL_S = 5.0

if os.environ.get("JEBM_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["JEBM_BENCH_THREADS"]))

# What the JSON gets under "jebm"; filled during the session.
RUN_INFO: dict = {
    "quick": QUICK,
    "batches": list(BATCHES),
    "n_steps": N_STEPS,
    "budget_s": BUDGET_S,
    "skipped": [],
    "fma_peak": [],          # full measurements (start and end of the session)
    "fma_samples": [],       # short all-core measurements, one before each timed benchmark
    "matmul": None,          # the best of matmul_all
    "matmul_all": [],
}


# ---- machine description -------------------------------------------------------------------------

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
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def machine() -> dict:
    ls = _lscpu()
    import jebm_kernels as jk
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
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import torchebm
        info["torchebm"] = getattr(torchebm, "__version__", "installed")
    except Exception:
        info["torchebm"] = None
    return info


# ---- FMA peak ------------------------------------------------------------------------------------

class FmaPeak:
    """ctypes handle on fma_peak.c, compiled into a temporary directory."""

    def __init__(self):
        self.lib = None
        self.reason = None
        self.compile_cmd = None
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            self.reason = "no C compiler (cc) found to build benchmarks/fma_peak.c"
            return
        self._tmp = tempfile.TemporaryDirectory(prefix="jebm-fma-")
        so = Path(self._tmp.name) / "fma_peak.so"
        cmd = [cc, "-O2", "-fopenmp", "-shared", "-fPIC", str(HERE / "fma_peak.c"), "-o", str(so)]
        self.compile_cmd = " ".join(cmd)
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            self.reason = f"compiling fma_peak.c failed: {res.stderr.strip()[:500]}"
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


_FMA: FmaPeak | None = None


def _fma() -> FmaPeak:
    global _FMA
    if _FMA is None:
        _FMA = FmaPeak()
    return _FMA


def measure_fma_peak(when: str) -> dict:
    """A full measurement (all cores, and one thread for context), recorded in RUN_INFO."""
    fma = _fma()
    if fma.lib is None:
        entry = {"when": when, "gflops": None, "reason": fma.reason}
    else:
        seconds = 0.05 if QUICK else 0.2
        all_cores, threads = fma.gflops(seconds)
        one_core, _ = fma.gflops(seconds, threads=1)
        entry = {"when": when, "gflops": all_cores, "threads": threads, "gflops_one_thread": one_core,
                 "isa": "avx512f" if fma.isa_bits == 512 else "avx2+fma", "compile": fma.compile_cmd,
                 "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    RUN_INFO["fma_peak"].append(entry)
    return entry


def sample_fma_peak() -> float | None:
    """A short all-core measurement taken before each timed benchmark. The peak is a property of
    the machine that other work can only hide, so the run's best measurement is the estimate;
    sampling throughout the run keeps a busy moment at the start from lowering it."""
    fma = _fma()
    if fma.lib is None:
        return None
    rate, _ = fma.gflops(0.03)
    RUN_INFO["fma_samples"].append(rate)
    return rate


def best_fma_peak() -> float | None:
    rates = [e["gflops"] for e in RUN_INFO["fma_peak"] if e.get("gflops")] + list(RUN_INFO["fma_samples"])
    return max(rates) if rates else None


def measure_matmul(when: str, n: int = 2048) -> dict:
    """torch's n x n fp32 matmul rate (best of a few), for context; RUN_INFO keeps the best."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(3 if QUICK else 7):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    entry = {"when": when, "n": n, "gflops": 2 * n ** 3 / best / 1e9, "seconds": best,
             "threads": torch.get_num_threads()}
    RUN_INFO["matmul_all"].append(entry)
    RUN_INFO["matmul"] = max(RUN_INFO["matmul_all"], key=lambda e: e["gflops"])
    return entry


def cpu_seconds() -> dict | None:
    """CPU seconds the whole machine has been busy (/proc/stat: all but idle and iowait) and that
    this process and its children have used. The difference over the run is other work's share:
    unlike the load average, it does not count the suite's own threads."""
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


def measure_peak() -> dict:
    """{'fma': the FMA peak entry, 'matmul': torch's 2048^2 fp32 matmul entry} (session start)."""
    if "machine" not in RUN_INFO:
        RUN_INFO["machine"] = machine()
        RUN_INFO["session_start"] = time.time()
        RUN_INFO["cpu_seconds_at_start"] = cpu_seconds()
    return {"fma": measure_fma_peak("start"), "matmul": measure_matmul("start")}


def finish() -> None:
    """At the end of the session (when the JSON is written): measure the peak and matmul again."""
    if "machine" not in RUN_INFO:
        RUN_INFO["machine"] = machine()
    if RUN_INFO["fma_peak"]:
        measure_fma_peak("end")
        measure_matmul("end")
    RUN_INFO["fma_peak_best_gflops"] = best_fma_peak()
    RUN_INFO["argv"] = sys.argv
    RUN_INFO["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if "session_start" in RUN_INFO:
        RUN_INFO["suite_seconds"] = time.time() - RUN_INFO["session_start"]
        a, b = RUN_INFO.get("cpu_seconds_at_start"), cpu_seconds()
        if a and b and RUN_INFO["suite_seconds"] > 0:
            # average cores other processes kept busy while the suite ran
            other = (b["machine"] - a["machine"]) - (b["own"] - a["own"])
            RUN_INFO["other_work_cores"] = max(other, 0.0) / RUN_INFO["suite_seconds"]


# ---- timing and skips ----------------------------------------------------------------------------

def run_timed(benchmark, fn, *, warmup: int = 1):
    """Warm up, then time ``fn`` with enough rounds to fill BUDGET_S (MIN..MAX_ROUNDS; 2 when one
    call takes over SLOW_CALL_S); returns the last call's result and the number of rounds."""
    last = None
    t = math.inf
    for _ in range(max(1, warmup)):
        t0 = time.perf_counter()
        last = fn()
        t = time.perf_counter() - t0
    rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, math.ceil(BUDGET_S / max(t, 1e-6)))))
    if t > SLOW_CALL_S:  # seconds per call (the reference at batch 1000): two rounds keep the suite short
        rounds = 2
    sample_fma_peak()
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    return (result if result is not None else last), rounds


def skip_with(reason: str, **fields):
    """Skip the running benchmark, recording why (the report lists what was not measured)."""
    RUN_INFO["skipped"].append({**fields, "reason": reason})
    pytest.skip(reason)


def stat(benchmark, name: str) -> float | None:
    """A timing statistic (seconds) of a finished pedantic benchmark; None when timing is off
    (``--benchmark-disable``: each benchmark then runs once, as a smoke test)."""
    if benchmark.stats is None:
        return None
    return float(getattr(benchmark.stats.stats, name))
