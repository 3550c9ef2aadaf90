"""The model's configuration: the checks of hidden-width lists that the model and the run config
share (``normalize_hidden``), and ``ReadOnlyConfig``, the read-only ``JEBM.config``.

A model's config is fixed when the model is built. The settings a chain runs with (steps, step
sizes, noise scale) belong to whoever samples: a trainer or a loaded run holds them as
``jebm.model.sampling.SamplingSettings`` and passes them to every sampling call; the model's
config only supplies the defaults of a call that names none.
"""
from __future__ import annotations

from numbers import Integral, Real

__all__ = ["ReadOnlyConfig", "normalize_hidden", "widths", "is_int", "is_real"]


def is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def is_real(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def widths(value, key) -> list[int]:
    """A list of positive ints (hidden widths), checked; ValueError naming ``key`` otherwise."""
    if not isinstance(value, (list, tuple)) or not all(is_int(w) and w > 0 for w in value):
        raise ValueError(f"{key} must be a list of positive ints (hidden widths), got {value!r}")
    return [int(w) for w in value]


def normalize_hidden(value, n: int, key: str) -> list[list[int]]:
    """One list of hidden widths per module: a flat list is shared by all ``n``; a list of lists
    must have exactly ``n`` entries."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
        if len(value) != n:
            raise ValueError(f"{key} gives {len(value)} width lists but the model needs {n} (one per module)")
        return [widths(v, key) for v in value]
    return [widths(value, key) for _ in range(n)]


class ReadOnlyConfig(dict):
    """A dict that refuses every change after construction (``JEBM.config``).

    It is still a dict (``json.dumps``, ``==``, ``{**cfg}``, ``JEBM.from_config(cfg)`` work), it
    pickles and deep-copies, and ``copy()`` gives a plain, mutable dict. The values are the ones
    given (lists stay lists): do not change them in place either."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("a JEBM's config is read-only after construction: pass sampling settings to the "
                        "sampling call (n_steps=, step_size=, noise_scale=, space=; a trainer or a loaded run "
                        "holds them as SamplingSettings), or build a new model from a changed copy (config.copy())")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def copy(self) -> dict:
        return dict(self)

    def __reduce__(self):
        return (type(self), (dict(self),))

    def __repr__(self) -> str:
        return f"ReadOnlyConfig({dict.__repr__(self)})"
