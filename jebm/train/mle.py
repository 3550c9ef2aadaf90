"""The MLE learning scheme (Cui, Wu & Han, CVPR 2023; docs/design.md, section 2).

One iteration on a batch x:
1. z+ ~ p(z | x) by posterior Langevin from noise; z- ~ p(z) by prior Langevin from noise.
2. decoder g:         minimise ||x - g(z_1+)||^2 / (2 sigma_x^2)   (sum over pixels, mean over batch)
   Gaussians beta:    minimise mean log p_beta(z-) - mean log p_beta(z+)
                      (p_beta sits inside the normalised tilted prior, so it has a negative phase)
   EBM terms alpha:   minimise mean F(z-) - mean F(z+)
The three losses touch disjoint parameters and z+ / z- are detached, so one backward pass of
their sum gives each parameter group exactly its own gradient.

The Gaussian-prior baseline (no EBM) has p(z) = p_beta(z) exactly normalised: the negative phase
E_{p_beta}[grad log p_beta] is zero in expectation, so it is left out and no prior chain is run;
beta then minimises -mean log p_beta(z+) (alternating back-propagation, Han et al. 2017).

With ``learn_step_size=True`` z+ comes from ``jebm.train.short_run.LearnedPosterior`` instead: the same
chain from noise (same Philox draws), with one learned step size per layer, run differentiably on
the reference math; its step sizes take a gradient step on the KL bound every iteration, and their
values are logged as ``step_size_post_l1``, ``step_size_post_l2``, ...
"""
from __future__ import annotations

import torch

from ..model import JEBM
from .trainer import Trainer

__all__ = ["MLETrainer"]


class MLETrainer(Trainer):
    """Optimisers and the update of the MLE scheme; ``step`` does one iteration."""

    name = "mle"
    loss_key = "loss_recon"  # the loss that must fall during training (the decoder's)

    def __init__(self, model: JEBM, cfg: dict):
        super().__init__(model, cfg)
        self.opt_gen = torch.optim.Adam(model.generator_parameters(), lr=cfg["lr_gen"], betas=self.betas)

    def posterior(self, x, *, generator, backend):
        """z-space posterior samples for x (posterior Langevin from noise, learned step sizes if any)."""
        if self.short_run is not None:
            return self.short_run.posterior(x, self.sampling, generator=generator, backend=backend)
        return self.model.sample_posterior(x, generator=generator, backend=backend, **self.sampling.posterior())

    def scheme_loss(self, x: torch.Tensor, *, generator, backend: str) -> tuple[dict, torch.Tensor]:
        """Sample the chains and compute the iteration's losses: (metric values as floats, one
        scalar whose gradient is each parameter group's update)."""
        model, sx2 = self.model, 2 * self.model.sigma_x ** 2
        post_metrics = {}
        if self.short_run is not None:
            z_pos, post_metrics = self.short_run.sample(x, self.sampling, generator=generator)
        else:
            z_pos = self.sample_posterior(x, generator=generator, backend=backend)  # the GPU path or not: Trainer
        z_neg = self.sample_prior(x.shape[0], generator=generator, backend=backend) if model.has_ebm else None

        with self.decoder_region():
            recon = model.decode(z_pos[0])
        sq = (x - recon).reshape(x.shape[0], -1).pow(2).sum(-1)
        loss_recon = sq.mean() / sx2
        logp_pos = model.log_p_beta(z_pos).mean()
        metrics = {"loss_recon": loss_recon, "mse": sq.mean() / recon[0].numel(), "logp_pos": logp_pos}
        if model.has_ebm:
            logp_neg = model.log_p_beta(z_neg).mean()
            F_pos, F_neg = model.F(z_pos).mean(), model.F(z_neg).mean()
            loss_beta = logp_neg - logp_pos
            loss_ebm = F_neg - F_pos
            metrics.update(loss_beta=loss_beta, loss_ebm=loss_ebm, logp_neg=logp_neg, F_pos=F_pos, F_neg=F_neg)
            total = loss_recon + loss_beta + loss_ebm + self.f_penalty(z_pos, z_neg)
        else:
            loss_beta = -logp_pos
            metrics.update(loss_beta=loss_beta)
            total = loss_recon + loss_beta
        metrics.update(model.sigma_metrics(z_pos))
        metrics.update(post_metrics)
        if self.short_run is not None:
            total = total + self.short_run.surrogate()  # the step sizes' gradient, through the same backward
        return self.metric_values(metrics), total  # floats, or device tensors on the GPU path
