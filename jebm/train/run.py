"""A trained run loaded back (``jebm.load_run``): the model, the scheme's inference model, the run
config, and the sampling settings the run's chains use (``Run.sampling``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..model import JEBM, SamplingSettings, build_inference_model
from .checkpoint import load_checkpoint, newest_good_checkpoint
from .presets import upgrade_config

__all__ = ["Run", "load_run", "checkpoint_step_sizes"]


@dataclass
class Run:
    """A trained run loaded back: the model, the scheme's extra modules, config and checkpoint.

    ``sampling``: the settings every chain of this run uses, learned posterior step sizes included
    (a ``learn_step_size`` run); evaluation passes them to each sampling call. The model is built
    with the same values as its defaults, so ``run.model.sample_posterior(x)`` agrees."""
    model: JEBM
    config: dict
    iteration: int
    checkpoint: Path
    infer: torch.nn.Module | None
    sampling: SamplingSettings | None = None

    def __post_init__(self):
        if self.sampling is None:
            self.sampling = SamplingSettings.from_config(self.model.config)


def checkpoint_step_sizes(ckpt: dict) -> list[float] | None:
    """The learned posterior step sizes a checkpoint holds (None when the run learned none)."""
    mods = ckpt.get("modules", {})
    if "step_sizes" not in mods:
        return None
    return [float(v) for v in mods["step_sizes"]["log_step"].exp().tolist()]


def load_run(path, *, map_location="cpu") -> Run:
    """Load a run folder (its newest good checkpoint) or checkpoint file into a model (eval mode)
    plus its inference model."""
    if Path(path).is_dir():
        ckpt, ckpt_file, _ = newest_good_checkpoint(path, map_location=map_location)
    else:
        ckpt, ckpt_file = load_checkpoint(path, map_location=map_location), Path(path)
    cfg = upgrade_config(ckpt["config"])
    sampling = SamplingSettings.from_config(cfg)
    learned = checkpoint_step_sizes(ckpt)
    if learned is not None:
        # A learn_step_size run: its posterior chains use the learned per-layer step sizes (jebm.train.short_run).
        sampling = sampling.with_post_step_size(learned)
    model = JEBM.from_config({**cfg, "post_step_size": sampling.post_step_size}, tuple(ckpt["image_shape"]))
    model.load_state_dict(ckpt["model"])
    infer = None
    if "infer" in ckpt.get("modules", {}):
        infer = build_inference_model(cfg, model.image_shape)
        infer.load_state_dict(ckpt["modules"]["infer"])
    return Run(model.eval(), cfg, int(ckpt["iteration"]), ckpt_file, infer, sampling)
