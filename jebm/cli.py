"""The ``jebm`` command (also ``python -m jebm``): argument parsing only; the work is in
``jebm.train``, ``jebm.evaluate`` and ``jebm.bench``.

    jebm train --dataset digits --scheme mle --iters 400 --out runs/default [--resume] [--checkpoint-every N]
               [--rollback RETRIES] [--set KEY=VALUE ...]
    torchrun --nproc_per_node 2 -m jebm train ...      (data-parallel: jebm.train.distributed)
    jebm sample RUN_DIR_OR_CHECKPOINT --n 64 --out samples.png
    jebm eval RUN_DIR [--out DIR] [--n-test N]
    jebm eval --outlier --dataset mnist5k [--classes 1 4 5 7 9] [--seeds 0 1 2] [--chains 8] [--jobs 2 --threads 1]
              [--validation] [--out runs/outlier] [--score-sigma-x S|model] [--score-prior U|F]
              [--refine-steps K] [--checkpoint-average N]
    jebm eval RUN_DIR --classifier-fd [--fid-weights pt_inception-2015-12-05-6726825d.pth] [--fd-n 10000]
    jebm report RUN_DIR [--outlier runs/outlier/outlier.json] [--benchmarks .benchmarks/latest.json]
    jebm bench [--out .benchmarks/jebm-bench.json] [--budget SECONDS] [--batches 8 100] [--steps 60]
"""
from __future__ import annotations

import argparse
import ast
import json
import sys

__all__ = ["main", "build_parser", "parse_set"]


def parse_set(items: list[str] | None) -> dict:
    """``KEY=VALUE`` pairs; VALUE is read as a Python literal (``[32, 16]``, ``0.5``, ``None``,
    ``True``) and otherwise kept as a string (``space=z``)."""
    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key] = value
    return out


def _sigma_or_model(text: str):
    """--score-sigma-x: a positive number, or 'model' (each model's own sigma_x)."""
    if text == "model":
        return text
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0 or 'model', got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0 or 'model', got {text!r}")
    return v


def _add_common_train(p: argparse.ArgumentParser, *, for_eval: bool = False) -> None:
    from .data import DATASETS
    from .train.presets import PRESETS
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="data set (default digits: scikit-learn's bundled 8x8 digits)")
    p.add_argument("--data-root", default=None,
                   help="folder / file the mnist, fashion-mnist, npz, folder data sets read")
    p.add_argument("--scheme", choices=("mle", "variational"), default=None, help="learning scheme (default mle)")
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: the preset's)")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None, help="configuration preset (default 'default')")
    p.add_argument("--backend", default=None, help="jebm_kernels.langevin backend: auto (default), reference, cpu, "
                                                   "triton, cuda")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                   help="override any run-config key (repeatable), e.g. --set dims=[32,16] --set space=z")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads of this process (default: torch's own choice, all cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jebm", description="Joint latent-space EBM priors over multi-layer "
                                                              "generators: train, sample, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (writes metrics.jsonl, PNG grids, checkpoint.pt)")
    _add_common_train(t)
    t.add_argument("--out", default=None, help="run folder (default runs/<preset>-<dataset>-<scheme>)")
    t.add_argument("--seed", type=int, default=None, help="seed of initialisation, noise and data order (default 0)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest good checkpoint (checkpoint.pt, else "
                        "checkpoint.prev.pt)")
    t.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="write a checkpoint every N iterations (default: the preset's ckpt_every)")
    t.add_argument("--rollback", type=int, default=None, metavar="RETRIES",
                   help="on NaN/inf, reload the last good checkpoint and retry with smaller learning rates and step "
                        "sizes (rollback_lr_factor, rollback_step_factor), at most RETRIES times (default 0: stop)")
    t.add_argument("--exclude-class", type=int, default=None, help="train without this class (outlier protocol)")

    s = sub.add_parser("sample", help="write a PNG grid of samples from a trained run")
    s.add_argument("run", help="run folder or checkpoint file")
    s.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--out", default=None, help="PNG path (default <run>/samples_eval.png)")
    s.add_argument("--nrow", type=int, default=None, help="images per grid row (default: a near-square grid)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--backend", default="auto")

    e = sub.add_parser("eval", help="evaluate a run (reconstruction, hierarchical grid) or run the outlier protocol")
    e.add_argument("run", nargs="?", default=None, help="run folder or checkpoint (not needed with --outlier)")
    e.add_argument("--out", default=None, help="output folder (default: the run folder; runs/outlier with --outlier)")
    e.add_argument("--seed", type=int, default=0, help="seed of the evaluation chains")
    e.add_argument("--n-test", type=int, default=None, help="evaluate on the first N test images only")
    e.add_argument("--n-hier", type=int, default=10, help="columns of the hierarchical sampling grid")
    e.add_argument("--posterior", choices=("auto", "langevin", "amortised"), default="auto",
                   help="posterior samples by Langevin or by the inference model (variational runs); "
                        "auto: q when present")
    e.add_argument("--outlier", action="store_true", help="run the held-out-class outlier protocol")
    e.add_argument("--classes", type=int, nargs="+", default=None, help="held-out classes (default 1 4 5 7 9)")
    e.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2)")
    e.add_argument("--chains", type=int, default=None, metavar="M",
                   help="--outlier: posterior chains averaged per test image (default 8; the score of one chain is "
                        "too noisy to compare models)")
    e.add_argument("--models", nargs="+", choices=("ebm", "gauss", "lebm"), default=None,
                   help="--outlier: the models to train (default all three: ebm = the joint EBM prior, gauss = the "
                        "same generator with its Gaussian prior, lebm = one latent layer with an EBM prior)")
    e.add_argument("--validation", action="store_true",
                   help="--outlier: run the protocol inside the train split (fit / val parts), never reading the "
                        "test split: for choosing settings")
    e.add_argument("--score-sigma-x", type=_sigma_or_model, default=None, metavar="S|model",
                   help="--outlier: the sigma of the score's reconstruction term ||x - g(z_1)||^2/(2 S^2), the same "
                        "for the three models; 'model': each model's own sigma_x (default: the data set's outlier "
                        "default, 4 on mnist5k, else 'model')")
    e.add_argument("--score-prior", choices=("U", "F"), default=None,
                   help="--outlier: the score's prior term, U(z) = -F(z) - log p_beta(z) (with --score-sigma-x model: "
                        "the exact -log p(x, z)) or F: -F(z) alone, the EBM term (default: the data set's outlier "
                        "default, F on mnist5k, else U)")
    e.add_argument("--refine-steps", type=int, default=None, metavar="K",
                   help="--outlier: K noise-free posterior steps from each chain's end before scoring (default 0)")
    e.add_argument("--checkpoint-average", type=int, default=None, metavar="N",
                   help="--outlier: also score each run's last N checkpoints (kept every ckpt_every iterations) and "
                        "report their mean and spread, the papers' averaging (default 1: the final checkpoint only)")
    e.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="--outlier: runs trained at once in worker processes (default 1); with --threads, the torch "
                        "threads of each (default: the cores shared out)")
    e.add_argument("--fid-weights", default=None, metavar="PATH",
                   help="Inception-v3 weights file (pytorch-fid's pt_inception-2015-12-05-6726825d.pth for FIDs "
                        "comparable with the papers'); adds FID to eval.json; nothing is downloaded")
    e.add_argument("--classifier-fd", action="store_true",
                   help="add the Frechet distance in the features of a small classifier trained on the run's data "
                        "(trained on first use, saved as RUN_DIR/classifier.pt)")
    e.add_argument("--fd-n", type=int, default=None,
                   help="generated samples for FID / classifier FD (default 10000; the papers use 50000)")
    e.add_argument("--fd-n-train", type=int, default=None,
                   help="training images for the reference statistics (default: the whole training split)")
    e.add_argument("--fid-cache", default=None, metavar="DIR",
                   help="where FID training-set statistics are cached (default $JEBM_CACHE_DIR/fid, else "
                        "~/.cache/jebm/fid)")
    e.add_argument("--classifier-steps", type=int, default=None,
                   help="training steps of the classifier when it is trained (default 500)")
    _add_common_train(e, for_eval=True)

    r = sub.add_parser("report", help="write RUN_DIR/report.html: curves, grids, outlier table, step sizes, "
                                      "benchmarks; one self-contained page")
    r.add_argument("run", help="run folder")
    r.add_argument("--out", default=None, help="HTML path (default RUN_DIR/report.html)")
    r.add_argument("--outlier", default=None, metavar="PATH",
                   help="outlier.json of `jebm eval --outlier` (default: RUN_DIR/outlier.json, then "
                        "RUN_DIR/../outlier/outlier.json)")
    r.add_argument("--benchmarks", default=None, metavar="PATH",
                   help="pytest-benchmark JSON of benchmarks/ or the JSON of `jebm bench` (default: the newest "
                        ".benchmarks/*.json in the current folder)")

    from .bench.configs import CONFIG_NAMES
    from .bench.quick import DEFAULT_BATCHES, DEFAULT_BUDGET_S, DEFAULT_CONFIGS, DEFAULT_OUT, DEFAULT_STEPS
    b = sub.add_parser("bench", help="a short benchmark of the prior chain at the papers' shapes on the backends "
                                     "available here; writes a JSON that `jebm report` shows")
    b.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON path (default {DEFAULT_OUT}, where `jebm report` "
                                                           "looks when run from the same folder)")
    b.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, metavar="SECONDS",
                   help=f"timed seconds aimed at per case, at least 2 rounds each (default {DEFAULT_BUDGET_S})")
    b.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES),
                   help=f"batch sizes (default {' '.join(map(str, DEFAULT_BATCHES))})")
    b.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"Langevin steps per chain (default {DEFAULT_STEPS})")
    b.add_argument("--configs", nargs="+", choices=CONFIG_NAMES, default=list(DEFAULT_CONFIGS),
                   help="the configurations to run (default: all but svhn-conv, whose generator takes seconds "
                        "per chain)")
    b.add_argument("--providers", nargs="+", default=None,
                   help="what to time (default: the sampler backends available here and the plain loop; also "
                        "'compiled', 'torchebm', and with bf16 products 'plain-bf16', 'compiled-bf16', 'cpu-bf16')")
    return parser


def _cmd_train(a) -> int:
    from .train import train
    kwargs = parse_set(a.overrides)
    if a.exclude_class is not None:
        kwargs["exclude_class"] = a.exclude_class
    if a.rollback is not None:
        kwargs["rollback_retries"] = a.rollback
    res = train(dataset=a.dataset, scheme=a.scheme, iters=a.iters, out_dir=a.out, backend=a.backend, seed=a.seed,
                resume=a.resume, preset=a.preset, data_root=a.data_root, progress=not a.no_progress,
                checkpoint_every=a.checkpoint_every, **kwargs)
    if res.rank != 0:
        return 0  # rank 0 reports for the data-parallel run
    per_iter = res.metrics.get("sec_per_iter")
    print(f"run folder:  {res.run_dir}")
    print(f"checkpoint:  {res.checkpoint}")
    print(f"iterations:  {res.iterations} (this call {res.wall_time_s:.1f} s"
          + (f", last {per_iter:.3f} s/iter" if isinstance(per_iter, float) else "") + ")")
    shown = {k: round(v, 4) for k, v in res.recent.items() if k not in ("sec_per_iter", "philox_offset")}
    print(f"final metrics (mean of the last 10 logged iterations): {json.dumps(shown)}")
    print(f"samples:     {res.samples_png}")
    print(f"recons:      {res.reconstructions_png}")
    return 0


def _cmd_sample(a) -> int:
    from .evaluate.run_eval import sample_images
    path = sample_images(a.run, a.out, n=a.n, seed=a.seed, backend=a.backend, nrow=a.nrow)
    print(path)
    return 0


def _cmd_eval(a) -> int:
    if a.outlier:
        from .evaluate.outlier import PAPER_CLASSES, format_outlier_table, outlier_experiment
        kwargs = parse_set(a.overrides)
        iters = a.iters
        if a.run is not None:
            # Take the data set, preset, scheme and overrides of an existing run as the base.
            from .train import load_run
            cfg = load_run(a.run).config
            base = {k: cfg[k] for k in ("dataset", "data_root", "preset", "scheme")}
            kwargs = {**{k: v for k, v in cfg.items() if k not in ("dataset", "data_root", "preset", "scheme", "ebm",
                                                                   "exclude_class", "seed", "iters", "backend",
                                                                   "validation", "keep_checkpoints")},
                      **kwargs}
            iters = iters if iters is not None else cfg["iters"]  # the same budget as the given run
        else:
            base = {"dataset": "digits", "data_root": None, "preset": "default", "scheme": "mle"}
        for k in ("dataset", "data_root", "preset", "scheme"):
            if getattr(a, k) is not None:
                base[k] = getattr(a, k)
        extra = {k: v for k, v in (("n_chains", a.chains), ("models", a.models), ("score_sigma_x", a.score_sigma_x),
                                   ("score_prior", a.score_prior), ("refine_steps", a.refine_steps),
                                   ("checkpoint_average", a.checkpoint_average)) if v is not None}
        summary = outlier_experiment(
            classes=a.classes if a.classes is not None else PAPER_CLASSES,
            seeds=a.seeds if a.seeds is not None else (0, 1, 2), iters=iters,
            out_dir=a.out if a.out is not None else "runs/outlier", backend=a.backend or "auto",
            progress=not a.no_progress, score_seed=a.seed, validation=a.validation, jobs=a.jobs,
            threads=a.threads, **extra, **base, **kwargs)
        print(format_outlier_table(summary))
        print(f"written: {summary['png']} and outlier.json beside it")
        return 0
    if a.run is None:
        raise ValueError("jebm eval needs a run folder or checkpoint (or --outlier for the outlier protocol)")
    from .evaluate.run_eval import evaluate_run
    res = evaluate_run(a.run, a.out, n_test=a.n_test, seed=a.seed, backend=a.backend or "auto", n_hier=a.n_hier,
                          data_root=a.data_root, method=a.posterior, fid_weights=a.fid_weights,
                          classifier_fd=a.classifier_fd, fd_n=a.fd_n, fd_n_train=a.fd_n_train, fid_cache=a.fid_cache,
                          classifier_steps=a.classifier_steps)
    print(json.dumps({k: res[k] for k in ("iteration", "n_test", "posterior", "reconstruction")
                      if k in res}, indent=2))
    if "fid" in res:
        f = res["fid"]
        print(f"FID ({f['inception']}, {f['n_samples']} samples vs {f['n_train']} training images): {f['fid']:.3f}")
    if "classifier_fd" in res:
        f = res["classifier_fd"]
        acc = f["classifier"].get("test_accuracy")
        print(f"classifier Frechet distance ({f['n_samples']} samples vs {f['n_train']} training images; classifier "
              f"test accuracy {acc if acc is None else round(acc, 4)}): {f['fd']:.4f}; the {f['n_test_split']} test "
              f"images score {f['test_split_fd']:.4f}")
    if "outlier" in res:
        print(f"outlier AUPRC (held-out class {res['outlier']['held_out_class']}): {res['outlier']['auprc']:.3f}")
    print(f"written: {res['hierarchical_png']}, eval.json beside it")
    return 0


def _cmd_report(a) -> int:
    from .evaluate.report import write_report
    path = write_report(a.run, a.out, outlier=a.outlier, benchmarks=a.benchmarks)
    print(path)
    return 0


def _cmd_bench(a) -> int:
    import time

    from .bench.quick import run_bench
    t0 = time.perf_counter()
    path = run_bench(a.out, configs=a.configs, batches=a.batches, n_steps=a.steps, providers=a.providers,
                     budget_s=a.budget)
    print(f"written: {path} ({time.perf_counter() - t0:.1f} s); `jebm report RUN_DIR` from this folder shows it "
          f"(or --benchmarks {path})")
    return 0


# the packages of the "train" extra (pyproject.toml), by their import names
TRAIN_EXTRA = {"sklearn": "scikit-learn", "skimage": "scikit-image", "PIL": "pillow", "matplotlib": "matplotlib",
               "tqdm": "tqdm", "mlxtend": "mlxtend"}


def missing_train_packages() -> list[str]:
    """The "train" extra's packages this environment lacks (the sampler alone needs none of them)."""
    import importlib.util
    return [pkg for mod, pkg in TRAIN_EXTRA.items() if importlib.util.find_spec(mod) is None]


def main(argv: list[str] | None = None) -> int:
    from .train import TrainingDiverged
    parser = build_parser()
    a = parser.parse_args(argv)
    missing = missing_train_packages()
    if missing:
        print(f"jebm {a.command}: error: the trainer needs the 'train' extra, missing here: {', '.join(missing)}; "
              "install it with: pip install \"jebm[train]\" (or pip install \".[train]\" from a checkout)",
              file=sys.stderr)
        return 2
    threads = getattr(a, "threads", None)
    if threads is not None:
        if threads < 1:
            print(f"jebm {a.command}: error: --threads must be >= 1, got {threads}", file=sys.stderr)
            return 2
        import torch
        torch.set_num_threads(threads)
    try:
        return {"train": _cmd_train, "sample": _cmd_sample, "eval": _cmd_eval,
                "report": _cmd_report, "bench": _cmd_bench}[a.command](a)
    except TrainingDiverged as exc:
        print(f"jebm {a.command}: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:
        # Bad input: a clear one-line message, not a traceback.
        print(f"jebm {a.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
