"""The update in torch: the specification every other implementation is tested against."""
from __future__ import annotations

import torch

from ..problem import Problem

__all__ = ["reason", "propose"]


def reason(problem: Problem) -> str | None:
    return None  # any device; a noise position on the GPU is read there (Problem.step_noise)


def propose(problem: Problem, x: list[torch.Tensor], g: list[torch.Tensor], k: int):
    """Step k's move: (proposal, normals, MALA uniforms or None)."""
    noise, uniform = problem.step_noise(k)
    prop = [xl - hl * gl + cl * nl for xl, gl, nl, hl, cl in zip(x, g, noise, problem.h, problem.c)]
    return prop, noise, uniform
