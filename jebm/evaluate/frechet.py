"""Frechet distances between generated images and the training set (FID and its offline twin).

The papers' protocol: draw N images from the model (prior Langevin, then g(z_1)), map them and
the training images into a feature space, fit a Gaussian (mean mu, covariance Sigma) to each
set of features, and report the Frechet distance between the two Gaussians,

    d^2 = ||mu_g - mu_t||^2 + Tr(Sigma_g + Sigma_t - 2 (Sigma_g Sigma_t)^(1/2)).

Two feature spaces share that code:
- ``fid``: Inception-v3's pool3 features (``jebm.evaluate.inception``) from a weights file the user gives;
  nothing is downloaded. With pytorch-fid's weights the numbers follow the published protocol.
- ``classifier_fd``: the features of a small classifier trained on the run's own data set and
  saved with the run (``jebm.evaluate.classifier``); works offline on every labelled data set, digits
  included. Its values are comparable between runs on the same data set and classifier only.

Images go through the features as they would be saved: clamped to [-1, 1] and rounded to the 256
levels of an 8-bit PNG, so the samples and the training images are on the same grid.

Training-set statistics are cached, since they cost N_train forward passes and never change: FID
statistics in a cache folder shared by all runs (``$JEBM_CACHE_DIR``, default ``~/.cache/jebm``,
subfolder ``fid``), keyed by data set name, a hash of the training images, the weights file's
SHA-256 and N_train; classifier statistics in the run folder beside the classifier.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import jebm_kernels as jk

from ..atomic import atomic_write
from ..data import load_dataset
from ..model import SamplingSettings
from .classifier import DEFAULT_STEPS, ensure_classifier
from .inception import file_sha256, load_inception

__all__ = ["frechet_distance", "frechet_distance_to_features", "feature_statistics", "quantize", "generate_images",
           "extract_features", "cached_statistics", "images_digest", "fid", "classifier_fd", "image_quality",
           "default_cache_dir", "DEFAULT_N"]

DEFAULT_N = 10_000   # samples per evaluation; the papers report 50,000 (pass n=50_000 to match them)
_SEED_XOR = 0xF1D_5EED


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, rows = samples) of ``features`` [N, D], in float64."""
    f = features.detach().cpu().double().numpy() if torch.is_tensor(features) else np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature statistics need a matrix [N, D] with N >= 2; got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf: the images (or the feature network's weights) are broken")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    Tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    matrix S1^(1/2) S2 S1^(1/2), which has the same eigenvalues as S1 S2. Unlike ``scipy.linalg.
    sqrtm(S1 @ S2)`` (pytorch-fid's route) this stays real and needs no jitter when a covariance is
    singular, as it is whenever N <= D (2048 Inception features); negative eigenvalues from
    rounding are clipped to 0.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.ndim != 1 or mu2.shape != mu1.shape or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance needs means [D] and covariances [D, D] of one D; got {mu1.shape}, "
                         f"{s1.shape}, {mu2.shape}, {s2.shape}")
    r = _sqrt_psd(s1)
    m = r @ s2 @ r
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_to_features(features, mu, sigma) -> float:
    """``frechet_distance`` between the Gaussian fitted to ``features`` [N, D] and N(mu, sigma).

    The same number, computed faster when N - 1 < D (a few thousand samples against 2048 Inception
    features, or a quick check): the sample covariance is A^T A with A the centred features over
    sqrt(N - 1), and the nonzero eigenvalues of A^T A sigma are those of the N x N matrix
    A sigma A^T, so no D x D decomposition is needed.
    """
    mu_f, s_f = feature_statistics(features)
    f = features.detach().cpu().double().numpy() if torch.is_tensor(features) else np.asarray(features, np.float64)
    n, d = f.shape
    if n - 1 >= d:
        return frechet_distance(mu_f, s_f, mu, sigma)
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.shape != (d,) or sigma.shape != (d, d):
        raise ValueError(f"features have {d} dimensions but the reference statistics {mu.shape}, {sigma.shape}")
    a = (f - mu_f) / np.sqrt(n - 1)
    m = a @ sigma @ a.T
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum())
    diff = mu_f - mu
    return float(diff @ diff + np.trace(s_f) + np.trace(sigma) - 2.0 * tr_covmean)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [-1, 1] and round to the 256 levels of an 8-bit image (as a saved PNG would be)."""
    return torch.round((images.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def images_digest(images: torch.Tensor) -> str:
    """A short hash of an image tensor's values (identifies a training set in cache keys)."""
    t = quantize(images.detach().cpu().float())
    h = hashlib.sha256(str(tuple(t.shape)).encode())
    h.update(((t + 1) * 127.5).round().to(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def generate_images(model, n: int, *, seed: int = 0, backend: str = "auto", batch_size: int = 500,
                    sampling: SamplingSettings | None = None):
    """Yield ``n`` model samples g(z_1), z ~ p(z) by prior Langevin, in batches (a fixed Philox
    stream), with the prior chain of ``sampling`` (a loaded run's; default: the model's own)."""
    _check_n(n)
    sampling = SamplingSettings.from_config(model.config) if sampling is None else sampling
    g = jk.PhiloxGenerator(seed ^ _SEED_XOR)
    model.eval()
    for i in range(0, n, batch_size):
        yield model.generate(min(batch_size, n - i), generator=g, backend=backend, **sampling.prior())


@torch.no_grad()
def extract_features(feature_fn, batches, *, batch_size: int = 50, device="cpu") -> np.ndarray:
    """``feature_fn`` applied to quantised images, ``batch_size`` at a time; [N, D] float64."""
    if torch.is_tensor(batches):
        batches = [batches]
    out = []
    for b in batches:
        b = quantize(b.float())
        for i in range(0, b.shape[0], batch_size):
            out.append(feature_fn(b[i:i + batch_size].to(device)).double().cpu())
    return torch.cat(out).numpy()


def default_cache_dir() -> Path:
    return Path(os.environ.get("JEBM_CACHE_DIR") or Path.home() / ".cache" / "jebm")


def cached_statistics(path: Path, key: dict, compute) -> tuple[np.ndarray, np.ndarray, bool]:
    """(mu, sigma, was_cached): read from ``path`` when it holds statistics for ``key``, else
    ``compute()`` -> features, and write them there atomically."""
    path = Path(path)
    want = json.dumps(key, sort_keys=True)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == want:
                    return z["mu"], z["sigma"], True
        except (OSError, ValueError, KeyError):
            pass  # unreadable or another key: recompute and overwrite
    mu, sigma = feature_statistics(compute())
    # atomic: another eval may read it meanwhile
    atomic_write(path, lambda f: np.savez(f, mu=mu, sigma=sigma, key=np.array(want)))
    return mu, sigma, False


def _check_n(n, what="n"):
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise ValueError(f"{what} must be an int >= 2 (a covariance needs two samples); got {n!r}")
    return n


def _training_subset(train_images: torch.Tensor, n_train):
    if n_train is None:
        return train_images
    return train_images[:_check_n(n_train, "n_train")]


def fid(model, train_images: torch.Tensor, weights, *, n: int = DEFAULT_N, n_train: int | None = None,
        dataset: str = "data", cache_dir=None, seed: int = 0, backend: str = "auto", batch_size: int = 50,
        device="cpu", sampling: SamplingSettings | None = None) -> dict:
    """FID of ``n`` samples of ``model`` against ``train_images`` (all of them, or the first
    ``n_train``), with the Inception-v3 weights file ``weights``. Returns a dict for eval.json."""
    _check_n(n)
    t0 = time.perf_counter()
    net = load_inception(weights, device=device)
    wsha = file_sha256(weights)
    train = _training_subset(train_images, n_train)
    digest = images_digest(train)
    key = {"kind": "inception-pool3", "dataset": dataset, "images": digest, "n_train": int(train.shape[0]),
           "weights_sha256": wsha, "fid_variant": net.fid}
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "fid"
    path = cache / f"{dataset}-{digest[:12]}-{wsha[:12]}-n{train.shape[0]}.npz"
    mu_t, s_t, was_cached = cached_statistics(
        path, key, lambda: extract_features(net, train, batch_size=batch_size, device=device))
    feats = extract_features(net, generate_images(model, n, seed=seed, backend=backend, sampling=sampling),
                             batch_size=batch_size, device=device)
    return {"fid": frechet_distance_to_features(feats, mu_t, s_t), "n_samples": n, "n_train": int(train.shape[0]),
            "weights": str(weights), "weights_sha256": wsha,
            "inception": "pytorch-fid FID variant" if net.fid else "torchvision ImageNet variant",
            "train_statistics": str(path), "train_statistics_cached": was_cached, "seed": seed,
            "seconds": time.perf_counter() - t0}


def classifier_fd(model, train_images: torch.Tensor, classifier, *, n: int = DEFAULT_N, n_train: int | None = None,
                  stats_path=None, classifier_sha: str = "", seed: int = 0, backend: str = "auto",
                  batch_size: int = 500, sampling: SamplingSettings | None = None) -> dict:
    """Frechet distance in the feature space of ``classifier`` (a ``jebm.evaluate.classifier.SmallClassifier``)
    between ``n`` model samples and the training images; statistics cached at ``stats_path``."""
    _check_n(n)
    t0 = time.perf_counter()
    classifier.eval()
    train = _training_subset(train_images, n_train)
    digest = images_digest(train)
    key = {"kind": "classifier-features", "images": digest, "n_train": int(train.shape[0]),
           "classifier_sha256": classifier_sha}
    fn = classifier.features
    device = next(classifier.parameters()).device
    if stats_path is None:
        mu_t, s_t = feature_statistics(extract_features(fn, train, batch_size=batch_size, device=device))
        was_cached = False
    else:
        mu_t, s_t, was_cached = cached_statistics(
            Path(stats_path), key, lambda: extract_features(fn, train, batch_size=batch_size, device=device))
    feats = extract_features(fn, generate_images(model, n, seed=seed, backend=backend, sampling=sampling),
                             batch_size=batch_size, device=device)
    return {"fd": frechet_distance_to_features(feats, mu_t, s_t), "n_samples": n, "n_train": int(train.shape[0]),
            "feature_dim": int(mu_t.shape[0]), "train_statistics": None if stats_path is None else str(stats_path),
            "train_statistics_cached": was_cached, "seed": seed, "seconds": time.perf_counter() - t0}


def image_quality(run, *, fid_weights=None, classifier: bool = False, n: int = DEFAULT_N, n_train: int | None = None,
                  cache_dir=None, classifier_steps: int | None = None, seed: int = 0, backend: str = "auto",
                  data_root=None) -> dict:
    """What ``jebm eval --fid-weights PATH / --classifier-fd`` adds to eval.json: ``{"fid": ...}``
    and/or ``{"classifier_fd": ...}`` for a loaded ``jebm.train.run.Run`` (sampled with its
    ``Run.sampling``). The classifier is trained on first use and saved in the run folder with its
    statistics."""
    _check_n(n)
    if n_train is not None:
        _check_n(n_train, "n_train")
    cfg = run.config
    root = data_root if data_root is not None else cfg["data_root"]
    # The images the model was trained on: the same split and class filter as training.
    train = load_dataset(cfg["dataset"], root, split="train", exclude_class=cfg["exclude_class"])
    run_dir = run.checkpoint.parent
    device = next(run.model.parameters()).device
    out = {}
    if fid_weights is not None:
        name = cfg["dataset"] if cfg["exclude_class"] is None else f"{cfg['dataset']}-without{cfg['exclude_class']}"
        out["fid"] = fid(run.model, train.images, fid_weights, n=n, n_train=n_train, dataset=name,
                         cache_dir=cache_dir, seed=seed, backend=backend, device=device, sampling=run.sampling)
    if classifier:
        clf, info = ensure_classifier(run_dir, cfg, data_root=root, seed=seed,
                                      steps=classifier_steps if classifier_steps is not None else DEFAULT_STEPS)
        clf = clf.to(device)
        stats = run_dir / "classifier_stats.npz"
        res = classifier_fd(run.model, train.images, clf, n=n, n_train=n_train, stats_path=stats,
                            classifier_sha=info["sha256"], seed=seed, backend=backend, sampling=run.sampling)
        # A scale to read it against: the held-out test images scored the same way (what the data
        # itself gets; with fewer images than n the estimate is biased upwards).
        test = load_dataset(cfg["dataset"], root, split="test", exclude_class=cfg["exclude_class"])
        with np.load(stats) as z:
            res["test_split_fd"] = frechet_distance_to_features(
                extract_features(clf.features, test.images, device=device), z["mu"], z["sigma"])
        res["n_test_split"] = len(test)
        out["classifier_fd"] = {**res, "classifier": info}
    return out
