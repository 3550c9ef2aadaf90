"""How many rounds of a call fill a time budget, and timing without pytest-benchmark (``jebm
bench``), with the statistics in pytest-benchmark's layout (seconds: min, max, mean, median,
stddev, rounds) so one report reads both."""
from __future__ import annotations

import math
import statistics
import time

__all__ = ["rounds_for", "time_rounds", "SLOW_CALL_S"]

SLOW_CALL_S = 5.0  # a call slower than this gets two rounds (the reference at batch 1000)


def rounds_for(call_seconds: float, budget_s: float, min_rounds: int, max_rounds: int) -> int:
    """Rounds of a call taking ``call_seconds`` that fill ``budget_s`` (min..max; 2 for slow calls)."""
    rounds = int(min(max_rounds, max(min_rounds, math.ceil(budget_s / max(call_seconds, 1e-6)))))
    return 2 if call_seconds > SLOW_CALL_S else rounds


def time_rounds(fn, *, budget_s: float, min_rounds: int = 2, max_rounds: int = 100, warmup: int = 1):
    """Call ``fn`` ``warmup`` times untimed, then time it for as many rounds as fill ``budget_s``
    (the first timed round sizes the rest): (the last result, stats)."""
    last = None
    for _ in range(warmup):
        last = fn()
    times = []
    while True:
        t0 = time.perf_counter()
        last = fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= rounds_for(times[0], budget_s, min_rounds, max_rounds):
            break
    stats = {"min": min(times), "max": max(times), "mean": statistics.fmean(times),
             "median": statistics.median(times), "stddev": statistics.stdev(times) if len(times) > 1 else 0.0,
             "rounds": len(times)}
    return last, stats
