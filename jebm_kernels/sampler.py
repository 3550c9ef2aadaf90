"""``langevin``: the one public sampling function.

Convention (the EBM-prior papers'): energy U, lower = more probable, step size s, noise scale tau,
    z <- z - (s^2 / 2) grad U(z) + s * tau * xi,   xi ~ N(0, I).
From torchebm's ``x <- x - eta grad U + sqrt(2 eta) xi``: s = sqrt(2 eta).
From blackjax's MALA/Langevin on a log density log p = -U with step size h
(``x <- x + h grad log p + sqrt(2 h) xi``): s = sqrt(2 h).
tau < 1 gives the "cold" chains the papers use for short-run training; tau = 1 is exact Langevin.
"""
from __future__ import annotations

from .arguments import make_problem
from .dispatch import select
from .problem import ChainInfo

__all__ = ["langevin", "explain_fusion"]


def langevin(energy, z, *, n_steps: int, step_size, noise_scale: float = 1.0, prior_sigma=None,
             generator=None, backend: str = "auto", mala: bool = False, return_info: bool = False,
             check_finite: bool = True):
    """Run ``n_steps`` of (MALA-corrected, with ``mala=True``) Langevin dynamics on ``energy``.

    Args:
        energy: callable taking ``z``'s structure (a tensor, or a list with one tensor per layer,
            batch first) and returning per-chain energies [B], lower = more probable. An
            ``nn.Sequential`` of Linear layers and one supported activation ending in ``Linear(h, 1)``
            is read as an energy (its [B, 1] output as [B]) and can be fused; so can
            ``jebm_kernels.PriorEnergy`` / ``PosteriorEnergy``.
        z: starting points: a tensor [B, ...] or a list of them (all with batch B). Not modified.
        n_steps: number of steps K >= 0.
        step_size: s > 0, a float or one per layer.
        noise_scale: tau >= 0 multiplies the noise.
        prior_sigma: adds ||z_l||^2 / (2 sigma_l^2) to the energy (a float or one per layer).
        generator: where the Philox (seed, offset) comes from: None (torch's default CPU
            generator draws a seed), a ``torch.Generator`` (likewise), a ``PhiloxGenerator``
            (its stream continues and its offset advances), or a ``(seed, offset)`` to replay.
        backend: "auto", "reference", "cpu", "triton" or "cuda" (``dispatch.py`` says how "auto"
            chooses).
        mala: add a per-chain Metropolis-Hastings accept/reject step.
        return_info: also return a dict: ``energy`` and ``grad_norm`` (per-step chain means, at the
            state each step starts from), ``accept`` (per-step acceptance rate, MALA),
            ``accept_rate``, ``seed``, ``offset`` (replay with ``generator=(seed, offset)``),
            ``n_steps``, ``backend`` (the backend that ran), ``fused`` (True when one whole-chain
            kernel ran all the steps) and ``why_not_fused`` (None, or why the energy was run as
            autograd + the backend's update: ``explain_fusion`` gives it without sampling), and
            ``stats``, the [K, 3] statistics tensor on z's device; the per-step lists are read from
            it only when asked for (no device sync otherwise).
        check_finite: refuse a start with NaN or inf (a host read of z: on a GPU a sync; pass
            False in a loop that must not wait for the device).

    Returns:
        the final state in ``z``'s structure, and the info dict with ``return_info=True``.
    """
    problem, _ = make_problem(energy, z, n_steps=n_steps, step_size=step_size, noise_scale=noise_scale,
                              prior_sigma=prior_sigma, generator=generator, mala=mala,
                              return_info=return_info, check_finite=check_finite)
    chosen = select(backend, problem)
    flat, stats = chosen.run(problem)
    fused_why = chosen.why_not_fused(problem)
    out = problem.restructure(flat)
    if not return_info:
        return out
    return out, ChainInfo(problem, stats, seed=problem.seed, offset=problem.offset, n_steps=problem.n_steps,
                          backend=chosen.name, fused=fused_why is None, why_not_fused=fused_why)


def explain_fusion(energy, z, *, backend: str = "auto", **kwargs) -> dict:
    """Which backend ``langevin(energy, z, ...)`` would use and whether it would fuse the whole
    chain, without sampling: {"backend", "fused", "why_not_fused", "spec"} (``spec``: the
    ``PriorSpec`` read from the energy, or None). ``kwargs`` are ``langevin``'s (step_size, ...)."""
    kwargs.setdefault("step_size", 0.1)
    problem, _ = make_problem(energy, z, n_steps=kwargs.pop("n_steps", 1), step_size=kwargs.pop("step_size"),
                              noise_scale=kwargs.pop("noise_scale", 1.0), prior_sigma=kwargs.pop("prior_sigma", None),
                              generator=kwargs.pop("generator", (0, 0)), mala=kwargs.pop("mala", False),
                              return_info=False)
    if kwargs:
        raise TypeError(f"explain_fusion got unexpected arguments {sorted(kwargs)}")
    chosen = select(backend, problem)
    fused = chosen.will_fuse(problem)  # a traced energy is evaluated once here, as langevin's start check does
    why = None if fused else chosen.why_not_fused(problem)
    return {"backend": chosen.name, "fused": fused, "why_not_fused": why, "spec": problem.reading.spec}
