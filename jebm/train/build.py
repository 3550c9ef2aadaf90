"""A fresh run's parts from its config: the data, the model and the scheme's trainer."""
from __future__ import annotations

import torch

from ..data import load_dataset
from ..model import JEBM
from .mle import MLETrainer
from .variational import VariationalTrainer

__all__ = ["make_trainer", "build_model", "load_training_data"]


def make_trainer(model: JEBM, cfg: dict):
    """The trainer of ``cfg["scheme"]`` for ``model``."""
    if cfg["scheme"] == "mle":
        return MLETrainer(model, cfg)
    return VariationalTrainer(model, cfg)


def build_model(cfg: dict, image_shape, device) -> tuple[JEBM, object]:
    """A fresh run's model and trainer, initialised from ``cfg["seed"]`` without disturbing the
    caller's global torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model = JEBM.from_config(cfg, image_shape).to(device)
        trainer = make_trainer(model, cfg)
    return model, trainer


def load_training_data(cfg: dict):
    """The images a run trains on: the train split (its "fit" part with ``validation``), without
    ``exclude_class``."""
    return load_dataset(cfg["dataset"], cfg["data_root"], split="train", exclude_class=cfg["exclude_class"],
                        validation="fit" if cfg["validation"] else None)
