"""The posterior chain (K Langevin steps, whole batch) per configuration, batch and provider, as
benchmarks/test_prior_chain.py times the prior chain (same providers and figures).

Configurations (``jebm.bench.configs.POSTERIOR_CONFIGS``): ``posterior``, jebm's default model's
posterior with its MLP decoder (a ``PosteriorEnergy``: fused whole by the cpu backend); and three
energies written as users write them, Python closures ||x - g(z)||^2 / (2 sigma_x^2) + ||z||^2 / 2
over an MLP decoder (``closure-mlp``), a small conv decoder (``closure-conv``) and LEBM's SVHN
generator (``svhn-conv``: K = 20, batches 16 and 100, ``jebm.bench.configs.batches_for``); the
conv ones no kernel fuses: autograd gives their gradient and the backend's fused update does the
rest. The bf16 providers (``plain-bf16``, ``compiled-bf16``, ``cpu-bf16``) run beside the fp32 ones.
"""
from __future__ import annotations

import pytest

from jebm.bench.configs import POSTERIOR_CONFIGS, batches_for
from jebm.bench.providers import PROVIDERS

from . import harness

CASES = [(c, b, p) for c in POSTERIOR_CONFIGS for b in batches_for(c) for p in PROVIDERS]
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.mark.parametrize("config,batch,provider", CASES, ids=[f"{c}-B{b}-{p}" for c, b, p in CASES])
def test_posterior_chain(benchmark, peak, config, batch, provider):
    harness.bench_chain(benchmark, config, batch, provider)
