"""The whole prior chain (K Langevin steps, whole batch) per configuration, batch and provider.

One benchmark per (configuration, batch, provider); configurations in ``jebm.bench.configs``
(``PRIOR_CONFIGS``: LEBM, CVPR 2023, ICCV 2023), providers in ``jebm.bench.providers``
(``reference``, the ``plain`` loop and its ``compiled`` step users would otherwise run, torchebm,
and the fused backends). Each records in ``extra_info`` (from its best round, ``min``; the report
can recompute everything from the JSON's stats with another statistic):
- ``ms_per_chain``: milliseconds for the full K-step chain of the whole batch;
- ``chain_steps_per_s``: B * K / seconds;
- ``gflops``: PriorSpec.flops_per_chain_step() * B * K / seconds (energy forward + input gradient,
  counted as 3x the forward's multiply-adds x 2);
- ``frac_fma_peak``: gflops / the best FMA peak measured so far in this run;
- ``max_abs_diff_vs_reference`` / ``rel_diff_vs_reference``: for providers that draw the same
  Philox noise as the reference, how far their final state is from the reference's.
"""
from __future__ import annotations

import pytest

from jebm.bench.configs import PRIOR_CONFIGS, batches_for
from jebm.bench.providers import PROVIDERS

from . import harness

CASES = [(c, b, p) for c in PRIOR_CONFIGS for b in batches_for(c) for p in PROVIDERS]
# torch.compile imports torch.jit internals that warn about their own deprecation
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.mark.parametrize("config,batch,provider", CASES, ids=[f"{c}-B{b}-{p}" for c, b, p in CASES])
def test_prior_chain(benchmark, peak, config, batch, provider):
    harness.bench_chain(benchmark, config, batch, provider)
