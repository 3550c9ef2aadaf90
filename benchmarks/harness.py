"""The suite's session state and pytest glue, shared by the benchmark modules and conftest.py: the
FMA-peak and matmul measurements recorded during the session, the time-budgeted pedantic runner,
recorded skips, and ``RUN_INFO``, which conftest.py writes into the JSON under the key ``"jebm"``.
The measuring itself (machine description, FMA peak, matmul rate, rounds per budget) is
``jebm.bench.machine`` / ``jebm.bench.timing``, which ``jebm bench`` uses too.

Environment:
- ``JEBM_BENCH_QUICK=1``: batch 8 only, K = 5, small time budget: checks the suite end to end.
- ``JEBM_BENCH_BUDGET_S``: seconds of timed calls aimed at per benchmark (default 2; quick 0.2).
- ``JEBM_BENCH_THREADS``: torch's intra-op threads (default: torch's own, one per core).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch

from jebm.bench.configs import BATCHES, CONFIG_BATCHES, CONFIG_STEPS, N_STEPS, QUICK, make_case
from jebm.bench.machine import FmaPeak, cpu_seconds, load_average, machine, matmul_rate
from jebm.bench.providers import (
    PHILOX_PROVIDERS,
    compiled_mode,
    flat_state,
    make_runner,
    max_abs_diff,
    relative_diff,
    run_precision,
)
from jebm.bench.timing import rounds_for, time_calls

HERE = Path(__file__).resolve().parent
BUDGET_S = float(os.environ.get("JEBM_BENCH_BUDGET_S", "0.2" if QUICK else "2.0"))
MIN_ROUNDS = 2 if QUICK else 3
MAX_ROUNDS = 100

if os.environ.get("JEBM_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["JEBM_BENCH_THREADS"]))

# What the JSON gets under "jebm"; filled during the session.
RUN_INFO: dict = {
    "quick": QUICK,
    "batches": list(BATCHES),
    "n_steps": N_STEPS,
    "config_steps": dict(CONFIG_STEPS),      # configurations with their own K ...
    "config_batches": {k: list(v) for k, v in CONFIG_BATCHES.items()},  # ... and batches
    "budget_s": BUDGET_S,
    "skipped": [],
    "fma_peak": [],          # full measurements (start and end of the session)
    "fma_samples": [],       # short all-core measurements, one before each timed benchmark
    "matmul": None,          # the best of matmul_all
    "matmul_all": [],
}


_FMA: FmaPeak | None = None


def _fma() -> FmaPeak:
    global _FMA
    if _FMA is None:
        _FMA = FmaPeak(HERE / "fma_peak.c")
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
                 "load_average": load_average()}
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
    entry = matmul_rate(when, n, repeats=3 if QUICK else 7)
    RUN_INFO["matmul_all"].append(entry)
    RUN_INFO["matmul"] = max(RUN_INFO["matmul_all"], key=lambda e: e["gflops"])
    return entry


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
    RUN_INFO["load_average_at_end"] = load_average()
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
    call takes over ``jebm.bench.timing.SLOW_CALL_S``); returns the last call's result and the
    number of rounds."""
    last, times = time_calls(fn, rounds=max(1, warmup))  # the last warm-up call sizes the rounds
    rounds = rounds_for(times[-1], BUDGET_S, MIN_ROUNDS, MAX_ROUNDS)
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


# ---- one chain benchmark (prior and posterior configurations) ------------------------------------

# The reference's final state per (config, batch): the providers on the same Philox stream are
# compared with it.
_REFERENCE: dict = {}


def _reference_state(config: str, batch: int):
    key = (config, batch)
    if key not in _REFERENCE:
        _REFERENCE[key] = flat_state(make_case(config, batch).langevin("reference"))
    return _REFERENCE[key]


def bench_chain(benchmark, config: str, batch: int, provider: str) -> None:
    """Time one whole K-step chain of ``config`` at ``batch`` on ``provider`` and record its figures
    in ``extra_info`` (see benchmarks/test_prior_chain.py)."""
    case = make_case(config, batch)
    benchmark.group = f"{case.kind.replace('_', ' ')}: {config}, batch {batch}, K={case.n_steps}"
    run, why = make_runner(provider, case)
    if run is None:
        skip_with(why, kind=case.kind, config=config, batch=batch, provider=provider)

    out, rounds = run_timed(benchmark, run)  # make_runner has called it once (compiled, warmed up)
    state = flat_state(out)
    assert all(bool(torch.isfinite(t).all()) for t in state), f"{provider} returned NaN/inf on {config}"
    if provider == "reference":
        _REFERENCE[(config, batch)] = state

    info = benchmark.extra_info
    info.update(
        kind=case.kind, config=config, batch=batch, n_steps=case.n_steps, provider=provider,
        dims=list(case.dims), space=case.space, device="cuda" if provider in ("triton", "cuda") else "cpu",
        flops_per_call=case.flops_per_call, chain_steps_per_call=case.chain_steps_per_call,
        flops_per_chain_step=case.flops_per_chain_step, rounds=rounds, torch_threads=torch.get_num_threads(),
    )
    precision, note = run_precision(provider, case)
    info.update(precision=precision, precision_note=note)
    if provider.startswith("compiled"):
        info["compiled_mode"] = compiled_mode()
    seconds = stat(benchmark, "min")
    if seconds is not None:
        fma = best_fma_peak()  # so far; the report uses the whole run's best
        gflops = case.flops_per_call / seconds / 1e9 if case.flops_per_call else None
        info.update(stat="min", ms_per_chain=seconds * 1e3, chain_steps_per_s=case.chain_steps_per_call / seconds,
                    gflops=gflops, fma_peak_gflops=fma,
                    frac_fma_peak=(gflops / fma) if fma and gflops else None)
    if provider in PHILOX_PROVIDERS:
        ref = _reference_state(config, batch)
        info.update(max_abs_diff_vs_reference=max_abs_diff(state, ref), rel_diff_vs_reference=relative_diff(state, ref))
