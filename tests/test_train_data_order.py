"""The data order (``jebm.train.data_order``): each epoch visits every image once, the order is a
function of (seed, iteration), and under torchrun each rank takes its slice of the global batch."""
import pytest
import torch

from jebm.train.data_order import DistributedBatchSampler, batch_indices

WORLD = 2


def test_batches_cover_each_epoch_once():
    seen = torch.cat([batch_indices(10, 3, seed=1, it=i) for i in range(3)])
    assert len(set(seen.tolist())) == 9  # one epoch = 3 batches of 3 (the last incomplete one dropped)
    assert torch.equal(batch_indices(10, 3, 1, 4), batch_indices(10, 3, 1, 4))
    assert not torch.equal(batch_indices(10, 3, 1, 0), batch_indices(10, 3, 2, 0))


def test_distributed_batch_sampler_splits_each_global_batch():
    n, B, seed = 50, 20, 3
    samplers = [DistributedBatchSampler(n, B, seed, rank=r, world_size=WORLD, start=0, stop=5) for r in range(WORLD)]
    for it, shares in enumerate(zip(*samplers)):
        assert sum(shares, []) == batch_indices(n, B, seed, it).tolist()
    assert len(samplers[0]) == 5
    with pytest.raises(ValueError, match="multiple of 3"):
        DistributedBatchSampler(n, 20, seed, rank=0, world_size=3)
