"""Short-run posterior inference with learned step sizes (Nijkamp et al., ECCV 2020).

The chain. Posterior Langevin in the model's sampling space v (z or eps, docs/design.md, section 1) from a start v_0,
one step size s_l = exp(log_s_l) per latent layer (positive by construction), h_l = s_l^2 / 2:
    v_{k+1} = v_k - h * grad U(v_k | x) + s * tau * xi_k,      k = 0 .. K-1.
xi_k are the Philox normals of the shared stream, laid out exactly as the reference backend lays
them out (``jebm_kernels.problem.Problem.step_noise``, what the reference backend draws): given the same generator
state and step sizes, ``short_run_chain`` reproduces ``jk.langevin(..., backend="reference")`` to
rounding, and a run stays reproducible from its (seed, offset).

The objective. q_s(v | x) is the law of v_K. With log p(v | x) = -U(v | x) - log Z(x),
    KL(q_s || p(. | x)) = E_q[U(v_K | x)] - H(q_s) + log Z(x),
and log Z(x) does not depend on s. KL is invariant under the bijection eps <-> z, so working in
the sampling space is exact. The step sizes follow the gradient of a Monte Carlo estimate,
differentiated through the chain (reparameterised noise: v_K is a smooth function of s given
(v_0, xi)); full autograd, so the Hessian's own dependence on v_k (third derivatives of U) is kept.

The entropy term (our estimator). Given the noise xi = (xi_0 .. xi_{K-1}), the K-step map
T_xi: v_0 -> v_K is deterministic with Jacobian prod_k (I - diag(h) H(v_k)), H the Hessian of
U(. | x). Conditioning never raises entropy, so by the change of variables
    H(q_s) >= H(v_K | xi) = H(v_0) + E sum_k log|det(I - diag(h) H(v_k))|,
and we minimise, per chain,
    J(s) = U(v_K | x) - sum_k log|det(I - diag(h) H(v_k))|            (``ShortRunResult.objective``),
since E J(s) - H(v_0) + log Z(x) >= KL(q_s || p(. | x)) with H(v_0) free of s (N(0, I) for the
MLE scheme's start from noise; q_phi's detached sample for the variational refinement). Bias: the gap is the mutual
information I(v_K; xi), the entropy the injected noise adds beyond what the map carries over from
v_0; the bound credits none of it, so its minimiser may prefer slightly smaller steps than the true
KL's. The change of variables needs T_xi invertible, which holds while every step keeps
h_l lambda < 1 along the curvature lambda it sees (each step is then a diffeomorphism); past that the
log-det still measures the local change of volume but the identity is no longer exact. What it
buys: it is the Jacobian quantity the paper works with and needs no density of v_K.

log|det| per step, two estimators (config ``entropy_estimator``):
- ``"exact"``: the D x D Hessian of every chain (D = sum d_l) from D Hessian-vector products in
  one ``is_grads_batched`` backward (torch loops over the D products where an op has no batching
  rule, as leaky_relu_backward has none), then ``slogdet`` of I - diag(h) H. No truncation, no
  probe noise, valid for any step size (an overshooting step, |1 - h lambda| > 1, rightly counts
  as expanding). Cost per step: D HVPs plus O(B D^3). The test oracle, and the evaluation
  estimator of ``posterior_objective`` (no graph kept there); for training, small D only.
- ``"series"``: log det(I - A) = -sum_{n>=1} tr(A^n) / n with A = diag(h) H, truncated after
  ``entropy_terms`` terms, each trace by Hutchinson with ``entropy_probes`` Rademacher probes drawn
  from the same Philox stream. Cost per step: terms x probes HVPs, independent of D (the papers'
  presets: D = 228 and 124). Unbiased in the probes for the truncated sum; the truncation leaves
  -sum_{n>N} tr(A^n)/n, about rho^(N+1)/(N+1) per eigenvalue rho of A, and the series is wrong
  once some |rho| >= 1, i.e. once a step overshoots a curvature direction. Use it with moderate
  step sizes. The default: on the default preset it makes an iteration that learns step sizes several
  times cheaper than the exact estimator, with a truncation bias of 1-3% of the summed log-det;
  the terms dropped are -rho^n/n with rho mostly in (0, 1), so the truncated series under-counts
  the contraction.

Fused backends: the backward through the chain needs autograd, which the cpu / triton / cuda
kernels do not provide, so in this mode the posterior chain runs here, in torch (the reference
math); ``warn_fused_fallback`` says so once per process. Sampling with already learned step sizes
needs no backward and uses any backend (``LearnedPosterior.values`` into ``model.sample_posterior``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

import jebm_kernels as jk
from jebm_kernels.arguments import make_problem
from jebm_kernels.problem import step_constants

from ..model import JEBM, SamplingSettings, randn_layers

__all__ = ["ESTIMATORS", "StepSizes", "ShortRunResult", "short_run_chain", "log_abs_det_step",
           "LearnedPosterior", "warn_fused_fallback", "step_size_metrics"]

ESTIMATORS = ("exact", "series")


def step_size_metrics(values) -> dict:
    """The metrics keys the report reads: ``step_size_post_l1``, ``step_size_post_l2``, ..."""
    return {f"step_size_post_l{l + 1}": float(v) for l, v in enumerate(values)}


class StepSizes(nn.Module):
    """One positive posterior step size per latent layer, s_l = exp(log_step[l])."""

    def __init__(self, init, n_layers: int):
        super().__init__()
        vals = list(init) if isinstance(init, (list, tuple)) else [init] * n_layers
        if len(vals) != n_layers:
            raise ValueError(f"step sizes: {n_layers} latent layers need {n_layers} values, got {len(vals)}")
        t = torch.tensor([float(v) for v in vals], dtype=torch.float32)
        if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
            raise ValueError(f"step sizes must be finite and > 0, got {vals}")
        self.log_step = nn.Parameter(torch.log(t))

    def forward(self) -> torch.Tensor:
        return self.log_step.exp()

    def values(self) -> list[float]:
        return [float(v) for v in self.log_step.detach().exp().tolist()]


@dataclass
class ShortRunResult:
    state: list[torch.Tensor]  # v_K per layer in the sampling space (in s's graph when differentiable)
    energy: torch.Tensor       # U(v_K | x), [B]
    logdet: torch.Tensor       # sum_k log|det(I - diag(h) H(v_k))| (estimate), [B]
    seed: int                  # the Philox stream of the chain: replay with generator=(seed, offset)
    offset: int

    @property
    def objective(self) -> torch.Tensor:
        """J = U(v_K | x) - sum_k log|det|, [B]: KL(q_s || p) up to terms free of s (see module doc)."""
        return self.energy - self.logdet


def log_abs_det_step(grad: list[torch.Tensor], v: list[torch.Tensor], h: torch.Tensor, *, estimator: str = "exact",
                     probes: torch.Tensor | None = None, n_terms: int = 2, keep_graph: bool = True) -> torch.Tensor:
    """log|det(I - diag(h) H)| per chain, [B], H the Hessian of the energy whose gradient ``grad``
    (per layer, computed with ``create_graph=True``) was taken at ``v``; ``h`` [D] per coordinate.

    ``probes`` [P, B, D] (Rademacher) for ``estimator="series"``. ``keep_graph`` keeps the result
    differentiable (with respect to h and to whatever v depends on)."""
    g = torch.cat(list(grad), dim=-1)
    B, D = g.shape
    if estimator == "exact":
        eye = torch.eye(D, dtype=g.dtype, device=g.device)
        rows = torch.autograd.grad(g, v, grad_outputs=eye.unsqueeze(1).expand(D, B, D).contiguous(),
                                   is_grads_batched=True, create_graph=keep_graph, retain_graph=True)
        H = torch.cat(rows, dim=-1).transpose(0, 1)        # [B, i, j] = d g_i / d v_j
        return torch.linalg.slogdet(eye - h[:, None] * H).logabsdet
    if estimator == "series":
        if probes is None or probes.dim() != 3 or tuple(probes.shape[1:]) != (B, D):
            raise ValueError(f"the series estimator needs probes of shape [P, {B}, {D}]")
        total = torch.zeros(B, dtype=g.dtype, device=g.device)
        # One probe at a time with plain Hessian-vector products: the vectorised backward
        # (is_grads_batched) has no batching rule for leaky_relu_backward and loops anyway.
        for r in probes.unbind(0):
            w = r
            for n in range(1, n_terms + 1):
                hv = torch.autograd.grad(g, v, grad_outputs=w, create_graph=keep_graph, retain_graph=True)
                w = h * torch.cat(hv, dim=-1)                            # A w, A = diag(h) H (H symmetric)
                total = total - (r * w).sum(-1) / (n * probes.shape[0])  # -tr(A^n)/n by Hutchinson
        return total
    raise ValueError(f"entropy estimator must be one of {ESTIMATORS}, got {estimator!r}")


def short_run_chain(energy, start: list[torch.Tensor], step_sizes: torch.Tensor, *, n_steps: int,
                    noise_scale: float = 1.0, generator=None, estimator: str = "exact", n_terms: int = 2,
                    n_probes: int = 1, differentiable: bool = True) -> ShortRunResult:
    """K steps of Langevin on ``energy`` (list of [B, d_l] -> [B]) from ``start``, with per-layer
    ``step_sizes`` (a tensor [L], differentiable), and the log-det-Jacobian entropy estimate.

    Noise: the shared Philox stream, drawn from ``generator`` exactly as ``jk.langevin`` draws it
    (then, for the series estimator, the probes). ``differentiable=False`` detaches each step (the
    evaluation of a fixed step size: no graph is kept across steps)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"entropy estimator must be one of {ESTIMATORS}, got {estimator!r}")
    for name, val, lo in (("n_terms", n_terms, 1), ("n_probes", n_probes, 1)):
        if not isinstance(val, int) or isinstance(val, bool) or val < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {val!r}")
    if not torch.is_tensor(step_sizes) or step_sizes.dim() != 1 or step_sizes.shape[0] != len(start):
        raise ValueError(f"step_sizes must be a tensor with one value per layer ({len(start)}), got "
                         f"{tuple(step_sizes.shape) if torch.is_tensor(step_sizes) else type(step_sizes).__name__}")
    problem, stream = make_problem(energy, list(start), n_steps=n_steps, step_size=step_sizes.detach().tolist(),
                                   noise_scale=noise_scale, prior_sigma=None, generator=generator, mala=False,
                                   return_info=False)
    B, dims, dtype, device = problem.batch, problem.dims, problem.dtype, problem.device
    if any(t.dim() != 2 for t in start):
        raise ValueError("short_run_chain takes latents as a list of [B, d_l] tensors")
    D = sum(dims)
    probe_base = stream.take(n_steps * n_probes * B * D) if estimator == "series" else 0
    s = step_sizes.to(dtype=dtype, device=device)
    s_cols = torch.cat([s[l].expand(d) for l, d in enumerate(dims)])
    tau = problem.noise_scale
    h_cols, _ = step_constants(s_cols, tau)

    def call(v):
        u = energy(v)
        if not torch.is_tensor(u) or tuple(u.shape) != (B,):
            raise ValueError(f"energy must return one value per chain, shape ({B},)")
        return u

    v = [t.detach().clone().requires_grad_(True) for t in problem.z]
    logdet = torch.zeros(B, dtype=dtype, device=device)
    with torch.enable_grad():
        for k in range(n_steps):
            g = torch.autograd.grad(call(v).sum(), v, create_graph=True)
            probes = None
            if estimator == "series":
                u01 = jk.philox_rand(problem.seed, probe_base + k * n_probes * B * D, n_probes * B * D, device=device)
                probes = torch.where(u01 < 0.5, -1.0, 1.0).to(dtype).reshape(n_probes, B, D)
            ld = log_abs_det_step(g, v, h_cols if differentiable else h_cols.detach(), estimator=estimator,
                                  probes=probes, n_terms=n_terms, keep_graph=differentiable)
            logdet = logdet + ld
            noise, _ = problem.step_noise(k)
            # (h, c) per layer and step, differentiable in s (the graph's rounding is the reference's)
            hc = [step_constants(s[l], tau) for l in range(len(v))]
            v = [vl - hc[l][0] * gl + hc[l][1] * nl for l, (vl, gl, nl) in enumerate(zip(v, g, noise))]
            if not differentiable:
                v = [t.detach().requires_grad_(True) for t in v]
                logdet = logdet.detach()
        u_K = call(v)
    if not differentiable:
        v, u_K = [t.detach() for t in v], u_K.detach()
    return ShortRunResult(state=v, energy=u_K, logdet=logdet, seed=problem.seed, offset=problem.offset)


_FALLBACK_WARNED = False


def warn_fused_fallback(backend: str) -> None:
    """Say once per process that learning step sizes runs the posterior chain on the reference
    backend (when a fused one was asked for, or would have been picked by ``auto``)."""
    global _FALLBACK_WARNED
    if _FALLBACK_WARNED or backend == "reference":
        return
    fused = [b for b in jk.available_backends() if b != "reference"]
    if backend == "auto" and not fused:
        return
    _FALLBACK_WARNED = True
    warnings.warn(
        f"learn_step_size=True: the posterior step sizes are learned by differentiating through the posterior "
        f"chain, which the fused backends ({', '.join(fused) or 'cpu, triton, cuda'}) do not support; the posterior "
        f"chain therefore runs on the reference backend (pure torch), while the prior chain stays on "
        f"backend={backend!r}. This warning is shown once.", RuntimeWarning, stacklevel=3)


class LearnedPosterior:
    """A trainer's learned short-run posterior: the step sizes, their Adam, and one chain per batch.

    ``sample`` runs the differentiable chain from noise (MLE) or from given z-space latents (the
    variational refinement, started from q's detached sample) and takes the step sizes' gradient
    at once, which frees the chain's graph. ``surrogate()`` is a scalar whose gradient with respect
    to the log step sizes is that gradient and zero elsewhere: added to a trainer's total loss,
    one backward pass and the optimisers' steps update the step sizes with everything else (and
    nothing is updated when the trainer finds a non-finite metric)."""

    def __init__(self, model: JEBM, cfg: dict):
        p = next(model.parameters())
        self.model = model
        self.cfg = cfg
        self.steps = StepSizes(cfg["post_step_size"], model.n_layers).to(p.device)
        self.opt = torch.optim.Adam(self.steps.parameters(), lr=cfg["lr_step_size"], betas=tuple(cfg["adam_betas"]))
        self._grad: torch.Tensor | None = None  # d objective / d log_step of the last chain
        warn_fused_fallback(cfg["backend"])

    def values(self) -> list[float]:
        return self.steps.values()

    def _start(self, x, generator, start, space):
        model = self.model
        if start is None:
            return randn_layers(x.shape[0], model.dims, generator, device=x.device, dtype=x.dtype)
        with torch.no_grad():
            start = [t.detach() for t in start]
            return [t.detach() for t in model.z_to_eps(start)] if space == "eps" else start

    def sample(self, x: torch.Tensor, settings: SamplingSettings, *, generator,
               start: list[torch.Tensor] | None = None):
        """(z-space posterior samples, detached; metrics as tensors). ``settings``: the trainer's
        (space and noise scale; the step sizes are the learned ones, the steps ``post_steps`` of the
        run config). ``start``: z-space latents to start from (None: N(0, I) noise in the sampling
        space, drawn from ``generator``)."""
        model, cfg = self.model, self.cfg
        space = settings.space
        v0 = self._start(x, generator, start, space)
        s = self.steps()
        res = short_run_chain(model.posterior_energy_fn(x.detach(), space), v0, s, n_steps=cfg["post_steps"],
                              noise_scale=settings.noise_scale, generator=generator,
                              estimator=cfg["entropy_estimator"], n_terms=cfg["entropy_terms"],
                              n_probes=cfg["entropy_probes"], differentiable=True)
        loss = res.objective.mean()
        (grad,) = torch.autograd.grad(loss, [self.steps.log_step])
        self._grad = grad.detach()
        with torch.no_grad():
            state = [t.detach() for t in res.state]
            z = model.eps_to_z(state) if space == "eps" else state
        metrics = {"post_objective": loss.detach(), "post_energy": res.energy.detach().mean(),
                   "post_logdet": res.logdet.detach().mean(), "post_step_grad": grad.detach().norm(),
                   **{f"step_size_post_l{l + 1}": v for l, v in enumerate(s.detach().unbind())}}
        return [t.detach() for t in z], metrics

    def posterior(self, x, settings: SamplingSettings, *, generator, backend, start=None):
        """Samples with the current learned step sizes (the rest of ``settings``' posterior chain)
        and no gradient: any backend, fused included."""
        init = None if start is None else self._start(x, generator, start, settings.space)
        return self.model.sample_posterior(x, generator=generator, backend=backend, init=init,
                                           **settings.with_post_step_size(self.values()).posterior())

    def surrogate(self) -> torch.Tensor:
        """(log_step * g).sum() with g the kept gradient: d/d log_step = g, and 0 once used."""
        if self._grad is None:
            return self.steps.log_step.sum() * 0.0
        g, self._grad = self._grad, None
        return (self.steps.log_step * g).sum()
