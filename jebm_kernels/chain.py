"""The one K-step chain loop, shared by every path that is not a whole-chain kernel.

``run_chain(problem, energy_and_grad, propose)`` runs Langevin (or MALA) steps with two pieces
supplied by the caller:
- ``energy_and_grad(x) -> (U [B], [dU/dx_l])``: autograd on the user's energy
  (``autograd_energy_and_grad``, every backend's default), or the cpu backend's mix for a conv
  decoder (autograd for the decoder term, C++ for the prior terms);
- ``propose(problem, x, g, k) -> (moved, normals, uniforms)``: one multi-layer update, from the
  ``update`` package (torch reference, C++, Triton or CUDA), drawing step k's noise;
- optionally ``select(problem, x, prop, g, g_p, noise, u, u_p, uniform) -> accepted [B] or None``:
  MALA's accept step done elsewhere (the cpu backend's one C++ call), in place on x, g and u;
  None when it cannot take these tensors (the torch formulas below then run).

The update (docs/design.md, section 3), all layers together, per-layer step size s_l, noise scale tau:
    z_l <- z_l - (s_l^2 / 2) dU/dz_l + s_l * tau * xi_l,    xi = Philox normals (problem.py layout)
MALA proposes that move and accepts it with probability
    min(1, exp(-U(z') + U(z) + log q(z | z') - log q(z' | z))),  q(z'|z) = N(z - s^2/2 grad U(z), s^2 tau^2)
by ``log(u) < log_alpha`` with u the chain's Philox uniform; log q(z'|z) = -|xi|^2 / 2 exactly.
Nothing here reads a value back on the host, so the loop can be captured in a CUDA graph.
"""
from __future__ import annotations

import torch

from .problem import Problem

__all__ = ["run_chain", "autograd_energy_and_grad"]


def autograd_energy_and_grad(problem: Problem, *, own_precision: bool = False):
    """x -> (U(x) [B], dU/dx per layer) by autograd on ``problem``'s energy, in the call's precision
    (``own_precision``: at z's own, ``Problem.call_energy``)."""

    def energy_and_grad(x: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in x]
            u = problem.call_energy(leaves, own_precision=own_precision)
            if not u.requires_grad:
                raise TypeError("the energy's output does not depend on z through autograd (no grad_fn): it detached "
                                "z, ran under torch.no_grad() or is a constant; langevin needs dU/dz")
            grads = torch.autograd.grad(u.sum(), leaves)  # (no graph of their own: no detach needed)
        return u.detach(), list(grads)

    return energy_and_grad


def run_chain(problem: Problem, energy_and_grad, propose, select=None,
              start=None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """K steps from ``problem.z``: (final layers [B, d_l], statistics [K, 3] or None). ``start``:
    (U, dU/dx) at ``problem.z`` when already evaluated (the start check's)."""
    h, den = problem.h, problem.mala_denominators
    x = [t.clone() for t in problem.z]
    stats = problem.new_stats()
    if not problem.n_steps:
        return x, stats
    u, g = start if start is not None else energy_and_grad(x)
    for k in range(problem.n_steps):
        if stats is not None:
            stats[k, 0] = u.mean()
            stats[k, 1] = torch.sqrt(sum(gl.pow(2).sum(-1) for gl in g)).mean()
        prop, noise, uniform = propose(problem, x, g, k)
        if not problem.mala:
            x = prop
            if k + 1 < problem.n_steps:
                u, g = energy_and_grad(x)
            continue
        u_p, g_p = energy_and_grad(prop)
        accepted = select(problem, x, prop, g, g_p, noise, u, u_p, uniform) if select is not None else None
        if accepted is not None:
            if stats is not None:
                stats[k, 2] = accepted.mean()
            continue
        log_q_fwd = -0.5 * sum(nl.pow(2).sum(-1) for nl in noise)
        log_q_bwd = -sum((xl - pl + hl * gpl).pow(2).sum(-1) / dl for xl, pl, gpl, hl, dl in zip(x, prop, g_p, h, den))
        log_alpha = u - u_p + log_q_bwd - log_q_fwd
        accept = torch.log(uniform.to(log_alpha.dtype)) < log_alpha
        acc = accept.unsqueeze(1)
        x = [torch.where(acc, pl, xl) for pl, xl in zip(prop, x)]
        g = [torch.where(acc, gpl, gl) for gpl, gl in zip(g_p, g)]
        u = torch.where(accept, u_p, u)
        if stats is not None:
            stats[k, 2] = accept.to(torch.float32).mean()
    return x, stats
