"""The held-out-class outlier protocol of the papers (docs/design.md, section 7; ``jebm eval --outlier``).

Zenati et al.'s MNIST protocol, as LEBM (Pang et al. 2020) and CVPR 2023 (Cui, Wu & Han) use it:
for each held-out class c and seed,
- train on the train split (80%) of the nine inlier classes;
- test on the test split (the other 20%) of the inlier classes plus *every* image of class c
  (about 36% positives on MNIST);
- score each test image by ||x - g(z_1)||^2 / (2 s^2) + P(z), P = U(z) or -F(z), one s and P for
  the three models, averaged over ``n_chains`` posterior chains (one chain is too noisy to compare
  models: ``jebm.evaluate.scores.outlier_score_parts``); higher = more anomalous. s = the model's own
  sigma_x with P = U is the exact negative log joint (the generic default); data sets may have other
  defaults (``OUTLIER_DEFAULTS``), and then the summary says the score is not the exact one;
- AUPRC (the papers' number) and AUROC with class c positive, for the score and for each of its
  parts alone (``SCORE_PARTS``: the exact negative log joint, the squared error, U(z), -F(z)), so
  the table shows which term carries the result; optionally (``checkpoint_average``) the mean and
  spread over each run's last checkpoints, the papers' averaging.
Three models, trained the same way (scheme, preset, iterations, seed, overrides): the joint EBM
prior (``"ebm"``: the configured generator, L >= 2), the same generator with its Gaussian prior
(``"gauss"``: ``ebm=False``) and LEBM (``"lebm"``: one latent layer, d_1, with an EBM prior on
N(0, I); the same decoder).

A run that diverges is recorded in its cell (``<model>_diverged``: the message) and the table goes
on; the summaries count it and average over the runs that finished.

``validation=True`` runs the same protocol inside the train split, never reading the test split:
each run trains on the ``"fit"`` part of the train split (``jebm.data.load_dataset(validation=)``)
and is scored on the ``"val"`` part of the inliers plus every train-split image of class c. Settings
are chosen that way; the test-split table is then run once.

Writes ``outlier.json`` (every run, per class mean +- sample std over seeds, overall) and
``outlier.png`` (AUPRC bars of the three models, -F-alone marks, chance) into ``out_dir``; the runs
go to ``out_dir/c<class>_s<seed>_<model>`` and a finished run is reused when the experiment is run
again. ``jobs`` > 1 trains that many runs at once in worker processes (``threads`` torch threads each).
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

import torch

from ..atomic import atomic_write
from ..data import load_dataset
from ..train import TrainingDiverged, load_run, train
from ..train.checkpoint import kept_checkpoints
from ..train.presets import resolve_config
from .json_io import write_json
from .scores import SCORE_PRIORS, auprc, auroc, outlier_score_parts, weighted_score

__all__ = ["outlier_experiment", "format_outlier_table", "outlier_test_set", "model_overrides", "outlier_settings",
           "score_formula", "PAPER_CLASSES", "MODELS", "MODEL_NAMES", "PAPER_AUPRC", "DEFAULT_CHAINS",
           "OUTLIER_DEFAULTS", "SCORE_PARTS"]

PAPER_CLASSES = (1, 4, 5, 7, 9)  # the held-out digits of the papers' MNIST outlier table
MODELS = ("ebm", "gauss", "lebm")
MODEL_NAMES = {"ebm": "joint EBM prior", "gauss": "Gaussian prior", "lebm": "LEBM (one layer, EBM prior)"}
_SHORT = {"ebm": "EBM prior", "gauss": "Gaussian prior", "lebm": "LEBM"}
DEFAULT_CHAINS = 8   # posterior chains averaged per test image (the score's noise falls as 1/sqrt(M))
# The papers' MNIST AUPRC for held-out 1, 4, 5, 7, 9 (full MNIST, 60,000 images, conv generators).
PAPER_AUPRC = {"CVPR 2023 joint EBM prior": {1: 0.470, 4: 0.941, 5: 0.964, 7: 0.815, 9: 0.796},
               "LEBM (NeurIPS 2020)": {1: 0.336, 4: 0.630, 5: 0.619, 7: 0.463, 9: 0.413}}

# The settings of the protocol (score, inference, checkpoint average, training) where the caller
# gives none. "score_sigma_x": the sigma in the score's ||x - g(z_1)||^2 / (2 sigma^2) ("model": each
# model's own sigma_x); "score_prior": "U" (U(z)) or "F" (-F(z) alone, the EBM term); with "model"
# and "U" the score is the exact negative log joint.
_GENERIC = dict(n_chains=DEFAULT_CHAINS, score_sigma_x="model", score_prior="U", refine_steps=0,
                checkpoint_average=1, iters=None, train={})
# Per data set, chosen on the validation protocol only (RESULTS.md, section 6). mnist5k: the
# training is the default preset's; the score is -F(z) plus the squared error at weight
# 1/(2 * 4^2) = 1/32. At the exact weight, 1/(2 * 0.3^2), the MLP decoder's squared error (std about
# 28 over inlier images, so 140-200 nats) drowns F (std 1-2 nats), and the base density log p_beta
# ranks held-out digits as less anomalous than inliers (U alone scores below chance), so the exact
# negative log joint ranks as the reconstruction error alone. The runs keep their last 10
# checkpoints so that a later --checkpoint-average 10 reuses them.
OUTLIER_DEFAULTS: dict[str, dict] = {
    "mnist5k": dict(score_sigma_x=4.0, score_prior="F", train={"keep_checkpoints": 10}),
}
# The score's parts reported beside it: name in outlier.json -> what it scores.
SCORE_PARTS = {"joint": "exact -log p(x, z) = ||x - g(z_1)||^2/(2 sigma_x^2) + U(z), the model's sigma_x",
               "recon": "||x - g(z_1)||^2 alone", "U": "U(z) = -F(z) - log p_beta(z) alone",
               "negF": "-F(z) alone (the EBM term)"}

_PROTOCOL = ("train on the train split (80%) of the inlier classes; test on the inliers' test split plus every image "
             "of the held-out class c; score = {score} averaged over {m} posterior chains{refine}; AUPRC and AUROC "
             "with class c positive; std = sample std over seeds")
_PROTOCOL_VAL = ("validation: train on the 'fit' part of the train split of the inlier classes; test on the inliers' "
                 "'val' part plus every train-split image of the held-out class c (the test split is not read); "
                 "score = {score} averaged over {m} posterior chains{refine}; AUPRC and AUROC with class c positive; "
                 "std = sample std over seeds")


def outlier_settings(dataset: str, **given) -> dict:
    """The protocol's settings for ``dataset``: ``given`` (None = not given), else the data set's
    ``OUTLIER_DEFAULTS``, else the generic ones. ``train`` (run-config overrides) merges key by key."""
    out = {**_GENERIC, **{k: v for k, v in OUTLIER_DEFAULTS.get(dataset, {}).items()}}
    out["train"] = {**_GENERIC["train"], **OUTLIER_DEFAULTS.get(dataset, {}).get("train", {})}
    for k, v in given.items():
        if k not in _GENERIC:
            raise TypeError(f"unknown outlier setting {k!r}")
        if v is not None:
            out[k] = {**out["train"], **v} if k == "train" else v
    return out


def score_formula(sigma_x, prior: str) -> str:
    """The score in words (``sigma_x``: a number, or "model" for each model's own)."""
    s = "sigma_x" if sigma_x == "model" else f"{float(sigma_x):g}"
    recon = f"||x - g(z_1)||^2/(2 {s}^2)" if sigma_x == "model" else f"||x - g(z_1)||^2/(2*{s}^2)"
    return f"{recon} + U(z)" if prior == "U" else f"{recon} - F(z)"


def _is_exact(sigma_x, prior) -> bool:
    return sigma_x == "model" and prior == "U"


def model_overrides(kind: str, cfg: dict) -> dict:
    """The run-config overrides that make ``kind`` out of the resolved config ``cfg``."""
    if kind == "ebm":
        return {"ebm": True}
    if kind == "gauss":
        return {"ebm": False}
    if kind == "lebm":
        return {"ebm": True, "dims": [cfg["dims"][0]], "ebm_hidden": [cfg["ebm_hidden"][0]], "joint_hidden": None}
    raise ValueError(f"unknown model {kind!r}; choose from {MODELS}")


def outlier_test_set(dataset: str, data_root, c: int, *, validation: bool = False):
    """(images, positive mask) of the protocol's test set for held-out class ``c``."""
    if validation:
        inliers = load_dataset(dataset, data_root, split="train", validation="val", exclude_class=c)
        outliers = load_dataset(dataset, data_root, split="train", only_class=c)
    else:
        inliers = load_dataset(dataset, data_root, split="test", exclude_class=c)
        outliers = load_dataset(dataset, data_root, split="all", only_class=c)
    images = torch.cat([inliers.images, outliers.images])
    positive = torch.cat([torch.zeros(len(inliers), dtype=torch.bool), torch.ones(len(outliers), dtype=torch.bool)])
    return images, positive


def _train_or_reuse(out: Path, **kwargs):
    """Train into ``out``, or continue / reuse the run already there (the experiment can be
    stopped and restarted without redoing finished runs)."""
    resume = (out / "checkpoint.pt").is_file()
    if resume:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("preset",)}
    return train(out_dir=out, resume=resume, **kwargs)


def _score_run(run, images, positive, task) -> dict:
    """AUPRC / AUROC of the chosen score and of each part (``SCORE_PARTS``) for one loaded run."""
    parts = outlier_score_parts(run.model, images, infer=run.infer, seed=task["score_seed"], backend=task["backend"],
                                sampling=run.sampling, n_chains=task["n_chains"], refine_steps=task["refine_steps"])
    sigma = run.model.sigma_x if task["score_sigma_x"] == "model" else task["score_sigma_x"]
    score = weighted_score(parts, sigma_x=sigma, prior=task["score_prior"])
    named = {"": score, "joint": parts["score"], "recon": parts["sq"], "U": parts["U"],
             "negF": -parts["F"] if run.model.has_ebm else None}
    out = {}
    for name, v in named.items():
        key = f"{name}_" if name else ""
        out[f"{key}auprc"] = auprc(v, positive) if v is not None else None
        out[f"{key}auroc"] = auroc(v, positive) if v is not None else None
    neg = ~positive
    out["negF_std"] = float((-parts["F"][neg]).std()) if run.model.has_ebm else 0.0
    out["recon_std"] = float(parts["recon"][neg].std())
    out["U_std"] = float(parts["U"][neg].std())
    return out


def _cell(task: dict) -> dict:
    """Train (or reuse) one run and score it: the ``<kind>_*`` entries of its row."""
    if task.get("threads"):
        torch.set_num_threads(task["threads"])
    kind, c = task["kind"], task["class"]
    t0 = time.perf_counter()
    out = {}
    try:
        res = _train_or_reuse(Path(task["out"]), **task["train"])
    except TrainingDiverged as exc:
        return {f"{kind}_diverged": str(exc), f"{kind}_diverged_at": exc.iteration, f"{kind}_run": task["out"],
                f"{kind}_seconds": time.perf_counter() - t0}
    run = load_run(res.checkpoint)
    images, positive = outlier_test_set(task["dataset"], task["data_root"], c, validation=task["validation"])
    try:
        out.update({f"{kind}_{k}": v for k, v in _score_run(run, images, positive, task).items()})
        n_avg = task["checkpoint_average"]
        if n_avg > 1:
            # The papers' +-: the same score at each of the run's last n_avg checkpoints.
            kept = kept_checkpoints(res.run_dir)[-n_avg:]
            vals, its = [], []
            for path in kept:
                r = load_run(path)
                vals.append(_score_run(r, images, positive, task)["auprc"])
                its.append(r.iteration)
            out[f"{kind}_ckpt_auprc"] = vals
            out[f"{kind}_ckpt_iterations"] = its
    except ValueError as exc:  # NaN scores: the model's posterior chains diverged at scoring
        out[f"{kind}_diverged"] = f"scoring: {exc}"
    out.update({f"{kind}_run": str(res.run_dir), f"{kind}_iterations": res.iterations,
                f"{kind}_seconds": time.perf_counter() - t0})
    return out


def outlier_experiment(*, classes=PAPER_CLASSES, seeds=(0, 1, 2), iters: int | None = None, out_dir="runs/outlier",
                       dataset: str = "digits", data_root=None, preset: str = "default", scheme: str = "mle",
                       backend: str = "auto", progress: bool = True, score_seed: int = 0,
                       n_chains: int | None = None, models=MODELS, validation: bool = False, jobs: int = 1,
                       threads: int | None = None, score_sigma_x=None, score_prior: str | None = None,
                       refine_steps: int | None = None, checkpoint_average: int | None = None,
                       **overrides) -> dict:
    """The held-out-class outlier protocol (module docstring): for every class in ``classes``, seed
    in ``seeds`` and model in ``models``, train without that class and score the protocol's test set.

    Settings left as None take the data set's ``OUTLIER_DEFAULTS``, else the generic ones
    (``outlier_settings``): ``iters`` (else the preset's; recorded in the summary); ``n_chains``:
    posterior chains averaged per image (8); ``score_sigma_x``: the sigma of the score's
    reconstruction term, a number or "model" (each model's own sigma_x); ``score_prior``: "U" (U(z))
    or "F" (-F(z) alone); ``refine_steps``: noise-free posterior steps after the chains (0);
    ``checkpoint_average``: N > 1 also scores each run's last N checkpoints (the runs keep them:
    ``keep_checkpoints``; every ``ckpt_every`` iterations) and reports their mean and spread, the
    papers' averaging. Run-config ``overrides`` go on top of the data set's training defaults.
    ``validation``: the protocol inside the train split; ``jobs``: runs trained at once (worker
    processes), with ``threads`` torch threads each (default: the cores shared out).
    Returns the summary written to ``out_dir/outlier.json``.
    """
    classes, seeds = _int_list(classes, "classes"), _int_list(seeds, "seeds")
    if "ebm" in overrides or "exclude_class" in overrides:
        raise TypeError("outlier_experiment sets ebm and exclude_class itself; do not pass them")
    if "validation" in overrides:
        raise TypeError("pass validation=True to outlier_experiment, not as a run-config override")
    if "keep_checkpoints" in overrides:
        raise TypeError("pass checkpoint_average=N to outlier_experiment, not keep_checkpoints")
    models = [models] if isinstance(models, str) else list(models)
    if not models or any(m not in MODELS for m in models) or len(set(models)) != len(models):
        raise ValueError(f"models must be distinct names from {MODELS}, got {models!r}")
    st = outlier_settings(dataset, n_chains=n_chains, score_sigma_x=score_sigma_x, score_prior=score_prior,
                          refine_steps=refine_steps, checkpoint_average=checkpoint_average, iters=iters,
                          train=overrides or None)
    n_chains, iters, overrides = st["n_chains"], st["iters"], dict(st["train"])
    for name, v in (("n_chains", n_chains), ("jobs", jobs), ("checkpoint_average", st["checkpoint_average"])):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not isinstance(st["refine_steps"], int) or isinstance(st["refine_steps"], bool) or st["refine_steps"] < 0:
        raise ValueError(f"refine_steps must be an int >= 0, got {st['refine_steps']!r}")
    if st["score_prior"] not in SCORE_PRIORS:
        raise ValueError(f"score_prior must be one of {SCORE_PRIORS}, got {st['score_prior']!r}")
    sig = st["score_sigma_x"]
    if sig != "model" and (isinstance(sig, bool) or not isinstance(sig, (int, float)) or not sig > 0
                           or sig == float("inf")):
        raise ValueError(f"score_sigma_x must be a number > 0 or 'model', got {sig!r}")
    if sig != "model":
        sig = float(sig)
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    if st["checkpoint_average"] > 1:
        overrides["keep_checkpoints"] = max(overrides.get("keep_checkpoints", 0), st["checkpoint_average"])
    base = resolve_config(preset, dataset=dataset, **overrides)
    if iters is None:  # the preset's budget, recorded so the table says what it was
        iters = base["iters"]
    out_dir = Path(out_dir)
    labels = load_dataset(dataset, data_root, split="all").labels
    if labels is None:
        raise ValueError(f"dataset {dataset!r} has no labels: the held-out-class protocol needs them")
    present = set(int(v) for v in labels.unique())
    missing = [c for c in classes if c not in present]
    if missing:
        raise ValueError(f"classes {missing} do not occur in the {dataset} test labels {sorted(present)}")
    if jobs > 1 and threads is None:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    tasks = []
    for c in classes:
        for s in seeds:
            for kind in models:
                tasks.append({
                    "class": c, "seed": s, "kind": kind, "out": str(out_dir / f"c{c}_s{s}_{kind}"),
                    "dataset": dataset, "data_root": data_root, "validation": bool(validation),
                    "score_seed": score_seed, "backend": backend, "n_chains": n_chains, "threads": threads,
                    "score_sigma_x": sig, "score_prior": st["score_prior"], "refine_steps": st["refine_steps"],
                    "checkpoint_average": st["checkpoint_average"],
                    "train": dict(dataset=dataset, data_root=data_root, scheme=scheme, iters=iters, backend=backend,
                                  seed=s, preset=preset, progress=progress and jobs == 1, exclude_class=c,
                                  **({"validation": True} if validation else {}),
                                  **{**overrides, **model_overrides(kind, base)})})
    fractions = {}
    for c in classes:
        _, positive = outlier_test_set(dataset, data_root, c, validation=validation)
        fractions[c] = {"positive_fraction": float(positive.double().mean()), "n_test": int(positive.numel())}
    rows = {(c, s): {"class": c, "seed": s, **fractions[c]} for c in classes for s in seeds}
    exact = _is_exact(sig, st["score_prior"])
    meta = dict(classes=classes, seeds=seeds, models=models, dataset=dataset, preset=preset, scheme=scheme,
                iters=iters, n_chains=n_chains, validation=bool(validation), jobs=jobs, threads=threads,
                score={"formula": score_formula(sig, st["score_prior"]), "sigma_x": sig, "prior": st["score_prior"],
                       "exact": exact,
                       "note": ("the exact negative log joint -log p(x, z)" if exact else
                                "not the exact -log p(x, z); the exact one is reported beside it as 'joint'")},
                score_parts=SCORE_PARTS, refine_steps=st["refine_steps"],
                checkpoint_average=st["checkpoint_average"], train_overrides=overrides)
    t_all = time.perf_counter()

    def done(task, cell):
        rows[(task["class"], task["seed"])].update(cell)
        write_json(_summarise(list(rows.values()), meta, t_all), out_dir / "outlier.json")

    out_dir.mkdir(parents=True, exist_ok=True)
    if jobs == 1:
        for task in tasks:
            done(task, _cell(task))
    else:
        # Worker processes (spawned: no forked OpenMP state), one run each at a time.
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_cell, t): t for t in tasks}
            for f in cf.as_completed(futures):
                done(futures[f], f.result())
    summary = _summarise(list(rows.values()), meta, t_all)
    write_json(summary, out_dir / "outlier.json")
    summary["png"] = str(_plot_outlier(summary, out_dir / "outlier.png"))
    write_json(summary, out_dir / "outlier.json")
    return summary


def format_outlier_table(summary: dict) -> str:
    """The summary as text (``jebm eval --outlier`` prints it): AUPRC mean +- std per held-out class
    and model, the mean over classes, AUROC, the score's parts side by side (AUPRC / AUROC of the
    exact negative log joint, the reconstruction error, U(z) and -F(z) alone) and, when there is
    one, the mean over each run's last checkpoints."""
    models = summary.get("models", ["ebm", "gauss"])
    score = summary.get("score") or {"formula": "||x - g(z_1)||^2/(2 sigma_x^2) + U(z)", "exact": True}

    def ms(d):
        return "  diverged  " if not d or d.get("mean") is None else f"{d['mean']:.3f} +- {d['std']:.3f}"

    def m(d):
        return "  -  " if not d or d.get("mean") is None else f"{d['mean']:.3f}"

    what = "validation split" if summary.get("validation") else "test split"
    lines = [f"score = {score['formula']}" + ("" if score.get("exact") else
                                              " (not the exact -log p(x, z); the exact one is 'joint' below)"),
             f"AUPRC, mean +- std over seeds {summary['seeds']} ({summary['iters']} iterations); "
             f"{summary.get('n_chains', 1)} posterior chains per image; {summary['dataset']}, {what}:"]
    rows = list(summary["per_class"].items())
    for c, v in rows:
        cells = "   ".join(f"{_SHORT[k]} {ms(v[k])}" + (f" ({v[k]['diverged']} diverged)" if v[k].get("diverged")
                                                          else "") for k in models)
        lines.append(f"  held-out {c}: {cells}   [chance {v['positive_fraction']:.3f}]")
    cm = summary.get("mean_of_class_means") or {}
    if cm:
        lines.append("  mean over classes: " + "   ".join(
            f"{_SHORT[k]} {cm[k]['mean']:.3f}" if cm[k]["mean"] is not None else f"{_SHORT[k]} -" for k in models))
    lines.append("AUROC:")
    for c, v in rows:
        lines.append(f"  held-out {c}: " + "   ".join(f"{_SHORT[k]} {ms(v[k].get('auroc', {}))}" for k in models))
    parts = [("score", ""), ("joint", "joint_"), ("recon", "recon_"), ("U", "U_"), ("-F", "negF_")]
    lines.append("The score's parts, AUPRC / AUROC (mean over seeds): score = the score above; joint = exact "
                 "-log p(x, z); recon = ||x - g(z_1)||^2 alone; U = U(z) alone; -F = -F(z) alone:")
    lines.append(f"  {'':12s}{'model':16s}" + "".join(f"{name:>15s}" for name, _ in parts))
    for c, v in rows:
        for k in models:
            cells = "".join(f"{m(v[k].get(p + 'auprc') if p else v[k]) + ' / ' + m(v[k].get(p + 'auroc')):>15s}"
                            for _, p in parts)
            lines.append(f"  held-out {c:<3s} {_SHORT[k]:16s}{cells}")
    with_ck = [k for k in models if any("ckpt_auprc" in v[k] for _, v in rows)]
    if with_ck:
        lines.append(f"AUPRC averaged over each run's last {summary.get('checkpoint_average')} checkpoints "
                     "(the papers' averaging): mean over seeds +- mean over runs of the std over checkpoints:")
        for c, v in rows:
            lines.append(f"  held-out {c}: " + "   ".join(
                f"{_SHORT[k]} {v[k]['ckpt_auprc']['mean']:.3f} +- {v[k]['ckpt_within_std']:.3f}"
                if v[k].get("ckpt_auprc", {}).get("mean") is not None else f"{_SHORT[k]} -" for k in with_ck))
    lines.append(f"wall time {summary.get('seconds', 0):.0f} s")
    return "\n".join(lines)


def _int_list(v, what) -> list[int]:
    vals = [v] if isinstance(v, int) else list(v) if isinstance(v, (list, tuple)) else None
    if not vals or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in vals):
        raise ValueError(f"{what} must be a non-empty list of ints >= 0, got {v!r}")
    return vals


def _mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def _stats(rows, kind) -> dict:
    """AUPRC mean/std/n of the score (top level, as the report reads it), its AUROC, each part's
    AUPRC and AUROC (``SCORE_PARTS``), the checkpoint average when there is one, divergences."""
    d = _mean_std([r.get(f"{kind}_auprc") for r in rows])
    d["auroc"] = _mean_std([r.get(f"{kind}_auroc") for r in rows])
    for part in SCORE_PARTS:
        for metric in ("auprc", "auroc"):
            d[f"{part}_{metric}"] = _mean_std([r.get(f"{kind}_{part}_{metric}") for r in rows])
    ck = [r[f"{kind}_ckpt_auprc"] for r in rows if r.get(f"{kind}_ckpt_auprc")]
    if ck:
        # per run: the mean over its last checkpoints (the papers' figure) and their spread (the papers' +-)
        d["ckpt_auprc"] = _mean_std([statistics.fmean(v) for v in ck])
        d["ckpt_within_std"] = statistics.fmean([statistics.stdev(v) if len(v) > 1 else 0.0 for v in ck])
        d["ckpt_n"] = min(len(v) for v in ck)
    d["diverged"] = sum(1 for r in rows if f"{kind}_diverged" in r)
    return d


def _summarise(rows, meta, t_all) -> dict:
    classes, models = meta["classes"], meta["models"]
    per_class = {}
    for c in classes:
        rs = [r for r in rows if r["class"] == c]
        if any(f"{k}_run" in r for r in rs for k in models):
            entry = {k: _stats(rs, k) for k in models}
            fr = [r["positive_fraction"] for r in rs if "positive_fraction" in r]
            entry["positive_fraction"] = fr[0] if fr else None
            per_class[str(c)] = entry
    overall = {k: _stats(rows, k) for k in models} if rows else {}
    # The mean over classes of the per-class means (the papers' "mean over the five").
    class_means = {k: _mean_std([per_class[c][k]["mean"] for c in per_class]) for k in models}
    refine = f", then {meta['refine_steps']} noise-free steps" if meta.get("refine_steps") else ""
    protocol = (_PROTOCOL_VAL if meta["validation"] else _PROTOCOL).format(
        m=meta["n_chains"], score=meta["score"]["formula"], refine=refine)
    return {"protocol": protocol, **meta, "model_names": {k: MODEL_NAMES[k] for k in models},
            "runs": sorted(rows, key=lambda r: (classes.index(r["class"]), r["seed"])),
            "per_class": per_class, "overall": overall, "mean_of_class_means": class_means,
            "paper_auprc": {k: {str(c): v for c, v in d.items()} for k, d in PAPER_AUPRC.items()},
            "seconds": time.perf_counter() - t_all}


def _plot_outlier(summary: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cls = list(summary["per_class"])
    models = summary.get("models", ["ebm", "gauss"])
    xs = range(len(cls))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(1.6 * len(cls) + 2.5, 3.4))
    for i, kind in enumerate(models):
        off = (i - (len(models) - 1) / 2) * width
        mean = [summary["per_class"][c][kind]["mean"] for c in cls]
        std = [summary["per_class"][c][kind]["std"] for c in cls]
        bars = ax.bar([x + off for x in xs], [m if m is not None else 0 for m in mean], width=width,
                      yerr=[s if s is not None else 0 for s in std], capsize=2,
                      label=MODEL_NAMES.get(kind, kind))
        negf = [summary["per_class"][c][kind].get("negF_auprc", {}).get("mean") for c in cls]
        if any(v is not None for v in negf):
            ax.scatter([x + off for x, v in zip(xs, negf) if v is not None], [v for v in negf if v is not None],
                       marker="v", s=18, color=bars.patches[0].get_facecolor(), edgecolor="k", linewidth=0.5,
                       zorder=3, label=f"{MODEL_NAMES.get(kind, kind)}: -F alone")
        for x, c in zip(xs, cls):
            n_div = summary["per_class"][c][kind].get("diverged", 0)
            if n_div:
                ax.text(x + off, 0.02, f"{n_div} div.", rotation=90, fontsize=6, ha="center", va="bottom")
    fr = [summary["per_class"][c]["positive_fraction"] for c in cls]
    ax.scatter([x for x, f in zip(xs, fr) if f is not None], [f for f in fr if f is not None], marker="_", s=400,
               color="k", label="chance (positive fraction)", zorder=4)
    ax.set_xticks(list(xs), [f"held-out {c}" for c in cls], fontsize=8)
    ax.set_ylabel("AUPRC")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    what = "validation" if summary.get("validation") else "test"
    score = (summary.get("score") or {}).get("formula", "-log p(x, z)")
    ax.set_title(f"{summary['dataset']} ({what}), {summary['scheme']}, {summary['iters']} iters, "
                 f"{summary.get('n_chains', 1)} chains, seeds {summary['seeds']}\nscore {score}", fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
