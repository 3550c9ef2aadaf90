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

import itertools
import weakref
from collections import OrderedDict

import torch

from . import extension

__all__ = ["ContentLedger", "LEDGER", "LRUCache"]


class ContentLedger:
    """Epochs of tensors by identity, held weakly (an entry goes with its tensor)."""

    def __init__(self):
        # id -> (weak ref, copy of the values, epoch, layout, the copy's address, its bytes, whether
        #       the tensor can be compared with the copy byte for byte)
        self._entries: dict[int, tuple] = {}
        self._next = itertools.count(1)

    def epochs(self, tensors, memo: dict | None = None) -> tuple[int, ...]:
        """The tensors' epochs: each unchanged while its tensor is the same object holding the same
        values. ``memo`` (one call's) compares each tensor once per call."""
        memo = {} if memo is None else memo
        todo = [t for t in tensors if id(t) not in memo or memo[id(t)][0] is not t]
        if todo:
            known = self._unchanged(todo)
            for t, e in zip(todo, known):
                memo[id(t)] = (t, e[2] if e is not None else self._epoch(t))
        return tuple(memo[id(t)][1] for t in tensors)

    def epoch(self, t: torch.Tensor) -> int:
        return self.epochs([t])[0]

    def _unchanged(self, tensors) -> list:
        """Each tensor's entry when it holds its copy's values, else None. The common case, a CPU
        weight set that has not changed, is one C++ memcmp (a torch.equal per tensor costs a few
        microseconds of dispatch each) after a check of each tensor's identity and layout."""
        same = getattr(extension.cpu_ext, "same_bytes", None)
        entries = self._entries
        known = [entries.get(id(t)) for t in tensors]
        if same is not None and all(e is not None and e[6] and e[0]() is t and e[3] == _layout(t)
                                    for e, t in zip(known, tensors)):
            if same([e[4] for e in known], [t.data_ptr() for t in tensors], [e[5] for e in known]):
                return known
        # something is new or changed (or not on the CPU): one by one
        return [e if e is not None and e[0]() is t and e[3] == _layout(t) and bool(torch.equal(e[1], t.detach()))
                else None for e, t in zip(known, tensors)]

    def _epoch(self, t: torch.Tensor) -> int:
        epoch = next(self._next)
        key, entries = id(t), self._entries

        def gone(ref, key=key):
            old = entries.get(key)
            if old is not None and old[0] is ref:
                del entries[key]

        # a contiguous CPU tensor at the layout it had is compared with its copy byte for byte
        copy = t.detach().clone(memory_format=torch.contiguous_format)
        fast = t.device.type == "cpu" and t.is_contiguous()
        entries[key] = (weakref.ref(t, gone), copy, epoch, _layout(t), copy.data_ptr(),
                        copy.numel() * copy.element_size(), fast)
        return epoch

    def clear(self) -> None:
        self._entries.clear()


def _layout(t: torch.Tensor) -> tuple:
    return (t.shape, t.stride(), t.dtype, t.device)


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
