"""``jebm bench``: a short benchmark of the prior chain from the installed package, no pytest needed.

The papers' prior shapes (``jebm.bench.configs``: LEBM, CVPR 2023, ICCV 2023) at small batches,
K Langevin steps (default 60, the papers' prior chain), on every backend that can run here
(``reference`` and the fused ``cpu``; ``triton`` / ``cuda`` with a GPU), each timed for about
``budget_s`` seconds. The JSON it writes has pytest-benchmark's layout (``benchmarks`` with
``stats`` and ``extra_info``, ``"jebm"`` with the machine), so ``jebm report`` shows it in its
benchmark section like the full suite's (``benchmarks/`` in the repository, BENCHMARKS.md), whose
figures it does not replace: fewer rounds, no batch 1000, no FMA-peak measurement. Every record
says what its energy's products ran in (``precision``, and ``precision_note`` when a bf16 provider
ran otherwise); ``providers=["plain-bf16", "cpu-bf16", ...]`` times them with bf16 products.
"""
from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path

import torch

import jebm_kernels as jk

from ..atomic import atomic_write
from .configs import CONFIG_NAMES, PRIOR_CONFIGS, make_case
from .machine import cpu_seconds, load_average, machine, matmul_rate
from .providers import (
    PHILOX_PROVIDERS,
    PROVIDERS,
    flat_state,
    gpu_reason,
    make_runner,
    max_abs_diff,
    relative_diff,
    run_precision,
)
from .results import chain_rows, prior_table
from .timing import time_rounds

__all__ = ["run_bench", "DEFAULT_OUT", "DEFAULT_BATCHES", "DEFAULT_STEPS", "DEFAULT_BUDGET_S", "DEFAULT_CONFIGS",
           "default_providers"]

DEFAULT_OUT = Path(".benchmarks") / "jebm-bench.json"   # where `jebm report` looks (the current folder)
DEFAULT_BATCHES = (8, 100)
DEFAULT_STEPS = 60
DEFAULT_BUDGET_S = 0.25
# the command's configurations: svhn-conv's generator takes seconds per chain at batch 100
DEFAULT_CONFIGS = tuple(c for c in CONFIG_NAMES if c != "svhn-conv")


def default_providers() -> list[str]:
    """The sampler backends available here, the reference first, and the plain loop users write
    (``compiled`` is left out by default: compiling takes longer than the whole quick run);
    triton and cuda only with a GPU (the providers time them on CUDA tensors)."""
    avail = jk.available_backends()
    gpu = ("triton", "cuda") if gpu_reason() is None else ()
    return [p for p in ("reference", "plain", "cpu", *gpu) if p in avail or p == "plain"]


def run_bench(out=None, *, configs=PRIOR_CONFIGS, batches=DEFAULT_BATCHES, n_steps: int = DEFAULT_STEPS,
              providers=None, budget_s: float = DEFAULT_BUDGET_S, log=print) -> Path:
    """Time the whole K-step prior chain per (configuration, batch, provider); write the JSON to
    ``out`` (default ``.benchmarks/jebm-bench.json``) and return its path. ``log`` gets one line
    per measurement (None: silent)."""
    configs = list(configs)
    providers = default_providers() if providers is None else list(providers)
    bad = [c for c in configs if c not in CONFIG_NAMES] + [p for p in providers if p not in PROVIDERS]
    if bad:
        raise ValueError(f"unknown configuration(s) or provider(s) {bad}: configurations {CONFIG_NAMES}, "
                         f"providers {PROVIDERS}")
    batches = [int(b) for b in batches]
    if not batches or any(b < 1 for b in batches) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"batches must be ints >= 1 and n_steps an int >= 1, got {batches} and {n_steps!r}")
    if not budget_s > 0:
        raise ValueError(f"budget_s must be > 0, got {budget_s!r}")
    log = log or (lambda *_: None)
    t_start, cpu_start = time.time(), cpu_seconds()
    info = {"source": "jebm bench", "quick": False, "batches": batches, "n_steps": n_steps, "budget_s": budget_s,
            "configs": configs, "providers": providers, "skipped": [], "fma_samples": [],
            "fma_peak": [{"when": "start", "gflops": None,
                          "reason": "jebm bench does not measure it (the benchmarks/ suite does, with "
                                    "benchmarks/fma_peak.c)"}],
            "machine": machine()}
    mm = matmul_rate("start", 1024, repeats=3)
    info["matmul"], info["matmul_all"] = mm, [mm]
    records = []
    for config in configs:
        for batch in batches:
            reference_state = None
            case = make_case(config, batch, n_steps)
            for provider in providers:
                run, why = make_runner(provider, case)
                if run is None:
                    info["skipped"].append(dict(kind=case.kind, config=config, batch=batch, provider=provider,
                                                reason=why))
                    log(f"{config:5s} B={batch:<5d} {provider:10s} skipped: {why}")
                    continue
                # make_runner ran the backends once already (its check), and compiled the compiled provider
                warmup = 1 if provider == "torchebm" else 0
                result, stats = time_rounds(run, budget_s=budget_s, min_rounds=2, warmup=warmup)
                state = flat_state(result)
                precision, note = run_precision(provider, case)
                extra = dict(kind=case.kind, config=config, batch=batch, n_steps=n_steps, provider=provider,
                             precision=precision, precision_note=note,
                             dims=list(case.dims), space=case.space,
                             device="cuda" if provider in ("triton", "cuda") else "cpu",
                             flops_per_call=case.flops_per_call, chain_steps_per_call=case.chain_steps_per_call,
                             flops_per_chain_step=case.flops_per_chain_step, rounds=stats["rounds"],
                             torch_threads=torch.get_num_threads(), stat="min", ms_per_chain=stats["min"] * 1e3)
                if provider == "reference":
                    reference_state = state
                elif provider in PHILOX_PROVIDERS and reference_state is not None:
                    extra.update(max_abs_diff_vs_reference=max_abs_diff(state, reference_state),
                                 rel_diff_vs_reference=relative_diff(state, reference_state))
                records.append({"name": f"{case.kind}[{config}-B{batch}-{provider}]", "group":
                                f"{case.kind.replace('_', ' ')}: {config}, batch {batch}, K={n_steps}", "stats": stats,
                                "extra_info": extra})
                log(f"{config:5s} B={batch:<5d} {provider:10s} {precision:4s} {stats['min'] * 1e3:10.2f} ms per chain "
                    f"({stats['rounds']} rounds)" + (f"; {note}" if note else ""))
    info["suite_seconds"] = time.time() - t_start
    info["load_average_at_end"] = load_average()
    cpu_end = cpu_seconds()
    if cpu_start and cpu_end and info["suite_seconds"] > 0:
        other = (cpu_end["machine"] - cpu_start["machine"]) - (cpu_end["own"] - cpu_start["own"])
        info["other_work_cores"] = max(other, 0.0) / info["suite_seconds"]
    data = {"datetime": _dt.datetime.now(_dt.timezone.utc).isoformat(), "benchmarks": records, "jebm": info}
    path = atomic_write(Path(out) if out is not None else DEFAULT_OUT, json.dumps(data, indent=1))
    log("")
    for kind in ("prior_chain", "posterior_chain"):
        for line in prior_table(chain_rows(data, "min", kind), "min"):
            log(line)
    return path
