"""JSON files of evaluation: written atomically (``eval.json``, ``outlier.json``), read leniently."""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_write

__all__ = ["write_json", "read_json"]


def write_json(obj, path: Path) -> Path:
    """Write ``obj`` as indented JSON to ``path`` through a temporary file (never half written)."""
    return atomic_write(path, json.dumps(obj, indent=2, default=str))


def read_json(path: Path):
    """The JSON value in ``path``, or None when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
