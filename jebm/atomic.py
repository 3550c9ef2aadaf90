"""Atomic file writes: a reader (or a run killed mid-write) sees a file's old content or its whole
new content, never part of it.

``atomic_write`` writes into a temporary file beside the target (``.<name>.tmp-<pid>-<random>``:
the same folder, so ``os.replace`` is a rename within one file system, atomic on POSIX and
Windows) and renames it over the target; on any failure the temporary file is removed. With
``fsync=True`` the bytes are on disk before the rename and the folder is synced after it, so the
rename survives a power loss too (checkpoints). The temporary file is opened with ``open``, which
honours the umask (``tempfile.mkstemp`` would make it private to the user).

This module imports nothing from the package, so scripts that must not import torch (or the
package's extensions) can load it by its path.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable, Union

__all__ = ["atomic_write", "fsync_dir", "TEMP_MARK"]

# What every temporary file's name holds after the target's name (``remove_stale_temporaries`` of
# jebm.train.checkpoint looks for it).
TEMP_MARK = ".tmp-"

Content = Union[bytes, str, Callable[[BinaryIO], object]]


def atomic_write(path: str | os.PathLike, content: Content, *, fsync: bool = False,
                 before_replace: Callable[[], object] | None = None) -> Path:
    """Write ``content`` to ``path`` atomically, creating its parent folders; returns the path.

    ``content``: bytes, a str (written as UTF-8), or a function that writes into the binary file
    object it is given (``lambda f: torch.save(obj, f)``). ``fsync``: make the file and the rename
    durable. ``before_replace``: called once the temporary file is complete, just before the rename
    (a checkpoint keeps its previous file there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "xb") as f:
            if isinstance(content, str):
                f.write(content.encode("utf-8"))
            elif isinstance(content, (bytes, bytearray, memoryview)):
                f.write(content)
            else:
                content(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if fsync:
        fsync_dir(path.parent)
    return path


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the renames in ``folder`` durable (a no-op where a folder cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
