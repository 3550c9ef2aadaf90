"""Checkpoints: written atomically, verified on load, the previous one kept.

A checkpoint holds only tensors and plain Python values (the run config as a dict, state dicts,
optimizer state dicts, RNG states, the Philox (seed, offset) as ints), read back with
``torch.load(weights_only=True)``, so loading one never runs pickled code: a pickle that names any
other object is refused (a ValueError, nothing executed).

Atomic write (``jebm.atomic.atomic_write``): the bytes go to a temporary file in the same folder
and are fsync'ed; the current ``checkpoint.pt`` becomes ``checkpoint.prev.pt`` (a hard link first,
so ``checkpoint.pt`` exists at every moment), then ``os.replace`` renames the temporary file over
``checkpoint.pt`` (atomic on POSIX and Windows); the folder is fsync'ed so the renames survive a
crash. A process killed at any moment leaves the last good checkpoint, and the one before it,
intact.

Verification: format 2 embeds ``sha256``, a digest of everything else in the checkpoint (every
tensor's dtype, shape and bytes, every value), recomputed on load. A file cut short fails in
``torch.load``; one with flipped bytes fails the digest. ``newest_good_checkpoint`` picks the
newest of the two files that passes, which is what ``--resume`` continues from.
"""
from __future__ import annotations

import hashlib
import os
import time
import warnings
from pathlib import Path

import torch

from ..atomic import TEMP_MARK, atomic_write

__all__ = ["CHECKPOINT_NAME", "PREVIOUS_NAME", "FORMAT_VERSION", "save_checkpoint", "load_checkpoint",
           "find_checkpoint", "newest_good_checkpoint", "content_digest", "remove_stale_temporaries",
           "kept_checkpoints"]

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.prev.pt"
FORMAT_VERSION = 2
_READABLE = (1, 2)  # 1: before the digest; read, but there is nothing to verify it against
_REQUIRED = ("format_version", "config", "iteration", "image_shape", "model", "optimizers", "philox")
# Test-only: "<iteration>:<signal file>" makes save_checkpoint create the signal file and sleep
# just before the renames of that iteration's checkpoint, so a test can SIGKILL the process
# there deterministically (tests/test_train_resume.py).
_PAUSE_ENV = "JEBM_TEST_PAUSE_CHECKPOINT"


def content_digest(obj) -> str:
    """sha256 over a canonical walk of ``obj`` (dicts in key order, tensors as dtype, shape and
    bytes); equal for a checkpoint before saving and after loading."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, v) -> None:
    if torch.is_tensor(v):
        t = v.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(v, dict):
        h.update(f"D{len(v)}".encode())
        for k in sorted(v, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, k)
            _feed(h, v[k])
    elif isinstance(v, (list, tuple)):
        h.update(f"{'L' if isinstance(v, list) else 'U'}{len(v)}".encode())
        for item in v:
            _feed(h, item)
    else:  # str, int, float (repr round-trips exactly), bool, None, torch.dtype / device
        h.update(f"{type(v).__name__}:{v!r};".encode())


def save_checkpoint(obj: dict, path: str | os.PathLike, *, keep_previous: bool = True) -> Path:
    """Write ``obj`` plus its ``sha256`` to ``path`` atomically, keeping the file it replaces as
    ``checkpoint.prev.pt`` beside it (``keep_previous``)."""
    path = Path(path)
    payload = {k: v for k, v in obj.items() if k != "sha256"}
    payload["sha256"] = content_digest(payload)

    def before_replace():
        _test_pause(payload)
        if keep_previous and path.exists():
            _keep_as_previous(path)

    written = atomic_write(path, lambda f: torch.save(payload, f), fsync=True, before_replace=before_replace)
    config = payload.get("config")
    keep = config.get("keep_checkpoints", 0) if isinstance(config, dict) else 0
    if keep and isinstance(payload.get("iteration"), int) and payload["iteration"] > 0:
        _keep_numbered(written, payload["iteration"], keep)
    return written


_KEPT_PREFIX = "checkpoint_"


def _keep_numbered(path: Path, iteration: int, keep: int) -> None:
    """Keep the checkpoint just written as ``checkpoint_<iteration>.pt`` too (the run config's
    ``keep_checkpoints``: the papers average their outlier figures over a run's last checkpoints),
    and delete the numbered ones beyond the newest ``keep``. Iteration 0 (the untrained model) is
    never kept."""
    numbered = path.with_name(f"{_KEPT_PREFIX}{iteration:07d}.pt")
    link = numbered.with_name(f".{numbered.name}{TEMP_MARK}{os.getpid()}")
    try:
        if link.exists():
            link.unlink()
        os.link(path, link)  # the same bytes, no copy (checkpoint.pt is replaced, never written in place)
        os.replace(link, numbered)
    except OSError:  # no hard links on this file system: a copy
        if link.exists():
            link.unlink()
        atomic_write(numbered, path.read_bytes())
    for old in kept_checkpoints(path.parent)[:-keep]:
        try:
            old.unlink()
        except OSError:
            pass


def kept_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The numbered checkpoints a run with ``keep_checkpoints`` > 0 kept, oldest first."""
    found = []
    for p in Path(run_dir).glob(f"{_KEPT_PREFIX}*.pt"):
        digits = p.stem[len(_KEPT_PREFIX):]
        if digits.isdigit():
            found.append((int(digits), p))
    return [p for _, p in sorted(found)]


def _keep_as_previous(path: Path) -> None:
    prev = path.with_name(PREVIOUS_NAME)
    link = prev.with_name(f".{prev.name}{TEMP_MARK}{os.getpid()}")
    try:
        if link.exists():
            link.unlink()
        os.link(path, link)   # prev becomes the same file; checkpoint.pt never disappears
        os.replace(link, prev)
    except OSError:
        # No hard links here (some network / FAT file systems): rename instead. Until the new file
        # is renamed in, only checkpoint.prev.pt exists, and newest_good_checkpoint takes it.
        if link.exists():
            link.unlink()
        os.replace(path, prev)


def _test_pause(payload: dict) -> None:
    spec = os.environ.get(_PAUSE_ENV)
    if not spec:
        return
    it, _, signal_file = spec.partition(":")
    if str(payload.get("iteration")) == it:
        Path(signal_file).write_text(str(os.getpid()))
        time.sleep(600)


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file of a run folder (``checkpoint.pt``, or ``checkpoint.prev.pt`` when a
    crash left only that), or ``path`` itself when it is a file."""
    p = Path(path)
    if p.is_dir():
        for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
            if (p / name).is_file():
                return p / name
        raise ValueError(f"{path}: no {CHECKPOINT_NAME} in this folder; expected a run folder written by "
                         "`jebm train` or a checkpoint file")
    if not p.is_file():
        raise ValueError(f"{path}: no such run folder or checkpoint file")
    return p


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read and verify a checkpoint file; for a run folder, its newest good checkpoint.

    Raises ValueError (never runs pickled code) when the file is truncated or damaged, is not a
    jebm checkpoint, or has a format this version cannot read."""
    p = Path(path)
    if p.is_dir():
        return newest_good_checkpoint(p, map_location=map_location)[0]
    return _read_verified(find_checkpoint(p), map_location)


def _read_verified(p: Path, map_location) -> dict:
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or a pickle naming forbidden objects
        raise ValueError(f"{p}: not a readable jebm checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); if it is damaged, resume from "
                         f"{PREVIOUS_NAME} beside it") from exc
    if not isinstance(obj, dict) or any(k not in obj for k in _REQUIRED):
        missing = [k for k in _REQUIRED if not isinstance(obj, dict) or k not in obj]
        raise ValueError(f"{p}: not a jebm checkpoint (missing {missing})")
    version = obj["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version not in _READABLE:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ValueError(f"{p}: checkpoint format {version!r} is not one this jebm reads ({_READABLE[0]} to "
                         f"{_READABLE[-1]})" + ("; it was written by a newer jebm: upgrade jebm to load it"
                                                if newer else ""))
    digest = obj.get("sha256")
    if version >= 2 or digest is not None:
        if not isinstance(digest, str):
            raise ValueError(f"{p}: checkpoint format {version} lacks its sha256 digest; the file is damaged")
        actual = content_digest({k: v for k, v in obj.items() if k != "sha256"})
        if actual != digest:
            raise ValueError(f"{p}: checkpoint content does not match its sha256 digest (damaged on disk); "
                             f"resume from {PREVIOUS_NAME} beside it")
    _check_types(p, obj)
    return obj


def _check_types(p: Path, obj: dict) -> None:
    ok_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
    problems = []
    if not isinstance(obj["config"], dict):
        problems.append("config is not a dict")
    if not ok_int(obj["iteration"]) or obj["iteration"] < 0:
        problems.append(f"iteration {obj['iteration']!r} is not an int >= 0")
    if not isinstance(obj["model"], dict) or not all(torch.is_tensor(v) for v in obj["model"].values()):
        problems.append("model is not a state dict of tensors")
    if not isinstance(obj["optimizers"], dict):
        problems.append("optimizers is not a dict")
    ph = obj["philox"]
    if not (isinstance(ph, (list, tuple)) and len(ph) == 2 and all(ok_int(v) and v >= 0 for v in ph)):
        problems.append(f"philox {ph!r} is not [seed, offset]")
    if problems:
        raise ValueError(f"{p}: not a valid jebm checkpoint ({'; '.join(problems)})")


def newest_good_checkpoint(run_dir: str | os.PathLike, map_location="cpu") -> tuple[dict, Path, list[str]]:
    """(checkpoint, its file, why each skipped file was skipped) for the newest of
    ``checkpoint.pt`` / ``checkpoint.prev.pt`` in ``run_dir`` that loads and verifies.

    Raises ValueError when neither does, saying why for each."""
    run_dir = Path(run_dir)
    found, skipped = [], []
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
        p = run_dir / name
        if not p.is_file():
            continue
        try:
            found.append((_read_verified(p, map_location), p))
        except ValueError as exc:
            skipped.append(str(exc))
    if not found:
        if not skipped:
            raise ValueError(f"{run_dir}: no {CHECKPOINT_NAME} in this folder; expected a run folder written by "
                             "`jebm train` or a checkpoint file")
        raise ValueError(f"{run_dir}: no good checkpoint: " + " | ".join(skipped))
    ckpt, p = max(found, key=lambda cp: cp[0]["iteration"])
    for why in skipped:
        warnings.warn(f"skipped a damaged checkpoint: {why}", RuntimeWarning, stacklevel=2)
    return ckpt, p, skipped


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed writer left in ``run_dir`` (never read: a temporary
    file may be incomplete). Returns what was removed."""
    removed = []
    for p in Path(run_dir).glob(f".checkpoint*{TEMP_MARK}*"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed
