"""Philox4x32-10 normals, bit for bit the stream of Triton's ``tl.randn(seed, offset)``.

Every backend draws its Langevin noise from this one counter-based stream, so chains run on
different backends with the same (seed, offset) can be compared element by element.

The stream, as Triton 3.x defines it (``triton/language/random.py``; docs/design.md, section 4):
- key   = (seed & 0xffffffff, seed >> 32), a 64-bit seed;
- count = (offset & 0xffffffff, offset >> 32, 0, 0), a 64-bit counter, one per element;
- ten Philox rounds give four uint32 words; the first two become uniforms by
  ``u = (w as int32, negatives flipped by ~) * 4.6566127342e-10`` and one normal by Box-Muller:
  ``sqrt(-2 log max(u1, 1e-7)) * cos(2 pi u2)``.
The uint32 words are exact here; the normal agrees with Triton to float32 rounding of log/cos.

``torch_philox_randn`` / ``torch_philox_rand`` are the specification, in torch integer ops on any
device. On the host, when the C++ extension is built, ``philox_randn`` / ``philox_rand`` take the
Philox words' uniforms from it (``_C.philox_uniform_pairs``, ``_C.philox_rand``: the same uniforms
bit for bit) and apply the same torch Box-Muller, so the values are the specification's bit for
bit (tests/test_philox.py) at a fraction of the cost of the torch rounds.

The torch implementation keeps uint32 values in int64 tensors. A 32x32-bit product can exceed
2^63; torch's int64 multiply wraps modulo 2^64 (two's complement, vectorised or not), so the 64
bits of the product, and hence both 32-bit words, are still exact (the Triton tests check it),
and one multiply replaces the 32x16-bit partial products that would otherwise build the high word.
"""
from __future__ import annotations

import math

import torch

from . import extension

__all__ = ["philox_randint4x", "philox_randn", "philox_rand", "torch_philox_randn", "torch_philox_rand",
           "philox_randn_from", "philox_rand_from", "PhiloxGenerator", "uint_to_uniform", "philox_tensor",
           "read_philox", "check_philox", "signed_seed", "unsigned_seed"]

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
N_ROUNDS = 10
# Triton's scale: the largest value with MAX_INT32 * scale < 1.0 in float32.
_UNIFORM_SCALE = 4.6566127342e-10


def _check_seed_offset(seed: int, offset: int, n: int) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= _MASK64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if offset + n > _MASK64 + 1:
        raise ValueError(f"offset + n = {offset + n} runs past the 64-bit Philox counter")


def philox_randint4x(seed: int, offset: int, n: int, *, device=None) -> tuple[torch.Tensor, ...]:
    """The four Philox4x32-10 words for counters offset .. offset+n-1, as int64 tensors in [0, 2^32)."""
    _check_seed_offset(seed, offset, n)
    return _words(seed, offset, torch.arange(n, dtype=torch.int64, device=device))


def _words(seed, offset, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of counters offset + idx under ``seed``; seed and offset are Python ints or
    0-d int64 tensors (a seed's 64 bits stored signed: the masks below recover its two words)."""
    # offset + idx may exceed 2^63: split the 64-bit counter into two 32-bit words first.
    off_lo, off_hi = offset & _MASK32, offset >> 32
    lo = idx + off_lo  # < 2^33
    c0 = lo & _MASK32
    c1 = (lo >> 32) + off_hi
    c1 = c1 & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(N_ROUNDS):
        p_b = c2 * _ROUND_B  # wraps mod 2^64: see the module docstring
        p_a = c0 * _ROUND_A
        c0, c2 = ((p_b >> 32) & _MASK32) ^ c1 ^ k0, ((p_a >> 32) & _MASK32) ^ c3 ^ k1
        c1, c3 = p_b & _MASK32, p_a & _MASK32
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def philox_randn_from(philox: torch.Tensor, base: int, n: int) -> torch.Tensor:
    """``philox_randn(seed, offset + base, n)`` with (seed, offset) read from the int64 tensor
    ``philox = [seed, offset]`` (``philox_tensor``) on its own device: nothing is read back on the
    host, so a CUDA graph that captured the call draws fresh noise once the tensor is advanced.
    Bit for bit the host version's values."""
    w0, w1, _, _ = _words(philox[0], philox[1] + base, torch.arange(n, dtype=torch.int64, device=philox.device))
    return _box_muller(uint_to_uniform(w0), uint_to_uniform(w1))


def philox_rand_from(philox: torch.Tensor, base: int, n: int) -> torch.Tensor:
    """``philox_rand(seed, offset + base, n)`` read from ``philox`` as ``philox_randn_from`` does."""
    w0, _, _, _ = _words(philox[0], philox[1] + base, torch.arange(n, dtype=torch.int64, device=philox.device))
    return uint_to_uniform(w0)


def uint_to_uniform(w: torch.Tensor) -> torch.Tensor:
    """Triton's ``uint_to_uniform_float`` for uint32 words held in int64: float32 in [0, 1)."""
    x = torch.where(w >= 2**31, w - 2**32, w)  # bitcast to int32
    x = torch.where(x < 0, -x - 1, x)  # ~x
    return x.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32)


def _box_muller(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    u1 = torch.clamp_min(u1, 1.0e-7)
    th = torch.tensor(2 * math.pi, dtype=torch.float32) * u2
    r = torch.sqrt(-2.0 * torch.log(u1))
    return r * torch.cos(th)


def torch_philox_randn(seed: int, offset: int, n: int, *, device=None) -> torch.Tensor:
    """The specification of ``philox_randn``, in torch ops on ``device``."""
    w0, w1, _, _ = philox_randint4x(seed, offset, n, device=device)
    return _box_muller(uint_to_uniform(w0), uint_to_uniform(w1))


def torch_philox_rand(seed: int, offset: int, n: int, *, device=None) -> torch.Tensor:
    """The specification of ``philox_rand``, in torch ops on ``device``."""
    w0, _, _, _ = philox_randint4x(seed, offset, n, device=device)
    return uint_to_uniform(w0)


def _host_extension(device):
    """The C++ extension when it can draw these values (CPU, built), else None."""
    if extension.cpu_ext is None or (device is not None and torch.device(device).type != "cpu"):
        return None
    return extension.cpu_ext


def philox_randn(seed: int, offset: int, n: int, *, device=None) -> torch.Tensor:
    """n float32 normals; element i equals Triton's ``tl.randn(seed, offset + i)``."""
    ext = _host_extension(device)
    if ext is None:
        return torch_philox_randn(seed, offset, n, device=device)
    _check_seed_offset(seed, offset, n)
    u1, u2 = torch.empty(n), torch.empty(n)
    ext.philox_uniform_pairs(seed, offset, n, u1.data_ptr(), u2.data_ptr(), extension.threads())
    return _box_muller(u1, u2)


def philox_rand(seed: int, offset: int, n: int, *, device=None) -> torch.Tensor:
    """n float32 uniforms in [0, 1); element i equals Triton's ``tl.rand(seed, offset + i)``."""
    ext = _host_extension(device)
    if ext is None:
        return torch_philox_rand(seed, offset, n, device=device)
    _check_seed_offset(seed, offset, n)
    out = torch.empty(n)
    ext.philox_rand(seed, offset, n, out.data_ptr(), extension.threads())
    return out


class PhiloxGenerator:
    """A (seed, offset) noise stream: the seed is fixed, the offset advances as noise is drawn.

    Give one to ``langevin(generator=...)`` to continue a stream across calls (a trainer keeps one
    and saves its ``state()`` in checkpoints), or build one from the ``(seed, offset)`` that a
    call's info recorded to replay that call exactly.
    """

    def __init__(self, seed: int, offset: int = 0):
        _check_seed_offset(seed, offset, 0)
        self.seed = seed
        self.offset = offset

    @classmethod
    def from_torch(cls, generator: torch.Generator | None = None) -> "PhiloxGenerator":
        """A fresh 64-bit seed drawn from a torch.Generator (the default CPU one when None)."""
        words = torch.randint(0, 2**32, (2,), dtype=torch.int64, generator=generator, device="cpu")
        hi, lo = (int(w) for w in words.tolist())  # a CPU tensor: no device sync
        return cls((hi << 32) | lo, 0)

    def take(self, n: int) -> int:
        """Reserve n counters; returns the offset at which they start."""
        start = self.offset
        _check_seed_offset(self.seed, start, n)
        self.offset = start + n
        return start

    def state(self) -> tuple[int, int]:
        return (self.seed, self.offset)

    def __repr__(self) -> str:
        return f"PhiloxGenerator(seed={self.seed}, offset={self.offset})"


def philox_tensor(seed: int, offset: int = 0, device=None) -> torch.Tensor:
    """The int64 tensor [seed, offset] the custom ops and ``GraphSafeChain`` read: the 64-bit seed's
    bits as a signed int64 (kernels on a GPU read it there, so no host sync is needed)."""
    if not isinstance(seed, int) or not 0 <= seed <= _MASK64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    if not isinstance(offset, int) or not 0 <= offset < 2**63:
        raise ValueError(f"offset must be an int in [0, 2**63), got {offset!r}")
    return torch.tensor([signed_seed(seed), offset], dtype=torch.int64, device=device)


def signed_seed(seed: int) -> int:
    """A 64-bit seed's bits as a signed int64 (how a tensor or a kernel argument holds them)."""
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def unsigned_seed(seed: int) -> int:
    """The 64-bit seed whose bits a signed int64 holds."""
    return seed & _MASK64


def read_philox(philox: torch.Tensor) -> tuple[int, int]:
    """(seed, offset) of a CPU int64 [seed, offset] tensor."""
    seed, offset = philox.tolist()  # a CPU tensor: no device sync
    return unsigned_seed(seed), offset


def check_philox(philox, device) -> None:
    if not torch.is_tensor(philox) or philox.dtype != torch.int64 or tuple(philox.shape) != (2,):
        raise ValueError("philox must be an int64 tensor of shape (2,): [seed, offset] (see philox_tensor)")
    if philox.device.type != "cpu" and philox.device != device:
        raise ValueError(f"philox is on {philox.device} but the state is on {device}: put it on the "
                         "state's device (graph-safe) or on the CPU")
