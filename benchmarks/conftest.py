"""Fixtures and hooks of the benchmark suite (helpers in ``harness.py``).

- ``peak`` (session): the machine's fp32 FMA peak, measured in this run by ``fma_peak.c``
  (compiled here into a temporary shared library, called through ctypes, on every core with
  OpenMP), and torch's own 2048x2048 fp32 matmul rate for context. The peak is sampled again
  briefly before every timed benchmark and fully when the JSON is written; the report divides by
  the best measurement (other work on the machine can only lower it).
- The JSON gets everything the report needs besides pytest-benchmark's own data (peak, matmul
  rate, CPU model, threads, versions, skips with their reasons, quick mode) under ``"jebm"``.
"""
from __future__ import annotations

import pytest

from . import harness


@pytest.fixture(scope="session")
def peak() -> dict:
    return harness.measure_peak()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    harness.finish()  # the peak and matmul once more, the session's wall time
    output_json["jebm"] = harness.RUN_INFO
