"""The whole prior chain (K Langevin steps, whole batch) per configuration, batch and provider.

One benchmark per (configuration, batch, provider); configurations in ``jebm.bench.configs``,
providers in ``jebm.bench.providers``. Each records in ``extra_info`` (from its best round, ``min``; the report can
recompute everything from the JSON's stats with another statistic):
- ``ms_per_chain``: milliseconds for the full K-step chain of the whole batch;
- ``chain_steps_per_s``: B * K / seconds;
- ``gflops``: PriorSpec.flops_per_chain_step() * B * K / seconds (energy forward + input gradient,
  counted as 3x the forward's multiply-adds x 2);
- ``frac_fma_peak``: gflops / the best FMA peak measured so far in this run;
- ``max_abs_diff_vs_reference`` / ``rel_diff_vs_reference``: for providers that draw the same
  Philox noise as the reference, how far their final state is from the reference's.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from jebm.bench.configs import BATCHES, CONFIG_NAMES, N_STEPS, make_case
from jebm.bench.providers import PHILOX_PROVIDERS, PROVIDERS, flat_state, make_runner, max_abs_diff, relative_diff

from . import harness

# The reference's final state per (config, batch): the reference benchmark runs first and leaves
# it here; providers on the same noise stream are compared with it.
_REFERENCE: dict[tuple[str, int], list[torch.Tensor]] = {}

CASES = list(itertools.product(CONFIG_NAMES, BATCHES, PROVIDERS))
# torch.compile imports torch.jit internals that warn about their own deprecation
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def _reference_state(config: str, batch: int) -> list[torch.Tensor]:
    key = (config, batch)
    if key not in _REFERENCE:
        _REFERENCE[key] = flat_state(make_case(config, batch).langevin("reference"))
    return _REFERENCE[key]


@pytest.mark.parametrize("config,batch,provider", CASES,
                         ids=[f"{c}-B{b}-{p}" for c, b, p in CASES])
def test_prior_chain(benchmark, peak, config, batch, provider):
    benchmark.group = f"prior chain: {config}, batch {batch}, K={N_STEPS}"
    case = make_case(config, batch)
    run, why = make_runner(provider, case)
    if run is None:
        harness.skip_with(why, kind="prior_chain", config=config, batch=batch, provider=provider)

    warmup = 2 if provider == "compile" else 1  # the compile runner has compiled already
    out, rounds = harness.run_timed(benchmark, run, warmup=warmup)
    state = flat_state(out)
    assert all(bool(torch.isfinite(t).all()) for t in state), f"{provider} returned NaN/inf on {config}"
    if provider == "reference":
        _REFERENCE[(config, batch)] = state

    info = benchmark.extra_info
    info.update(
        kind="prior_chain", config=config, batch=batch, n_steps=case.n_steps, provider=provider,
        dims=list(case.dims), space=case.flops_spec.space, device="cuda" if provider in ("triton", "cuda") else "cpu",
        flops_per_call=case.flops_per_call, chain_steps_per_call=case.chain_steps_per_call,
        flops_per_chain_step=case.flops_spec.flops_per_chain_step(), rounds=rounds,
        torch_threads=torch.get_num_threads(),
    )
    seconds = harness.stat(benchmark, "min")
    if seconds is not None:
        fma = harness.best_fma_peak()  # so far; the report uses the whole run's best
        gflops = case.flops_per_call / seconds / 1e9
        info.update(stat="min", ms_per_chain=seconds * 1e3, chain_steps_per_s=case.chain_steps_per_call / seconds,
                    gflops=gflops, fma_peak_gflops=fma, frac_fma_peak=(gflops / fma) if fma else None)
    if provider in PHILOX_PROVIDERS:
        ref = _reference_state(config, batch)
        info.update(max_abs_diff_vs_reference=max_abs_diff(state, ref), rel_diff_vs_reference=relative_diff(state, ref))
