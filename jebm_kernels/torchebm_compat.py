"""``LangevinSampler``: torchebm's sampler contract over ``langevin``.

Code written for ``torchebm.samplers.LangevinDynamics(energy, step_size, noise_scale)`` can swap
this in. torchebm's step is ``x - eta grad U + sqrt(2 eta) tau xi``; ours (see ``sampler.py``)
is ``x - s^2/2 grad U + s tau xi``, so ``step_size`` here is torchebm's eta and s = sqrt(2 eta).
Trajectories are kept only when asked, every ``thin`` steps; the chain is then run in blocks of
``thin`` steps on one Philox stream, which draws exactly the noise a single call would.
"""
from __future__ import annotations

import math

import torch

from .philox import PhiloxGenerator
from .sampler import langevin

__all__ = ["LangevinSampler"]


class LangevinSampler:
    def __init__(self, energy_function, step_size: float = 1e-3, noise_scale: float = 1.0, *,
                 backend: str = "auto", mala: bool = False, device=None, dtype=torch.float32):
        if not callable(energy_function):
            raise TypeError("energy_function must be callable: x [B, dim] -> energies [B]")
        if not (isinstance(step_size, (int, float)) and step_size > 0):
            raise ValueError(f"step_size (torchebm's eta) must be > 0, got {step_size!r}")
        self.energy_function = energy_function
        self.step_size = float(step_size)
        self.noise_scale = float(noise_scale)
        self.backend, self.mala = backend, mala
        self.device, self.dtype = device, dtype

    def sample(self, x: torch.Tensor | None = None, dim: int = 10, n_steps: int = 100, n_samples: int = 1,
               thin: int = 1, return_trajectory: bool = False, return_diagnostics: bool = False,
               generator=None, **kwargs):
        """Returns the final samples; with ``return_trajectory`` the states every ``thin`` steps
        as [n_samples, n_steps // thin, dim...]; with ``return_diagnostics`` also a dict of the
        per-step mean energy, gradient norm and MALA acceptance, and the replay (seed, offset)."""
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        if not isinstance(thin, int) or thin < 1:
            raise ValueError(f"thin must be an int >= 1, got {thin!r}")
        if x is None:
            x = torch.randn(n_samples, dim, generator=generator, device=self.device or "cpu", dtype=self.dtype)
        stream = generator if isinstance(generator, PhiloxGenerator) else PhiloxGenerator.from_torch(generator)
        seed, offset = stream.seed, stream.offset
        s = math.sqrt(2 * self.step_size)
        common = dict(step_size=s, noise_scale=self.noise_scale, generator=stream, backend=self.backend,
                      mala=self.mala, return_info=True)
        traj, diag = [], {"energy": [], "grad_norm": [], "accept": []}
        done = 0
        while done < n_steps or done == 0:
            block = min(thin if return_trajectory else n_steps, n_steps - done)
            x, info = langevin(self.energy_function, x, n_steps=block, **common)
            for key in diag:
                diag[key] += info[key]
            done += block
            if return_trajectory and block:
                traj.append(x)
            if n_steps == 0:
                break
        diag.update(seed=seed, offset=offset, backend=info["backend"])
        out = (torch.stack(traj, dim=1) if traj else x.unsqueeze(1)[:, :0]) if return_trajectory else x
        return (out, diag) if return_diagnostics else out
