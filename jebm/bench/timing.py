"""Timing without pytest-benchmark: how many rounds of a call fill a time budget, the timed rounds
themselves, and callables timed side by side. ``jebm bench``, the ``benchmarks/`` scripts and the
GPU check all time through here; statistics come in pytest-benchmark's layout (seconds: min, max,
mean, median, stddev, rounds) so one report reads both.

This module imports nothing from the package (``benchmarks/ab.py`` loads it by its path)."""
from __future__ import annotations

import math
import statistics
import time

__all__ = ["rounds_for", "time_calls", "time_rounds", "interleaved_medians", "summarize", "SLOW_CALL_S"]

SLOW_CALL_S = 5.0  # a call slower than this gets two rounds (the reference at batch 1000)


def rounds_for(call_seconds: float, budget_s: float, min_rounds: int, max_rounds: int) -> int:
    """Rounds of a call taking ``call_seconds`` that fill ``budget_s`` (min..max; 2 for slow calls)."""
    rounds = int(min(max_rounds, max(min_rounds, math.ceil(budget_s / max(call_seconds, 1e-6)))))
    return 2 if call_seconds > SLOW_CALL_S else rounds


def time_calls(fn, *, rounds: int = 1, calls: int = 1, warmup: int = 0, sync=None):
    """Call ``fn`` ``warmup`` times untimed, then time ``rounds`` rounds of ``calls`` calls each:
    (the last result, seconds per call of each round). ``sync`` (e.g. ``torch.cuda.synchronize``)
    is called before and after each timed round, so the time covers the device's work too."""
    last = None
    for _ in range(warmup):
        last = fn()
    times = []
    for _ in range(rounds):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            last = fn()
        if sync is not None:
            sync()
        times.append((time.perf_counter() - t0) / calls)
    return last, times


def summarize(times: list[float]) -> dict:
    """Seconds per round -> pytest-benchmark's statistics (min, max, mean, median, stddev, rounds)."""
    return {"min": min(times), "max": max(times), "mean": statistics.fmean(times),
            "median": statistics.median(times), "stddev": statistics.stdev(times) if len(times) > 1 else 0.0,
            "rounds": len(times)}


def time_rounds(fn, *, budget_s: float, min_rounds: int = 2, max_rounds: int = 100, warmup: int = 1, sync=None):
    """Call ``fn`` ``warmup`` times untimed, then time it for as many rounds as fill ``budget_s``
    (the first timed round sizes the rest): (the last result, ``summarize``'s stats)."""
    last, times = time_calls(fn, warmup=warmup, sync=sync)
    more = rounds_for(times[0], budget_s, min_rounds, max_rounds) - 1
    if more > 0:
        last, rest = time_calls(fn, rounds=more, sync=sync)
        times += rest
    return last, summarize(times)


def interleaved_medians(fns: dict, *, rounds: int, calls: int = 1, warmup: int = 1) -> dict:
    """{name: median seconds per call} of the callables in ``fns``, timed round by round in turn
    (``calls`` calls of the first, then of the second, ..., ``rounds`` times) after ``warmup``
    untimed calls of each, so a change in the machine's load touches every one alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name] += time_calls(fn, calls=calls)[1]
    return {name: statistics.median(v) for name, v in times.items()}
