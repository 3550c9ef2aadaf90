"""Training: ``train(...)`` (also ``jebm train``), ``load_run`` and everything a run holds.

- ``loop``: ``train``, the loop both schemes share (resume, divergence, rollback, snapshots);
- ``trainer``: what the schemes share (prior chains, optimisers, the chains' sampling settings,
  one iteration = one backward pass); ``mle`` and ``variational``: the two schemes;
- ``short_run``: learned posterior step sizes (Nijkamp et al., ECCV 2020);
- ``build``: a fresh run's data, model and trainer; ``presets``: run configs;
- ``run``: a trained run loaded back (``Run``, ``load_run``) with its sampling settings;
- ``run_state``, ``checkpoint``, ``rng_state``: what a checkpoint holds, how it is written and read;
- ``data_order``: which images each iteration and rank trains on; ``distributed``: torchrun;
- ``metrics_log``, ``tensorboard``: metrics.jsonl and its TensorBoard twin.

``jebm.train`` (the attribute of the top-level package) is the function; this package is reached
with ``from jebm.train import ...`` or ``from jebm.train.loop import ...``.
"""
from .build import build_model, make_trainer
from .data_order import batch_indices
from .loop import TrainingDiverged, TrainResult, train
from .run import Run, load_run

__all__ = ["train", "TrainResult", "TrainingDiverged", "load_run", "Run", "make_trainer", "build_model",
           "batch_indices"]
