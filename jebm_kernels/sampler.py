"""``langevin``: the one public sampling function.

Convention (the EBM-prior papers'): energy U, lower = more probable, step size s, noise scale tau,
    z <- z - (s^2 / 2) grad U(z) + s * tau * xi,   xi ~ N(0, I).
From torchebm's ``x <- x - eta grad U + sqrt(2 eta) xi``: s = sqrt(2 eta).
From blackjax's MALA/Langevin on a log density log p = -U with step size h
(``x <- x + h grad log p + sqrt(2 h) xi``): s = sqrt(2 h).
tau < 1 gives the "cold" chains the papers use for short-run training; tau = 1 is exact Langevin.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypedDict

import torch

from .arguments import make_problem
from .dispatch import select
from .philox import PhiloxGenerator
from .problem import Problem, info_from_stats
from .spec import PriorSpec

__all__ = ["langevin", "explain_fusion", "ChainInfo", "FusionExplanation"]

State = torch.Tensor | list[torch.Tensor]   # a tensor [B, ...] or one tensor per layer, batch first
PerLayer = float | Sequence[float]          # one value for every layer, or one per layer
Generator = torch.Generator | PhiloxGenerator | tuple[int, int] | None


class ChainInfo(Mapping):
    """``langevin``'s info: a read-only mapping whose per-step lists (``energy``, ``grad_norm``,
    ``accept``) and ``accept_rate`` are read from the [K, 3] statistics tensor (``info["stats"]``,
    on the state's device) only when one of them is asked for, so a caller on a GPU that does not
    look at them never waits for the device. Its keys, ``in`` and ``len`` need no read."""

    _LAZY = ("energy", "grad_norm", "accept", "accept_rate")

    def __init__(self, problem: Problem, stats: torch.Tensor | None, **fields):
        self._fields = {"stats": stats, **fields}
        self._problem = problem
        self._lists: dict | None = None

    @property
    def _read(self) -> bool:
        """Whether the statistics have been read on the host."""
        return self._lists is not None

    def __getitem__(self, key):
        if key not in self._LAZY:
            return self._fields[key]
        if self._lists is None:
            lists = info_from_stats(self._problem, self._fields["stats"])
            lists["accept_rate"] = sum(lists["accept"]) / len(lists["accept"]) if lists["accept"] else None
            self._lists = lists
        return self._lists[key]

    def __contains__(self, key) -> bool:
        return key in self._fields or key in self._LAZY

    def __iter__(self) -> Iterator[str]:
        yield from self._fields
        yield from self._LAZY

    def __len__(self) -> int:
        return len(self._fields) + len(self._LAZY)

    def __repr__(self) -> str:
        return repr(dict(self))


class FusionExplanation(TypedDict):
    """``explain_fusion``'s answer."""
    backend: str
    fused: bool
    why_not_fused: str | None
    spec: PriorSpec | None


def langevin(energy: Callable[[State], torch.Tensor], z: State, *, n_steps: int,
             step_size: PerLayer | torch.Tensor, noise_scale: float = 1.0, prior_sigma: PerLayer | None = None,
             generator: Generator = None, backend: str = "auto", mala: bool = False, return_info: bool = False,
             check_finite: bool = True, precision: str = "auto") -> State | tuple[State, ChainInfo]:
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
        return_info: also return a ``ChainInfo`` (a read-only mapping): ``energy`` and ``grad_norm``
            (per-step chain means, at the state each step starts from), ``accept`` (per-step
            acceptance rate, MALA),
            ``accept_rate``, ``seed``, ``offset`` (replay with ``generator=(seed, offset)``),
            ``n_steps``, ``precision`` (what the energy's products ran in: "fp32", "fp64", "bf16",
            "fp16") and ``precision_note`` (None, or why a bf16 request ran otherwise),
            ``backend`` (the backend that ran), ``fused`` (True when one whole-chain
            kernel ran all the steps) and ``why_not_fused`` (None, or why the energy was run as
            autograd + the backend's update: ``explain_fusion`` gives it without sampling), and
            ``stats``, the [K, 3] statistics tensor on z's device; the per-step lists are read from
            it only when asked for (no device sync otherwise).
        check_finite: refuse a start with NaN or inf (a host read of z: on a GPU a sync; pass
            False in a loop that must not wait for the device).
        precision: what the energy's products run in: "fp32", "bf16" (bf16 products, float32
            state, update, noise and sums; float32 z only) or "auto" (the default: z's precision,
            or what the caller's ``torch.autocast`` region asks). Where bf16 is not available the
            call runs fp32 and ``info["precision_note"]`` says why (``precision.py``).

    Returns:
        the final state in ``z``'s structure, and its ``ChainInfo`` with ``return_info=True``.
    """
    problem, _ = make_problem(energy, z, n_steps=n_steps, step_size=step_size, noise_scale=noise_scale,
                              prior_sigma=prior_sigma, generator=generator, mala=mala,
                              return_info=return_info, check_finite=check_finite, precision=precision)
    chosen = select(backend, problem)
    flat, stats = chosen.run(problem)
    fused_why = chosen.why_not_fused(problem)
    out = problem.restructure(flat)
    if not return_info:
        return out
    return out, ChainInfo(problem, stats, seed=problem.seed, offset=problem.offset, n_steps=problem.n_steps,
                          precision=problem.precision.name, precision_note=problem.precision.note,
                          backend=chosen.name, fused=fused_why is None, why_not_fused=fused_why)


def explain_fusion(energy: Callable[[State], torch.Tensor], z: State, *, backend: str = "auto",
                   **kwargs: Any) -> FusionExplanation:
    """Which backend ``langevin(energy, z, ...)`` would use and whether it would fuse the whole
    chain, without sampling: {"backend", "fused", "why_not_fused", "spec"} (``spec``: the
    ``PriorSpec`` read from the energy, or None). ``kwargs`` are ``langevin``'s (step_size, ...)."""
    kwargs.setdefault("step_size", 0.1)
    problem, _ = make_problem(energy, z, n_steps=kwargs.pop("n_steps", 1), step_size=kwargs.pop("step_size"),
                              noise_scale=kwargs.pop("noise_scale", 1.0), prior_sigma=kwargs.pop("prior_sigma", None),
                              generator=kwargs.pop("generator", (0, 0)), mala=kwargs.pop("mala", False),
                              return_info=False, precision=kwargs.pop("precision", "auto"))
    if kwargs:
        raise TypeError(f"explain_fusion got unexpected arguments {sorted(kwargs)}")
    chosen = select(backend, problem)
    fused = chosen.will_fuse(problem)  # a traced energy is evaluated once here, as langevin's start check does
    why = None if fused else chosen.why_not_fused(problem)
    return FusionExplanation(backend=chosen.name, fused=fused, why_not_fused=why, spec=problem.reading.spec)
