"""``jebm::prior_chain`` as a ``torch.library`` custom op (so ``torch.compile`` traces a model that
calls it and CUDA graphs capture it), its Python entry ``prior_chain``, and ``FusedPriorChain``.

Schema: ``(z, params, structure, settings, philox, step_sizes, noise_scale, prior_sigma, n_steps,
mala, with_stats, precision="fp32") -> (final z, stats)``: all K steps of a ``PriorSpec``'s chain. ``z``: one
[B, d_l] float32 tensor per layer; ``params``, ``structure`` and ``settings`` describe the prior
(``encoding.encode_prior``); ``stats`` is float32 [K, 3] (``problem.STATS_COLUMNS``), or [0, 3]
without ``with_stats``. ``philox`` as in ``update/op.py``: int64 [seed, offset], read by the
kernels on the state's device (graph-safe), on the host when it is a CPU tensor; never advanced
(the caller adds ``n_steps * stride``). ``precision``: "fp32" or "bf16" (``precision.py``; fixed
when a graph is built, so no "auto": the op never reads an autocast region).

The CPU and CUDA registrations are one function: ``dispatch.select(op="prior_chain")`` picks the
implementation (C++ on the CPU, else the torch reference; on a GPU csrc's CUDA kernel, else Triton).

``langevin`` does not go through the op: the dispatcher's per-call cost is a measurable share of a
short CPU chain. The op is the entry point for torch.compile and CUDA graphs (a captured graph
pays the host-side cost once, at capture).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import dispatch
from ..arguments import check_op_layers, make_op_problem
from ..energies import PriorEnergy
from ..spec import PriorSpec
from .encoding import decode_prior, encode_prior

__all__ = ["prior_chain", "run_prior_chain_op", "FusedPriorChain"]


def run_prior_chain_op(z, params, structure, settings, philox, step_sizes, noise_scale, prior_sigma, n_steps,
                       mala, with_stats, precision: str = "fp32", *, backend: str = "auto"):
    """The op's work, on the implementation ``backend`` names (``dispatch.select``'s rule)."""
    check_op_layers(z)
    bad = [t.dtype for t in list(z) + list(params) if t.dtype != torch.float32]
    if bad:
        raise ValueError(f"jebm::prior_chain works in float32 (z and every parameter), got {bad[0]}")
    spec = decode_prior(structure, settings, params)
    problem = make_op_problem(spec, z, philox, step_sizes, noise_scale, prior_sigma, n_steps, mala, with_stats,
                              precision=precision)
    problem.energy = PriorEnergy(spec)  # what the torch reference evaluates
    impl = dispatch.select(backend, problem, op="prior_chain")
    dispatch.settle_precision(impl.prior_chain, problem)
    if problem.device.type == "cuda":
        with torch.cuda.device(problem.device):
            final, stats = impl.prior_chain.run(problem)
    else:
        final, stats = impl.prior_chain.run(problem)
    final = [t.clone() if t._base is not None else t for t in final]  # custom ops return no views
    if stats is None or not with_stats:
        return final, torch.zeros(0, 3, device=problem.device)
    return final, stats.to(torch.float32)


@torch.library.custom_op("jebm::prior_chain", mutates_args=(), device_types=("cpu", "cuda"))
def _prior_chain_op(z: list[torch.Tensor], params: list[torch.Tensor], structure: list[int],
                    settings: list[float], philox: torch.Tensor, step_sizes: list[float], noise_scale: float,
                    prior_sigma: list[float], n_steps: int, mala: bool,
                    with_stats: bool, precision: str = "fp32") -> tuple[list[torch.Tensor], torch.Tensor]:
    return run_prior_chain_op(z, params, structure, settings, philox, step_sizes, noise_scale, prior_sigma,
                              n_steps, mala, with_stats, precision)


@_prior_chain_op.register_fake
def _prior_chain_fake(z, params, structure, settings, philox, step_sizes, noise_scale, prior_sigma, n_steps,
                      mala, with_stats, precision="fp32"):
    return [t.new_empty(t.shape) for t in z], z[0].new_empty((n_steps if with_stats else 0, 3))


def _per_layer(value, L: int) -> list[float]:
    if value is None:
        return []
    return [float(v) for v in (list(value) if isinstance(value, (list, tuple)) else [value] * L)]


def prior_chain(spec: PriorSpec, z: list[torch.Tensor], philox: torch.Tensor, *, n_steps: int, step_size,
                noise_scale: float = 1.0, prior_sigma=None, mala: bool = False, precision: str = "fp32"):
    """``torch.ops.jebm.prior_chain`` on a PriorSpec: returns (final z, stats [K, 3])."""
    L = len(spec.dims)
    structure, settings, params = encode_prior(spec)
    return torch.ops.jebm.prior_chain(list(z), params, structure, settings, philox, _per_layer(step_size, L),
                                      float(noise_scale), _per_layer(prior_sigma, L), n_steps, mala, True, precision)


class FusedPriorChain(nn.Module):
    """A prior's whole K-step chain as a module, for models compiled with
    ``torch.compile(fullgraph=True)``: ``forward(z, philox)`` -> final z (list of [B, d_l]).

    The prior's weights are held by reference (buffers sharing the spec's tensors: in-place
    optimizer updates are seen); its structure and the chain settings are fixed at construction.
    The caller owns ``philox`` (``philox_tensor``) and advances it by ``n_steps * stride`` between
    chains that must draw fresh noise (stride = B * D, + B with MALA).
    """

    def __init__(self, spec: PriorSpec, *, n_steps: int, step_size, noise_scale: float = 1.0,
                 prior_sigma=None, mala: bool = False, precision: str = "fp32"):
        super().__init__()
        L = len(spec.dims)
        self.structure, self.settings, params = encode_prior(spec)
        self.n_params = len(params)
        for i, p in enumerate(params):
            self.register_buffer(f"param_{i}", p, persistent=False)
        self.step_sizes = _per_layer(step_size, L)
        self.noise_scale = float(noise_scale)
        self.prior_sigma = _per_layer(prior_sigma, L)
        self.n_steps, self.mala, self.precision = int(n_steps), bool(mala), precision
        # checked once here (as langevin would), so a bad setting fails at construction
        make_op_problem(spec, [torch.empty(1, d) for d in spec.dims], torch.zeros(2, dtype=torch.int64),
                        self.step_sizes, self.noise_scale, self.prior_sigma, self.n_steps, self.mala, False,
                        precision=precision)

    def forward(self, z: list[torch.Tensor], philox: torch.Tensor) -> list[torch.Tensor]:
        params = [getattr(self, f"param_{i}") for i in range(self.n_params)]
        out, _ = torch.ops.jebm.prior_chain(list(z), params, self.structure, self.settings, philox,
                                            self.step_sizes, self.noise_scale, self.prior_sigma, self.n_steps,
                                            self.mala, False, self.precision)
        return out
