"""jebm_kernels: fused Langevin samplers for latent-space EBM priors.

Public API: ``langevin`` (the sampler), ``LangevinSampler`` (torchebm-style class),
``philox_randn`` / ``philox_rand`` / ``PhiloxGenerator`` (the shared noise stream), the energy
descriptions in ``spec`` and ``PriorEnergy`` / ``PosteriorEnergy``, ``available_backends`` and
``BACKENDS``; ``GraphSafeChain`` (a chain CUDA graphs can capture and replay with fresh noise) and
``ops`` (the fused kernels as ``torch.ops.jebm.*`` custom ops, ``FusedPriorChain`` for
torch.compile); ``diagnostics`` (ESS, split and nested R-hat of a trajectory). ARCHITECTURE.md
maps the modules behind them.
"""
from . import (
    diagnostics,
    ops,  # registers torch.ops.jebm.prior_chain / multi_layer_update
)
from .dispatch import PRIORITY as _PRIORITY
from .dispatch import available_backends
from .energies import PosteriorEnergy, PriorEnergy
from .graph_chain import GraphSafeChain
from .ops import FusedPriorChain
from .philox import PhiloxGenerator, philox_rand, philox_randn, philox_tensor
from .sampler import explain_fusion, langevin
from .spec import GaussianSpec, MLPSpec, PriorSpec, mlp_spec_from_sequential
from .torchebm_compat import LangevinSampler

__all__ = [
    "langevin", "explain_fusion", "LangevinSampler", "available_backends", "BACKENDS",
    "philox_randn", "philox_rand", "PhiloxGenerator", "philox_tensor",
    "MLPSpec", "GaussianSpec", "PriorSpec", "mlp_spec_from_sequential", "PriorEnergy", "PosteriorEnergy",
    "GraphSafeChain", "FusedPriorChain", "ops", "diagnostics",
]
__version__ = "0.1.0"

# Every backend name ``langevin(backend=...)`` accepts besides "auto", fastest first.
BACKENDS: tuple[str, ...] = tuple(_PRIORITY)
