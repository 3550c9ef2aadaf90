"""Scores of test images at posterior samples (docs/design.md, section 7): the posterior samples
themselves (Langevin or the inference model), the reconstruction error, the outlier score (the
negative log joint) and AUPRC.

- ``reconstruction_error``: mean squared error per pixel between test images and g(z_1) at a
  posterior sample (posterior Langevin for MLE runs, q(z|x) for variational runs).
- ``outlier_scores``: ||x - g(z_1)||^2 / (2 sigma_x^2) + U(z) at a posterior sample (higher = more
  anomalous), or averaged over several chains; ``outlier_score_parts``: that average and its parts
  (reconstruction, F, log p_beta); ``auprc``: ``sklearn.metrics.average_precision_score`` and
  ``auroc``: ``roc_auc_score``, with the outliers positive.

Every function that samples takes ``seed`` and draws from its own ``PhiloxGenerator``
(``eval_generator``), so results are reproducible and two models scored with the same seed see the
same chain noise; and ``sampling``, the chain's settings (a loaded run's ``Run.sampling``).
"""
from __future__ import annotations

import math

import torch

import jebm_kernels as jk

from ..model import JEBM, SamplingSettings, randn_layers

__all__ = ["eval_generator", "posterior_latents", "reconstruction_error", "outlier_scores", "outlier_score_parts",
           "auprc", "auroc"]

_EVAL_SEED_XOR = 0xE7A1_5EED


def eval_generator(seed: int) -> jk.PhiloxGenerator:
    """The Philox stream of an evaluation seed (kept apart from the training streams' keys)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return jk.PhiloxGenerator(seed ^ _EVAL_SEED_XOR)


def _check_images(model: JEBM, images) -> torch.Tensor:
    if not torch.is_tensor(images):
        raise TypeError(f"images must be a tensor [N, C, H, W], got {type(images).__name__}")
    if images.dim() != 4 or tuple(images.shape[1:]) != model.image_shape or images.shape[0] == 0:
        raise ValueError(f"images must have shape [N, {', '.join(map(str, model.image_shape))}] with N >= 1; "
                         f"the model was trained on that shape; got {tuple(images.shape)}")
    return images.to(next(model.parameters()).dtype)


def _batches(n: int, batch_size: int):
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    for i in range(0, n, batch_size):
        yield slice(i, min(n, i + batch_size))


def posterior_latents(model: JEBM, x: torch.Tensor, *, infer=None, method: str = "auto", generator=None,
                      backend: str = "auto", sampling: SamplingSettings | None = None) -> list[torch.Tensor]:
    """z-space posterior samples for a batch: ``method`` "langevin" (posterior Langevin from noise),
    "amortised" (a draw from the inference model q, needs ``infer``), or "auto" (q when given).

    ``sampling``: the chain's settings (a loaded run's ``Run.sampling``, learned step sizes
    included); by default the model's own."""
    if method not in ("auto", "langevin", "amortised"):
        raise ValueError(f"method must be 'auto', 'langevin' or 'amortised', got {method!r}")
    if method == "amortised" and infer is None:
        raise ValueError("method='amortised' needs the inference model of a variational run")
    if method == "langevin" or (method == "auto" and infer is None):
        sampling = SamplingSettings.from_config(model.config) if sampling is None else sampling
        return model.sample_posterior(x, generator=generator, backend=backend, **sampling.posterior())
    noise = randn_layers(x.shape[0], model.dims, generator, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        z, _ = infer(x, noise)
    return [t.detach() for t in z]


def _posterior_batches(model: JEBM, images, infer, method, seed, backend, batch_size, sampling):
    """(x, posterior latents of x) for consecutive batches of ``images``, one noise stream."""
    g = eval_generator(seed)
    for sl in _batches(images.shape[0], batch_size):
        x = images[sl]
        yield x, posterior_latents(model, x, infer=infer, method=method, generator=g, backend=backend,
                                   sampling=sampling)


def reconstruction_error(model: JEBM, images: torch.Tensor, *, infer=None, method: str = "auto", seed: int = 0,
                         backend: str = "auto", batch_size: int = 500,
                         sampling: SamplingSettings | None = None) -> dict:
    """Mean squared error per pixel (on the [-1, 1] scale) and the mean reconstruction energy
    ||x - g(z_1)||^2 / (2 sigma_x^2) per image, at posterior samples."""
    images = _check_images(model, images)
    sq = []
    for x, z in _posterior_batches(model, images, infer, method, seed, backend, batch_size, sampling):
        with torch.no_grad():
            sq.append((x - model.decode(z[0])).reshape(x.shape[0], -1).pow(2).sum(-1))
    sq = torch.cat(sq)
    n_pix = math.prod(model.image_shape)
    return {"mse_per_pixel": float(sq.mean() / n_pix), "recon_energy": float(sq.mean() / (2 * model.sigma_x ** 2)),
            "n_images": int(images.shape[0])}


def outlier_scores(model: JEBM, images: torch.Tensor, *, infer=None, method: str = "auto", seed: int = 0,
                   backend: str = "auto", batch_size: int = 500,
                   sampling: SamplingSettings | None = None, n_chains: int = 1) -> torch.Tensor:
    """The negative log joint ||x - g(z_1)||^2/(2 sigma_x^2) + U(z) at a posterior sample, [N]
    (higher = less likely under the model = more anomalous); averaged over ``n_chains``
    independent posterior chains per image when ``n_chains`` > 1 (``outlier_score_parts``)."""
    if n_chains != 1:
        return outlier_score_parts(model, images, infer=infer, method=method, seed=seed, backend=backend,
                                   batch_size=batch_size, sampling=sampling, n_chains=n_chains)["score"]
    images = _check_images(model, images)
    out = []
    for x, z in _posterior_batches(model, images, infer, method, seed, backend, batch_size, sampling):
        with torch.no_grad():
            out.append(model.neg_log_joint(x, z))
    return torch.cat(out)


def outlier_score_parts(model: JEBM, images: torch.Tensor, *, infer=None, method: str = "auto", seed: int = 0,
                        backend: str = "auto", batch_size: int = 500, sampling: SamplingSettings | None = None,
                        n_chains: int = 4) -> dict:
    """The outlier score and its parts, each averaged over ``n_chains`` independent posterior chains
    per image (the images repeated ``n_chains`` times in one batch of chains), [N] each:
    ``score`` = ``recon`` + ``U``, with ``recon`` = ||x - g(z_1)||^2/(2 sigma_x^2), ``U`` = -F(z) -
    log p_beta(z) and its parts ``F`` and ``log_p_beta``. With one chain, ``score`` is
    ``outlier_scores``'s."""
    if not isinstance(n_chains, int) or isinstance(n_chains, bool) or n_chains < 1:
        raise ValueError(f"n_chains must be an int >= 1, got {n_chains!r}")
    images = _check_images(model, images)
    per = max(1, batch_size // n_chains)  # images per batch: per * n_chains chains at once
    parts = {k: [] for k in ("score", "recon", "U", "F", "log_p_beta")}
    g = eval_generator(seed)
    for sl in _batches(images.shape[0], per):
        x = images[sl]
        xr = x.repeat(n_chains, 1, 1, 1)  # chain m of image i at row m * b + i
        z = posterior_latents(model, xr, infer=infer, method=method, generator=g, backend=backend, sampling=sampling)
        with torch.no_grad():
            recon = model.recon_energy(xr, z[0])
            F = model.F(z)
            lp = model.log_p_beta(z)
        vals = {"recon": recon, "F": F, "log_p_beta": lp, "U": -F - lp, "score": recon - F - lp}
        for k, v in vals.items():
            parts[k].append(v.reshape(n_chains, x.shape[0]).mean(0))
    return {k: torch.cat(v) for k, v in parts.items()}


def auprc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the precision-recall curve (average precision) with ``positive`` the outliers."""
    from sklearn.metrics import average_precision_score
    scores, positive = _check_scores(scores, positive)
    return float(average_precision_score(positive.numpy(), scores.numpy()))


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve with ``positive`` the outliers (0.5 = chance)."""
    from sklearn.metrics import roc_auc_score
    scores, positive = _check_scores(scores, positive)
    return float(roc_auc_score(positive.numpy(), scores.numpy()))


def _check_scores(scores, positive):
    scores = torch.as_tensor(scores).detach().double().cpu()
    positive = torch.as_tensor(positive).detach().bool().cpu()
    if scores.shape != positive.shape or scores.dim() != 1:
        raise ValueError(f"scores and labels must be 1-D of one length, got {tuple(scores.shape)} and "
                         f"{tuple(positive.shape)}")
    if not bool(positive.any()) or bool(positive.all()):
        raise ValueError("AUPRC needs both positives (held-out class) and negatives among the test images")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("some outlier scores are NaN or inf: the model or its posterior chains diverged")
    return scores, positive
