"""A run's ``metrics.jsonl``: one JSON object per logged iteration, written by rank 0 (with its
TensorBoard twin), read back, cut back to a checkpoint's iteration on resume or rollback, and drawn
as ``loss_curves.png``."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..atomic import atomic_write
from .tensorboard import TBWriter

__all__ = ["MetricsLog", "read_metrics", "truncate_metrics", "jsonable", "plot_curves"]


class MetricsLog:
    """metrics.jsonl, written by rank 0 only; ``truncate`` drops lines past an iteration. Its
    TensorBoard twin ``tb`` (``jebm.train.tensorboard``; a no-op without the tensorboard package) follows it."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled, self.file = path, enabled, None
        self.tb = TBWriter(path.parent if enabled else None)

    def truncate(self, done: int) -> None:
        if self.enabled:
            self.close()
            truncate_metrics(self.path, done)
            self.file = open(self.path, "a")
            self.tb.open(resume_from=done)

    def write(self, line: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(jsonable(line)) + "\n")
            self.file.flush()
            self.tb.scalars(line)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.tb.close()


def jsonable(d: dict) -> dict:
    # JSON has no NaN/inf; write them as strings so the file stays parseable by strict readers.
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in d.items()}


def truncate_metrics(path: Path, done: int) -> None:
    """Drop lines past the checkpoint's iteration: a run killed after logging iteration k but before
    checkpointing it repeats those iterations on resume, and must not log them twice."""
    if not path.exists():
        return
    keep = [l for l in read_metrics(path) if int(l.get("iter", 0)) <= done]
    atomic_write(path, "".join(json.dumps(l) + "\n" for l in keep))


def read_metrics(path: Path) -> list[dict]:
    """Every line of a metrics.jsonl that parses (a line cut short by a kill is skipped)."""
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


def plot_curves(lines: list[dict], path: Path) -> None:
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
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
