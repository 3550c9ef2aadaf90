"""TensorBoard events for a training run, when the ``tensorboard`` package is installed
(``pip install -e ".[tensorboard]"``); without it every method is a no-op, so the training loop
calls them unconditionally.

The events go into the run folder itself (``events.out.tfevents.*`` beside ``metrics.jsonl``),
so ``tensorboard --logdir runs`` lists every run by its folder name. Scalars: every number of a
``metrics.jsonl`` line, under the same key, at step = its ``iter``. Images: the sample and
reconstruction grids, under ``samples`` and ``reconstructions``, whenever training writes them.

``open(resume_from=k)`` starts the writer with ``purge_step`` = k + 1 when k > 0, so events that a
killed (or rolled-back) run logged past iteration k are hidden, as ``metrics.jsonl`` drops those
lines; the training loop calls it wherever it truncates ``metrics.jsonl``.
"""
from __future__ import annotations

import math
from pathlib import Path

__all__ = ["TBWriter", "tensorboard_available"]


def tensorboard_available() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401  (raises ImportError without the tensorboard package)
    except ImportError:
        return False
    return True


class TBWriter:
    """Events into ``log_dir`` (a run folder); ``log_dir=None`` or no tensorboard: does nothing."""

    def __init__(self, log_dir):
        self.log_dir = Path(log_dir) if log_dir is not None and tensorboard_available() else None
        self.writer = None

    @property
    def enabled(self) -> bool:
        return self.log_dir is not None

    def _new_writer(self, purge_step=None):
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def open(self, resume_from: int = 0) -> None:
        """(Re)start the writer; events at steps > ``resume_from`` from earlier writers are purged."""
        if self.log_dir is None:
            return
        self.close()
        self.writer = self._new_writer(resume_from + 1 if resume_from else None)

    def scalars(self, values: dict, step: int | None = None) -> None:
        """Every finite number of ``values`` (a metrics line) at ``step`` (default ``values["iter"]``)."""
        if self.writer is None:
            return
        step = values.get("iter") if step is None else step
        if not isinstance(step, int):
            return
        for k, v in values.items():
            # Skip the step itself and non-numbers (a diverged value is written to the JSON as a string).
            if k != "iter" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(k, v, step)

    def images(self, step: int, pngs: dict | None) -> None:
        """``pngs``: name -> PNG path (or None); each file becomes one image event at ``step``.
        Also after ``close`` (the final grids are drawn after the loop): then through a short-lived
        writer, which adds one more events file to the folder."""
        if self.log_dir is None or not pngs:
            return
        import numpy as np
        from PIL import Image
        writer = self.writer if self.writer is not None else self._new_writer()
        try:
            for name, path in pngs.items():
                if path is not None and Path(path).is_file():
                    with Image.open(path) as im:
                        arr = np.asarray(im.convert("RGB"))
                    writer.add_image(name, arr, step, dataformats="HWC")
        finally:
            if writer is not self.writer:
                writer.close()
            else:
                writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
