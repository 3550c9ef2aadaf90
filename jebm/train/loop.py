"""``jebm.train(...)``: the training loop shared by both schemes.

What a run writes into its folder (``out_dir``):
- ``config.json``: the resolved run config;
- ``metrics.jsonl``: one JSON object per logged iteration (losses, energies, seconds per iteration,
  the run's ``precision``, and once a ``precision_note`` when a chain ran in another precision than
  asked); event lines carry ``diverged`` or ``rollback``;
- ``checkpoint.pt``: written atomically every ``ckpt_every`` iterations (``checkpoint_every``,
  ``--checkpoint-every``), at the start and at the end; the checkpoint it replaces is kept as
  ``checkpoint.prev.pt`` and both carry a digest checked on load (``jebm.train.checkpoint``);
- ``samples.png`` / ``reconstructions.png`` (and ``*_<iter>.png`` every ``sample_every``
  iterations), ``loss_curves.png``.

Determinism and resume: the model is initialised from ``seed`` (without touching the caller's
global RNG); all sampling noise (chain starts, Langevin steps, q's reparameterisation) comes from
one ``jebm_kernels.PhiloxGenerator`` per rank; the data order of epoch e is a permutation drawn
from a generator seeded by (seed, e). A checkpoint holds the model, every trainer module and
optimiser, the persistent chains, every rank's Philox (seed, offset) and global RNG states
(``jebm.train.rng_state``), the data order (seed and next iteration) and the rollback state.
``resume=True`` continues from the newest checkpoint that verifies, so a run killed at any moment,
mid-write included, and resumed ends with the same parameters as an uninterrupted run: bit for bit
on the CPU (the reference and cpu backends are deterministic; tests/test_train_resume.py), on
CUDA as far as the kernels used are deterministic.

Distributed: under ``torchrun`` the run is data-parallel (``jebm.train.distributed``); ``batch_size``
is the global batch, rank 0 writes every file.

Divergence: when a loss or energy is NaN or inf no update is applied and the run raises
``TrainingDiverged`` naming the iteration; checkpoints are only ever written from finite
parameters, so the one on disk is the last good state. With ``rollback_retries=N`` (off: 0) the
run instead reloads that state, multiplies the learning rates by ``rollback_lr_factor`` and the
trainer's Langevin step sizes (``Trainer.sampling``; the model's config is never changed) by
``rollback_step_factor`` and retries, up to N times; each rollback is a
``metrics.jsonl`` line ``{"iter": <reloaded iteration>, "rollback": k, "diverged_at": ...,
"lr_scale": ..., "step_scale": ...}`` and later lines carry the scales.

GPU path (``jebm.train.device_step``): with the model on CUDA an iteration runs its
chains from CUDA graphs and reads nothing on the host; the metrics are read, and checked for
divergence, every ``log_every`` iterations and at every checkpoint, snapshot and the last
iteration. A divergence is then handled as of its first non-finite iteration (same log lines,
same checkpoint to roll back to); the iterations after it up to the read were computed and
discarded. With ``JEBM_DEVICE_PATH=0`` every iteration is checked on the host, on CUDA too.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import jebm_kernels as jk

from ..atomic import atomic_write
from ..evaluate.images import save_grid, save_rows
from . import distributed as dp
from . import rng_state
from .build import build_model, load_training_data
from .checkpoint import (
    CHECKPOINT_NAME,
    PREVIOUS_NAME,
    newest_good_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from .data_order import DistributedBatchSampler
from .device_step import DeviceMetrics, must_read
from .metrics_log import MetricsLog, plot_curves, read_metrics
from .presets import resolve_config, upgrade_config
from .run_state import RunState

__all__ = ["train", "TrainResult", "TrainingDiverged"]

# Keys that may differ between a run and its resumption (they do not change the math; backend,
# device and precision change only the rounding: the state is float32 in every precision, so a bf16
# run can go on in fp32 where no bf16 hardware is at hand).
_RESUMABLE_CHANGES = ("iters", "backend", "device", "precision", "keep_checkpoints", "log_every", "ckpt_every",
                      "sample_every", "data_root", "n_samples", "rollback_retries", "rollback_lr_factor",
                      "rollback_step_factor")
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
    rollbacks: int = 0              # divergences rolled back (rollback_retries)
    world_size: int = 1             # processes that trained it (torchrun)
    rank: int = 0                   # this process's rank (only rank 0 wrote the files)


def _params_finite(modules) -> bool:
    return all(bool(torch.isfinite(p).all()) for m in modules for p in m.parameters())


def train(dataset: str | None = None, scheme: str | None = None, iters: int | None = None, out_dir=None,
          backend: str | None = None, seed: int | None = None, resume: bool = False, preset: str | None = None,
          *, data_root=None, progress: bool = True, checkpoint_every: int | None = None,
          **overrides) -> TrainResult:
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
        resume: continue the run in ``out_dir`` from its newest good checkpoint. Arguments left as
            None are taken from the checkpoint; ones given must match it (except iters, backend,
            logging, checkpointing and rollback settings).
        preset: "default", "cvpr-cifar10" or "iccv-svhn" (``jebm.train.presets.PRESETS``).
        data_root: path for the data sets that read one.
        progress: show a tqdm progress bar with live losses.
        checkpoint_every: write a checkpoint every N iterations (the config key ``ckpt_every``).
        **overrides: any run-config key (``jebm.train.presets.RUN_KEYS``), e.g. ``dims=[32, 16]``,
            ``rollback_retries=3``.

    Under ``torchrun`` (WORLD_SIZE > 1) the run is data-parallel: see ``jebm.train.distributed``.

    Raises:
        TrainingDiverged: a loss or energy became NaN/inf (the last good checkpoint is kept) and no
            rollback was left.
        ValueError / TypeError: bad arguments, or ``out_dir`` already holds a run and resume=False.
    """
    start_wall = time.perf_counter()
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    if checkpoint_every is not None:
        if overrides.get("ckpt_every", checkpoint_every) != checkpoint_every:
            raise ValueError(f"checkpoint_every={checkpoint_every!r} and ckpt_every={overrides['ckpt_every']!r} "
                             "name the same setting: give one")
        overrides["ckpt_every"] = checkpoint_every
    given = {k: v for k, v in dict(dataset=dataset, scheme=scheme, iters=iters, backend=backend, seed=seed,
                                   data_root=None if data_root is None else str(data_root)).items()
             if v is not None}
    given.update(overrides)
    preset_name = preset if preset is not None else "default"
    if out_dir is None:
        out_dir = Path("runs") / f"{preset_name}-{given.get('dataset', 'digits')}-{given.get('scheme', 'mle')}"
    run_dir = Path(out_dir)

    ckpt, damaged_newest = None, False
    if resume:
        if not any((run_dir / n).is_file() for n in (CHECKPOINT_NAME, PREVIOUS_NAME)):
            raise ValueError(f"resume=True but {run_dir / CHECKPOINT_NAME} does not exist: nothing to resume")
        ckpt, ckpt_file, skipped = newest_good_checkpoint(run_dir)
        damaged_newest = any(why.startswith(str(run_dir / CHECKPOINT_NAME)) for why in skipped)
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
        if (run_dir / CHECKPOINT_NAME).exists() or (run_dir / PREVIOUS_NAME).exists():
            raise ValueError(f"{run_dir} already holds a run ({CHECKPOINT_NAME}); pass resume=True (--resume) "
                             "to continue it, or choose another out_dir (--out)")
        cfg = resolve_config(preset_name, **given)

    ctx, device = dp.setup(cfg["device"])
    try:
        return _run(cfg, run_dir, ckpt, damaged_newest, ctx, device, progress, start_wall)
    finally:
        dp.teardown(ctx)


def _run(cfg, run_dir: Path, ckpt, damaged_newest: bool, ctx: dp.DistContext, device, progress: bool,
         start_wall) -> TrainResult:
    ckpt_path = run_dir / CHECKPOINT_NAME
    data = load_training_data(cfg)
    images = data.images.to(device)
    model, trainer = build_model(cfg, data.shape, device)
    state = RunState(cfg, model, trainer, ctx, device, data.shape, images.shape[0])
    sampler = DistributedBatchSampler(images.shape[0], cfg["batch_size"], cfg["seed"], rank=ctx.rank,
                                         world_size=ctx.world_size)
    done = 0
    if ckpt is not None:
        state.check_compatible(ckpt, run_dir)
        done = state.restore(ckpt)
    model.train()
    step = dp.make_step(trainer, ctx, device)
    # on the GPU path the metrics stay on the device between read points (device_step.py)
    device_metrics = DeviceMetrics() if getattr(trainer, "device_path", None) is not None and not ctx.enabled else None

    dp.barrier(ctx)  # every rank has read the run folder before rank 0 writes to it
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
        if damaged_newest and ckpt_path.exists():
            # checkpoint.pt is damaged: set it aside, or the next write would rotate it over the good one
            os.replace(ckpt_path, ckpt_path.with_name(CHECKPOINT_NAME + ".damaged"))
        atomic_write(run_dir / "config.json", json.dumps(cfg, indent=2, sort_keys=True))
    log = MetricsLog(run_dir / "metrics.jsonl", ctx.is_main)
    log.truncate(done)

    last_good = {"iteration": done, "path": ckpt_path if ckpt is not None else None}
    track_scales = cfg["rollback_retries"] > 0

    def checkpoint(iteration: int) -> bool:
        """Write the checkpoint of ``iteration`` (rank 0; collective); False (nothing written)
        when the parameters are not finite: the last good checkpoint is never overwritten."""
        if not _params_finite(state.modules()):  # the same on every rank: the replicas agree
            return False
        dp.check_replicas_agree(state.modules(), ctx)
        obj = state.to_checkpoint(iteration)
        if obj is not None:
            save_checkpoint(obj, ckpt_path)
        dp.barrier(ctx)  # the file is complete before any rank may reload it (rollback)
        last_good.update(iteration=iteration, path=ckpt_path)
        return True

    def diverged(it: int, metric: str, message: str) -> int:
        """Raise TrainingDiverged, or roll back to the last good checkpoint and return its iteration."""
        if state.rollback["count"] >= cfg["rollback_retries"]:
            raise TrainingDiverged(message, it, last_good["path"], metric)
        good, _, _ = newest_good_checkpoint(run_dir)
        back_to = state.restore(good, keep_rollback=True)
        if state.rng is not None:  # (format-1 checkpoints hold none)
            rng_state.restore(state.rng)
        state.scale_down(cfg["rollback_lr_factor"], cfg["rollback_step_factor"])
        log.truncate(back_to)
        log.write({"iter": back_to, "rollback": state.rollback["count"], "diverged_at": it, "diverged": metric,
                   "lr_scale": state.rollback["lr_scale"], "step_scale": state.rollback["step_scale"]})
        history[:] = [h for h in history if h["iter"] <= back_to]
        bar.reset(total=total)
        bar.update(back_to)
        return back_to

    total = cfg["iters"]
    fixed_x = images[: min(16, images.shape[0])]
    snap_seed = cfg["seed"] ^ _SNAPSHOT_SEED_XOR
    history: list[dict] = []
    bar = _progress(total, done, progress and ctx.is_main)
    it = done
    try:
        with rng_state.isolated_global_rng(state.rng, dp.rank_seed(cfg["seed"], ctx.rank)):
            if ckpt is None:
                checkpoint(0)  # a good checkpoint exists from the start, whatever happens next
            t_last_log, it_last_log = time.perf_counter(), it
            while it < total:
                x = images[sampler.batch(it)]
                values, bad = step(x, generator=state.gen, backend=cfg["backend"])
                it += 1
                if device_metrics is not None:  # the GPU path: read (and check) only at read points
                    device_metrics.add(it, values)
                    if not must_read(it, cfg, total):
                        bar.update(1)
                        continue
                    values, bad, it = device_metrics.read(it)  # on divergence: the first bad iteration
                if bad is not None:
                    log.write({"iter": it, "diverged": bad, **values})
                    it = diverged(it, bad, (
                        f"training diverged at iteration {it}: {bad} = {values[bad]} "
                        f"(losses {', '.join(f'{k}={v:.4g}' for k, v in values.items())}); no update was applied; "
                        f"the last good checkpoint (iteration {last_good['iteration']}) is kept at "
                        f"{last_good['path']}. "
                        "Try smaller Langevin step sizes or learning rates, or rollback_retries=N."))
                    t_last_log, it_last_log = time.perf_counter(), it
                    continue
                if it % cfg["log_every"] == 0 or it == total:
                    now = time.perf_counter()
                    line = {"iter": it, **values, "sec_per_iter": (now - t_last_log) / (it - it_last_log),
                            "philox_offset": state.gen.offset, "precision": trainer.precision}
                    notes = trainer.new_precision_notes()
                    if notes:  # a chain ran in another precision than asked (said once, when first seen)
                        line["precision_note"] = "; ".join(f"{k} chain: {v}" for k, v in notes.items())
                    if track_scales:
                        line.update(lr_scale=state.rollback["lr_scale"], step_scale=state.rollback["step_scale"])
                    t_last_log, it_last_log = now, it
                    log.write(line)
                    history.append(line)
                    bar.set_postfix({k: f"{values[k]:.3g}" for k in _bar_keys(values)}, refresh=False)
                bar.update(1)
                if it % cfg["ckpt_every"] == 0 or it == total:
                    if not checkpoint(it):
                        it = diverged(it, "parameters", (
                            f"training diverged at iteration {it}: parameters became NaN or inf; the last good "
                            f"checkpoint (iteration {last_good['iteration']}) is kept at {last_good['path']}"))
                        t_last_log, it_last_log = time.perf_counter(), it
                        continue
                if ctx.is_main and cfg["sample_every"] and it % cfg["sample_every"] == 0 and it != total:
                    log.tb.images(it, _snapshot(model, trainer, fixed_x, cfg, run_dir, f"_{it:06d}", snap_seed))
    finally:
        bar.close()
        log.close()

    pngs = {"samples": None, "reconstructions": None}
    if ctx.is_main:
        if done < total or not (run_dir / "samples.png").exists():
            pngs = _snapshot(model, trainer, fixed_x, cfg, run_dir, "", snap_seed)
            log.tb.images(it, pngs)
        else:
            pngs = {"samples": run_dir / "samples.png", "reconstructions": run_dir / "reconstructions.png"}
        plot_curves(read_metrics(run_dir / "metrics.jsonl"), run_dir / "loss_curves.png")
    dp.barrier(ctx)
    all_lines = [l for l in read_metrics(run_dir / "metrics.jsonl") if "sec_per_iter" in l]
    last = all_lines[-1] if all_lines else {}
    tail = all_lines[-10:]
    recent = {k: sum(l[k] for l in tail) / len(tail) for k in last
              if all(isinstance(l.get(k), (int, float)) for l in tail) and k != "iter"}
    model.eval()
    return TrainResult(run_dir=run_dir, checkpoint=ckpt_path, iterations=it,
                       metrics=last, recent=recent, wall_time_s=time.perf_counter() - start_wall,
                       metrics_path=run_dir / "metrics.jsonl", samples_png=pngs["samples"],
                       reconstructions_png=pngs["reconstructions"], config=cfg,
                       rollbacks=state.rollback["count"], world_size=ctx.world_size, rank=ctx.rank)


def _bar_keys(values: dict) -> list[str]:
    keys = ["loss_recon", "neg_elbo", "loss_ebm", "F_pos", "F_neg"]
    return [k for k in keys if k in values]


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc="jebm train", dynamic_ncols=True,
                unit="it")


def _snapshot(model, trainer, fixed_x, cfg, run_dir: Path, suffix: str, snap_seed: int) -> dict:
    """samples<suffix>.png and reconstructions<suffix>.png from a fixed Philox stream (the same
    noise at every snapshot, so snapshots show the model changing, not the noise)."""
    g = jk.PhiloxGenerator(snap_seed)
    was_training = model.training
    model.eval()
    try:
        samples = model.generate(cfg["n_samples"], generator=g, backend=cfg["backend"], **trainer.sampling.prior())
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


