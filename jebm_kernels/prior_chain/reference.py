"""The prior chain in torch: ``chain.run_chain`` with autograd on the spec's energy
(``spec.prior_energy``) and the torch update. Every fused implementation is tested against it."""
from __future__ import annotations

from ..chain import autograd_energy_and_grad, run_chain
from ..problem import Problem
from ..update import reference as update_reference

__all__ = ["reason", "precision_reason", "run"]


def reason(problem: Problem) -> str | None:
    return update_reference.reason(problem)


def precision_reason(problem: Problem) -> str | None:
    return None  # autocast evaluates the energy in whatever precision the call asks


def run(problem: Problem):
    with problem.precision.context(problem.device.type):  # one region: the weights' bf16 copies made once
        return run_chain(problem, autograd_energy_and_grad(problem), update_reference.propose)
