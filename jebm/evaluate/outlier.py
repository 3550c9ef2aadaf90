"""The held-out-class outlier protocol (DESIGN.md "Evaluation"; ``jebm eval --outlier``).

For each class c and seed: train without class c, score every test image by
||x - g(z_1)||^2 / (2 sigma_x^2) + U(z) at a posterior sample (the negative log joint; higher = more
anomalous; ``jebm.evaluate.scores``), AUPRC with class c positive; beside a Gaussian-prior
baseline: the same generator with no EBM terms (``ebm=False``), trained with the same scheme,
iterations and seed. Writes ``outlier.json`` and ``outlier.png``.
"""
from __future__ import annotations

import os
from pathlib import Path
import statistics
import time

from ..data import load_dataset
from ..train import load_run, train
from ..train.presets import resolve_config
from .json_io import write_json
from .scores import auprc, outlier_scores

__all__ = ["outlier_experiment", "PAPER_CLASSES"]

PAPER_CLASSES = (1, 4, 5, 7, 9)  # the held-out digits of the papers' MNIST outlier table


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
    classes, seeds = _int_list(classes, "classes"), _int_list(seeds, "seeds")
    if "ebm" in overrides or "exclude_class" in overrides:
        raise TypeError("outlier_experiment sets ebm and exclude_class itself; do not pass them")
    if iters is None:  # the preset's budget, recorded so the table says what it was
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
                scores = outlier_scores(run.model, test.images, infer=run.infer, seed=score_seed, backend=backend,
                                        sampling=run.sampling)
                row[f"{kind}_auprc"] = auprc(scores, positive)
                row[f"{kind}_run"] = str(res.run_dir)
                row[f"{kind}_iterations"] = res.iterations
                row[f"{kind}_seconds"] = time.perf_counter() - t0
            rows.append(row)
            write_json(_summarise(rows, classes, seeds, dataset, preset, scheme, iters, t_all), out_dir / "outlier.json")
    summary = _summarise(rows, classes, seeds, dataset, preset, scheme, iters, t_all)
    write_json(summary, out_dir / "outlier.json")
    summary["png"] = str(_plot_outlier(summary, out_dir / "outlier.png"))
    write_json(summary, out_dir / "outlier.json")
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
