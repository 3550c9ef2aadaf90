"""What every fused kernel (cpu, cuda) requires of an energy spec, beyond its own size limits:
the MLPs it holds, by name for the messages, and scalars the kernels can represent."""
from __future__ import annotations

import math
import struct

from .spec import MLPSpec, PriorSpec

__all__ = ["FLOAT32_MAX", "float32", "named_mlps", "scalars_reason"]

FLOAT32_MAX = 3.0e38  # what the bindings accept as a finite float32 (csrc/binding_checks.h finite_float)


def float32(v: float) -> float:
    """v rounded to float32 (inf beyond its range)."""
    return struct.unpack("f", struct.pack("f", v))[0] if abs(v) <= FLOAT32_MAX else math.inf


def named_mlps(spec: PriorSpec, decoder=None) -> list[tuple[str, MLPSpec]]:
    """Every MLP of the prior (and an MLP decoder), named as the refusal messages call them."""
    mlps = [(f"layer term {l + 1}", t) for l, t in enumerate(spec.layer_terms) if t is not None]
    if spec.joint_term is not None:
        mlps.append(("joint term", spec.joint_term))
    mlps += [(f"Gaussian {l + 1}", g.mlp) for l, g in enumerate(spec.gaussians)]
    if isinstance(decoder, MLPSpec):
        mlps.append(("decoder", decoder))
    return mlps


def scalars_reason(spec: PriorSpec, mlps: list[tuple[str, MLPSpec]]) -> str | None:
    """Why a kernel cannot run the spec's scalar settings, or None."""
    for name, m in mlps:
        if "softplus" in (m.activation, m.out_activation) and m.act_param == 0:
            return f"the {name} uses Softplus with beta = 0"
        if not math.isfinite(m.act_param):
            return f"the {name}'s activation parameter is not finite"
    for l, g in enumerate(spec.gaussians):
        if not math.isfinite(g.sigma_floor):
            return f"Gaussian {l + 1}'s sigma_floor is not finite"
    if not math.isfinite(spec.energy_sign):
        return "energy_sign is not finite"
    return None
