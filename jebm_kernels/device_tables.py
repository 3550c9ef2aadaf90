"""Small read-only tables on a device (layer sizes, step constants, structure), built once per
(contents, device).

A Triton or CUDA launch reads its per-layer constants from device memory. Building them per call
is a blocking host-to-device copy: a host sync inside the chain, and an operation CUDA graph
capture forbids. Cached here, a call with contents seen before makes no copy at all. Least
recently used tables are dropped past ``MAX_TABLES``; a captured graph must keep the tables it
reads alive (``GraphSafeChain`` holds ``live_tables()``).
"""
from __future__ import annotations

from collections import OrderedDict

import torch

__all__ = ["device_table", "live_tables", "MAX_TABLES"]

MAX_TABLES = 1024  # a few KB each; learned step sizes make a new table per training step
_TABLES: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()


def device_table(values: list, dtype: torch.dtype, device) -> torch.Tensor:
    """``values`` as a 1-D ``dtype`` tensor on ``device``, from the cache when it holds them."""
    key = (tuple(float(v) if dtype.is_floating_point else int(v) for v in values), dtype, str(device))
    t = _TABLES.get(key)
    if t is None:
        t = torch.tensor(list(key[0]), dtype=dtype).to(device)
        _TABLES[key] = t
        while len(_TABLES) > MAX_TABLES:
            _TABLES.popitem(last=False)
    else:
        _TABLES.move_to_end(key)
    return t


def live_tables() -> list[torch.Tensor]:
    """Every cached table (what a captured graph holds on to)."""
    return list(_TABLES.values())
