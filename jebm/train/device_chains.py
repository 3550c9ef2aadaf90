"""The trainer's chains on the GPU path: built once per batch shape and settings,
captured in a CUDA graph on CUDA, replayed each iteration with fresh noise.

- ``make_chain``: the chain for a trainer backend: a ``jebm_kernels.GraphSafeChain`` (the fused
  whole-chain op for a prior, autograd + the fused multi-layer update for a posterior; for
  ``backend="reference"`` the torch loop, whose noise ``Problem.step_noise`` computes from the
  chain's device tensor, so it is capturable too and draws ``langevin(backend="reference")``'s
  stream bit for bit: the "reference captured as a CUDA graph" of ``benchmarks.gpu_check``).
- ``ChainCache``: the capture bookkeeping: one chain per key (kind, shapes, settings, backend,
  parameter storage), captured on its first use when capture is on (CUDA), least recently used
  ones dropped; ``ChainEntry.run`` takes the chain's counters from the trainer's
  ``PhiloxGenerator`` exactly as ``langevin`` would, sets that position in the chain's device
  tensor (``GraphSafeChain.set_position``: two fills, no host-to-device copy) and runs or replays
  the chain.

On the CPU all of this runs eagerly (capture off): that is how it is tested without a GPU.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import torch

import jebm_kernels as jk

__all__ = ["make_chain", "ChainCache", "ChainEntry", "chain_kernel"]


def chain_kernel(backend: str, device: torch.device) -> str:
    """The ``GraphSafeChain`` kernel that runs a trainer's chain for ``backend`` on ``device``."""
    if backend == "auto" and device.type == "cuda" and not {"cuda", "triton"} & set(jk.available_backends()):
        return "reference"  # no GPU kernel built: the torch loop, capturable all the same
    return backend


def make_chain(energy, start: list[torch.Tensor], *, n_steps: int, step_size, noise_scale: float, backend: str,
               generator: tuple[int, int], precision: str = "auto"):
    """A chain of ``energy`` for starts shaped like ``start``, on the kernels ``backend`` names, its
    energy in ``precision`` (``langevin``'s)."""
    kw = dict(n_steps=n_steps, step_size=step_size, noise_scale=noise_scale, generator=generator,
              precision=precision)
    return jk.GraphSafeChain(energy, list(start), kernel=chain_kernel(backend, start[0].device), **kw)


class ChainEntry:
    """One cached chain and its capture state."""

    def __init__(self, chain, capture: bool, seed: int):
        self.chain = chain
        self.capture_pending = bool(capture)
        self.seed = seed       # the seed in the chain's device tensor (host copy: no read back)
        self.runs = 0
        self.capture_error: str | None = None  # why the capture failed (the chain then runs eagerly)

    def run(self, start: list[torch.Tensor], generator: jk.PhiloxGenerator) -> list[torch.Tensor]:
        """K steps from ``start`` with the generator's next ``n_steps * stride`` counters (what
        ``langevin(generator=generator)`` takes), captured first if pending; fresh tensors."""
        chain = self.chain
        offset = generator.take(chain.chunk)
        chain.set_input(list(start))
        if self.capture_pending:  # the first use: warm-up and capture (host syncs; outside any checked loop)
            self.capture_pending = False
            try:
                chain.capture()
            except Exception as exc:  # noqa: BLE001  a chain that cannot be captured still runs, eagerly
                self.capture_error = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"jebm: could not capture the {type(chain).__name__} in a CUDA graph "
                              f"({self.capture_error}); it runs eagerly", RuntimeWarning, stacklevel=2)
        chain.set_position(generator.seed, offset)
        self.seed = generator.seed
        out = chain()
        self.runs += 1
        # a replay overwrites the graph's static outputs: hand out copies
        return [t.clone() for t in (out if isinstance(out, (list, tuple)) else [out])]

    @property
    def captured(self) -> bool:
        return bool(getattr(self.chain, "captured", False))


class ChainCache:
    """Chains by key, built (and captured, with ``capture``) on first use; at most ``max_entries``
    kept (a rollback's smaller step sizes make new keys; the oldest are dropped with their graphs)."""

    def __init__(self, capture: bool, max_entries: int = 8):
        self.capture = bool(capture)
        self.max_entries = int(max_entries)
        self.entries: "OrderedDict[tuple, ChainEntry]" = OrderedDict()
        self.builds = 0

    def get(self, key: tuple, build, generator: jk.PhiloxGenerator) -> ChainEntry:
        """The entry of ``key``; ``build(generator=(seed, offset))`` makes its chain the first time."""
        entry = self.entries.get(key)
        if entry is None:
            chain = build(generator=(generator.seed, generator.offset))
            entry = ChainEntry(chain, self.capture, generator.seed)
            self.entries[key] = entry
            self.builds += 1
            while len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)
        else:
            self.entries.move_to_end(key)
        return entry

    def clear(self) -> None:
        self.entries.clear()
