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
from .philox import PhiloxGenerator, philox_rand, philox_rand_from, philox_randn, philox_randn_from
from .spec import MLPSpec, PriorSpec, mlp_spec_from_sequential

__all__ = ["Problem", "make_problem", "make_op_problem", "step_constants", "STATS_COLUMNS", "info_from_stats",
           "fusable_spec", "ChainInfo"]

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def step_constants(s, tau):
    """The update's constants for step size(s) ``s`` and noise scale ``tau``: (h, c) with
    h = s^2 / 2 (multiplies dU/dz) and c = s * tau (multiplies the normals). ``s`` may be a float
    or a tensor (a differentiable step size, ``jebm.short_run``); this is the only place the
    update's convention is written (DESIGN.md section 1)."""
    return s * s / 2, s * tau


# The per-step statistics every backend returns: a float64 tensor [K, 3] (float32 and float64
# values are exact in it) on the state's device, row k at
# the state step k starts from: the chain mean of U, the chain mean of |grad U| (over all layers)
# and, with MALA, the fraction of chains that accepted step k's proposal (0 without MALA).
STATS_COLUMNS = ("energy", "grad_norm", "accept")


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
    tensor_spec: bool = False           # ``spec`` describes an energy of the single tensor z (not a list)
    why_not_fused: str | None = None    # why the energy has no spec (recognize.py), None when it has one
    # The custom ops' noise position: an int64 tensor [seed, base offset]. When it is set,
    # ``offset`` counts from its base and ``seed`` is unused; kernels on the state's device read it
    # there (graph-safe), a CPU one is read on the host (``noise_position``).
    philox: torch.Tensor | None = None
    # answers computed once per call (a backend's reasons: dispatch asks them more than once)
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    def remember(self, key, compute):
        """``compute()``, once per problem and key."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    @property
    def batch(self) -> int:
        return self.z[0].shape[0]

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(t.shape[1] for t in self.z)

    @property
    def stride(self) -> int:
        """Philox counters one step uses: B * D normals, + B uniforms with MALA."""
        return self.batch * sum(self.dims) + (self.batch if self.mala else 0)

    @property
    def is_prior(self) -> bool:
        """A fusable prior (PriorEnergy or an MLP nn.Sequential), no observations."""
        return self.spec is not None and self.posterior is None

    @property
    def h(self) -> tuple[float, ...]:
        """s_l^2 / 2 per layer (``step_constants``)."""
        return self._constants()[0]

    @property
    def c(self) -> tuple[float, ...]:
        """s_l * tau per layer (``step_constants``)."""
        return self._constants()[1]

    @property
    def mala_denominators(self) -> tuple[float, ...]:
        """2 (s_l tau)^2 per layer: MALA's log q(z | z') = -|z - z' + h g'|^2 / (2 (s tau)^2)."""
        return self._constants()[2]

    def _constants(self) -> tuple[tuple[float, ...], ...]:
        # read every step by the chain loop and the update: computed once per step sizes
        def compute():
            pairs = [step_constants(s, self.noise_scale) for s in self.step_sizes]
            return (tuple(p[0] for p in pairs), tuple(p[1] for p in pairs),
                    tuple(2 * (s * self.noise_scale) ** 2 for s in self.step_sizes))
        return self.remember(("step constants", tuple(self.step_sizes), self.noise_scale), compute)

    def quadratic_coefficients(self) -> list[float]:
        """q_l: every pure quadratic term of the prior's U (top N(0, I), base_sigma, eps's |eps|^2/2,
        prior_sigma) folded into q_l |x_l|^2 / 2, for kernels that add them in one place."""
        spec, L = self.spec, len(self.dims)
        if spec.space == "eps":
            q = [1.0] * L
        elif spec.base_sigma is None:
            q = [0.0] * (L - 1) + [1.0]
        else:
            q = [0.0 if s == math.inf else 1.0 / (s * s) for s in spec.base_sigma]
        if self.prior_sigma is not None:
            q = [ql + 1.0 / (s * s) for ql, s in zip(q, self.prior_sigma)]
        return q

    def host_stream(self) -> tuple[int, int]:
        """(seed, absolute offset) of the call's noise, read on the host (a ``philox`` tensor on
        the CPU is read; one on a GPU cannot be without a sync, and kernels read it there)."""
        if self.philox is None:
            return self.seed, self.offset
        if self.philox.device.type != "cpu":
            raise RuntimeError("this call's noise position lives on the GPU (graph-safe); only a kernel reads it")
        seed, base = read_philox(self.philox)
        return seed, base + self.offset

    def noise_position(self, k: int = 0, *, by_pointer: bool = False):
        """(seed, offset of step k, philox tensor or None) as a kernel takes them: with
        ``by_pointer`` and a ``philox`` tensor on the state's device, the kernel reads seed and base
        offset from that tensor and adds the offset given (graph-safe); otherwise host values."""
        if by_pointer and self.philox is not None and self.philox.device == self.device:
            return 0, self.offset + k * self.stride, self.philox
        seed, offset = self.host_stream()
        return seed, offset + k * self.stride, None

    def step_noise(self, k: int) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Step k's per-layer Philox normals [B, d_l] and, with MALA, the chains' uniforms [B],
        in this module's noise layout (the torch specification of the stream). With ``philox`` on
        the state's GPU they are computed from it there (no host read: capturable)."""
        B, dims = self.batch, self.dims
        n = B * sum(dims)
        if self.philox is not None and self.philox.device.type != "cpu":
            base = self.offset + k * self.stride
            flat = philox_randn_from(self.philox, base, n)
            uniform = philox_rand_from(self.philox, base + n, B) if self.mala else None
        else:
            seed, base, _ = self.noise_position(k)
            flat = philox_randn(seed, base, n, device=self.device)
            uniform = philox_rand(seed, base + n, B, device=self.device) if self.mala else None
        noise = [c.reshape(B, d) for c, d in zip(flat.to(self.dtype).split([B * d for d in dims]), dims)]
        return noise, uniform

    def new_stats(self) -> torch.Tensor | None:
        """The [K, 3] statistics tensor (``STATS_COLUMNS``) a backend fills, or None without info."""
        if not self.want_info:
            return None
        return torch.zeros(self.n_steps, len(STATS_COLUMNS), dtype=torch.float64, device=self.device)

    @property
    def device(self) -> torch.device:
        return self.z[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.z[0].dtype

    def restructure(self, flat: list[torch.Tensor]):
        """Flattened layers back to the caller's shapes and structure (a layer already in its
        shape passes as it is: a reshape would add a view to autograd's graph, ~8 us a step)."""
        out = [t if t.shape == s else t.reshape(s) for t, s in zip(flat, self.shapes)]
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


def fusable_spec(energy, flat: list[torch.Tensor], *, is_list: bool, shapes=None):
    """(spec, posterior, squeeze_output, why not) for ``energy`` of the flattened layers ``flat``:
    the energy objects that carry a spec, an MLP ``nn.Sequential``, or any other callable of one
    [B, d] tensor that ``recognize.py`` reads as an MLP energy (or an MLP-decoder posterior) by
    tracing it."""
    from .recognize import recognize  # (recognize imports this module's names lazily: no cycle)
    if isinstance(energy, PriorEnergy):
        return energy.spec, None, False, None
    if isinstance(energy, PosteriorEnergy):
        return energy.spec, energy, False, None
    dims = [t.shape[1] for t in flat]
    squeeze = isinstance(energy, nn.Sequential)
    if squeeze:
        mlp = mlp_spec_from_sequential(energy)
        if mlp is not None and len(dims) == 1 and mlp.in_dim == dims[0] and mlp.out_dim == 1:
            spec = PriorSpec(dims=tuple(dims), layer_terms=(mlp,), energy_sign=1.0, base_sigma=(math.inf,))
            return spec, None, True, None
    if len(flat) != 1:
        return None, None, squeeze, f"the energy takes {len(flat)} layers; only energies of one tensor are traced"
    spec, posterior, why = recognize(energy, flat[0], as_list=is_list, squeeze=squeeze,
                                     shape=shapes[0] if shapes is not None else None)
    return spec, posterior, squeeze, why


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
                 return_info, check_finite: bool = True) -> tuple[Problem, PhiloxGenerator]:
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

    spec, posterior, squeeze, why_not = fusable_spec(energy, flat, is_list=is_list, shapes=[t.shape for t in layers])
    _check_weights_match(spec, posterior, layers[0])
    if spec is not None and tuple(spec.dims) != tuple(t.shape[1] for t in flat):
        raise ValueError(f"the energy's prior has layer dims {tuple(spec.dims)} but z has "
                         f"{tuple(t.shape[1] for t in flat)}")
    if posterior is not None and posterior.x_obs.shape[0] != B:
        raise ValueError(f"the posterior has {posterior.x_obs.shape[0]} observations but z has {B} chains")
    problem = Problem(energy=energy, z=flat, shapes=[t.shape for t in layers], is_list=is_list,
                      n_steps=n_steps, step_sizes=steps, noise_scale=float(noise_scale),
                      prior_sigma=sigmas, mala=bool(mala), seed=stream.seed, offset=0,
                      want_info=bool(return_info), spec=spec, posterior=posterior, squeeze_output=squeeze,
                      tensor_spec=spec is not None and not isinstance(energy, (PriorEnergy, PosteriorEnergy)),
                      why_not_fused=why_not)
    problem.offset = stream.take(n_steps * problem.stride)
    return problem, stream


_MASK64 = (1 << 64) - 1


def read_philox(philox: torch.Tensor) -> tuple[int, int]:
    """(seed, offset) of a CPU int64 [seed, offset] tensor (the seed's 64 bits stored signed)."""
    seed, offset = philox.tolist()  # a CPU tensor: no device sync
    return seed & _MASK64, offset


def check_philox(philox, device) -> None:
    if not torch.is_tensor(philox) or philox.dtype != torch.int64 or tuple(philox.shape) != (2,):
        raise ValueError("philox must be an int64 tensor of shape (2,): [seed, offset] (see philox_tensor)")
    if philox.device.type != "cpu" and philox.device != device:
        raise ValueError(f"philox is on {philox.device} but the state is on {device}: put it on the "
                         "state's device (graph-safe) or on the CPU")


def check_op_layers(z) -> None:
    if not isinstance(z, (list, tuple)) or not z or not all(torch.is_tensor(t) for t in z):
        raise ValueError("z must be a non-empty list of [B, d_l] tensors, one per latent layer")


def make_op_problem(spec: PriorSpec | None, z, philox: torch.Tensor, step_sizes, noise_scale, prior_sigma,
                    n_steps, mala, want_info, *, step_offset: int = 0) -> Problem:
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
    return Problem(energy=None, z=[t.contiguous() for t in z], shapes=[t.shape for t in z], is_list=True,
                   n_steps=int(n_steps), step_sizes=tuple(float(s) for s in step_sizes),
                   noise_scale=float(noise_scale), prior_sigma=tuple(prior_sigma) if prior_sigma else None,
                   mala=bool(mala), seed=0, offset=int(step_offset), want_info=bool(want_info), spec=spec,
                   philox=philox)


class ChainInfo(dict):
    """``langevin``'s info: a dict whose per-step lists (``energy``, ``grad_norm``, ``accept``) and
    ``accept_rate`` are read from the [K, 3] statistics tensor (``info["stats"]``, on the state's
    device) only when first asked for, so a caller on a GPU that does not look at them never waits
    for the device."""

    _LAZY = ("energy", "grad_norm", "accept", "accept_rate")

    def __init__(self, problem: Problem, stats: torch.Tensor | None, **fields):
        super().__init__(stats=stats, **fields)
        self._problem = problem
        self._read = False

    def _fill(self) -> None:
        if not self._read:
            self._read = True
            lists = info_from_stats(self._problem, dict.__getitem__(self, "stats"))
            lists["accept_rate"] = sum(lists["accept"]) / len(lists["accept"]) if lists["accept"] else None
            dict.update(self, lists)

    def __getitem__(self, key):
        if key in self._LAZY:
            self._fill()
        return dict.__getitem__(self, key)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __contains__(self, key):
        return key in self._LAZY or dict.__contains__(self, key)

    def keys(self):
        self._fill()
        return dict.keys(self)

    def items(self):
        self._fill()
        return dict.items(self)

    def values(self):
        self._fill()
        return dict.values(self)

    def __iter__(self):
        self._fill()
        return dict.__iter__(self)

    def __len__(self):
        self._fill()
        return dict.__len__(self)

    def __repr__(self):
        self._fill()
        return dict.__repr__(self)

    def __eq__(self, other):
        self._fill()
        return dict.__eq__(self, other)

    def copy(self):
        self._fill()
        return dict(self)


def info_from_stats(problem: Problem, stats: torch.Tensor | None) -> dict:
    """The per-step lists ``langevin``'s info holds, from a [K, 3] statistics tensor."""
    if stats is None or stats.shape[0] == 0:
        return {"energy": [], "grad_norm": [], "accept": []}
    rows = stats.tolist()  # one host read for the whole chain
    return {"energy": [r[0] for r in rows], "grad_norm": [r[1] for r in rows],
            "accept": [r[2] for r in rows] if problem.mala else []}
