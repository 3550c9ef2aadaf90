"""A long chain keeps no history unless asked: memory stays flat over 10,000 steps."""
import gc

import pytest
import torch

import jebm_kernels as jk


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.slow
def test_ten_thousand_steps_do_not_grow_memory():
    energy = lambda z: 0.5 * (z ** 2).sum(-1)
    z = torch.randn(64, 32)
    stream = jk.PhiloxGenerator(3)
    jk.langevin(energy, z, n_steps=200, step_size=0.1, generator=stream)  # warm allocator caches
    gc.collect()
    before = rss_bytes()
    for _ in range(10):  # 10 x 1,000 steps on one stream: the 10,000-step chain
        z = jk.langevin(energy, z, n_steps=1000, step_size=0.1, generator=stream)
    gc.collect()
    grown = rss_bytes() - before
    # One state is 8 KiB; a kept trajectory would be 80 MiB. 16 MiB allows allocator noise.
    assert grown < 16 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB"
    assert stream.offset == (200 + 10_000) * 64 * 32


def test_thinned_trajectory_keeps_only_every_kth_state():
    sampler = jk.LangevinSampler(lambda z: 0.5 * (z ** 2).sum(-1), step_size=0.005)
    traj = sampler.sample(x=torch.randn(4, 3), n_steps=1000, thin=100, return_trajectory=True)
    assert traj.shape == (4, 10, 3)
