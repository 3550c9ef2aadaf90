"""The trainer's GPU path: one training iteration with no host synchronisation.

On CUDA (``JEBM_DEVICE_PATH`` unset or ``auto``) a trainer's iteration is:
- the prior chain: ``jebm_kernels``' whole-chain op (one fused launch: the cuda or Triton kernel)
  in a ``GraphSafeChain``, captured in a CUDA graph;
- the posterior chain (any decoder: autograd for the decoder's gradient, the fused multi-layer
  update for the step) in a ``GraphSafeChain`` captured once per batch shape and settings and
  replayed with fresh noise (the noise position lives in a device tensor);
- the losses and the update, as on the CPU;
- the metrics kept on the device (``DeviceMetrics``) and read by the training loop only at its
  read points (every ``log_every`` iterations, at checkpoints, snapshots and the last iteration),
  where it also checks for divergence.

``langevin`` itself is not used there: it checks ``torch.isfinite(z).all()`` on the host and, for
the per-step statistics the trainer asked for, reads them with ``.tolist()`` (two syncs per chain).

Noise: each chain takes its counters from the trainer's ``PhiloxGenerator`` exactly as
``langevin`` does (start noise, then ``n_steps * stride``), so the GPU path draws the stream of
the eager path and stays resumable from the checkpointed (seed, offset).

Divergence on this path: the iteration's non-finite check is not made before its update, so an
iteration with a NaN loss does update the parameters (to NaN) and the run goes on until the
next read point. There ``DeviceMetrics.read`` reports the first non-finite iteration j in the
window, the metric and that iteration's values; the loop then logs and rolls back (or raises)
exactly as if it had stopped at j: the lines logged before j are the same, the ``diverged`` line
is j's, and the rollback target is the same checkpoint, because every checkpoint iteration is a
read point and a checkpoint is written only after its read found the window finite (and, as on
the eager path, only from finite parameters). What differs from the eager path: up to
``log_every`` - 1 iterations of wasted work after a divergence, and when ``TrainingDiverged`` is
raised the in-memory model is the diverged one (the checkpoint on disk is the last good state).

``JEBM_DEVICE_PATH``: ``auto`` (default: on for a model on CUDA, with CUDA graphs; off on the
CPU), ``0`` (off: the eager path everywhere), ``1`` (on; graphs where the model is
on CUDA), ``eager`` (on, no graphs: the chains run eagerly through the same objects). The path is
off under torchrun and with ``learn_step_size`` (its differentiable chain runs eagerly).
On the CPU the default is the eager path.
"""
from __future__ import annotations

import os

import torch

from ..model.blocks import randn_layers
from .device_chains import ChainCache, make_chain

__all__ = ["DevicePath", "DeviceMetrics", "ENV", "must_read"]

ENV = "JEBM_DEVICE_PATH"
_MODES = ("auto", "0", "1", "eager")


def _mode() -> str:
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{ENV} must be one of {', '.join(_MODES)}; got {os.environ.get(ENV)!r}")
    return mode


def _distributed() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _floats(step_size) -> tuple[float, ...]:
    return tuple(float(s) for s in step_size) if isinstance(step_size, (list, tuple)) else (float(step_size),)


class DevicePath:
    """A trainer's chains on the GPU path. ``capture``: CUDA graphs (needs the model on CUDA)."""

    def __init__(self, trainer, *, capture: bool):
        self.trainer = trainer
        self.capture = bool(capture)
        self.chains = ChainCache(capture)

    @classmethod
    def auto(cls, trainer) -> "DevicePath | None":
        """The path ``JEBM_DEVICE_PATH`` asks for this trainer, or None (the eager path)."""
        mode = _mode()
        if mode == "0" or getattr(trainer, "short_run", None) is not None or _distributed():
            return None
        on_cuda = next(trainer.model.parameters()).device.type == "cuda"
        if mode == "auto":
            return cls(trainer, capture=True) if on_cuda else None
        return cls(trainer, capture=on_cuda and mode == "1")

    # ---- the chains ------------------------------------------------------------------------------
    def _key(self, kind: str, shapes, settings: dict, backend: str) -> tuple:
        model = self.trainer.model
        # parameter storage: a model moved or re-created gets new chains (they hold views of the weights)
        storage = tuple(p.data_ptr() for p in model.parameters())
        return (kind, tuple(tuple(s) for s in shapes), settings["n_steps"], _floats(settings["step_size"]),
                float(settings["noise_scale"]), settings["space"], settings["precision"], backend, model.sigma_x,
                storage)

    def sample_prior(self, chains, n: int, *, generator, backend: str, settings) -> list[torch.Tensor]:
        """``PriorChains.sample`` (``JEBM.sample_prior`` with the trainer's settings) on this path:
        the same starts and noise, z-space layers [n, d_l]."""
        model = self.trainer.model
        s = settings.prior()
        persistent = chains.persistent and chains.state is not None and chains.state[0].shape[0] == n
        init = chains.state if persistent else None
        if (not model.has_ebm and init is None) or s["n_steps"] == 0:
            return chains.sample(model, n, generator=generator, backend=backend, **s)  # no chain to run
        p = next(model.parameters())
        start = (list(init) if init is not None
                 else randn_layers(n, model.dims, generator, device=p.device, dtype=p.dtype))
        space = s["space"]

        def build(generator):
            return make_chain(model.prior_energy_fn(space), start, n_steps=s["n_steps"], step_size=s["step_size"],
                              noise_scale=s["noise_scale"], backend=backend, generator=generator,
                              precision=s["precision"])

        entry = self.chains.get(self._key("prior", [t.shape for t in start], s, backend), build, generator)
        state = entry.run(start, generator)
        if chains.persistent:
            chains.state = [t.detach() for t in state]
        with torch.no_grad():
            z = model.eps_to_z(state) if space == "eps" else state
        return [t.detach() for t in z]

    def sample_posterior(self, x: torch.Tensor, *, generator, backend: str, settings) -> list[torch.Tensor]:
        """``JEBM.sample_posterior(x)`` with the trainer's settings on this path (same starts and
        noise); the observed images are copied into the chain's own buffer before each run."""
        model = self.trainer.model
        s = settings.posterior()
        if s["n_steps"] == 0:
            return model.sample_posterior(x, generator=generator, backend=backend, **s)
        model._check_images(x)
        p = next(model.parameters())
        start = randn_layers(x.shape[0], model.dims, generator, device=p.device, dtype=p.dtype)
        space = s["space"]
        holder = {}

        def build(generator):
            x_buf = x.detach().clone()
            holder["x"] = x_buf
            chain = make_chain(model.posterior_energy_fn(x_buf, space), start, n_steps=s["n_steps"],
                               step_size=s["step_size"], noise_scale=s["noise_scale"], backend=backend,
                               generator=generator, precision=s["precision"])
            chain.x_obs = x_buf
            return chain

        entry = self.chains.get(self._key("posterior", [x.shape, *(t.shape for t in start)], s, backend), build,
                                generator)
        if not holder:  # a cached chain: this batch into its buffer (device to device)
            entry.chain.x_obs.copy_(x.detach())
        state = entry.run(start, generator)
        with torch.no_grad():
            z = model.eps_to_z(state) if space == "eps" else state
        return [t.detach() for t in z]


def must_read(it: int, cfg: dict, total: int) -> bool:
    """Whether the training loop reads the device metrics after iteration ``it``: where it logs,
    checkpoints, draws snapshots, and at the last iteration (every place it needs host values or
    a checked state)."""
    return (it % cfg["log_every"] == 0 or it == total or it % cfg["ckpt_every"] == 0
            or bool(cfg["sample_every"] and it % cfg["sample_every"] == 0))


class DeviceMetrics:
    """The iterations' metrics on the device between two read points.

    ``add(it, values)``: ``values`` is a trainer iteration's metrics (0-dim tensors; numbers are
    put on the device with a fill, never a copy). Kept: the last iteration's values and, on the
    device, the first iteration since the last read where a value was NaN or inf, which metric
    (the first in the dict's order, as ``first_non_finite`` names it) and that iteration's values.
    ``read(it)``: one host read (the sync) -> (values, first non-finite metric or None, iteration):
    the last values and ``it`` when the window was finite, else the first bad iteration's values,
    its metric and its number. Values are Python floats equal to ``float(v)`` of each metric."""

    def __init__(self):
        self.keys: tuple[str, ...] | None = None
        self.last = None
        self.bad_iter = self.bad_index = self.bad_values = None
        self.pending = 0  # iterations added since the last read

    def add(self, it: int, values: dict) -> None:
        keys = tuple(values)
        device = next((v.device for v in values.values() if torch.is_tensor(v)), torch.device("cpu"))
        vec = torch.stack([v.detach().reshape(()).to(torch.float64) if torch.is_tensor(v)
                           else torch.full((), float(v), dtype=torch.float64, device=device) for v in values.values()])
        if keys != self.keys:
            if self.pending:
                raise ValueError(f"the metrics changed from {self.keys} to {keys} between two reads")
            self.keys = keys
            self.bad_iter = torch.full((), -1, dtype=torch.int64, device=device)
            self.bad_index = torch.zeros((), dtype=torch.int64, device=device)
            self.bad_values = torch.zeros_like(vec)
        nonfinite = ~torch.isfinite(vec)
        new = nonfinite.any() & (self.bad_iter < 0)
        self.bad_iter = self.bad_iter.masked_fill(new, it)
        self.bad_index = torch.where(new, nonfinite.to(torch.uint8).argmax(), self.bad_index)
        self.bad_values = torch.where(new, vec, self.bad_values)
        self.last = vec
        self.pending += 1

    def read(self, it: int) -> tuple[dict, str | None, int]:
        if self.last is None:
            raise RuntimeError("DeviceMetrics.read before any add")
        n = len(self.keys)
        packed = torch.cat([self.last, self.bad_values, self.bad_iter.reshape(1).to(torch.float64),
                            self.bad_index.reshape(1).to(torch.float64)])
        host = packed.tolist()  # the one host read of the window
        self.pending = 0
        bad_it = int(host[2 * n])
        if bad_it < 0:
            return dict(zip(self.keys, host[:n])), None, it
        self.bad_iter = torch.full_like(self.bad_iter, -1)  # reported: the loop rolls back or raises
        return dict(zip(self.keys, host[n:2 * n])), self.keys[int(host[2 * n + 1])], bad_it
