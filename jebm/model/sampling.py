"""``SamplingSettings``: the Langevin settings of a model's chains (sampling space, steps, step
sizes, noise scale, the precision of the energy's products), held by whoever samples and passed
explicitly to every sampling call.

A trainer holds one (its rollback replaces it with scaled step sizes: ``with_step_scale``), and so
does the ``Run`` that ``jebm.load_run`` returns (with the learned posterior step sizes of a
``learn_step_size`` run); evaluation code samples a loaded run with the run's. ``prior()`` and
``posterior()`` are the keyword arguments of ``JEBM.sample_prior`` / ``generate`` /
``hierarchical_samples`` and of ``JEBM.sample_posterior`` / ``reconstruct``.

``precision`` is ``jebm_kernels.langevin``'s: a run config's ``precision`` ("fp32" or "bf16"), so a
loaded run's chains run as its training chains did; "auto" (a model's own config, which has no
precision) follows the caller's autocast region, as ``langevin`` does by default.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

__all__ = ["SamplingSettings"]


def _copy(step_size):
    return list(step_size) if isinstance(step_size, (list, tuple)) else step_size


def _scaled(value, factor: float):
    return [float(s) * factor for s in value] if isinstance(value, (list, tuple)) else float(value) * factor


@dataclass(frozen=True, eq=True)
class SamplingSettings:
    space: str                 # "z" or "eps": where the chains run
    prior_steps: int
    prior_step_size: object    # a float or one per latent layer (a list)
    post_steps: int
    post_step_size: object
    noise_scale: float
    precision: str = "auto"    # jebm_kernels.langevin's: "auto", "fp32" or "bf16"

    @classmethod
    def from_config(cls, cfg: Mapping) -> "SamplingSettings":
        """The settings a run config or a model's config names."""
        return cls(space=cfg["space"], prior_steps=cfg["prior_steps"], prior_step_size=_copy(cfg["prior_step_size"]),
                   post_steps=cfg["post_steps"], post_step_size=_copy(cfg["post_step_size"]),
                   noise_scale=cfg["noise_scale"], precision=cfg.get("precision", "auto"))

    def prior(self) -> dict:
        """Keyword arguments of a prior chain (``JEBM.sample_prior``)."""
        return dict(n_steps=self.prior_steps, step_size=_copy(self.prior_step_size), noise_scale=self.noise_scale,
                    space=self.space, precision=self.precision)

    def posterior(self) -> dict:
        """Keyword arguments of a posterior chain (``JEBM.sample_posterior``)."""
        return dict(n_steps=self.post_steps, step_size=_copy(self.post_step_size), noise_scale=self.noise_scale,
                    space=self.space, precision=self.precision)

    def with_step_scale(self, factor: float) -> "SamplingSettings":
        """Both chains' step sizes multiplied by ``factor`` (a rollback's smaller steps)."""
        return replace(self, prior_step_size=_scaled(self.prior_step_size, factor),
                       post_step_size=_scaled(self.post_step_size, factor))

    def with_precision(self, precision: str) -> "SamplingSettings":
        """The same settings with the chains' energies in ``precision``."""
        return replace(self, precision=precision)

    def with_post_step_size(self, step_size) -> "SamplingSettings":
        """The same settings with other posterior step sizes (a run's learned ones)."""
        return replace(self, post_step_size=_copy(step_size))
