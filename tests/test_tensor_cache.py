"""jebm_kernels/tensor_cache.py: a tensor keeps its epoch exactly while it is the same object
holding the same values, whatever wrote to it (in place, through ``.data``, a new storage), with
and without the C++ byte comparison."""
import gc

import pytest
import torch

from jebm_kernels import extension, tensor_cache
from jebm_kernels.tensor_cache import ContentLedger, LRUCache


@pytest.fixture(params=["memcmp", "torch.equal"])
def ledger(request, monkeypatch):
    if request.param == "memcmp" and extension.cpu_error() is not None:
        pytest.skip(f"the C++ extension is not built: {extension.cpu_error()}")
    if request.param == "torch.equal":
        monkeypatch.setattr(tensor_cache.extension, "cpu_ext", None)
    return ContentLedger()


WRITES = {
    "in place under no_grad": lambda w: w.add_(1.0),
    "through .data": lambda w: w.data.mul_(2.0),
    ".data -= ": lambda w: w.data.__isub__(0.5),
    "one element": lambda w: w.data.__setitem__((0, 0), 7.0),
    "a new storage": lambda w: setattr(w, "data", torch.randn_like(w)),
    "transposed in place of itself": lambda w: setattr(w, "data", w.data.t()),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_any_write_gives_a_new_epoch(ledger, write):
    w = torch.nn.Parameter(torch.randn(4, 4))
    other = torch.randn(3)
    first = ledger.epochs([w, other])
    assert ledger.epochs([w, other]) == first  # nothing written: the same epochs
    with torch.no_grad():
        WRITES[write](w)
    second = ledger.epochs([w, other])
    assert second[0] != first[0] and second[1] == first[1]
    assert ledger.epochs([w, other]) == second


def test_equal_values_in_another_tensor_are_another_epoch(ledger):
    a = torch.ones(5)
    b = torch.ones(5)
    assert ledger.epoch(a) != ledger.epoch(b)


def test_non_contiguous_tensors_are_compared_by_value(ledger):
    base = torch.randn(6, 5)
    view = base.t()
    e = ledger.epoch(view)
    assert ledger.epoch(view) == e
    base[2, 3] += 1.0
    assert ledger.epoch(view) != e


def test_the_memo_compares_each_tensor_once_per_call(ledger):
    w = torch.randn(3)
    memo = {}
    e = ledger.epochs([w], memo)
    w.add_(1.0)  # within one call the memo answers: the call reads its weights once
    assert ledger.epochs([w], memo) == e
    assert ledger.epochs([w]) != e


def test_entries_go_with_their_tensors():
    led = ContentLedger()
    w = torch.randn(8)
    led.epoch(w)
    assert len(led._entries) == 1
    del w
    gc.collect()
    assert len(led._entries) == 0


def test_lru_cache_evicts_the_oldest_and_drops_entries_of_dead_tensors():
    cache = LRUCache(size=2)
    t1, t2 = torch.zeros(1), torch.zeros(1)
    cache.put("a", 1, [t1])
    cache.put("b", 2, [t2])
    cache.get("a")
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    del t1
    gc.collect()
    assert cache.get("a") is None and len(cache) == 1
