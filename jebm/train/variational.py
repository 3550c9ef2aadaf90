"""The variational learning scheme (docs/design.md, section 2).

An amortised inference model q_phi(z | x) (``jebm.model.inference.InferenceModel``: bottom-up
features, then q(z_L | x) and q(z_l | z_{l+1}, x), reparameterised) replaces posterior Langevin.
One iteration on a batch x:
- phi, g, beta maximise the ELBO  E_q[ log p(x|z_1) + F(z) + log p_beta(z) - log q(z|x) ]
  (the EBM's log Z does not depend on them), and beta also gets the negative phase of the tilted
  prior: loss_gen = -ELBO + mean log p_beta(z-), z- from prior Langevin (detached).
- alpha minimises mean F(z-) - mean F(z_q detached).
Only the prior chain remains in the loop. The F(z) term of the ELBO gives phi (through the
reparameterised z_q) a gradient, but alpha learns from its own loss only: one backward pass of
loss_gen + mean F(z-) gives exactly that (``VariationalTrainer.scheme_loss`` says why).

With ``learn_step_size=True`` q's sample is refined by ``post_steps`` posterior Langevin steps with
learned per-layer step sizes (``jebm.train.short_run.LearnedPosterior``), started from q's detached
sample (not from noise: q is already close, so K can be short). The refined z+ replaces z_q in
alpha's positive phase (where the posterior's quality matters: alpha's gradient is
E_{p(z|x)}[dF] - E_{p(z)}[dF]) and in ``posterior()``; phi, g and beta keep the ELBO of q. The step
sizes minimise the same KL bound as in the MLE scheme (q's entropy at the start does not depend on
them) and are logged as ``step_size_post_l1``, ...

Noise for q's reparameterisation comes from the trainer's Philox stream, like every chain, so
the run is reproducible from its seed and resumable bit for bit.
"""
from __future__ import annotations

import math

import torch

from ..model import JEBM, InferenceModel, build_inference_model, randn_layers
from .trainer import Trainer

__all__ = ["VariationalTrainer"]


class VariationalTrainer(Trainer):
    name = "variational"
    loss_key = "neg_elbo"  # the loss that must fall during training

    def __init__(self, model: JEBM, cfg: dict, infer: InferenceModel | None = None):
        super().__init__(model, cfg)
        p = next(model.parameters())
        infer = infer if infer is not None else build_inference_model(cfg, model.image_shape)
        self.infer = infer.to(p.device, p.dtype)
        self.opt_gen = torch.optim.Adam([
            {"params": model.generator_parameters(), "lr": cfg["lr_gen"]},
            {"params": list(self.infer.parameters()), "lr": cfg["lr_infer"]},
        ], betas=self.betas)

    def modules(self) -> dict:
        return {"infer": self.infer, **super().modules()}

    def posterior(self, x, *, generator, backend):
        """z-space samples from q(z | x), refined by the learned short-run chain when there is one."""
        noise = randn_layers(x.shape[0], self.model.dims, generator, device=x.device, dtype=x.dtype)
        with torch.no_grad():
            z, _ = self.infer(x, noise)
        z = [t.detach() for t in z]
        if self.short_run is not None:
            return self.short_run.posterior(x, self.sampling, generator=generator, backend=backend, start=z)
        return z

    def scheme_loss(self, x: torch.Tensor, *, generator, backend: str) -> tuple[dict, torch.Tensor]:
        """Sample q and the prior chains and compute the losses: (metric values as floats, one
        scalar whose gradient is each parameter group's update).

        alpha must learn from loss_ebm = F(z-) - F(z_q detached) only, but loss_gen's F(z_q) term
        reaches alpha too (with gradient -dF(z_q)). One scalar gives both exactly:
        total = loss_gen + mean F(z-): alpha gets -dF(z_q) + dF(z-) = d loss_ebm, and phi, g, beta
        get loss_gen's gradient alone (F(z-) is a function of alpha only, z- being detached).
        With the learned refinement z+ replaces z_q detached in loss_ebm, and the scalar gains
        mean F(z_q detached) - mean F(z+): alpha's -dF(z_q) from loss_gen is cancelled and replaced
        by -dF(z+); phi sees neither term (both are detached from it)."""
        model, B = self.model, x.shape[0]
        sx = model.sigma_x
        noise = randn_layers(B, model.dims, generator, device=x.device, dtype=x.dtype)
        z_q, log_q = self.infer(x, noise)
        with self.decoder_region():
            recon = model.decode(z_q[0])
        sq = (x - recon).reshape(B, -1).pow(2).sum(-1)
        n_pix = recon[0].numel()
        log_px = -sq / (2 * sx * sx) - n_pix * (math.log(sx) + 0.5 * math.log(2 * math.pi))
        logp_q = model.log_p_beta(z_q)
        F_q = model.F(z_q)
        elbo = log_px + F_q + logp_q - log_q
        loss_gen = -elbo.mean()
        metrics = {"neg_elbo": -elbo.mean(), "loss_recon": (sq / (2 * sx * sx)).mean(), "mse": sq.mean() / n_pix,
                   "kl": (log_q - logp_q - F_q).mean(), "logp_pos": logp_q.mean()}
        loss_ebm = None
        z_pos = [t.detach() for t in z_q]
        metrics.update(model.sigma_metrics(z_pos))
        if self.short_run is not None:
            z_pos, post_metrics = self.short_run.sample(x, self.sampling, generator=generator, start=z_pos)
            metrics.update(post_metrics)
        if model.has_ebm:
            z_neg = self.sample_prior(B, generator=generator, backend=backend)
            logp_neg = model.log_p_beta(z_neg).mean()
            loss_gen = loss_gen + logp_neg
            F_pos = model.F(z_pos).mean()
            F_neg = model.F(z_neg).mean()
            loss_ebm = F_neg - F_pos
            metrics.update(loss_ebm=loss_ebm, logp_neg=logp_neg, F_pos=F_pos, F_neg=F_neg)
        total = loss_gen if loss_ebm is None else loss_gen + F_neg + self.f_penalty(z_pos, z_neg)
        if self.short_run is not None:
            if loss_ebm is not None:
                total = total + model.F([t.detach() for t in z_q]).mean() - F_pos
            total = total + self.short_run.surrogate()  # the step sizes' gradient, through the same backward
        return self.metric_values(metrics), total  # floats, or device tensors on the GPU path
