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

from . import extension

__all__ = ["ContentLedger", "LEDGER", "LRUCache"]


class ContentLedger:
    """Epochs of tensors by identity, held weakly (an entry goes with its tensor)."""

    def __init__(self):
        self._entries: dict[int, tuple] = {}   # id -> (weak ref, copy of the values, epoch)
        self._next = itertools.count(1)

    def epochs(self, tensors, memo: dict | None = None) -> tuple[int, ...]:
        """The tensors' epochs: each unchanged while its tensor is the same object holding the same
        values. ``memo`` (one call's) compares each tensor once per call."""
        memo = {} if memo is None else memo
        todo = [t for t in tensors if id(t) not in memo or memo[id(t)][0] is not t]
        if todo:
            known = [self._entries.get(id(t)) for t in todo]
            if all(e is not None and e[0]() is t for e, t in zip(known, todo)) and _all_same(
                    [e[1] for e in known], [t.detach() for t in todo]):
                for t, e in zip(todo, known):
                    memo[id(t)] = (t, e[2])
            else:
                for t in todo:
                    memo[id(t)] = (t, self._epoch(t))
        return tuple(memo[id(t)][1] for t in tensors)

    def epoch(self, t: torch.Tensor) -> int:
        return self.epochs([t])[0]

    def _epoch(self, t: torch.Tensor) -> int:
        key = id(t)
        e = self._entries.get(key)
        values = t.detach()
        if e is not None and e[0]() is t and _all_same([e[1]], [values]):
            return e[2]
        epoch = next(self._next)
        entries = self._entries

        def gone(ref, key=key):
            old = entries.get(key)
            if old is not None and old[0] is ref:
                del entries[key]

        entries[key] = (weakref.ref(t, gone), values.clone(), epoch)
        return epoch

    def clear(self) -> None:
        self._entries.clear()


def _all_same(old: list, new: list) -> bool:
    """Whether each copy in ``old`` holds what the tensor in ``new`` holds: equal shape, dtype,
    device, strides and every byte (one C++ memcmp over a CPU weight set: a torch.equal per tensor
    costs a few microseconds of dispatch each)."""
    if any(a.shape != b.shape or a.dtype != b.dtype or a.device != b.device or a.stride() != b.stride()
           for a, b in zip(old, new)):
        return False
    ext = extension.cpu_ext
    if (ext is not None and hasattr(ext, "same_bytes")
            and all(b.device.type == "cpu" and b.is_contiguous() for b in new)):
        return ext.same_bytes([a.data_ptr() for a in old], [b.data_ptr() for b in new],
                              [b.numel() * b.element_size() for b in new])
    return all(bool(torch.equal(a, b)) for a, b in zip(old, new))


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
