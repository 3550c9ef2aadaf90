"""The state of a training run that a checkpoint holds, and the way back into it.

``RunState`` ties a run's model, trainer, Philox stream and rollback scales together:
- ``to_checkpoint(iteration)``: the dict ``jebm.train.checkpoint.save_checkpoint`` writes. Under torchrun
  it is collective: every rank's Philox (seed, offset), global RNG states and persistent chains
  are gathered to rank 0 (``ranks``); the model and optimisers are the same on every rank.
- ``restore(ckpt)``: puts every part back, this rank's own parts from ``ckpt["ranks"]``.
- ``scale_down(lr_factor, step_factor)``: a rollback's smaller learning rates and Langevin step
  sizes, applied on top of the base values of the config (so they survive a resume): the
  optimisers' learning rates and the trainer's sampling settings (``Trainer.scale_step_sizes``);
  the model's config is never changed.
"""
from __future__ import annotations

import torch

import jebm_kernels as jk

from . import distributed as dp
from . import rng_state
from .checkpoint import FORMAT_VERSION

__all__ = ["RunState"]


def _to_cpu(v):
    if torch.is_tensor(v):
        return v.detach().cpu()
    if isinstance(v, dict):
        return {k: _to_cpu(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_to_cpu(x) for x in v)
    return v


class RunState:
    def __init__(self, cfg: dict, model, trainer, ctx: dp.DistContext, device: torch.device, image_shape, n_data: int):
        self.cfg, self.model, self.trainer, self.ctx, self.device = cfg, model, trainer, ctx, device
        self.image_shape, self.n_data = list(image_shape), int(n_data)
        self.gen = jk.PhiloxGenerator(dp.rank_seed(cfg["seed"], ctx.rank))
        self.rng = None  # this rank's global RNG states to continue from (None: seed them)
        self.rollback = {"count": 0, "lr_scale": 1.0, "step_scale": 1.0}
        self._base_lrs = {n: [g["lr"] for g in o.param_groups] for n, o in trainer.optimizers().items()}

    def modules(self) -> list:
        return [self.model, *self.trainer.modules().values()]

    # ---- saving ------------------------------------------------------------------------------
    def _own_state(self) -> dict:
        return {"philox": [self.gen.seed, self.gen.offset], "rng": rng_state.capture(),
                "buffers": {k: _to_cpu(b.state_dict()) for k, b in self.trainer.buffers().items()}}

    def to_checkpoint(self, iteration: int) -> dict | None:
        """The checkpoint of this moment on rank 0 (None on the other ranks). Collective."""
        ranks = dp.gather_objects(self._own_state(), self.ctx)
        if not self.ctx.is_main:
            return None
        cfg, tr = self.cfg, self.trainer
        ck = {
            "format_version": FORMAT_VERSION,
            "config": cfg,
            "iteration": iteration,
            "image_shape": self.image_shape,
            "model": self.model.state_dict(),
            "modules": {k: m.state_dict() for k, m in tr.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in tr.optimizers().items()},
            "philox": ranks[0]["philox"],
            "buffers": ranks[0]["buffers"],
            "rng": ranks[0]["rng"],
            "world_size": self.ctx.world_size,
            # The data order is a function of these: batch_indices(n, batch_size, seed, it), rank r
            # taking the r-th slice of each global batch (jebm.train.data_order.DistributedBatchSampler).
            "data_order": {"n": self.n_data, "batch_size": cfg["batch_size"], "seed": cfg["seed"],
                           "next_iteration": iteration, "world_size": self.ctx.world_size},
            "rollback": dict(self.rollback),
            "torch_version": str(torch.__version__),
        }
        if self.ctx.enabled:
            ck["ranks"] = ranks
        return ck

    # ---- loading -----------------------------------------------------------------------------
    def check_compatible(self, ckpt: dict, where) -> None:
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != self.ctx.world_size:
            raise ValueError(f"resume: the run in {where} was trained by {saved_world} process(es) and this one has "
                             f"{self.ctx.world_size}; each rank's noise stream and share of the batch depend on it, so "
                             f"resume with {saved_world} (torchrun --nproc_per_node {saved_world})")
        if tuple(ckpt["image_shape"]) != tuple(self.image_shape):
            raise ValueError(f"resume: the run was trained on images of shape {tuple(ckpt['image_shape'])}, "
                             f"the data set now gives {tuple(self.image_shape)}")
        n_saved = ckpt.get("data_order", {}).get("n")
        if n_saved is not None and n_saved != self.n_data:
            raise ValueError(f"resume: the run was trained on {n_saved} images, the data set now has {self.n_data}; "
                             "the data order would differ")

    def restore(self, ckpt: dict, *, keep_rollback: bool = False) -> int:
        """Load ``ckpt`` into the model, trainer and streams; returns its iteration. A rollback
        keeps its own (smaller) scales: ``keep_rollback``."""
        self.model.load_state_dict(ckpt["model"])
        for name, mod in self.trainer.modules().items():
            mod.load_state_dict(ckpt["modules"][name])
        for name, opt in self.trainer.optimizers().items():
            opt.load_state_dict(ckpt["optimizers"][name])
        mine = (ckpt["ranks"][self.ctx.rank] if "ranks" in ckpt else
                {"philox": ckpt["philox"], "buffers": ckpt.get("buffers", {}), "rng": ckpt.get("rng")})
        for name, buf in self.trainer.buffers().items():
            buf.load_state_dict({k: (v if not isinstance(v, list) else [t.to(self.device) for t in v])
                                 for k, v in mine["buffers"].get(name, {}).items()})
        self.gen = jk.PhiloxGenerator(*mine["philox"])
        self.rng = mine.get("rng")
        if not keep_rollback:
            self.rollback = {"count": 0, "lr_scale": 1.0, "step_scale": 1.0, **ckpt.get("rollback", {})}
        self._apply_scales()
        return int(ckpt["iteration"])

    # ---- rollback ----------------------------------------------------------------------------
    def scale_down(self, lr_factor: float, step_factor: float) -> None:
        self.rollback["count"] += 1
        self.rollback["lr_scale"] *= lr_factor
        self.rollback["step_scale"] *= step_factor
        self._apply_scales()

    def _apply_scales(self) -> None:
        if self.rollback["lr_scale"] == 1.0 and self.rollback["step_scale"] == 1.0:
            return  # the run as configured (an optimiser's own saved lr is already that)
        for name, opt in self.trainer.optimizers().items():
            for group, base in zip(opt.param_groups, self._base_lrs[name]):
                group["lr"] = base * self.rollback["lr_scale"]
        self.trainer.scale_step_sizes(self.rollback["step_scale"])
