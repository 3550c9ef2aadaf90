"""``jebm.train``: the training loop shared by both schemes.

What a run writes into its folder (``out_dir``):
- ``config.json``: the resolved run config;
- ``metrics.jsonl``: one JSON object per logged iteration (losses, energies, seconds per iteration);
- ``checkpoint.pt``: written atomically every ``ckpt_every`` iterations, at the start and at the end;
- ``samples.png`` / ``reconstructions.png`` (and ``*_<iter>.png`` every ``sample_every``
  iterations), ``loss_curves.png``.

Determinism: the model is initialised from ``seed`` (without touching the caller's global RNG);
all sampling noise (chain starts, Langevin steps, q's reparameterisation) comes from one
``jebm_kernels.PhiloxGenerator`` whose (seed, offset) is checkpointed; the data order of epoch e
is a permutation drawn from a generator seeded by (seed, e), so it needs no state. Resuming from a
checkpoint therefore continues exactly as the uninterrupted run would have, on the same backend.

Divergence: when a loss or energy is NaN or inf no update is applied, the run stops and raises
``TrainingDiverged`` naming the iteration; checkpoints are only ever written from finite
parameters, so the one on disk is the last good state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import json
import math
import os
from pathlib import Path
import time

import torch

import jebm_kernels as jk

from .checkpoint import CHECKPOINT_NAME, FORMAT_VERSION, load_checkpoint, save_checkpoint
from .model import JEBM
from .presets import resolve_config, upgrade_config
from .trainer_mle import MLETrainer
from .trainer_variational import VariationalTrainer, build_inference_model

__all__ = ["train", "TrainResult", "TrainingDiverged", "load_run", "Run", "make_trainer", "batch_indices"]

# Keys that may differ between a run and its resumption (they do not change the math).
_RESUMABLE_CHANGES = ("iters", "backend", "device", "log_every", "ckpt_every", "sample_every", "data_root",
                      "n_samples")
# An offset into the Philox key space for the fixed stream that draws the PNG snapshots, so they
# never consume (and so never perturb) the training stream.
_SNAPSHOT_SEED_XOR = 0x5EED_0F_5A4D_1E5


class TrainingDiverged(RuntimeError):
    """A loss or energy became NaN or inf. ``iteration`` is the 1-based iteration where it
    happened; ``checkpoint`` the last good checkpoint, which is on disk."""

    def __init__(self, message: str, iteration: int, checkpoint: Path | None, metric: str | None = None):
        super().__init__(message)
        self.iteration = iteration
        self.checkpoint = checkpoint
        self.metric = metric


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    iterations: int                 # iterations completed in total
    metrics: dict                   # the last logged metrics line
    recent: dict                    # each metric's mean over the last 10 logged iterations
    wall_time_s: float              # wall time of this call
    metrics_path: Path
    samples_png: Path | None
    reconstructions_png: Path | None
    config: dict = field(repr=False, default_factory=dict)


@dataclass
class Run:
    """A trained run loaded back: the model, the scheme's extra modules, config and checkpoint."""
    model: JEBM
    config: dict
    iteration: int
    checkpoint: Path
    infer: torch.nn.Module | None


def make_trainer(model: JEBM, cfg: dict):
    if cfg["scheme"] == "mle":
        return MLETrainer(model, cfg)
    return VariationalTrainer(model, cfg)


def batch_indices(n: int, batch_size: int, seed: int, it: int) -> torch.Tensor:
    """Indices of iteration ``it``'s batch (0-based): epoch e = it // batches-per-epoch visits a
    permutation seeded by (seed, e); incomplete last batches are dropped."""
    b = min(batch_size, n)
    per_epoch = n // b
    epoch, k = divmod(it, per_epoch)
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63 - 1))
    return torch.randperm(n, generator=g)[k * b:(k + 1) * b]


def _params_finite(modules) -> bool:
    return all(bool(torch.isfinite(p).all()) for m in modules for p in m.parameters())


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_run(path, *, map_location="cpu") -> Run:
    """Load a run folder or checkpoint file into a model (eval mode) plus its inference model."""
    ckpt = load_checkpoint(path, map_location=map_location)
    cfg = upgrade_config(ckpt["config"])
    model = JEBM.from_config(cfg, tuple(ckpt["image_shape"]))
    model.load_state_dict(ckpt["model"])
    infer = None
    if "infer" in ckpt.get("modules", {}):
        infer = build_inference_model(cfg, model.image_shape)
        infer.load_state_dict(ckpt["modules"]["infer"])
    from .checkpoint import find_checkpoint
    return Run(model.eval(), cfg, int(ckpt["iteration"]), find_checkpoint(path), infer)


def _load_data(cfg):
    from .data import load_dataset
    return load_dataset(cfg["dataset"], cfg["data_root"], split="train", exclude_class=cfg["exclude_class"])


def train(dataset: str | None = None, scheme: str | None = None, iters: int | None = None, out_dir=None,
          backend: str | None = None, seed: int | None = None, resume: bool = False, preset: str | None = None,
          *, data_root=None, progress: bool = True, **overrides) -> TrainResult:
    """Train a JEBM; returns a ``TrainResult`` naming the run folder, checkpoint and final metrics.

    Args:
        dataset: "digits" (default, bundled), "mnist", "fashion-mnist", "npz", "folder"
            (``jebm.data.DATASETS``); the last four read ``data_root``.
        scheme: "mle" (default) or "variational".
        iters: total iterations of the run (a resumed run continues up to this number); default
            from the preset.
        out_dir: the run folder (default ``runs/<preset>-<dataset>-<scheme>``).
        backend: the ``jebm_kernels.langevin`` backend, "auto" by default.
        seed: seeds the model's initialisation, the Philox noise stream and the data order (default 0).
        resume: continue the run in ``out_dir`` from its checkpoint. Arguments left as None are
            taken from the checkpoint; ones given must match it (except iters, backend, logging).
        preset: "default", "cvpr-cifar10" or "iccv-svhn" (``jebm.presets.PRESETS``).
        data_root: path for the data sets that read one.
        progress: show a tqdm progress bar with live losses.
        **overrides: any run-config key (``jebm.presets.RUN_KEYS``), e.g. ``dims=[32, 16]``.

    Raises:
        TrainingDiverged: a loss or energy became NaN/inf (the last good checkpoint is kept).
        ValueError / TypeError: bad arguments, or ``out_dir`` already holds a run and resume=False.
    """
    start_wall = time.perf_counter()
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    given = {k: v for k, v in dict(dataset=dataset, scheme=scheme, iters=iters, backend=backend, seed=seed,
                                   data_root=None if data_root is None else str(data_root)).items()
             if v is not None}
    given.update(overrides)
    preset_name = preset if preset is not None else "default"
    if out_dir is None:
        out_dir = Path("runs") / f"{preset_name}-{given.get('dataset', 'digits')}-{given.get('scheme', 'mle')}"
    run_dir = Path(out_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME

    ckpt = None
    if resume:
        if not ckpt_path.is_file():
            raise ValueError(f"resume=True but {ckpt_path} does not exist: nothing to resume")
        ckpt = load_checkpoint(ckpt_path)
        cfg = upgrade_config(ckpt["config"])
        if preset is not None and preset != cfg["preset"]:
            raise ValueError(f"resume: the run in {run_dir} used preset {cfg['preset']!r}, not {preset!r}")
        probe = resolve_config(cfg["preset"], **{**{k: cfg[k] for k in cfg if k != "preset"}, **given})
        changed = sorted(k for k in probe if probe[k] != cfg[k] and k not in _RESUMABLE_CHANGES)
        if changed:
            raise ValueError(f"resume: {', '.join(f'{k}={probe[k]!r} (run has {cfg[k]!r})' for k in changed)} "
                             f"differ from the run in {run_dir}; only {', '.join(_RESUMABLE_CHANGES)} may change")
        cfg = probe
    else:
        if ckpt_path.exists():
            raise ValueError(f"{run_dir} already holds a run ({CHECKPOINT_NAME}); pass resume=True (--resume) "
                             "to continue it, or choose another out_dir (--out)")
        cfg = resolve_config(preset_name, **given)

    data = _load_data(cfg)
    device = torch.device(cfg["device"])
    images = data.images.to(device)
    if ckpt is not None and tuple(ckpt["image_shape"]) != tuple(data.shape):
        raise ValueError(f"resume: the run was trained on images of shape {tuple(ckpt['image_shape'])}, "
                         f"the data set now gives {tuple(data.shape)}")
    # Initialise from the seed without disturbing the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model = JEBM.from_config(cfg, data.shape).to(device)
        trainer = make_trainer(model, cfg)
    gen = jk.PhiloxGenerator(cfg["seed"])
    done = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        for name, mod in trainer.modules().items():
            mod.load_state_dict(ckpt["modules"][name])
        for name, opt in trainer.optimizers().items():
            opt.load_state_dict(ckpt["optimizers"][name])
        for name, buf in trainer.buffers().items():
            buf.load_state_dict({k: (v if not isinstance(v, list) else [t.to(device) for t in v])
                                 for k, v in ckpt.get("buffers", {}).get(name, {}).items()})
        gen = jk.PhiloxGenerator(*ckpt["philox"])
        done = int(ckpt["iteration"])
    model.train()

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    metrics_path = run_dir / "metrics.jsonl"
    _truncate_metrics(metrics_path, done)

    last_good = {"iteration": done, "path": ckpt_path if ckpt is not None else None}

    def checkpoint(iteration: int) -> None:
        mods = [model, *trainer.modules().values()]
        if not _params_finite(mods):
            return  # never overwrite the last good checkpoint with non-finite parameters
        save_checkpoint({
            "format_version": FORMAT_VERSION,
            "config": cfg,
            "iteration": iteration,
            "image_shape": list(data.shape),
            "model": model.state_dict(),
            "modules": {k: m.state_dict() for k, m in trainer.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in trainer.optimizers().items()},
            "buffers": {k: b.state_dict() for k, b in trainer.buffers().items()},
            "philox": [gen.seed, gen.offset],
            "torch_version": str(torch.__version__),
        }, ckpt_path)
        last_good.update(iteration=iteration, path=ckpt_path)

    if ckpt is None:
        checkpoint(0)  # a good checkpoint exists from the start, whatever happens next

    total = cfg["iters"]
    fixed_x = images[: min(16, images.shape[0])]
    snap_seed = cfg["seed"] ^ _SNAPSHOT_SEED_XOR
    pngs = {"samples": None, "reconstructions": None}
    history: list[dict] = []
    bar = _progress(total, done, progress)
    with open(metrics_path, "a") as mfile:
        t_last_log = time.perf_counter()
        it_last_log = done
        it = done
        try:
            while it < total:
                idx = batch_indices(images.shape[0], cfg["batch_size"], cfg["seed"], it)
                x = images[idx]
                values, bad = trainer.step(x, generator=gen, backend=cfg["backend"])
                it += 1
                if bad is not None:
                    mfile.write(json.dumps({"iter": it, "diverged": bad, **_jsonable(values)}) + "\n")
                    mfile.flush()
                    path = last_good["path"]
                    raise TrainingDiverged(
                        f"training diverged at iteration {it}: {bad} = {values[bad]} "
                        f"(losses {', '.join(f'{k}={v:.4g}' for k, v in values.items())}); no update was applied; "
                        f"the last good checkpoint (iteration {last_good['iteration']}) is kept at {path}. "
                        "Try smaller Langevin step sizes or learning rates.", it, path, bad)
                if it % cfg["log_every"] == 0 or it == total:
                    now = time.perf_counter()
                    line = {"iter": it, **values, "sec_per_iter": (now - t_last_log) / (it - it_last_log),
                            "philox_offset": gen.offset}
                    t_last_log, it_last_log = now, it
                    mfile.write(json.dumps(_jsonable(line)) + "\n")
                    mfile.flush()
                    history.append(line)
                    bar.set_postfix({k: f"{values[k]:.3g}" for k in _bar_keys(values)}, refresh=False)
                bar.update(1)
                if it % cfg["ckpt_every"] == 0 or it == total:
                    checkpoint(it)
                    if last_good["iteration"] != it:
                        raise TrainingDiverged(
                            f"training diverged at iteration {it}: parameters became NaN or inf; the last good "
                            f"checkpoint (iteration {last_good['iteration']}) is kept at {last_good['path']}",
                            it, last_good["path"], "parameters")
                if cfg["sample_every"] and it % cfg["sample_every"] == 0 and it != total:
                    _snapshot(model, trainer, fixed_x, cfg, run_dir, f"_{it:06d}", snap_seed)
        finally:
            bar.close()
    if done < total or not (run_dir / "samples.png").exists():
        pngs = _snapshot(model, trainer, fixed_x, cfg, run_dir, "", snap_seed)
    else:
        pngs = {"samples": run_dir / "samples.png", "reconstructions": run_dir / "reconstructions.png"}
    all_lines = _read_metrics(metrics_path)
    _plot_curves(all_lines, run_dir / "loss_curves.png")
    last = all_lines[-1] if all_lines else {}
    tail = all_lines[-10:]
    recent = {k: sum(l[k] for l in tail) / len(tail) for k in last
              if all(isinstance(l.get(k), (int, float)) for l in tail) and k != "iter"}
    model.eval()
    return TrainResult(run_dir=run_dir, checkpoint=ckpt_path, iterations=it,
                       metrics=last, recent=recent, wall_time_s=time.perf_counter() - start_wall,
                       metrics_path=metrics_path, samples_png=pngs["samples"],
                       reconstructions_png=pngs["reconstructions"], config=cfg)


def _bar_keys(values: dict) -> list[str]:
    keys = ["loss_recon", "neg_elbo", "loss_ebm", "F_pos", "F_neg"]
    return [k for k in keys if k in values]


def _jsonable(d: dict) -> dict:
    # JSON has no NaN/inf; write them as strings so the file stays parseable by strict readers.
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in d.items()}


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc="jebm train", dynamic_ncols=True,
                unit="it")


def _truncate_metrics(path: Path, done: int) -> None:
    """Drop lines past the checkpoint's iteration: a run killed after logging iteration k but before
    checkpointing it repeats those iterations on resume, and must not log them twice."""
    if not path.exists():
        return
    keep = [l for l in _read_metrics(path) if int(l.get("iter", 0)) <= done]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(l) + "\n" for l in keep))
    os.replace(tmp, path)


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        raw = raw.strip()
        if raw:
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill mid-write
    return lines


def _snapshot(model, trainer, fixed_x, cfg, run_dir: Path, suffix: str, snap_seed: int) -> dict:
    """samples<suffix>.png and reconstructions<suffix>.png from a fixed Philox stream (the same
    noise at every snapshot, so snapshots show the model changing, not the noise)."""
    from .images import save_grid, save_rows
    g = jk.PhiloxGenerator(snap_seed)
    was_training = model.training
    model.eval()
    try:
        samples = model.generate(cfg["n_samples"], generator=g, backend=cfg["backend"])
        z = trainer.posterior(fixed_x, generator=g, backend=cfg["backend"])
        with torch.no_grad():
            recon = model.decode(z[0])
        if not (torch.isfinite(samples).all() and torch.isfinite(recon).all()):
            return {"samples": None, "reconstructions": None}
        s = save_grid(samples, run_dir / f"samples{suffix}.png", nrow=int(math.ceil(math.sqrt(cfg["n_samples"]))))
        r = save_rows([fixed_x, recon], run_dir / f"reconstructions{suffix}.png")
    finally:
        model.train(was_training)
    return {"samples": s, "reconstructions": r}


def _plot_curves(lines: list[dict], path: Path) -> None:
    """loss_curves.png: every loss/energy metric against the iteration."""
    keys = [k for k in ("loss_recon", "neg_elbo", "kl", "loss_beta", "loss_ebm", "F_pos", "F_neg")
            if any(isinstance(l.get(k), (int, float)) for l in lines)]
    if not lines or not keys:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 2.6), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(l["iter"], l[k]) for l in lines if isinstance(l.get(k), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.8)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
