"""What every fused kernel (cpu, cuda) requires of an energy spec, beyond its own size limits:
scalars and constants the kernels can represent in float32, activations they implement, and
weights they can read. The MLPs, and their names in the messages, are ``PriorSpec.mlps``'s."""
from __future__ import annotations

import math
import struct

import torch

from .spec import PriorMLPs, PriorSpec

__all__ = ["FLOAT32_MAX", "float32", "scalars_reason", "step_constants_reason", "float32_constants_reason",
           "activations_reason", "tensor_reason"]

FLOAT32_MAX = 3.0e38  # what the bindings accept as a finite float32 (csrc/binding_checks.h finite_float)


def float32(v: float) -> float:
    """v rounded to float32 (inf beyond its range)."""
    return struct.unpack("f", struct.pack("f", v))[0] if abs(v) <= FLOAT32_MAX else math.inf


def scalars_reason(spec: PriorSpec, mlps: PriorMLPs) -> str | None:
    """Why a kernel cannot run the spec's scalar settings, or None (``mlps``: ``spec.mlps(...)``)."""
    for e in mlps:
        m = e.mlp
        if "softplus" in (m.activation, m.out_activation) and m.act_param == 0:
            return f"the {e.name} uses Softplus with beta = 0"
        if not math.isfinite(m.act_param):
            return f"the {e.name}'s activation parameter is not finite"
    for l, g in enumerate(spec.gaussians):
        if not math.isfinite(g.sigma_floor):
            return f"Gaussian {l + 1}'s sigma_floor is not finite"
    if not math.isfinite(spec.energy_sign):
        return "energy_sign is not finite"
    return None


def activations_reason(mlps: PriorMLPs, known: frozenset, backend: str) -> str | None:
    """An activation this build of the extension does not implement (built from an older table)."""
    for e in mlps:
        for a in (e.mlp.activation, e.mlp.out_activation):
            if a not in known:
                return f"the {e.name} uses {a}, which this build of the {backend} kernels lacks (rebuild the extension)"
    return None


def step_constants_reason(problem, backend: str) -> str | None:
    """Why a kernel cannot hold this call's step constants s^2/2 and s*tau as float32 (beyond its
    range), or None: what every C++/CUDA update needs."""
    return _beyond_float32([("s^2/2", problem.h), ("s*tau", problem.c)], backend)


def _beyond_float32(named, backend: str) -> str | None:
    for name, values in named:
        for v in values:
            if not math.isfinite(v) or abs(v) > FLOAT32_MAX:
                return f"{name} = {v:.3g} is beyond float32's range, in which the {backend} kernels hold it"
    return None


def float32_constants_reason(problem, backend: str) -> str | None:
    """The C++ kernels hold s^2/2, s*tau, 2 (s tau)^2 (MALA) and the denominators 2 sigma^2
    (prior_sigma, base_sigma, sigma_x) as float32: a value beyond float32's range, or a
    denominator that rounds to 0 in float32, is one they cannot represent."""
    sig = [s for s in (problem.prior_sigma or ()) + tuple(problem.spec.base_sigma or ()) if math.isfinite(s)]
    if problem.posterior is not None:
        sig.append(problem.posterior.sigma_x)
    denominators = [2 * s * s for s in sig]
    why = step_constants_reason(problem, backend) or _beyond_float32(
        [("2 (s tau)^2", problem.mala_denominators if problem.mala else []), ("2 sigma^2", denominators)], backend)
    if why:
        return why
    for v in denominators:
        if float32(v) == 0.0:
            return f"2 sigma^2 = {v:.3g} rounds to 0 in float32, in which the {backend} kernels divide by it"
    return None


def tensor_reason(t, what: str, device: torch.device, backend: str, *, finite: bool = False) -> str | None:
    """Why a kernel cannot read ``t`` (a weight, the observations) next to a state on ``device``."""
    if not torch.is_tensor(t):
        return f"{what} is a {type(t).__name__}, not a tensor"
    if t.device != device:
        return f"{what} is on {t.device}; the {backend} backend needs it on {device}, with z"
    if t.dtype != torch.float32:
        return f"{what} has dtype {t.dtype}; the {backend} backend works in float32"
    if finite and t.numel() and not bool(torch.isfinite(t.detach()).all()):
        return f"{what} contains NaN or inf"
    return None
