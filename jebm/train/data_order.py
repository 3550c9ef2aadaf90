"""The data order of a run: which images iteration ``it`` trains on, and on which rank.

The global batch of iteration ``it`` is ``batch_indices(n, batch_size, seed, it)``: epoch e visits
a permutation seeded by (seed, e). Under torchrun rank r takes the r-th contiguous slice of it
(``DistributedBatchSampler``), so the ranks together see exactly what one process sees. The order
needs no state besides (seed, it), which is how a checkpoint holds it.
"""
from __future__ import annotations

import torch

__all__ = ["batch_indices", "DistributedBatchSampler"]


def batch_indices(n: int, batch_size: int, seed: int, it: int) -> torch.Tensor:
    """Indices of iteration ``it``'s batch (0-based): epoch e = it // batches-per-epoch visits a
    permutation seeded by (seed, e); incomplete last batches are dropped."""
    b = min(batch_size, n)
    per_epoch = n // b
    epoch, k = divmod(it, per_epoch)
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63 - 1))
    return torch.randperm(n, generator=g)[k * b:(k + 1) * b]


class DistributedBatchSampler(torch.utils.data.Sampler):
    """This rank's indices for each iteration: a torch.utils.data sampler (usable as a
    DataLoader's ``batch_sampler``) over the iteration-indexed data order of ``jebm.train``:
    rank r takes the r-th contiguous slice of ``batch_indices(n, batch_size, seed, it)``."""

    def __init__(self, n: int, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1,
                 start: int = 0, stop: int | None = None):
        global_batch = min(batch_size, n)
        if global_batch % world_size:
            raise ValueError(f"batch_size {global_batch} (the global batch) does not split evenly over "
                             f"{world_size} processes: choose a multiple of {world_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.local = global_batch // world_size
        self.start, self.stop = start, stop

    def batch(self, it: int) -> torch.Tensor:
        first = self.rank * self.local
        return batch_indices(self.n, self.batch_size, self.seed, it)[first:first + self.local]

    def __iter__(self):
        it = self.start
        while self.stop is None or it < self.stop:
            yield self.batch(it).tolist()
            it += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("an open-ended DistributedBatchSampler has no length")
        return max(0, self.stop - self.start)
