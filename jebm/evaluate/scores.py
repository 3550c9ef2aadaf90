"""Evaluation the papers use (DESIGN.md "Evaluation"), as functions; ``jebm eval`` only parses.

- ``reconstruction_error``: mean squared error per pixel between test images and g(z_1) at a
  posterior sample (posterior Langevin for MLE runs, q(z|x) for variational runs).
- ``hierarchical_grid``: draw z from the prior, then resample one layer at a time with the others
  fixed; one grid row per layer, top layer first.
- ``outlier_experiment``: the held-out-class protocol. For each class c and seed: train without
  class c, score every test image by ||x - g(z_1)||^2 / (2 sigma_x^2) + U(z) at a posterior sample
  (the negative log joint; higher = more anomalous), AUPRC (``sklearn.metrics.
  average_precision_score``) with class c positive; beside a Gaussian-prior baseline: the same
  generator with no EBM terms (``ebm=False``), trained with the same scheme, iterations and seed.

Every function that samples takes ``seed`` and draws from its own ``PhiloxGenerator``, so results
are reproducible and two models scored with the same seed see the same chain noise.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
import statistics
import time

import torch

import jebm_kernels as jk

from .model import JEBM, randn_layers
from .training import Run, load_run, train

__all__ = ["posterior_latents", "reconstruction_error", "outlier_scores", "auprc", "hierarchical_grid",
           "sample_images", "evaluate_run", "outlier_experiment", "PAPER_CLASSES"]

PAPER_CLASSES = (1, 4, 5, 7, 9)  # the held-out digits of the papers' MNIST outlier table
_EVAL_SEED_XOR = 0xE7A1_5EED


def _gen(seed: int) -> jk.PhiloxGenerator:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return jk.PhiloxGenerator(seed ^ _EVAL_SEED_XOR)


def _as_run(run) -> Run:
    if isinstance(run, Run):
        return run
    if isinstance(run, (str, os.PathLike)):
        return load_run(run)
    raise TypeError(f"expected a run folder, a checkpoint path or a jebm.Run, got {type(run).__name__}")


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
                      backend: str = "auto") -> list[torch.Tensor]:
    """z-space posterior samples for a batch: ``method`` "langevin" (posterior Langevin from noise),
    "amortised" (a draw from the inference model q, needs ``infer``), or "auto" (q when given)."""
    if method not in ("auto", "langevin", "amortised"):
        raise ValueError(f"method must be 'auto', 'langevin' or 'amortised', got {method!r}")
    if method == "amortised" and infer is None:
        raise ValueError("method='amortised' needs the inference model of a variational run")
    if method == "langevin" or (method == "auto" and infer is None):
        return model.sample_posterior(x, generator=generator, backend=backend)
    noise = randn_layers(x.shape[0], model.dims, generator, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        z, _ = infer(x, noise)
    return [t.detach() for t in z]


def _posterior_batches(model: JEBM, images, infer, method, seed, backend, batch_size):
    """(x, posterior latents of x) for consecutive batches of ``images``, one noise stream."""
    g = _gen(seed)
    for sl in _batches(images.shape[0], batch_size):
        x = images[sl]
        yield x, posterior_latents(model, x, infer=infer, method=method, generator=g, backend=backend)


def reconstruction_error(model: JEBM, images: torch.Tensor, *, infer=None, method: str = "auto", seed: int = 0,
                         backend: str = "auto", batch_size: int = 500) -> dict:
    """Mean squared error per pixel (on the [-1, 1] scale) and the mean reconstruction energy
    ||x - g(z_1)||^2 / (2 sigma_x^2) per image, at posterior samples."""
    images = _check_images(model, images)
    sq = []
    for x, z in _posterior_batches(model, images, infer, method, seed, backend, batch_size):
        with torch.no_grad():
            sq.append((x - model.decode(z[0])).reshape(x.shape[0], -1).pow(2).sum(-1))
    sq = torch.cat(sq)
    n_pix = math.prod(model.image_shape)
    return {"mse_per_pixel": float(sq.mean() / n_pix), "recon_energy": float(sq.mean() / (2 * model.sigma_x ** 2)),
            "n_images": int(images.shape[0])}


def outlier_scores(model: JEBM, images: torch.Tensor, *, infer=None, method: str = "auto", seed: int = 0,
                   backend: str = "auto", batch_size: int = 500) -> torch.Tensor:
    """The negative log joint ||x - g(z_1)||^2/(2 sigma_x^2) + U(z) at a posterior sample, [N]
    (higher = less likely under the model = more anomalous)."""
    images = _check_images(model, images)
    out = []
    for x, z in _posterior_batches(model, images, infer, method, seed, backend, batch_size):
        with torch.no_grad():
            out.append(model.neg_log_joint(x, z))
    return torch.cat(out)


def auprc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the precision-recall curve (average precision) with ``positive`` the outliers."""
    from sklearn.metrics import average_precision_score
    scores = torch.as_tensor(scores).detach().double().cpu()
    positive = torch.as_tensor(positive).detach().bool().cpu()
    if scores.shape != positive.shape or scores.dim() != 1:
        raise ValueError(f"scores and labels must be 1-D of one length, got {tuple(scores.shape)} and "
                         f"{tuple(positive.shape)}")
    if not bool(positive.any()) or bool(positive.all()):
        raise ValueError("AUPRC needs both positives (held-out class) and negatives among the test images")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("some outlier scores are NaN or inf: the model or its posterior chains diverged")
    return float(average_precision_score(positive.numpy(), scores.numpy()))


def hierarchical_grid(model: JEBM, path, *, n: int = 10, seed: int = 0, backend: str = "auto") -> Path:
    """The hierarchical sampling PNG: one row per layer (top first), ``n`` resamples per row."""
    from .images import save_rows
    model.eval()
    rows = model.hierarchical_samples(n, generator=_gen(seed), backend=backend)
    return save_rows(rows, path)


def sample_images(run, out=None, *, n: int = 64, seed: int = 0, backend: str = "auto", nrow: int | None = None) -> Path:
    """Draw ``n`` images from a trained run's prior and write them as one PNG grid (default
    ``<run folder>/samples_eval.png``); returns the path."""
    from .images import save_grid
    r = _as_run(run)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    out = Path(out) if out is not None else r.checkpoint.parent / "samples_eval.png"
    imgs = r.model.generate(n, generator=_gen(seed), backend=backend)
    return save_grid(imgs, out, nrow=nrow if nrow is not None else int(math.ceil(math.sqrt(n))))


def _write_json(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
    return path


def evaluate_run(run, out_dir=None, *, n_test: int | None = None, seed: int = 0, backend: str = "auto",
                 n_hier: int = 10, n_samples: int = 64, data_root=None, method: str = "auto", fid_weights=None,
                 classifier_fd: bool = False, fd_n: int | None = None, fd_n_train: int | None = None,
                 fid_cache=None, classifier_steps: int | None = None) -> dict:
    """Evaluate a trained run on its data set's test split; writes into ``out_dir`` (default: the
    run folder) ``eval.json``, ``hierarchical.png``, ``eval_samples.png`` and
    ``eval_reconstructions.png``. A run trained without one class (``exclude_class``) also gets
    that class's outlier AUPRC. ``fid_weights`` (an Inception-v3 weights file) adds FID,
    ``classifier_fd`` the Frechet distance in a small classifier's features, each from ``fd_n``
    samples against the training set (``jebm.fid``). Returns the JSON's content."""
    from .data import load_dataset
    from .images import save_grid, save_rows
    r = _as_run(run)
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
        "posterior": "amortised" if (method == "amortised" or (method == "auto" and r.infer is not None)) else "langevin",
        "reconstruction": reconstruction_error(model, images, infer=r.infer, method=method, seed=seed, backend=backend),
    }
    g = _gen(seed + 1)
    k = min(16, images.shape[0])
    z = posterior_latents(model, images[:k], infer=r.infer, method=method, generator=g, backend=backend)
    with torch.no_grad():
        recon = model.decode(z[0])
    result["reconstructions_png"] = str(save_rows([images[:k], recon], out_dir / "eval_reconstructions.png"))
    result["samples_png"] = str(save_grid(model.generate(n_samples, generator=g, backend=backend),
                                          out_dir / "eval_samples.png", nrow=int(math.ceil(math.sqrt(n_samples)))))
    result["hierarchical_png"] = str(hierarchical_grid(model, out_dir / "hierarchical.png", n=n_hier, seed=seed,
                                                       backend=backend))
    result["hierarchical_rows"] = [f"z_{l}" for l in range(model.n_layers, 0, -1)]
    c = cfg["exclude_class"]
    if c is not None and labels is not None:
        scores = outlier_scores(model, images, infer=r.infer, method=method, seed=seed, backend=backend)
        positive = labels == c
        result["outlier"] = {"held_out_class": c, "auprc": auprc(scores, positive),
                             "positive_fraction": float(positive.double().mean())}
    if fid_weights is not None or classifier_fd:
        from .fid import DEFAULT_N, image_quality
        result.update(image_quality(r, fid_weights=fid_weights, classifier=classifier_fd,
                                    n=fd_n if fd_n is not None else DEFAULT_N, n_train=fd_n_train, cache_dir=fid_cache,
                                    classifier_steps=classifier_steps, seed=seed, backend=backend, data_root=root))
    result["seconds"] = time.perf_counter() - t0
    _write_json(result, out_dir / "eval.json")
    return result


def _train_or_reuse(out: Path, **kwargs):
    """Train into ``out``, or continue / reuse the run already there (the experiment can be
    stopped and restarted without redoing finished runs)."""
    resume = (out / "checkpoint.pt").is_file()
    if resume:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("preset",)}
    return train(out_dir=out, resume=resume, **kwargs)


def outlier_experiment(*, classes=PAPER_CLASSES, seeds=(0, 1, 2), iters: int | None = None, out_dir="runs/outlier",
                       dataset: str = "digits", data_root=None, preset: str = "default", scheme: str = "mle",
                       backend: str = "auto", progress: bool = True, score_seed: int = 0, **overrides) -> dict:
    """The held-out-class outlier protocol: for every class in ``classes`` and seed in ``seeds``,
    train the EBM-prior model and the Gaussian-prior baseline without that class (same scheme,
    preset, ``iters`` and seed), score the full test split, AUPRC with the class positive.

    Writes ``outlier.json`` (per run, per class mean +- sample std over seeds, overall) and
    ``outlier.png`` (the bars) into ``out_dir``; the runs go to ``out_dir/c<class>_s<seed>_{ebm,gauss}``.
    """
    from .data import load_dataset
    classes, seeds = _int_list(classes, "classes"), _int_list(seeds, "seeds")
    if "ebm" in overrides or "exclude_class" in overrides:
        raise TypeError("outlier_experiment sets ebm and exclude_class itself; do not pass them")
    if iters is None:  # the preset's budget, recorded so the table says what it was
        from .presets import resolve_config
        iters = resolve_config(preset, **overrides)["iters"]
    out_dir = Path(out_dir)
    test = load_dataset(dataset, data_root, split="test")
    if test.labels is None:
        raise ValueError(f"dataset {dataset!r} has no labels: the held-out-class protocol needs them")
    present = set(int(v) for v in test.labels.unique())
    missing = [c for c in classes if c not in present]
    if missing:
        raise ValueError(f"classes {missing} do not occur in the {dataset} test labels {sorted(present)}")
    rows = []
    t_all = time.perf_counter()
    for c in classes:
        positive = test.labels == c
        for s in seeds:
            row = {"class": c, "seed": s, "positive_fraction": float(positive.double().mean())}
            for kind, ebm in (("ebm", True), ("gauss", False)):
                t0 = time.perf_counter()
                res = _train_or_reuse(out_dir / f"c{c}_s{s}_{kind}", dataset=dataset, data_root=data_root,
                                      scheme=scheme, iters=iters, backend=backend, seed=s, preset=preset,
                                      progress=progress, exclude_class=c, ebm=ebm, **overrides)
                run = load_run(res.checkpoint)
                scores = outlier_scores(run.model, test.images, infer=run.infer, seed=score_seed, backend=backend)
                row[f"{kind}_auprc"] = auprc(scores, positive)
                row[f"{kind}_run"] = str(res.run_dir)
                row[f"{kind}_iterations"] = res.iterations
                row[f"{kind}_seconds"] = time.perf_counter() - t0
            rows.append(row)
            _write_json(_summarise(rows, classes, seeds, dataset, preset, scheme, iters, t_all), out_dir / "outlier.json")
    summary = _summarise(rows, classes, seeds, dataset, preset, scheme, iters, t_all)
    _write_json(summary, out_dir / "outlier.json")
    summary["png"] = str(_plot_outlier(summary, out_dir / "outlier.png"))
    _write_json(summary, out_dir / "outlier.json")
    return summary


def _int_list(v, what) -> list[int]:
    vals = [v] if isinstance(v, int) else list(v) if isinstance(v, (list, tuple)) else None
    if not vals or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in vals):
        raise ValueError(f"{what} must be a non-empty list of ints >= 0, got {v!r}")
    return vals


def _mean_std(xs):
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def _summarise(rows, classes, seeds, dataset, preset, scheme, iters, t_all) -> dict:
    per_class = {}
    for c in classes:
        rs = [r for r in rows if r["class"] == c]
        if rs:
            per_class[str(c)] = {"ebm": _mean_std([r["ebm_auprc"] for r in rs]),
                                 "gauss": _mean_std([r["gauss_auprc"] for r in rs]),
                                 "positive_fraction": rs[0]["positive_fraction"]}
    overall = {}
    if rows:
        overall = {"ebm": _mean_std([r["ebm_auprc"] for r in rows]),
                   "gauss": _mean_std([r["gauss_auprc"] for r in rows])}
    return {"protocol": "train without class c; score = ||x - g(z_1)||^2/(2 sigma_x^2) + U(z) at a posterior "
                        "sample; AUPRC with class c positive on the full test split; std = sample std over seeds",
            "dataset": dataset, "preset": preset, "scheme": scheme, "iters": iters, "classes": classes,
            "seeds": seeds, "runs": rows, "per_class": per_class, "overall": overall,
            "seconds": time.perf_counter() - t_all}


def _plot_outlier(summary: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cls = list(summary["per_class"])
    xs = range(len(cls))
    fig, ax = plt.subplots(figsize=(1.2 * len(cls) + 2, 3))
    for off, kind, label in ((-0.2, "ebm", "EBM prior"), (0.2, "gauss", "Gaussian prior")):
        ax.bar([x + off for x in xs], [summary["per_class"][c][kind]["mean"] for c in cls], width=0.4,
               yerr=[summary["per_class"][c][kind]["std"] for c in cls], capsize=3, label=label)
    ax.scatter(list(xs), [summary["per_class"][c]["positive_fraction"] for c in cls], marker="_", s=300,
               color="k", label="chance (positive fraction)")
    ax.set_xticks(list(xs), [f"held-out {c}" for c in cls], fontsize=8)
    ax.set_ylabel("AUPRC")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(f"{summary['dataset']}, {summary['scheme']}, {summary['iters']} iters, seeds {summary['seeds']}",
                 fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
