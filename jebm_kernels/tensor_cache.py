"""Whether a tensor's values changed since they were last seen: the one test every cache of
derived data (packed weights, weight checks, traced readings) relies on.

A version counter is not enough: a write through ``.data`` (``p.data.clamp_(-c, c)``,
``p.data -= lr * p.grad``) changes the values and bumps nothing, and ``p.data = other`` can keep
the address. So the ledger keeps a copy of each tensor's values and compares them (``torch.equal``,
a read of the weights, far cheaper than any kernel that uses them): a tensor keeps its *epoch*
while it is the same object with the same values, and gets a new one otherwise. Caches key their
entries on epochs, so a stale entry can never be found.
"""
from __future__ import annotations

from collections import OrderedDict
import itertools
import weakref

import torch

__all__ = ["ContentLedger", "LEDGER", "LRUCache"]


class ContentLedger:
    """Epochs of tensors by identity, held weakly (an entry goes with its tensor)."""

    def __init__(self):
        self._entries: dict[int, tuple] = {}   # id -> (weak ref, copy of the values, epoch)
        self._next = itertools.count(1)

    def epoch(self, t: torch.Tensor) -> int:
        """``t``'s epoch: unchanged while ``t`` is the same object holding the same values."""
        key = id(t)
        e = self._entries.get(key)
        values = t.detach()
        if e is not None and e[0]() is t and _same_values(e[1], values):
            return e[2]
        epoch = next(self._next)
        entries = self._entries

        def gone(ref, key=key):
            old = entries.get(key)
            if old is not None and old[0] is ref:
                del entries[key]

        entries[key] = (weakref.ref(t, gone), values.clone(), epoch)
        return epoch

    def epochs(self, tensors, memo: dict | None = None) -> tuple[int, ...]:
        """Epochs of ``tensors``; ``memo`` (one call's) compares each tensor once per call."""
        if memo is None:
            return tuple(self.epoch(t) for t in tensors)
        out = []
        for t in tensors:
            e = memo.get(id(t))
            if e is None or e[0] is not t:
                e = memo[id(t)] = (t, self.epoch(t))
            out.append(e[1])
        return tuple(out)

    def clear(self) -> None:
        self._entries.clear()


def _same_values(old: torch.Tensor, new: torch.Tensor) -> bool:
    # equal shape, dtype, device and every element (NaN never equals itself: such a tensor is
    # looked at again each call, which costs nothing the kernels would use)
    return (old.shape == new.shape and old.dtype == new.dtype and old.device == new.device
            and old.stride() == new.stride() and bool(torch.equal(old, new)))


LEDGER = ContentLedger()


class LRUCache:
    """A bounded map, least recently used out first; an entry put with ``tensors`` also goes when
    one of them does (a cache of packed weights does not outlive the weights)."""

    def __init__(self, size: int):
        self.size = size
        self._d = OrderedDict()
        self._refs: dict = {}

    def get(self, key):
        value = self._d.get(key)
        if value is not None:
            self._d.move_to_end(key)
        return value

    def put(self, key, value, tensors=()) -> None:
        d, refs = self._d, self._refs

        def gone(_ref, key=key):
            d.pop(key, None)
            refs.pop(key, None)

        d[key] = value
        d.move_to_end(key)
        self._refs[key] = [weakref.ref(t, gone) for t in tensors]
        while len(d) > self.size:
            old, _ = d.popitem(last=False)
            self._refs.pop(old, None)

    def pop(self, key) -> None:
        self._d.pop(key, None)
        self._refs.pop(key, None)

    def values(self):
        return list(self._d.values())

    def clear(self) -> None:
        self._d.clear()
        self._refs.clear()

    def __len__(self) -> int:
        return len(self._d)
