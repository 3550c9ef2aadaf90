"""The two entry points' argument checks: ``make_problem`` (``langevin``'s) and ``make_op_problem``
(the custom ops'), each turning what it was given into a ``Problem`` or saying, in words, what is
wrong and what to do."""
from __future__ import annotations

import math
from numbers import Real

import torch
from torch import nn

from . import fusion
from .energies import PosteriorEnergy, PriorEnergy
from .philox import PhiloxGenerator, check_philox
from .precision import FP32, Precision, resolve
from .problem import Problem, Reading
from .spec import PriorSpec

__all__ = ["make_problem", "make_op_problem", "check_op_layers"]

SUPPORTED_DTYPES = (torch.float32, torch.float64)


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


def _spec_weights(spec: PriorSpec | None, posterior: PosteriorEnergy | None):
    if spec is not None:
        for e in spec.mlps(posterior.decoder if posterior is not None else None):
            yield from (t for t in (*e.mlp.weights, *e.mlp.biases) if t is not None)
    if posterior is not None and isinstance(posterior.decoder, nn.Module):
        yield from posterior.decoder.parameters()


def _check_described_energy(energy, flat: list[torch.Tensor], z0: torch.Tensor) -> None:
    """An energy whose weights are in another dtype or on another device than z (a PriorEnergy, a
    PosteriorEnergy, an nn.Sequential), or of other dims, would fail deep inside a matmul; say so up
    front, in words (for every backend alike: nothing is called or traced). Any other energy fails,
    if it does, as the user's own code fails."""
    if isinstance(energy, nn.Sequential):
        _check_weights(energy.parameters(), z0)
        return
    if not isinstance(energy, (PriorEnergy, PosteriorEnergy)):
        return
    spec = energy.spec
    posterior = energy if isinstance(energy, PosteriorEnergy) else None
    if tuple(spec.dims) != tuple(t.shape[1] for t in flat):
        raise ValueError(f"the energy's prior has layer dims {tuple(spec.dims)} but z has "
                         f"{tuple(t.shape[1] for t in flat)}")
    if posterior is not None and posterior.x_obs.shape[0] != z0.shape[0]:
        raise ValueError(f"the posterior has {posterior.x_obs.shape[0]} observations but z has {z0.shape[0]} chains")
    _check_weights(_spec_weights(spec, posterior), z0)
    if posterior is not None and posterior.x_obs.device != z0.device:
        raise ValueError(f"the observed images are on {posterior.x_obs.device} but z is on {z0.device}: put both on "
                         "one device")


def _check_weights(weights, z0: torch.Tensor) -> None:
    for w in weights:
        if w.device != z0.device:
            raise ValueError(f"the energy's weights are on {w.device} but z is on {z0.device}: put both on one device")
        if w.dtype != z0.dtype:
            raise ValueError(f"the energy's weights are {w.dtype} but z is {z0.dtype}: use one dtype "
                             f"(z.to({w.dtype}) or the model's .to({z0.dtype}))")


def make_problem(energy, z, *, n_steps, step_size, noise_scale, prior_sigma, generator, mala,
                 return_info, check_finite: bool = True, precision: str = "auto") -> tuple[Problem, PhiloxGenerator]:
    """``langevin``'s arguments checked and turned into a ``Problem`` (its energy not yet read: the
    first backend that could fuse it asks, ``fusion.read``), and the noise stream it draws from."""
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
            raise ValueError(f"z[{i}] is on {t.device} but z[0] is on {layers[0].device}: "
                             "put every layer on one device")
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
    # (a host read of the state: on a GPU, a sync; ``check_finite=False`` skips it)
    if check_finite and not all(bool(torch.isfinite(t).all()) for t in flat):
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

    how = resolve(precision, layers[0])
    _check_described_energy(energy, flat, layers[0])
    problem = Problem(energy=energy, z=flat, shapes=[t.shape for t in layers], is_list=is_list,
                      n_steps=n_steps, step_sizes=steps, noise_scale=float(noise_scale),
                      prior_sigma=sigmas, mala=bool(mala), seed=stream.seed, offset=0,
                      want_info=bool(return_info), squeeze_output=isinstance(energy, nn.Sequential),
                      precision=how, reader=fusion.read)
    problem.offset = stream.take(n_steps * problem.stride)
    return problem, stream


def check_op_layers(z) -> None:
    if not isinstance(z, (list, tuple)) or not z or not all(torch.is_tensor(t) for t in z):
        raise ValueError("z must be a non-empty list of [B, d_l] tensors, one per latent layer")


def make_op_problem(spec: PriorSpec | None, z, philox: torch.Tensor, step_sizes, noise_scale, prior_sigma,
                    n_steps, mala, want_info, *, step_offset: int = 0, precision: str = "fp32") -> Problem:
    """The Problem of a custom-op call (``jebm::prior_chain`` with its spec, ``jebm::multi_layer_update``
    with ``spec=None``): the ops' arguments checked as ``langevin`` checks its own.

    ``philox`` is the int64 [seed, offset] tensor, kept as ``Problem.philox``; ``step_offset``
    counts from its offset (``Problem.noise_position``)."""
    check_op_layers(z)
    check_philox(philox, z[0].device)
    if len(step_sizes) != len(z):
        raise ValueError(f"step_sizes needs one value per layer: {len(z)} layers, {len(step_sizes)} values")
    if prior_sigma and len(prior_sigma) != len(z):
        raise ValueError(f"prior_sigma needs one value per layer (or none): {len(z)} layers, {len(prior_sigma)}")
    for v in list(step_sizes) + list(prior_sigma or ()):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"step sizes and prior_sigma must be finite and > 0, got {v}")
    if not (math.isfinite(noise_scale) and noise_scale >= 0) or (mala and noise_scale == 0):
        raise ValueError(f"noise_scale must be finite and >= 0 (> 0 with MALA), got {noise_scale}")
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if any(t.dim() != 2 or t.shape[0] != z[0].shape[0] for t in z):
        raise ValueError("z must be one [B, d_l] tensor per layer, all with batch B")
    if spec is not None and tuple(t.shape[1] for t in z) != tuple(spec.dims):
        raise ValueError(f"z has layer dims {tuple(t.shape[1] for t in z)} but the prior has {tuple(spec.dims)}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"the ops' precision is 'fp32' or 'bf16' (fixed when a graph is built), got {precision!r}")
    how: Precision = FP32 if precision == "fp32" else resolve("bf16", z[0])
    return Problem(precision=how, energy=None, z=[t.contiguous() for t in z], shapes=[t.shape for t in z], is_list=True,
                   n_steps=int(n_steps), step_sizes=tuple(float(s) for s in step_sizes),
                   noise_scale=float(noise_scale), prior_sigma=tuple(prior_sigma) if prior_sigma else None,
                   mala=bool(mala), seed=0, offset=int(step_offset), want_info=bool(want_info),
                   _reading=Reading(spec, why=None if spec is not None else "the update op runs no chain"),
                   philox=philox)


