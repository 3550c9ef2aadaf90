"""Data-parallel training on torch.distributed: ``torchrun --nproc_per_node N -m jebm train ...``.

Each process (rank) holds a replica of the model and trains on its share of every global batch:
- process group: gloo for CPU runs, nccl for CUDA runs (one GPU per process, ``cuda:LOCAL_RANK``),
  read from the variables torchrun sets (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT);
- data: ``jebm.train.data_order.DistributedBatchSampler`` gives rank r the r-th contiguous slice of
  the global batch that a one-process run would draw at the same iteration (``batch_size`` stays
  the GLOBAL batch);
- gradients: the model and the trainer's modules are one ``DistributedDataParallel`` module; its
  forward runs the trainer's ``loss`` (chains and losses) and the trainer's single backward pass
  averages every gradient over the ranks, so each rank's Adam takes the same step;
- noise: rank r draws from its own Philox stream, key ``rank_seed(seed, r)`` from offset 0 (rank 0
  keeps ``seed``, so a one-process run is unchanged); streams with different keys are independent
  and each is reproducible from (seed, rank);
- metrics: each iteration's losses are averaged over the ranks (the global batch's means) before
  the NaN/inf check, so every rank stops, or rolls back, at the same iteration;
- files: only rank 0 writes checkpoints, metrics and images; the per-rank state a checkpoint needs
  (Philox offsets, RNG states, persistent chains) is gathered to it first.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .trainer import first_non_finite

__all__ = ["DistContext", "setup", "teardown", "rank_seed", "make_step",
           "mean_over_ranks", "gather_objects", "barrier", "check_replicas_agree"]

_MASK64 = (1 << 64) - 1  # SplitMix64 computes modulo 2**64


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None       # "gloo" / "nccl" when the run is distributed
    owns_group: bool = False         # this module created the process group (and destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> tuple[DistContext, torch.device]:
    """The run's DistContext and this process's device. A single process (no torchrun) gets the
    one-process context and ``device`` unchanged; under torchrun the process group is joined
    (created if the caller has not) with gloo on CPU and nccl on CUDA."""
    if dist.is_available() and dist.is_initialized():
        world, rank, owns = dist.get_world_size(), dist.get_rank(), False
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, owns = int(os.environ.get("RANK", "0")), True
    dev = torch.device(device)
    if world <= 1:
        return DistContext(), dev
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' under torchrun, but this machine has no CUDA device")
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices: start at most "
                             "one process per GPU (--nproc_per_node)")
        dev = torch.device("cuda", local)  # one GPU per process
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"distributed training runs on 'cpu' (gloo) or 'cuda' (nccl), not {dev.type!r}")
    if owns:
        dist.init_process_group(backend, rank=rank, world_size=world)
    else:
        backend = dist.get_backend()
    return DistContext(rank, world, local, backend, owns), dev


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The Philox key of ``rank``'s noise: ``seed`` itself for rank 0, a SplitMix64 mix of
    (seed, rank) for the others (distinct keys give independent Philox streams)."""
    if rank == 0:
        return seed
    z = (seed + rank * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class _Replica(nn.Module):
    """The modules a data-parallel step trains, as one module for DDP. Its forward runs the
    trainer's ``loss``: the trainers compute their losses through model methods (decode, F,
    log_p_beta), not forward(), and DDP synchronises the backward pass that follows a forward."""

    def __init__(self, modules: dict[str, nn.Module]):
        super().__init__()
        self.parts = nn.ModuleDict(modules)

    def forward(self, trainer, x, generator, backend):
        return trainer.loss(x, generator=generator, backend=backend)


def make_step(trainer, ctx: DistContext, device: torch.device):
    """``step(x, generator, backend) -> (values, first non-finite metric or None)``: the trainer's
    own step in one process; under torchrun a DDP step whose metrics are averaged over ranks."""
    if not ctx.enabled:
        return trainer.step
    replica = _Replica({"model": trainer.model, **trainer.modules()})
    ddp = nn.parallel.DistributedDataParallel(replica, device_ids=[device.index] if device.type == "cuda" else None)

    def step(x, *, generator, backend):
        values, total = ddp(trainer, x, generator, backend)
        values = mean_over_ranks(values, device)
        bad = first_non_finite(values)  # the same verdict on every rank: no rank waits alone
        if bad is None:
            trainer.apply(total)
        return values, bad

    step.ddp = ddp
    return step


def mean_over_ranks(values: dict, device) -> dict:
    """Each metric averaged over the ranks (one all_reduce); NaN on any rank stays NaN."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def gather_objects(obj, ctx: DistContext) -> list:
    """``obj`` from every rank, in rank order (tensors should be on the CPU)."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def parameters_digest(modules) -> str:
    h = hashlib.sha256()
    for m in modules:
        for p in m.parameters():
            h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def check_replicas_agree(modules, ctx: DistContext) -> None:
    """Raise when the ranks' parameters differ (a gradient that bypassed DDP's synchronisation)."""
    if not ctx.enabled:
        return
    digests = gather_objects(parameters_digest(modules), ctx)
    if len(set(digests)) != 1:
        raise RuntimeError("data-parallel replicas disagree: the ranks' parameters differ after the same "
                           "iterations; some gradient was not synchronised by DistributedDataParallel (a trainer "
                           "update outside its single backward pass)")
