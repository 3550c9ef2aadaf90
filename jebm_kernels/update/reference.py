"""The update in torch: the specification every other implementation is tested against."""
from __future__ import annotations

import torch

from ..problem import Problem

__all__ = ["reason", "propose"]


def reason(problem: Problem) -> str | None:
    if problem.philox is not None and problem.philox.device.type != "cpu":
        return "the noise position is a GPU tensor (graph-safe), which only a kernel reads without a host sync"
    return None


def propose(problem: Problem, x: list[torch.Tensor], g: list[torch.Tensor], k: int):
    """Step k's move: (proposal, normals, MALA uniforms or None)."""
    noise, uniform = problem.step_noise(k)
    prop = [xl - hl * gl + cl * nl for xl, gl, nl, hl, cl in zip(x, g, noise, problem.h, problem.c)]
    return prop, noise, uniform
