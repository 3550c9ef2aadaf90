"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain Python values (the run config as a dict, state dicts,
optimizer state dicts, the Philox (seed, offset) as ints), so loading it never runs pickled code.

Atomic write: the bytes go to a temporary file in the same folder, are fsync'ed, and
``os.replace`` renames it over the old checkpoint (atomic on POSIX and Windows); the folder is
fsync'ed too so the rename survives a crash. A reader therefore sees the old checkpoint or the new
one, never half of one, even if the process is killed mid-write.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["CHECKPOINT_NAME", "FORMAT_VERSION", "save_checkpoint", "load_checkpoint", "find_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1
_REQUIRED = ("format_version", "config", "iteration", "image_shape", "model", "optimizers", "philox")


def save_checkpoint(obj: dict, path: str | os.PathLike) -> Path:
    """Write ``obj`` to ``path`` atomically (temporary file + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable; not every platform can open a folder
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file of a run folder, or ``path`` itself when it is a file."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
        if not p.is_file():
            raise ValueError(f"{path}: no {CHECKPOINT_NAME} in this folder; expected a run folder written by "
                             "`jebm train` or a checkpoint file")
        return p
    if not p.is_file():
        raise ValueError(f"{path}: no such run folder or checkpoint file")
    return p


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint (a file, or a run folder holding ``checkpoint.pt``) safely."""
    p = find_checkpoint(path)
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated file, or not a torch file at all
        raise ValueError(f"{p}: not a readable jebm checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict) or any(k not in obj for k in _REQUIRED):
        missing = [k for k in _REQUIRED if not isinstance(obj, dict) or k not in obj]
        raise ValueError(f"{p}: not a jebm checkpoint (missing {missing})")
    if obj["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{p}: checkpoint format {obj['format_version']} is not the supported {FORMAT_VERSION}")
    return obj
