"""Evaluate one trained run (``jebm eval RUN_DIR``, ``jebm sample``): ``eval.json`` with the
reconstruction error (and FID / classifier Frechet distance / held-out AUPRC when asked or
applicable), sample and reconstruction grids, and the hierarchical sampling grid: draw z from the
prior, then resample one layer at a time with the others fixed; one grid row per layer, top first.

Every chain of a loaded run runs with the run's own sampling settings (``Run.sampling``).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from ..data import load_dataset
from ..model import JEBM, SamplingSettings
from ..train.run import Run, load_run
from .frechet import DEFAULT_N, image_quality
from .images import save_grid, save_rows
from .json_io import write_json
from .scores import auprc, eval_generator, outlier_scores, posterior_latents, reconstruction_error

__all__ = ["as_run", "hierarchical_grid", "sample_images", "evaluate_run"]


def as_run(run) -> Run:
    """A ``Run``: itself, or loaded from a run folder or checkpoint path."""
    if isinstance(run, Run):
        return run
    if isinstance(run, (str, os.PathLike)):
        return load_run(run)
    raise TypeError(f"expected a run folder, a checkpoint path or a jebm.Run, got {type(run).__name__}")


def hierarchical_grid(model: JEBM, path, *, n: int = 10, seed: int = 0, backend: str = "auto",
                      sampling: SamplingSettings | None = None) -> Path:
    """The hierarchical sampling PNG: one row per layer (top first), ``n`` resamples per row, with
    the prior chain of ``sampling`` (a loaded run's ``Run.sampling``; default: the model's own)."""
    sampling = SamplingSettings.from_config(model.config) if sampling is None else sampling
    model.eval()
    rows = model.hierarchical_samples(n, generator=eval_generator(seed), backend=backend, **sampling.prior())
    return save_rows(rows, path)


def sample_images(run, out=None, *, n: int = 64, seed: int = 0, backend: str = "auto", nrow: int | None = None) -> Path:
    """Draw ``n`` images from a trained run's prior and write them as one PNG grid (default
    ``<run folder>/samples_eval.png``); returns the path."""
    r = as_run(run)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    out = Path(out) if out is not None else r.checkpoint.parent / "samples_eval.png"
    imgs = r.model.generate(n, generator=eval_generator(seed), backend=backend, **r.sampling.prior())
    return save_grid(imgs, out, nrow=nrow if nrow is not None else int(math.ceil(math.sqrt(n))))


def evaluate_run(run, out_dir=None, *, n_test: int | None = None, seed: int = 0, backend: str = "auto",
                 n_hier: int = 10, n_samples: int = 64, data_root=None, method: str = "auto", fid_weights=None,
                 classifier_fd: bool = False, fd_n: int | None = None, fd_n_train: int | None = None,
                 fid_cache=None, classifier_steps: int | None = None) -> dict:
    """Evaluate a trained run on its data set's test split; writes into ``out_dir`` (default: the
    run folder) ``eval.json``, ``hierarchical.png``, ``eval_samples.png`` and
    ``eval_reconstructions.png``. A run trained without one class (``exclude_class``) also gets
    that class's outlier AUPRC. ``fid_weights`` (an Inception-v3 weights file) adds FID,
    ``classifier_fd`` the Frechet distance in a small classifier's features, each from ``fd_n``
    samples against the training set (``jebm.evaluate.frechet``). Every chain runs with the run's
    sampling settings (``Run.sampling``: learned posterior step sizes included). Returns the
    JSON's content."""
    r = as_run(run)
    model, cfg = r.model, r.config
    out_dir = Path(out_dir) if out_dir is not None else r.checkpoint.parent
    root = data_root if data_root is not None else cfg["data_root"]
    test = load_dataset(cfg["dataset"], root, split="test")
    images, labels = test.images, test.labels
    if n_test is not None:
        if not isinstance(n_test, int) or n_test < 1:
            raise ValueError(f"n_test must be an int >= 1, got {n_test!r}")
        images = images[:n_test]
        labels = None if labels is None else labels[:n_test]
    t0 = time.perf_counter()
    result = {
        "run": str(r.checkpoint.parent), "checkpoint": str(r.checkpoint), "iteration": r.iteration,
        "dataset": cfg["dataset"], "scheme": cfg["scheme"], "preset": cfg["preset"], "split": "test",
        "n_test": int(images.shape[0]), "seed": seed, "backend": backend,
        "posterior": ("amortised" if (method == "amortised" or (method == "auto" and r.infer is not None))
                      else "langevin"),
        "reconstruction": reconstruction_error(model, images, infer=r.infer, method=method, seed=seed, backend=backend,
                                               sampling=r.sampling),
    }
    g = eval_generator(seed + 1)
    k = min(16, images.shape[0])
    z = posterior_latents(model, images[:k], infer=r.infer, method=method, generator=g, backend=backend,
                          sampling=r.sampling)
    with torch.no_grad():
        recon = model.decode(z[0])
    result["reconstructions_png"] = str(save_rows([images[:k], recon], out_dir / "eval_reconstructions.png"))
    result["samples_png"] = str(save_grid(model.generate(n_samples, generator=g, backend=backend, **r.sampling.prior()),
                                          out_dir / "eval_samples.png", nrow=int(math.ceil(math.sqrt(n_samples)))))
    result["hierarchical_png"] = str(hierarchical_grid(model, out_dir / "hierarchical.png", n=n_hier, seed=seed,
                                                       backend=backend, sampling=r.sampling))
    result["hierarchical_rows"] = [f"z_{l}" for l in range(model.n_layers, 0, -1)]
    c = cfg["exclude_class"]
    if c is not None and labels is not None:
        scores = outlier_scores(model, images, infer=r.infer, method=method, seed=seed, backend=backend,
                                sampling=r.sampling)
        positive = labels == c
        result["outlier"] = {"held_out_class": c, "auprc": auprc(scores, positive),
                             "positive_fraction": float(positive.double().mean())}
    if fid_weights is not None or classifier_fd:
        result.update(image_quality(r, fid_weights=fid_weights, classifier=classifier_fd,
                                    n=fd_n if fd_n is not None else DEFAULT_N, n_train=fd_n_train, cache_dir=fid_cache,
                                    classifier_steps=classifier_steps, seed=seed, backend=backend, data_root=root))
    result["seconds"] = time.perf_counter() - t0
    write_json(result, out_dir / "eval.json")
    return result
