"""Energy callables that carry their own description, so ``langevin`` can hand them to a fused
backend. Called directly they evaluate the torch reference (``spec.py``), so they work with every
backend, including ``reference``, and anywhere a plain callable energy does."""
from __future__ import annotations

import torch

from .spec import MLPSpec, PriorSpec, posterior_energy, prior_energy

__all__ = ["PriorEnergy", "PosteriorEnergy"]


class PriorEnergy:
    """U(z) of a ``PriorSpec``: takes a list of [B, d_l] tensors, returns [B]."""

    def __init__(self, spec: PriorSpec):
        if not isinstance(spec, PriorSpec):
            raise TypeError(f"PriorEnergy takes a PriorSpec, got {type(spec).__name__}")
        self.spec = spec

    def __call__(self, x: list[torch.Tensor]) -> torch.Tensor:
        return prior_energy(self.spec, list(x))


class PosteriorEnergy:
    """U(z | x) = U(z) + ||x - g(z_1)||^2 / (2 sigma_x^2) for observed images ``x_obs`` [B, ...].

    ``decoder`` is an ``MLPSpec`` (fusable whole) or any callable z_1 -> images (a conv decoder:
    autograd gives its gradient, a fused backend adds the prior terms and the step)."""

    def __init__(self, spec: PriorSpec, decoder: MLPSpec | object, x_obs: torch.Tensor, sigma_x: float):
        if not isinstance(spec, PriorSpec):
            raise TypeError(f"PosteriorEnergy takes a PriorSpec, got {type(spec).__name__}")
        if not (isinstance(decoder, MLPSpec) or callable(decoder)):
            raise TypeError("decoder must be an MLPSpec or a callable z_1 -> images")
        if not torch.is_tensor(x_obs) or x_obs.dim() < 2:
            raise ValueError("x_obs must be a tensor of observed images, batch first")
        if not sigma_x > 0:
            raise ValueError(f"sigma_x must be > 0, got {sigma_x}")
        self.spec, self.decoder, self.x_obs, self.sigma_x = spec, decoder, x_obs, float(sigma_x)

    def __call__(self, x: list[torch.Tensor]) -> torch.Tensor:
        return posterior_energy(self.spec, self.decoder, self.x_obs, self.sigma_x, list(x))
