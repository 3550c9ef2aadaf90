"""Fixtures and hooks of the benchmark suite (helpers in ``harness.py``).

- ``peak`` (session): the machine's fp32 FMA peak, measured in this run by ``fma_peak.c``
  (compiled here into a temporary shared library, called through ctypes, on every core with
  OpenMP), and torch's own 2048x2048 fp32 matmul rate for context. The peak is measured again
  when the JSON is written; the JSON keeps both and the report divides by the better one.
- The JSON gets everything the report needs besides pytest-benchmark's own data (peak, matmul
  rate, CPU model, threads, versions, skips with their reasons, quick mode) under ``"jebm"``.
"""
from __future__ import annotations

import os
import sys

import pytest

from . import harness


@pytest.fixture(scope="session")
def peak() -> dict:
    return harness.measure_peak()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    info = harness.RUN_INFO
    if "machine" not in info:
        info["machine"] = harness.machine()
    if info["fma_peak"]:  # measured at the start: once more now; the report takes the best
        harness.measure_fma_peak("end")
    info["fma_peak_best_gflops"] = harness.best_fma_peak()
    info["argv"] = sys.argv
    info["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    output_json["jebm"] = info
