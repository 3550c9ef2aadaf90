"""Scores of test images at posterior samples (docs/design.md, section 7): the posterior samples
themselves (Langevin or the inference model), the reconstruction error, the outlier score (the
negative log joint) and AUPRC.

- ``reconstruction_error``: mean squared error per pixel between test images and g(z_1) at a
  posterior sample (posterior Langevin for MLE runs, q(z|x) for variational runs).
- ``outlier_scores``: ||x - g(z_1)||^2 / (2 sigma_x^2) + U(z) at a posterior sample (higher = more
  anomalous), or averaged over several chains; ``outlier_score_parts``: that average and its parts
  (reconstruction, F, log p_beta), optionally after noise-free refinement steps from the chains'
  ends; ``weighted_score``: the parts recombined with another reconstruction weight and either
  U(z) or the EBM term -F(z) alone (the outlier protocol's score options); ``auprc``:
  ``sklearn.metrics.average_precision_score`` and ``auroc``: ``roc_auc_score``, with the outliers
  positive.

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
           "weighted_score", "SCORE_PRIORS", "auprc", "auroc"]

# The prior term of ``weighted_score``: "U" = U(z) = -F(z) - log p_beta(z) (with the model's own
# sigma_x, the exact negative log joint), "F" = -F(z) alone (the EBM term, without the base density).
SCORE_PRIORS = ("U", "F")

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
                        n_chains: int = 4, refine_steps: int = 0) -> dict:
    """The outlier score and its parts, each averaged over ``n_chains`` independent posterior chains
    per image (the images repeated ``n_chains`` times in one batch of chains), [N] each:
    ``score`` = ``recon`` + ``U`` (the negative log joint), with ``recon`` = ||x - g(z_1)||^2/(2
    sigma_x^2) and ``sq`` = ||x - g(z_1)||^2 itself, ``U`` = -F(z) - log p_beta(z) and its parts
    ``F`` and ``log_p_beta``. With one chain, ``score`` is ``outlier_scores``'s.

    ``refine_steps`` > 0: from each chain's end, that many noise-free steps of the posterior chain
    (gradient descent on U(z | x) with the chain's step size), towards the nearest mode."""
    if not isinstance(n_chains, int) or isinstance(n_chains, bool) or n_chains < 1:
        raise ValueError(f"n_chains must be an int >= 1, got {n_chains!r}")
    if not isinstance(refine_steps, int) or isinstance(refine_steps, bool) or refine_steps < 0:
        raise ValueError(f"refine_steps must be an int >= 0, got {refine_steps!r}")
    images = _check_images(model, images)
    per = max(1, batch_size // n_chains)  # images per batch: per * n_chains chains at once
    parts = {k: [] for k in ("score", "recon", "sq", "U", "F", "log_p_beta")}
    g = eval_generator(seed)
    post = (SamplingSettings.from_config(model.config) if sampling is None else sampling).posterior()
    for sl in _batches(images.shape[0], per):
        x = images[sl]
        xr = x.repeat(n_chains, 1, 1, 1)  # chain m of image i at row m * b + i
        z = posterior_latents(model, xr, infer=infer, method=method, generator=g, backend=backend, sampling=sampling)
        if refine_steps:
            # posterior_latents returns z-space layers, so the refinement runs in z-space
            z = model.sample_posterior(xr, init=z, n_steps=refine_steps, step_size=post["step_size"],
                                       noise_scale=0.0, space="z", generator=g, backend=backend)
        with torch.no_grad():
            sq = (xr - model.decode(z[0])).reshape(xr.shape[0], -1).pow(2).sum(-1)
            recon = model.recon_energy(xr, z[0])
            F = model.F(z)
            lp = model.log_p_beta(z)
        vals = {"recon": recon, "sq": sq, "F": F, "log_p_beta": lp, "U": -F - lp, "score": recon - F - lp}
        for k, v in vals.items():
            parts[k].append(v.reshape(n_chains, x.shape[0]).mean(0))
    return {k: torch.cat(v) for k, v in parts.items()}


def weighted_score(parts: dict, *, sigma_x: float, prior: str = "U") -> torch.Tensor:
    """||x - g(z_1)||^2 / (2 sigma_x^2) plus the prior term ``prior`` (``SCORE_PRIORS``: "U" for
    U(z), "F" for -F(z) alone), from the chain averages of ``outlier_score_parts`` (the average is
    linear, so this is the chain average of the recombined score). With the model's own sigma_x and
    "U" it is the negative log joint, ``parts["score"]``; any other choice is not -log p(x, z)."""
    if prior not in SCORE_PRIORS:
        raise ValueError(f"prior must be one of {SCORE_PRIORS}, got {prior!r}")
    if not isinstance(sigma_x, (int, float)) or isinstance(sigma_x, bool) or not math.isfinite(sigma_x) \
            or sigma_x <= 0:
        raise ValueError(f"sigma_x must be a finite number > 0, got {sigma_x!r}")
    return parts["sq"] / (2 * float(sigma_x) ** 2) + (parts["U"] if prior == "U" else -parts["F"])


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
