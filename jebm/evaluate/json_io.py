"""JSON files of evaluation: written atomically (``eval.json``, ``outlier.json``), read leniently."""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["write_json", "read_json"]


def write_json(obj, path: Path) -> Path:
    """Write ``obj`` as indented JSON to ``path`` through a temporary file (never half written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
    return path


def read_json(path: Path):
    """The JSON value in ``path``, or None when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
