"""``LangevinSampler``: torchebm's ``LangevinDynamics`` contract over ``langevin``.

Code written for ``torchebm.samplers.LangevinDynamics`` (torchebm 0.8.9) can swap this class in:
same constructor ``(model, step_size, noise_scale, decay, clamp, dtype, device, integrator)``,
``.to()``, ``device`` / ``dtype``, schedules, and ``sample(x, dim, n_steps, n_samples, thin,
return_trajectory, return_diagnostics, reset_schedulers, *, model_kwargs, y, generator)`` with its
defaults, shapes, diagnostics layout and error messages. torchebm is never imported: its
``BaseScheduler`` objects are driven through ``get_value() / step() / reset()`` (``schedules.py``).

Dynamics stay jebm's. torchebm's step is ``x - eta grad U + sqrt(2 eta) tau xi``; ours (see
``sampler.py``) is ``x - s^2/2 grad U + s tau xi``, so ``step_size`` here is torchebm's eta and each
call runs ``langevin`` with s = sqrt(2 eta). The noise is jebm's Philox stream.

The chain runs as few ``langevin`` calls as the request allows: one, unless states must be kept
(a block per ``thin`` steps), a schedule changes value (a block per constant stretch), ``clamp``
is set (a step per call, as ``langevin`` has no clamp), the model carries schedules of its own (a
step per call, stepped between steps as torchebm does) or a progress bar is shown (blocks of about
1% of the steps). Blocks share one ``PhiloxGenerator``, whose stream continues across calls, so the
noise -- and, without clamp, the states -- equal those of a single call.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import nn

from .dispatch import PRIORITY
from .philox import PhiloxGenerator, philox_randn
from .precision import PRECISIONS
from .sampler import langevin
from .schedules import as_schedule, check_value, is_schedule

__all__ = ["LangevinSampler"]

_SAMPLE_DTYPES = (torch.float32, torch.float64)


class LangevinSampler(nn.Module):
    """Langevin dynamics on an energy ``model`` (lower = more probable), torchebm-style.

    Args:
        model: callable x [B, *dim] -> energies [B] (an ``nn.Module`` moves with ``.to()``).
            ``energy_function=`` is accepted as an alias (the name earlier jebm versions used).
        step_size: torchebm's eta > 0 (jebm's s = sqrt(2 eta)); a number or a schedule.
        noise_scale: tau >= 0 (0: a noise-free chain); a number or a schedule.
        decay: torchebm's unused damping coefficient; only 0.0 is accepted.
        clamp: optional (min, max) applied to the state after every step (either may be None).
        dtype: float32 or float64, the dtype states are sampled in.
        device: where states live; None: the model's device if it has parameters, else the CPU.
        backend: ``langevin``'s backend ("auto", "reference", "cpu", "triton", "cuda").
        mala: add the Metropolis-Hastings correction (diagnostics gain "acceptance_rate").
        precision: ``langevin``'s ("auto", "fp32", "bf16"): what the energy's products run in.
        integrator: None or "euler_maruyama" (torchebm's default, the only update jebm runs).
    """

    def __init__(self, model=None, step_size=1e-3, noise_scale=1.0, decay: float = 0.0, clamp=None,
                 dtype: torch.dtype = torch.float32, device=None, *, backend: str = "auto",
                 mala: bool = False, precision: str = "auto", energy_function=None, integrator=None):
        super().__init__()
        if energy_function is not None:
            if model is not None:
                raise TypeError("give the energy once: model= or its alias energy_function=, not both")
            model = energy_function
        if model is None:
            raise TypeError("LangevinSampler needs model=: a callable x [B, *dim] -> energies [B]")
        if not callable(model):
            raise TypeError(f"model must be callable (x [B, *dim] -> energies [B]), got {type(model).__name__}")
        if not isinstance(dtype, torch.dtype) or dtype not in _SAMPLE_DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        if device is None and isinstance(model, nn.Module):
            first = next(iter([*model.parameters(), *model.buffers()]), None)
            device = None if first is None else first.device
        self.model = model
        # A zero-element buffer carries device and dtype, so nn.Module.to() moves them (torchebm's probe).
        self.register_buffer("_probe", torch.empty(0, dtype=dtype, device=device), persistent=False)
        self.schedulers: dict = {}
        self._register_param("step_size", step_size, positive=True)
        self._register_param("noise_scale", noise_scale, positive=False)
        if not isinstance(decay, Real) or isinstance(decay, bool) or decay != 0:
            raise ValueError(f"decay (damping) is not supported, and torchebm ignores it too: leave it at 0.0, "
                             f"got {decay!r}")
        self.decay = 0.0
        self.clamp = _check_clamp(clamp)
        self.integrator = _check_integrator(integrator)
        if backend != "auto" and backend not in PRIORITY:
            raise ValueError(f"backend must be 'auto' or one of {list(PRIORITY)}, got {backend!r}")
        if not isinstance(mala, bool):
            raise TypeError(f"mala must be True or False, got {mala!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.backend, self.mala, self.precision = backend, mala, precision
        self.last_info: dict = {}  # the last sample() call: seed, offset, backend, per-step statistics

    # ---- torchebm's attributes ---------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._probe.device

    @property
    def dtype(self) -> torch.dtype:
        return self._probe.dtype

    @property
    def energy_function(self):
        """The model under the name earlier jebm versions used."""
        return self.model

    @property
    def step_size(self) -> float:
        """The current scheduled eta; assigning a number or a schedule replaces the schedule."""
        return self.get_scheduled_value("step_size")

    @step_size.setter
    def step_size(self, value) -> None:
        self._register_param("step_size", value, positive=True)

    @property
    def noise_scale(self) -> float:
        return self.get_scheduled_value("noise_scale")

    @noise_scale.setter
    def noise_scale(self, value) -> None:
        self._register_param("noise_scale", value, positive=False)

    # ---- schedules (torchebm's Schedulable methods) ------------------------------------------
    def _register_param(self, name: str, value, *, positive: bool) -> None:
        self.schedulers[name] = as_schedule(name, value, allow_zero=not positive)

    def register_scheduler(self, name: str, scheduler) -> None:
        if not is_schedule(scheduler):
            raise TypeError(f"a scheduler needs get_value(), step() and reset(), got {type(scheduler).__name__}")
        self.schedulers[name] = scheduler

    def get_schedulers(self) -> dict:
        return self.schedulers

    def get_scheduled_value(self, name: str) -> float:
        if name not in self.schedulers:
            raise KeyError(f"No scheduler registered for parameter '{name}'")
        return self.schedulers[name].get_value()

    def _model_schedules(self) -> list:
        """Schedules held by modules under the model (torchebm Schedulable modules keep them in a
        ``schedulers`` dict): torchebm steps them with the sampler's, after every step."""
        found = []
        for m in self.modules():
            held = getattr(m, "schedulers", None) if m is not self else None
            if isinstance(held, dict):
                found += [s for s in held.values() if is_schedule(s)]
        return found

    def step_schedulers(self) -> None:
        """Advance every schedule of the sampler and of its model by one step."""
        for s in [*self.schedulers.values(), *self._model_schedules()]:
            s.step()

    def reset_schedulers(self) -> None:
        for s in [*self.schedulers.values(), *self._model_schedules()]:
            s.reset()

    # ---- sampling ------------------------------------------------------------------------------
    def sample(self, x: torch.Tensor | None = None, dim=None, n_steps: int = 100, n_samples: int = 1,
               thin: int = 1, return_trajectory: bool = False, return_diagnostics: bool = False,
               reset_schedulers: bool = True, *, model_kwargs: dict | None = None, y=None,
               generator=None, progress: bool = False):
        """Run ``n_steps`` Langevin steps from ``x`` (or from N(0, I) draws of shape [n_samples, *dim]).

        Args:
            x: starting states [B, *dim] (cast to the sampler's device and dtype; not modified).
            dim: an int or a shape tuple, needed when ``x`` is None.
            thin: keep every ``thin``-th state; ``n_steps // thin`` are kept.
            return_trajectory: return the kept states [n_samples, n_steps // thin, *dim] instead of
                the final ones.
            return_diagnostics: also return a dict of tensors with one row per kept state: "mean"
                and "var" (over chains, [n_kept, *dim]), "energy" (mean energy, [n_kept]) and, with
                ``mala``, "acceptance_rate" (mean over the steps since the previous kept state).
            reset_schedulers: reset every schedule first (False: continue where the last call ended).
            model_kwargs: keyword arguments for every model call (conditioning; tensors are moved to
                the sampler's device, never cast). ``y=`` is shorthand for ``model_kwargs={"y": y}``.
            generator: None (torch's default generator draws the start and the Philox seed), a
                ``torch.Generator`` (likewise), a ``jebm_kernels.PhiloxGenerator`` (start and noise
                from its stream, which advances) or a ``(seed, offset)`` pair.
            progress: show a tqdm progress bar (the chain then runs in blocks; same noise, same result).

        ``self.last_info`` then holds the call's ``seed`` and ``offset`` (the chain's noise position:
        ``langevin(..., step_size=sqrt(2 eta), generator=(seed, offset))`` replays a constant-schedule,
        unclamped chain), ``backend``, and per-step ``energy``, ``grad_norm`` and ``accept`` lists.
        """
        thin = _check_int("thin", thin, 1, "thin must be >= 1")
        n_steps = _check_int("n_steps", n_steps, 0)
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be True or False, got {progress!r}")
        kwargs = _merge_condition(model_kwargs, y, self.device)
        if reset_schedulers:
            self.reset_schedulers()
        stream = _philox_stream(generator)
        z = self._init_state(x, dim, n_samples, generator, stream)
        if stream is None:
            stream = _stream_from_torch(generator)
        start_offset = stream.offset
        model = self.model
        energy = model if not kwargs else (lambda state: model(state, **kwargs))

        live = bool(self._model_schedules())  # the model's own schedules must step between steps
        values = None if live else [self._step_values(i, advance=True) for i in range(n_steps)]
        n_kept = n_steps // thin
        keep = bool(return_trajectory or return_diagnostics)
        ends = _block_ends(n_steps, thin if keep else 0, values, per_step=live or self.clamp is not None,
                           chunk=max(1, n_steps // 100) if progress else 0)

        n, shape = z.shape[0], tuple(z.shape[1:])
        traj = torch.empty((n, n_kept, *shape), dtype=self.dtype, device=self.device) if return_trajectory else None
        diag = self._new_diagnostics(n_kept, shape) if return_diagnostics else None
        info = {"energy": [], "grad_norm": [], "accept": []}
        backend, precision, accepts_since_kept = None, None, []
        bar = _progress_bar(n_steps) if progress else None
        start = 0
        try:
            for end in ends:
                eta, tau = self._step_values(start, advance=False) if live else values[start]
                z, step_info = langevin(energy, z, n_steps=end - start, step_size=math.sqrt(2 * eta),
                                        noise_scale=tau, generator=stream, backend=self.backend, mala=self.mala,
                                        return_info=True, precision=self.precision)
                backend, precision = step_info["backend"], step_info["precision"]
                for key in info:
                    info[key] += step_info[key]
                accepts_since_kept += step_info["accept"]
                if self.clamp is not None:
                    z = torch.clamp(z, *self.clamp)
                if live:
                    self.step_schedulers()
                if keep and end % thin == 0:
                    j = end // thin - 1
                    if traj is not None:
                        traj[:, j] = z
                    if diag is not None:
                        self._record(diag, j, z, kwargs, accepts_since_kept)
                    accepts_since_kept = []
                if bar is not None:
                    bar.update(end - start)
                start = end
        finally:
            if bar is not None:
                bar.close()
        accept_rate = sum(info["accept"]) / len(info["accept"]) if info["accept"] else None
        self.last_info = dict(seed=stream.seed, offset=start_offset, n_steps=n_steps, backend=backend,
                              precision=precision, accept_rate=accept_rate, **info)
        out = traj if return_trajectory else z
        return (out, diag) if return_diagnostics else out

    def _step_values(self, i: int, *, advance: bool) -> tuple[float, float]:
        """(eta, tau) for step i from the schedules, checked; with ``advance``, then step them."""
        where = f" (its schedule's value at step {i})"
        eta = check_value("step_size", self.get_scheduled_value("step_size"), allow_zero=False, where=where)
        tau = check_value("noise_scale", self.get_scheduled_value("noise_scale"), allow_zero=True, where=where)
        if advance:
            self.step_schedulers()
        return eta, tau

    def _init_state(self, x, dim, n_samples, generator, stream) -> torch.Tensor:
        if x is not None:
            if not torch.is_tensor(x):
                raise TypeError(f"x must be a torch.Tensor [n_samples, *dim], got {type(x).__name__}")
            if x.dim() < 2:
                raise ValueError(f"x must be batch first, [n_samples, *dim], got shape {tuple(x.shape)}")
            return x.to(device=self.device, dtype=self.dtype)
        if dim is None:
            raise ValueError("dim must be provided when x is None")
        shape = (dim,) if isinstance(dim, Integral) and not isinstance(dim, bool) else dim
        if (not isinstance(shape, (tuple, list, torch.Size)) or not shape
                or not all(isinstance(d, Integral) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise ValueError(f"dim must be an int > 0 or a tuple of them, got {dim!r}")
        n_samples = _check_int("n_samples", n_samples, 1)
        shape = (n_samples, *(int(d) for d in shape))
        if stream is not None:  # the start comes from the Philox stream too: one (seed, offset) replays all
            numel = math.prod(shape)
            normals = philox_randn(stream.seed, stream.take(numel), numel, device=self.device)
            return normals.to(self.dtype).reshape(shape)
        return torch.randn(shape, dtype=self.dtype, device=self.device, generator=generator)

    def _new_diagnostics(self, n_kept: int, shape: tuple) -> dict:
        like = dict(dtype=self.dtype, device=self.device)
        diag = {"mean": torch.empty((n_kept, *shape), **like), "var": torch.empty((n_kept, *shape), **like),
                "energy": torch.empty(n_kept, **like)}
        if self.mala:
            diag["acceptance_rate"] = torch.empty(n_kept, **like)
        return diag

    @torch.no_grad()
    def _record(self, diag: dict, j: int, z: torch.Tensor, kwargs: dict, accepts: list) -> None:
        """Row j of torchebm's diagnostics layout, at the state kept there."""
        if z.shape[0] > 1:
            diag["mean"][j] = z.mean(dim=0)
            diag["var"][j] = z.var(dim=0, unbiased=False).clamp_(min=1e-10, max=1e10)
        else:
            diag["mean"][j] = z[0]
            diag["var"][j].zero_()
        u = self.model(z, **kwargs) if kwargs else self.model(z)
        diag["energy"][j] = u.mean()
        if "acceptance_rate" in diag:
            diag["acceptance_rate"][j] = sum(accepts) / len(accepts) if accepts else float("nan")

    def __repr__(self) -> str:
        model = getattr(self.model, "__name__", type(self.model).__name__)
        return (f"{type(self).__name__}(model={model}, step_size={self.schedulers['step_size']!r}, "
                f"noise_scale={self.schedulers['noise_scale']!r}, clamp={self.clamp}, backend={self.backend!r}, "
                f"mala={self.mala}, dtype={self.dtype}, device={self.device})")


def _check_int(name: str, value, low: int, message: str | None = None) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{message or f'{name} must be >= {low}'}, got {value!r}")
    return int(value)


def _check_clamp(clamp):
    if clamp is None:
        return None
    if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
        raise TypeError(f"clamp must be None or a (min, max) pair, got {clamp!r}")
    lo, hi = clamp
    for v in (lo, hi):
        if v is not None and (not isinstance(v, Real) or isinstance(v, bool) or math.isnan(v)):
            raise TypeError(f"clamp bounds must be numbers or None, got {clamp!r}")
    if lo is None and hi is None:
        raise ValueError("clamp=(None, None) bounds nothing: give a min, a max or both, or clamp=None")
    if lo is not None and hi is not None and lo >= hi:
        raise ValueError(f"clamp min must be < max, got {tuple(clamp)}")
    return (None if lo is None else float(lo), None if hi is None else float(hi))


def _check_integrator(integrator) -> str:
    """jebm runs one update, Euler-Maruyama (torchebm's default integrator): accept only that."""
    if integrator is None:
        return "euler_maruyama"
    if isinstance(integrator, str):
        if integrator.lower().replace("-", "_") == "euler_maruyama":
            return "euler_maruyama"
        raise ValueError(f"LangevinSampler runs the Euler-Maruyama Langevin update in jebm's kernels; integrator "
                         f"must be None or 'euler_maruyama', got {integrator!r}")
    if type(integrator).__name__ == "EulerMaruyamaIntegrator":
        return "euler_maruyama"
    raise TypeError(f"LangevinSampler runs the Euler-Maruyama Langevin update in jebm's kernels; integrator must be "
                    f"None, 'euler_maruyama' or torchebm's EulerMaruyamaIntegrator, got {type(integrator).__name__}")


def _merge_condition(model_kwargs, y, device) -> dict:
    """torchebm's conditioning convention: ``y=`` folds into model_kwargs; tensors go to the
    sampler's device once (no dtype cast: integer labels stay integers)."""
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}")
    merged = dict(model_kwargs or {})
    if y is not None:
        if "y" in merged:
            raise ValueError("y was passed both as y= and inside model_kwargs['y']; provide it once")
        merged["y"] = y
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in merged.items()}


def _philox_stream(generator) -> PhiloxGenerator | None:
    """The stream when the caller gave one (PhiloxGenerator or (seed, offset)); None for torch's."""
    if isinstance(generator, PhiloxGenerator):
        return generator
    if isinstance(generator, tuple) and len(generator) == 2:
        return PhiloxGenerator(*generator)
    if generator is None or isinstance(generator, torch.Generator):
        return None
    raise TypeError("generator must be None, a torch.Generator, a jebm_kernels.PhiloxGenerator or a "
                    f"(seed, offset) pair; got {type(generator).__name__}")


def _stream_from_torch(generator) -> PhiloxGenerator:
    """A fresh Philox seed from a torch.Generator (the default one when None), on its own device."""
    if generator is None or generator.device.type == "cpu":
        return PhiloxGenerator.from_torch(generator)
    words = torch.randint(0, 2**32, (2,), dtype=torch.int64, generator=generator, device=generator.device)
    hi, lo = (int(w) for w in words.tolist())  # one read per call, not per step
    return PhiloxGenerator((hi << 32) | lo, 0)


def _block_ends(n_steps: int, thin: int, values, *, per_step: bool, chunk: int) -> list[int]:
    """The step counts at which a ``langevin`` call ends: kept states (multiples of ``thin``),
    schedule changes, progress updates (multiples of ``chunk``), and the end."""
    if per_step:
        return list(range(1, n_steps + 1))
    ends = {n_steps} if n_steps else set()
    if thin:
        ends.update(range(thin, n_steps + 1, thin))
    if chunk:
        ends.update(range(chunk, n_steps, chunk))
    if values is not None:
        ends.update(i for i in range(1, n_steps) if values[i] != values[i - 1])
    return sorted(ends)


def _progress_bar(total: int):
    from tqdm.auto import tqdm  # a dependency of jebm; imported only when a bar is asked for
    return tqdm(total=total, desc="LangevinSampler", unit="step")
