"""One validated sampling request, as every backend receives it.

``langevin`` checks its arguments once, here, and turns them into a ``Problem``: latent layers
flattened to [B, d_l], per-layer step sizes, the Philox (seed, offset) and the noise layout. A
backend reads only this, so argument checking is written once and every backend agrees on it.

Noise layout (shared by every backend): step k of a call whose stream starts at ``offset`` uses
counters ``offset + k * stride`` onwards; layer l's element (b, j) is counter
``B * (d_1 + ... + d_{l-1}) + b * d_l + j`` within the step; with MALA the uniform of chain b is
counter ``B * D + b`` (D = sum of d_l), so ``stride = B * D (+ B with MALA)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math
from numbers import Real

import torch
from torch import nn

from .energies import PosteriorEnergy, PriorEnergy
from .philox import PhiloxGenerator, philox_rand, philox_randn
from .spec import MLPSpec, PriorSpec, mlp_spec_from_sequential

__all__ = ["Problem", "make_problem", "step_constants"]

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def step_constants(s, tau):
    """The update's constants for step size(s) ``s`` and noise scale ``tau``: (h, c) with
    h = s^2 / 2 (multiplies dU/dz) and c = s * tau (multiplies the normals). ``s`` may be a float
    or a tensor (a differentiable step size, ``jebm.short_run``); this is the only place the
    update's convention is written (DESIGN.md section 1)."""
    return s * s / 2, s * tau


@dataclass
class Problem:
    energy: object                      # the user's callable, as given
    z: list[torch.Tensor]               # layers flattened to [B, d_l], detached
    shapes: list[torch.Size]            # each layer's shape as given
    is_list: bool                       # the structure the energy takes and the caller gets back
    n_steps: int
    step_sizes: tuple[float, ...]
    noise_scale: float
    prior_sigma: tuple[float, ...] | None
    mala: bool
    seed: int
    offset: int
    want_info: bool
    spec: PriorSpec | None = None       # set when the energy is a fusable prior
    posterior: PosteriorEnergy | None = None
    squeeze_output: bool = False        # an nn.Sequential energy returns [B, 1]

    @property
    def batch(self) -> int:
        return self.z[0].shape[0]

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(t.shape[1] for t in self.z)

    @property
    def stride(self) -> int:
        return self.batch * sum(self.dims) + (self.batch if self.mala else 0)

    @property
    def h(self) -> tuple[float, ...]:
        """s_l^2 / 2 per layer (``step_constants``)."""
        return tuple(step_constants(s, self.noise_scale)[0] for s in self.step_sizes)

    @property
    def c(self) -> tuple[float, ...]:
        """s_l * tau per layer (``step_constants``)."""
        return tuple(step_constants(s, self.noise_scale)[1] for s in self.step_sizes)

    def step_noise(self, k: int) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Step k's per-layer Philox normals [B, d_l] and, with MALA, the chains' uniforms [B],
        in this module's noise layout."""
        B, dims = self.batch, self.dims
        base = self.offset + k * self.stride
        flat = philox_randn(self.seed, base, B * sum(dims), device=self.device).to(self.dtype)
        noise = [c.reshape(B, d) for c, d in zip(flat.split([B * d for d in dims]), dims)]
        uniform = philox_rand(self.seed, base + B * sum(dims), B, device=self.device) if self.mala else None
        return noise, uniform

    @property
    def device(self) -> torch.device:
        return self.z[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.z[0].dtype

    def restructure(self, flat: list[torch.Tensor]):
        """Flattened layers back to the caller's shapes and structure."""
        out = [t.reshape(s) for t, s in zip(flat, self.shapes)]
        return out if self.is_list else out[0]

    def call_energy(self, flat: list[torch.Tensor]) -> torch.Tensor:
        """The user's energy plus the prior_sigma term, on flattened layers; shape [B]."""
        u = self.energy(self.restructure(flat))
        if not torch.is_tensor(u):
            raise TypeError(f"energy must return a tensor, got {type(u).__name__}")
        if not u.dtype.is_floating_point:
            raise TypeError(f"energy must return floating-point energies, got dtype {u.dtype}")
        if self.squeeze_output and u.dim() == 2 and u.shape[1] == 1:
            u = u.squeeze(1)
        if tuple(u.shape) != (self.batch,):
            raise ValueError(f"energy must return one value per chain, shape ({self.batch},); "
                             f"got shape {tuple(u.shape)}")
        if self.prior_sigma is not None:
            for t, s in zip(flat, self.prior_sigma):
                u = u + t.pow(2).sum(-1) / (2 * s * s)
        return u


def _per_layer(value, n_layers: int, what: str) -> tuple[float, ...]:
    vals = list(value) if isinstance(value, (list, tuple)) else [value] * n_layers
    if len(vals) != n_layers:
        raise ValueError(f"{what} needs one value per layer: {n_layers} layers, {len(vals)} values")
    out = []
    for v in vals:
        if torch.is_tensor(v) and v.numel() == 1:
            v = v.item()
        if not isinstance(v, Real) or isinstance(v, bool):
            raise TypeError(f"{what} must be a float or a list of floats, got {type(v).__name__}")
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{what} must be finite and > 0, got {v}")
        out.append(float(v))
    return tuple(out)


def _fusable_spec(energy, dims) -> tuple[PriorSpec | None, PosteriorEnergy | None, bool]:
    if isinstance(energy, PriorEnergy):
        return energy.spec, None, False
    if isinstance(energy, PosteriorEnergy):
        return energy.spec, energy, False
    if isinstance(energy, nn.Sequential):
        mlp = mlp_spec_from_sequential(energy)
        if mlp is not None and len(dims) == 1 and mlp.in_dim == dims[0] and mlp.out_dim == 1:
            spec = PriorSpec(dims=tuple(dims), layer_terms=(mlp,), energy_sign=1.0, base_sigma=(math.inf,))
            return spec, None, True
        return None, None, True
    return None, None, False


def _spec_weights(spec: PriorSpec | None, posterior: PosteriorEnergy | None):
    mlps = [] if spec is None else [*spec.layer_terms, spec.joint_term, *(g.mlp for g in spec.gaussians)]
    if posterior is not None and isinstance(posterior.decoder, MLPSpec):
        mlps.append(posterior.decoder)
    for m in mlps:
        if m is not None:
            yield from (t for t in (*m.weights, *m.biases) if t is not None)
    if posterior is not None and isinstance(posterior.decoder, nn.Module):
        yield from posterior.decoder.parameters()


def _check_weights_match(spec, posterior, z0: torch.Tensor) -> None:
    """A fusable energy (PriorEnergy, PosteriorEnergy, MLP Sequential) with weights in another dtype
    or on another device than z would fail deep inside a matmul; say so up front, in words."""
    for w in _spec_weights(spec, posterior):
        if w.device != z0.device:
            raise ValueError(f"the energy's weights are on {w.device} but z is on {z0.device}: put both on one device")
        if w.dtype != z0.dtype:
            raise ValueError(f"the energy's weights are {w.dtype} but z is {z0.dtype}: use one dtype "
                            f"(z.to({w.dtype}) or the model's .to({z0.dtype}))")
    if posterior is not None and posterior.x_obs.device != z0.device:
        raise ValueError(f"the observed images are on {posterior.x_obs.device} but z is on {z0.device}: put both on "
                         "one device")


def make_problem(energy, z, *, n_steps, step_size, noise_scale, prior_sigma, generator, mala,
                 return_info) -> tuple[Problem, PhiloxGenerator]:
    if not callable(energy):
        raise TypeError(f"energy must be callable (z -> per-chain energies [B]), got {type(energy).__name__}")
    is_list = isinstance(z, (list, tuple))
    layers = list(z) if is_list else [z]
    if not layers:
        raise ValueError("z is an empty list: give one tensor per latent layer")
    for i, t in enumerate(layers):
        if not torch.is_tensor(t):
            raise TypeError(f"z[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"z[{i}] has dtype {t.dtype}; langevin samples in float32 or float64 "
                            f"(cast with .float() and back after sampling)")
        if t.dim() < 2:
            raise ValueError(f"z[{i}] must be batch first with at least 2 dims [B, d], got shape {tuple(t.shape)}")
        if t.layout != torch.strided:
            raise TypeError(f"z[{i}] is a {t.layout} tensor; langevin samples dense tensors (use .to_dense())")
    B = layers[0].shape[0]
    if B == 0:
        raise ValueError("z has an empty batch (0 chains): nothing to sample")
    for i, t in enumerate(layers):
        if t.shape[0] != B:
            raise ValueError(f"every layer needs the same batch size: z[0] has {B} chains, z[{i}] has {t.shape[0]}")
        if t.device != layers[0].device:
            raise ValueError(f"z[{i}] is on {t.device} but z[0] is on {layers[0].device}: put every layer on one device")
        if t.dtype != layers[0].dtype:
            raise TypeError(f"z[{i}] has dtype {t.dtype} but z[0] has {layers[0].dtype}: use one dtype")
        if math.prod(t.shape[1:]) == 0:
            raise ValueError(f"z[{i}] has no elements per chain, shape {tuple(t.shape)}")
    if layers[0].device.type == "meta":
        raise ValueError("z is on the meta device, which holds shapes but no values: give real tensors")
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 0:
        raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}")
    steps = _per_layer(step_size, len(layers), "step_size")
    if not isinstance(noise_scale, Real) or not (math.isfinite(noise_scale) and noise_scale >= 0):
        raise ValueError(f"noise_scale must be a finite float >= 0, got {noise_scale!r}")
    if mala and noise_scale == 0:
        raise ValueError("mala=True needs noise_scale > 0 (a noiseless proposal has no density)")
    sigmas = None if prior_sigma is None else _per_layer(prior_sigma, len(layers), "prior_sigma")
    flat = [t.detach().reshape(B, -1) for t in layers]
    if not all(bool(torch.isfinite(t).all()) for t in flat):
        bad = next(i for i, t in enumerate(flat) if not bool(torch.isfinite(t).all()))
        raise ValueError(f"z[{bad}] contains NaN or inf: start chains from finite values")

    if generator is None or isinstance(generator, torch.Generator):
        stream = PhiloxGenerator.from_torch(generator)
    elif isinstance(generator, PhiloxGenerator):
        stream = generator
    elif isinstance(generator, tuple) and len(generator) == 2:
        stream = PhiloxGenerator(*generator)
    else:
        raise TypeError("generator must be None, a torch.Generator, a jebm_kernels.PhiloxGenerator "
                        f"or a (seed, offset) tuple; got {type(generator).__name__}")

    spec, posterior, squeeze = _fusable_spec(energy, [t.shape[1] for t in flat])
    _check_weights_match(spec, posterior, layers[0])
    if spec is not None and tuple(spec.dims) != tuple(t.shape[1] for t in flat):
        raise ValueError(f"the energy's prior has layer dims {tuple(spec.dims)} but z has "
                         f"{tuple(t.shape[1] for t in flat)}")
    if posterior is not None and posterior.x_obs.shape[0] != B:
        raise ValueError(f"the posterior has {posterior.x_obs.shape[0]} observations but z has {B} chains")
    problem = Problem(energy=energy, z=flat, shapes=[t.shape for t in layers], is_list=is_list,
                      n_steps=n_steps, step_sizes=steps, noise_scale=float(noise_scale),
                      prior_sigma=sigmas, mala=bool(mala), seed=stream.seed, offset=0,
                      want_info=bool(return_info), spec=spec, posterior=posterior, squeeze_output=squeeze)
    problem.offset = stream.take(n_steps * problem.stride)
    return problem, stream
