"""The trainer's chains on the GPU path (issue 14): built once per batch shape and settings,
captured in a CUDA graph on CUDA, replayed each iteration with fresh noise.

- ``device_philox_randn``: the Philox4x32-10 normals of ``jebm_kernels.philox_randn``, bit for bit,
  with the (seed, offset) read from an int64 device tensor ``[seed, offset]`` instead of host ints,
  so a captured graph draws fresh noise on every replay (no host value baked in).
- ``TorchGraphChain``: the reference backend's chain (autograd for dU/dz, the torch update
  ``z - (s^2/2) dU/dz + s tau xi``) with that device-side noise: the same math and the same
  stream as ``langevin(backend="reference")``, but capturable. It is what the GPU path runs for
  ``backend="reference"`` and the "reference captured as a CUDA graph" of ``benchmarks.gpu_check``.
  (``jebm_kernels.GraphSafeChain(kernel="reference")`` cannot serve a GPU: the reference update
  reads its noise position on the host. This class is ``GraphSafeChain`` with its update replaced.)
- ``make_chain``: the chain for a trainer backend: ``GraphSafeChain`` (the fused whole-chain op for
  a prior, autograd + the fused multi-layer update for a posterior) or ``TorchGraphChain``.
- ``ChainCache``: the capture bookkeeping: one chain per key (kind, shapes, settings, backend,
  parameter storage), captured on its first use when capture is on (CUDA), least recently used
  ones dropped; ``ChainEntry.run`` takes the chain's counters from the trainer's
  ``PhiloxGenerator`` exactly as ``langevin`` would, writes that position into the chain's device
  tensor (two ``fill_`` kernels, no host-to-device copy) and runs or replays the chain.

On the CPU all of this runs eagerly (capture off): that is how it is tested without a GPU.
"""
from __future__ import annotations

from collections import OrderedDict
import warnings

import torch

import jebm_kernels as jk
from jebm_kernels.philox import _box_muller, uint_to_uniform

__all__ = ["device_philox_randn", "TorchGraphChain", "make_chain", "ChainCache", "ChainEntry", "chain_kernel"]

_MASK32 = 0xFFFFFFFF
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_N_ROUNDS = 10


def device_philox_randn(philox: torch.Tensor, base: int, n: int) -> torch.Tensor:
    """n float32 normals for counters ``philox[1] + base`` onwards under key ``philox[0]``: element
    i equals ``jebm_kernels.philox_randn(seed, offset + base, n)[i]``, with seed and offset read
    on the tensor's device (``philox`` as ``jebm_kernels.philox_tensor`` builds it: the seed's
    64 bits stored signed). Integer arithmetic as in ``jebm_kernels.philox`` (uint32 words in
    int64, products wrapping mod 2^64)."""
    seed, offset = philox[0], philox[1] + base
    idx = torch.arange(n, dtype=torch.int64, device=philox.device)
    lo = idx + (offset & _MASK32)
    c0 = lo & _MASK32
    c1 = ((lo >> 32) + (offset >> 32)) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32  # arithmetic shift of a negative seed: masked
    for _ in range(_N_ROUNDS):
        p_b = c2 * _ROUND_B
        p_a = c0 * _ROUND_A
        c0, c2 = ((p_b >> 32) & _MASK32) ^ c1 ^ k0, ((p_a >> 32) & _MASK32) ^ c3 ^ k1
        c1, c3 = p_b & _MASK32, p_a & _MASK32
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return _box_muller(uint_to_uniform(c0), uint_to_uniform(c1))


class TorchGraphChain(jk.GraphSafeChain):
    """``langevin(backend="reference")``'s K-step chain (no MALA), capturable on a GPU: the noise
    of step k is ``device_philox_randn(philox, k * stride, B * D)`` split per layer as
    ``jebm_kernels.problem`` lays it out, so the chain draws exactly the reference's stream."""

    def __init__(self, energy, z, *, n_steps: int, step_size, noise_scale: float = 1.0, prior_sigma=None,
                 generator=None):
        super().__init__(energy, z, n_steps=n_steps, step_size=step_size, noise_scale=noise_scale,
                         prior_sigma=prior_sigma, generator=generator, mala=False, kernel="reference")
        self._fused = False  # always the torch loop: autograd + the torch update below
        self.kernel = "reference (torch Philox on the device)"

    def _propose(self, problem, x, g, k):
        B, dims = problem.batch, problem.dims
        flat = device_philox_randn(self.philox, k * problem.stride, B * sum(dims)).to(problem.dtype)
        noise = [c.reshape(B, d) for c, d in zip(flat.split([B * d for d in dims]), dims)]
        return [xl - hl * gl + cl * nl for xl, gl, nl, hl, cl in zip(x, g, noise, problem.h, problem.c)], None, None


def chain_kernel(backend: str, device: torch.device) -> str:
    """What runs a trainer's chain for ``backend`` on ``device``: a ``GraphSafeChain`` kernel name
    ("auto", "cuda", "triton", "cpu") or "torch" (``TorchGraphChain``)."""
    if backend == "reference":
        return "torch"
    if backend == "auto" and device.type == "cuda" and not {"cuda", "triton"} & set(jk.available_backends()):
        return "torch"  # no GPU kernel built: the torch chain (the update op's reference cannot read the GPU)
    return backend


def make_chain(energy, start: list[torch.Tensor], *, n_steps: int, step_size, noise_scale: float, backend: str,
               generator: tuple[int, int]):
    """A chain of ``energy`` for starts shaped like ``start``, on the kernels ``backend`` names."""
    kernel = chain_kernel(backend, start[0].device)
    kw = dict(n_steps=n_steps, step_size=step_size, noise_scale=noise_scale, generator=generator)
    if kernel == "torch":
        return TorchGraphChain(energy, list(start), **kw)
    return jk.GraphSafeChain(energy, list(start), kernel=kernel, **kw)


def _signed(seed: int) -> int:
    return seed - (1 << 64) if seed >= 1 << 63 else seed


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
                chain._graph = None
                self.capture_error = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"jebm: could not capture the {type(chain).__name__} in a CUDA graph "
                              f"({self.capture_error}); it runs eagerly", RuntimeWarning, stacklevel=2)
        if generator.seed != self.seed:
            chain.philox[0].fill_(_signed(generator.seed))
            self.seed = generator.seed
        chain.philox[1].fill_(offset)
        out = chain()
        self.runs += 1
        # a replay overwrites the graph's static outputs: hand out copies
        return [t.clone() for t in (out if isinstance(out, (list, tuple)) else [out])]

    @property
    def captured(self) -> bool:
        return getattr(self.chain, "_graph", None) is not None


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
