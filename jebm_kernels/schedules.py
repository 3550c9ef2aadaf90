"""Step-size and noise-scale schedules for ``LangevinSampler``, duck-typed.

Why this module: torchebm's samplers take either a float or a ``torchebm.core.BaseScheduler`` for
``step_size`` and ``noise_scale``. jebm must accept those objects without importing torchebm, so a
schedule here is anything with ``get_value()`` (the value for the current step), ``step()``
(advance one step) and ``reset()`` (back to step 0) -- exactly the part of ``BaseScheduler`` a
sampler uses. A plain number is wrapped in ``ConstantSchedule``, which has the same three methods.
"""
from __future__ import annotations

import math
from numbers import Real

import torch

__all__ = ["ConstantSchedule", "is_schedule", "as_schedule", "check_value"]

_METHODS = ("get_value", "step", "reset")


def is_schedule(obj) -> bool:
    """True for an object a sampler can drive: callable ``get_value``, ``step`` and ``reset``."""
    return all(callable(getattr(obj, m, None)) for m in _METHODS)


class ConstantSchedule:
    """A number seen through the schedule interface (torchebm's ``ConstantScheduler`` equivalent).

    ``step_count`` counts ``step()`` calls since the last ``reset()``, as torchebm's schedulers do."""

    def __init__(self, value: float):
        self.value = float(value)
        self.step_count = 0

    def get_value(self) -> float:
        return self.value

    def step(self) -> float:
        self.step_count += 1
        return self.value

    def reset(self) -> None:
        self.step_count = 0

    def __repr__(self) -> str:
        return f"ConstantSchedule({self.value!r})"


def check_value(name: str, value, *, allow_zero: bool, where: str = "") -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``), or a ValueError/TypeError that
    names ``name`` (torchebm's wording first: "<name> must be positive")."""
    if torch.is_tensor(value) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, Real) or isinstance(value, bool):
        raise TypeError(f"{name}{where} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}{where} must be finite, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        extra = " (or 0 for a noise-free chain)" if allow_zero else ""
        raise ValueError(f"{name} must be positive{extra}{where}, got {value!r}")
    return value


def as_schedule(name: str, value, *, allow_zero: bool):
    """A schedule object as given, or a number (checked) wrapped in ``ConstantSchedule``."""
    if is_schedule(value):
        return value
    if isinstance(value, (Real, torch.Tensor)) and not isinstance(value, bool):
        return ConstantSchedule(check_value(name, value, allow_zero=allow_zero))
    raise TypeError(f"{name} must be a number or a schedule (an object with get_value(), step() and "
                    f"reset(), such as torchebm's BaseScheduler), got {type(value).__name__}")
