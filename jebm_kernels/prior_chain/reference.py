"""The prior chain in torch: ``chain.run_chain`` with autograd on the spec's energy
(``spec.prior_energy``) and the torch update. Every fused implementation is tested against it."""
from __future__ import annotations

from ..chain import autograd_energy_and_grad, run_chain
from ..problem import Problem
from ..update import reference as update_reference

__all__ = ["reason", "run"]


def reason(problem: Problem) -> str | None:
    return update_reference.reason(problem)


def run(problem: Problem):
    return run_chain(problem, autograd_energy_and_grad(problem), update_reference.propose)
