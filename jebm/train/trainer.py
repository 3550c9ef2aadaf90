"""What the two learning schemes share: the negative-phase prior chains, the optimiser layout
(one Adam for the EBM, one for the generator side, one for learned step sizes), the chains'
sampling settings, and the iteration itself: ``loss`` (the scheme's own ``scheme_loss``, in the
run's precision), then one backward pass and every optimiser's step.

The trainer owns its chains' settings (``Trainer.sampling``, a ``SamplingSettings``): they start
as the model's construction-time defaults (the run config's), a rollback replaces them with
smaller step sizes (``scale_step_sizes``), and every sampling call gets them explicitly; the
model's config is never written to.

Precision (the run config's ``precision``, docs/training.md): at "bf16" every chain runs
``langevin(..., precision="bf16")`` and the scheme's losses (the networks' forward passes, hence
their backward) run under ``torch.autocast(device, bfloat16)``; the parameters, their gradients,
the optimisers' state and the checkpoints stay float32, and the losses' sums are float32 (the
latents and images are float32, so every term mixing them with a network's bf16 output is
promoted, and ``loss`` returns the total as float32). A device without bf16 dot-product
instructions is refused at construction: emulated bf16 is slower than fp32, and a run's config
must say what ran. At "fp32" nothing changes: no autocast region is entered.

One exception, measured (docs/training.md, "Precision"): on the CPU a conv decoder's pass in the
losses (its forward and the backward into its weights) runs in float32 at "bf16" too. oneDNN's
bf16 weight gradient of a strided transposed convolution on AVX512-BF16 CPUs is faster than fp32
on idle cores but 1.5-8.5x slower than fp32 once anything else shares them, while the chains, which
need only the gradient with respect to z, run the decoder about twice as fast in bf16: they are
where the decoder's time goes (K passes against one).

Memory layout: a conv decoder on the CPU is kept in ``channels_last`` (its transposed
convolutions run faster so in both precisions: docs/training.md has the measurement); the MLP
parts have no layout to choose.
"""
from __future__ import annotations

import contextlib

import torch

from jebm_kernels.precision import bf16_hardware_reason

from ..model import JEBM, SamplingSettings
from ..model.blocks import ConvDecoder
from .device_step import DevicePath
from .short_run import LearnedPosterior

__all__ = ["Trainer", "PriorChains", "first_non_finite", "precision_refusal"]


def precision_refusal(precision: str, device: torch.device) -> str | None:
    """Why a run cannot train in ``precision`` on ``device`` (None: it can)."""
    if precision != "bf16":
        return None
    why = bf16_hardware_reason(torch.device(device))
    if why is None:
        return None
    return (f"precision='bf16' asked for, but {why}: emulated bf16 would be slower than fp32. Train with "
            "precision='fp32' (--set precision=fp32); a bf16 run can be resumed in fp32 too")


def first_non_finite(metrics: dict) -> str | None:
    """The name of the first metric that is NaN or inf, or None."""
    for k, v in metrics.items():
        if v != v or v in (float("inf"), float("-inf")):
            return k
    return None


class PriorChains:
    """The negative-phase prior chains of a trainer: short-run from noise each iteration (the
    papers' default), or persistent (``persistent_prior=True``): each iteration continues the
    previous iteration's chains, kept in the model's sampling space and checkpointed so a resumed
    run continues exactly."""

    def __init__(self, persistent: bool):
        self.persistent = bool(persistent)
        self.state: list[torch.Tensor] | None = None
        self.last_info = None  # the last chain's langevin info (None: no chain ran)

    def sample(self, model: JEBM, n: int, *, generator, backend: str, **settings) -> list[torch.Tensor]:
        """``n`` prior samples (z-space); ``settings``: the chain's ``SamplingSettings.prior()``."""
        init = self.state if (self.persistent and self.state is not None and self.state[0].shape[0] == n) else None
        z, info = model.sample_prior(n, generator=generator, backend=backend, init=init, return_info=True, **settings)
        self.last_info = info["sampler"]
        if self.persistent:
            self.state = [t.detach() for t in info["state"]]
        return z

    def state_dict(self) -> dict:
        return {"state": list(self.state)} if self.state is not None else {}

    def load_state_dict(self, d: dict) -> None:
        self.state = list(d["state"]) if d.get("state") is not None else None


class Trainer:
    """Base of ``MLETrainer`` and ``VariationalTrainer``. A subclass sets ``opt_gen`` (the
    generator side's optimiser) and defines ``scheme_loss``, ``posterior`` and ``modules``."""

    opt_gen: torch.optim.Optimizer

    def __init__(self, model: JEBM, cfg: dict):
        self.model = model
        self.cfg = cfg
        self.device = next(model.parameters()).device
        self.precision = cfg.get("precision", "fp32")
        why = precision_refusal(self.precision, self.device)
        if why is not None:
            raise ValueError(why)
        # chain kind -> why a chain ran in another precision than asked (a fused kernel without a
        # bf16 build runs fp32); the training loop logs each new one
        self.precision_notes: dict[str, str] = {}
        self._logged_notes: dict[str, str] = {}
        if isinstance(model.decoder, ConvDecoder) and self.device.type == "cpu":
            # before the optimisers exist, so their state follows the parameters' layout
            model.decoder.to(memory_format=torch.channels_last)
        self.betas = tuple(cfg["adam_betas"])
        # Separate optimisers so the EBM and the generator keep the papers' separate learning rates
        # and Adam statistics.
        self.opt_ebm = (torch.optim.Adam(model.ebm_parameters(), lr=cfg["lr_ebm"], betas=self.betas)
                        if model.has_ebm else None)
        self.prior_chains = PriorChains(cfg["persistent_prior"])
        self.short_run = LearnedPosterior(model, cfg) if cfg["learn_step_size"] else None
        # The chains' settings as configured, and the ones in use (a rollback scales the step sizes).
        self.base_sampling = SamplingSettings.from_config(model.config).with_precision(self.precision)
        self.sampling = self.base_sampling
        # the GPU path (chains in CUDA graphs, metrics on the device); None on the CPU
        self.device_path = DevicePath.auto(self)

    def scale_step_sizes(self, factor: float) -> None:
        """Run every chain with the configured step sizes times ``factor`` from now on (rollback)."""
        self.sampling = self.base_sampling.with_step_scale(factor)

    def autocast(self):
        """The region the scheme's losses run in: bf16 products at precision "bf16" (autocast keeps
        the parameters and their gradients float32), nothing at "fp32"."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def decoder_region(self):
        """The region the decoder's pass in the losses runs in: float32 for a conv decoder on the CPU
        (the module docstring says why), else the losses' own (``autocast``)."""
        if self.precision == "bf16" and isinstance(self.model.decoder, ConvDecoder) and self.device.type == "cpu":
            return torch.autocast(self.device.type, enabled=False)
        return contextlib.nullcontext()

    def _note_precision(self, kind: str, info) -> None:
        note = info["precision_note"] if info is not None else None
        if note:
            self.precision_notes[kind] = note

    def new_precision_notes(self) -> dict[str, str]:
        """The chains' precision notes not yet returned by this method (the loop logs each once)."""
        new = {k: v for k, v in self.precision_notes.items() if self._logged_notes.get(k) != v}
        self._logged_notes.update(new)
        return new

    def sample_prior(self, n: int, *, generator, backend: str) -> list[torch.Tensor]:
        """The negative phase: ``n`` samples of the prior chains with this trainer's settings."""
        if self.device_path is not None:  # the GPU path
            return self.device_path.sample_prior(self.prior_chains, n, generator=generator, backend=backend,
                                                 settings=self.sampling)
        z = self.prior_chains.sample(self.model, n, generator=generator, backend=backend, **self.sampling.prior())
        self._note_precision("prior", self.prior_chains.last_info)
        return z

    def sample_posterior(self, x: torch.Tensor, *, generator, backend: str) -> list[torch.Tensor]:
        """The positive phase's posterior chain with this trainer's settings (z-space layers)."""
        if self.device_path is not None:  # the GPU path
            return self.device_path.sample_posterior(x, generator=generator, backend=backend, settings=self.sampling)
        if self.precision == "fp32":  # nothing to note: no chain info asked for
            return self.model.sample_posterior(x, generator=generator, backend=backend, **self.sampling.posterior())
        z, info = self.model.sample_posterior(x, generator=generator, backend=backend, return_info=True,
                                              **self.sampling.posterior())
        self._note_precision("posterior", info["sampler"])
        return z

    def loss(self, x: torch.Tensor, *, generator, backend: str) -> tuple[dict, torch.Tensor]:
        """The scheme's losses (``scheme_loss``) in this trainer's precision: (metric values, one
        float32 scalar whose gradient is each parameter group's update). The backward pass runs
        outside the autocast region, as torch advises (it follows the forward's dtypes)."""
        with self.autocast():
            values, total = self.scheme_loss(x, generator=generator, backend=backend)
        return values, total.float()

    def metric_values(self, metrics: dict) -> dict:
        """An iteration's metrics as ``loss`` returns them: floats (a host read), or on the GPU path
        detached device tensors that the loop reads every ``log_every`` iterations."""
        if self.device_path is not None:
            return {k: v.detach() if torch.is_tensor(v) else v for k, v in metrics.items()}
        return {k: float(v.detach()) for k, v in metrics.items()}

    def f_penalty(self, z_pos, z_neg) -> torch.Tensor | float:
        """``ebm_l2`` * (mean F(z+)^2 + mean F(z-)^2), on alpha only (z+ and z- detached): keeps the
        EBM's level and scale from drifting (Du & Mordatch 2019); 0 when ``ebm_l2`` is 0."""
        lam = self.cfg.get("ebm_l2") or 0.0
        if not lam:
            return 0.0
        zp = [t.detach() for t in z_pos]
        zn = [t.detach() for t in z_neg]
        return lam * (self.model.F(zp).pow(2).mean() + self.model.F(zn).pow(2).mean())

    def modules(self) -> dict:
        """Modules besides the model that a checkpoint must hold (the learned step sizes, if any)."""
        return {"step_sizes": self.short_run.steps} if self.short_run is not None else {}

    def buffers(self) -> dict:
        """Non-module state a checkpoint must hold (the persistent chains)."""
        return {"prior_chains": self.prior_chains}

    def optimizers(self) -> dict:
        opts = {"gen": self.opt_gen}
        if self.opt_ebm is not None:
            opts["ebm"] = self.opt_ebm
        if self.short_run is not None:
            opts["step_size"] = self.short_run.opt
        return opts

    def step(self, x: torch.Tensor, *, generator, backend: str) -> tuple[dict, str | None]:
        """One iteration. Returns (metrics, name of the first non-finite metric or None); with a
        non-finite loss or energy no parameter is updated.

        On the GPU path (``device_path``) the values are device tensors, nothing is read on the
        host, the update is always applied and the first element is never a metric name: the
        training loop checks them at its read points (``jebm.train.device_step``)."""
        values, total = self.loss(x, generator=generator, backend=backend)
        if self.device_path is not None:  # no host read; the loop checks later
            self.apply(total)
            return values, None
        bad = first_non_finite(values)
        if bad is not None:
            return values, bad
        self.apply(total)
        return values, None

    def apply(self, total: torch.Tensor) -> None:
        """The update from ``loss``'s scalar: one backward pass, then every optimiser steps.
        (One backward pass is what DistributedDataParallel synchronises: jebm.train.distributed.)"""
        for opt in self.optimizers().values():
            opt.zero_grad(set_to_none=True)
        total.backward()
        clip = self.cfg.get("grad_clip")
        if clip:
            # Each optimiser's parameters clipped to a total gradient norm of ``grad_clip`` (one
            # bad batch or chain cannot throw the EBM or the generator far: a measured stabiliser).
            for opt in self.optimizers().values():
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
        for opt in self.optimizers().values():
            opt.step()
