"""The global random number generators of a training run: captured into checkpoints, restored on
resume, and kept apart from the caller's.

jebm's own noise never comes from them (every chain, chain start and q sample draws from the
run's Philox stream), but a user's module (dropout, a custom energy calling torch.randn) may draw
from torch's, Python's or NumPy's global generator. ``isolated_global_rng`` runs the training loop
on generators of its own, seeded from (seed, rank) or restored from a checkpoint, and gives the
caller's back afterwards, so such a run still resumes exactly and never perturbs the caller.
States are stored as tensors, ints and lists, which ``torch.load(weights_only=True)`` reads.
"""
from __future__ import annotations

import random
from contextlib import contextmanager

import torch

__all__ = ["capture", "restore", "seed_all", "isolated_global_rng"]


def _numpy():
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy comes with torch's usual installs
        return None
    return numpy


def capture() -> dict:
    """Every global generator's state: torch CPU, each CUDA device, Python ``random``, NumPy."""
    version, words, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "python": [version, list(words), gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    np = _numpy()
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    return state


def restore(state: dict) -> None:
    """Set the global generators to ``capture()``'s ``state`` (keys it lacks are left alone)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        version, words, gauss = state["python"]
        random.setstate((version, tuple(words), gauss))
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():  # another machine: a fresh seed is all we can do
            torch.cuda.set_rng_state_all(states)
    np = _numpy()
    if "numpy" in state and np is not None:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def seed_all(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python and NumPy from one int."""
    torch.manual_seed(seed)
    random.seed(seed)
    np = _numpy()
    if np is not None:
        np.random.seed(seed % 2**32)


@contextmanager
def isolated_global_rng(state: dict | None, seed: int):
    """Run the body on global generators set to ``state`` (or seeded with ``seed`` when None);
    the caller's generators are put back afterwards."""
    saved = capture()
    try:
        if state is None:
            seed_all(seed)
        else:
            restore(state)
        yield
    finally:
        restore(saved)
