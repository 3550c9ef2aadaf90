"""The reference backend: pure torch and autograd, any device. It is the specification.

The update (DESIGN.md), all layers together, per-layer step size s_l, noise scale tau:
    z_l <- z_l - (s_l^2 / 2) dU/dz_l + s_l * tau * xi_l,    xi = Philox normals (problem.py layout)
MALA proposes that move and accepts it with probability
    min(1, exp(-U(z') + U(z) + log q(z | z') - log q(z' | z))),  q(z'|z) = N(z - s^2/2 grad U(z), s^2 tau^2)
by ``log(u) < log_alpha`` with u the chain's Philox uniform; log q(z'|z) = -|xi|^2 / 2 exactly.
"""
from __future__ import annotations

import torch

from .philox import philox_rand, philox_randn
from .problem import Problem

__all__ = ["run_reference", "run_chain", "energy_and_grad", "step_noise"]


def energy_and_grad(problem: Problem, x: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in x]
        u = problem.call_energy(leaves)
        if not u.requires_grad:
            raise TypeError("the energy's output does not depend on z through autograd (no grad_fn): it detached z, "
                            "ran under torch.no_grad() or is a constant; langevin needs dU/dz")
        grads = torch.autograd.grad(u.sum(), leaves)
    return u.detach(), [g.detach() for g in grads]


def step_noise(problem: Problem, k: int) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Step k's per-layer normals [B, d_l] and, with MALA, the chains' uniforms [B]."""
    return problem.step_noise(k)


def reference_proposal(problem: Problem, x, g, k):
    """The Langevin move of step k in torch: (proposal, normals, MALA uniforms or None)."""
    noise, uniform = step_noise(problem, k)
    tau = problem.noise_scale
    prop = [xl - (sl * sl / 2) * gl + (sl * tau) * nl for xl, gl, nl, sl in zip(x, g, noise, problem.step_sizes)]
    return prop, noise, uniform


def run_chain(problem: Problem, propose) -> tuple[list[torch.Tensor], dict]:
    """The K-step loop with autograd gradients; ``propose`` makes each step's move (torch here,
    a fused kernel in the Triton backend), everything else is this one piece of code."""
    s, tau = problem.step_sizes, problem.noise_scale
    x = [t.clone() for t in problem.z]
    energies, grad_norms, accepts = [], [], []
    u, g = (energy_and_grad(problem, x) if problem.n_steps else (None, None))
    for k in range(problem.n_steps):
        if problem.want_info:
            energies.append(u.mean())
            grad_norms.append(torch.sqrt(sum(gl.pow(2).sum(-1) for gl in g)).mean())
        prop, noise, uniform = propose(problem, x, g, k)
        if not problem.mala:
            x = prop
            if k + 1 < problem.n_steps:
                u, g = energy_and_grad(problem, x)
            continue
        u_p, g_p = energy_and_grad(problem, prop)
        log_q_fwd = -0.5 * sum(nl.pow(2).sum(-1) for nl in noise)
        log_q_bwd = -sum((xl - pl + (sl * sl / 2) * gpl).pow(2).sum(-1) / (2 * (sl * tau) ** 2)
                         for xl, pl, gpl, sl in zip(x, prop, g_p, s))
        log_alpha = u - u_p + log_q_bwd - log_q_fwd
        accept = torch.log(uniform.to(log_alpha.dtype)) < log_alpha
        acc = accept.unsqueeze(1)
        x = [torch.where(acc, pl, xl) for pl, xl in zip(prop, x)]
        g = [torch.where(acc, gpl, gl) for gpl, gl in zip(g_p, g)]
        u = torch.where(accept, u_p, u)
        if problem.want_info:
            accepts.append(accept.to(torch.float32).mean())
    return x, {"energy": energies, "grad_norm": grad_norms, "accept": accepts}


def run_reference(problem: Problem) -> tuple[list[torch.Tensor], dict]:
    return run_chain(problem, reference_proposal)
