"""Backend registry and the ``auto`` rule, in the manner of torch.optim's foreach/fused choice.

A backend is an object with ``name``, ``unavailable_reason()`` (None when this machine can run it),
``unsupported_reason(problem)`` (None when it can serve that problem) and ``run(problem)``.
``auto`` takes the first of ``PRIORITY`` that can serve (and has no ``auto_reason(problem)``
objection) and falls back quietly; a named backend that
cannot serve raises, saying why. ``JEBM_BACKEND`` puts one backend first in the ``auto`` order.
"""
from __future__ import annotations

import os

from .problem import Problem
from .reference import run_reference

__all__ = ["register_backend", "available_backends", "select_backend", "PRIORITY"]

# Fastest first; reference last, since it serves everything.
PRIORITY = ["cuda", "triton", "cpu", "reference"]
_REGISTRY: dict[str, object] = {}


class ReferenceBackend:
    name = "reference"

    def unavailable_reason(self):
        return None

    def unsupported_reason(self, problem: Problem):
        return None

    def run(self, problem: Problem):
        return run_reference(problem)


def register_backend(backend) -> None:
    _REGISTRY[backend.name] = backend


def available_backends() -> list[str]:
    """The backends this machine can run, fastest first."""
    return [n for n in PRIORITY if n in _REGISTRY and _REGISTRY[n].unavailable_reason() is None]


def select_backend(name: str, problem: Problem):
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    if name != "auto":
        if name not in PRIORITY:
            raise ValueError(f"unknown backend {name!r}; choose 'auto' or one of {PRIORITY}")
        backend = _REGISTRY.get(name)
        if backend is None:
            raise RuntimeError(f"backend {name!r} is not part of this build of jebm_kernels")
        why = backend.unavailable_reason()
        if why is not None:
            raise RuntimeError(f"backend {name!r} is not available here: {why}")
        why = backend.unsupported_reason(problem)
        if why is not None:
            raise ValueError(f"backend {name!r} cannot serve this call: {why}")
        return backend
    order = list(PRIORITY)
    preferred = os.environ.get("JEBM_BACKEND", "").strip()
    if preferred:
        if preferred not in PRIORITY:
            raise ValueError(f"JEBM_BACKEND={preferred!r} is not a backend; choose one of {PRIORITY}")
        order.remove(preferred)
        order.insert(0, preferred)
    for n in order:
        b = _REGISTRY.get(n)
        if b is None or b.unavailable_reason() is not None or b.unsupported_reason(problem) is not None:
            continue
        auto_reason = getattr(b, "auto_reason", None)  # served only when named, e.g. an interpreter
        if auto_reason is None or auto_reason(problem) is None:
            return b
    return _REGISTRY["reference"]


register_backend(ReferenceBackend())

from .triton_backend import TritonBackend  # noqa: E402  (registers after the registry exists)

register_backend(TritonBackend())
from . import cpu as _cpu  # noqa: E402,F401  (registers the cpu backend)
from . import cuda as _cuda_backend  # noqa: E402,F401  (registers the cuda backend)
