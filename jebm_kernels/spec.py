"""Plain descriptions of the energies a fused backend can run, and their torch reference.

A fused backend cannot call arbitrary Python; it needs the weights and the structure. These
frozen dataclasses are that hand-over: the jebm model builds a ``PriorSpec`` from its modules,
``mlp_spec_from_sequential`` reads a user's ``nn.Sequential``, and every backend evaluates the
same math. The ``*_energy`` functions here are the specification: pure torch, differentiable.

Conventions (docs/design.md, section 1): energy terms f are *negative* energies (larger = more
probable); the prior energy is U(z) = -sum_l f_l(z_l) - f_0(concat z) - log p_beta(z), with the
constant of the Gaussian log densities dropped.

``PriorSpec.mlps`` is the one numbering of a prior's MLPs (layer terms, the joint term, the
Gaussians, an MLP decoder) that every kernel, the custom op's encoding and the refusal messages use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .activation_table import ACTIVATIONS  # the one table of activation names and codes

__all__ = [
    "ACTIVATIONS", "activation", "neg_log_base", "posterior_energy", "MLPSpec", "GaussianSpec", "PriorSpec",
    "PriorMLP", "PriorMLPs", "mlp_spec_from_sequential", "mlp_forward", "gaussian_params", "eps_to_z", "prior_energy",
]


@dataclass(frozen=True)
class MLPSpec:
    """Linear layers with one activation between them, and ``out_activation`` after the last.

    ``weights[i]`` is [out, in] as in ``nn.Linear``; ``biases[i]`` is [out] or None.
    ``act_param`` is LeakyReLU's negative slope, Softplus's beta (its threshold is torch's 20) or
    ELU's alpha (``activation_table.py`` says which activation reads it).
    """
    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor | None, ...]
    activation: str = "leaky_relu"
    act_param: float = 0.2
    out_activation: str = "identity"  # e.g. "tanh" for a decoder onto [-1, 1] pixels

    def __post_init__(self):
        for a in (self.activation, self.out_activation):
            if a not in ACTIVATIONS:
                raise ValueError(f"activation must be one of {ACTIVATIONS}, got {a!r}")
        if len(self.weights) == 0 or len(self.weights) != len(self.biases):
            raise ValueError("an MLPSpec needs one bias (or None) per weight and at least one layer")
        for i, w in enumerate(self.weights):
            if w.dim() != 2:
                raise ValueError(f"weight {i} must be 2-D [out, in], got shape {tuple(w.shape)}")
            if i and w.shape[1] != self.weights[i - 1].shape[0]:
                raise ValueError(f"weight {i} takes {w.shape[1]} inputs but layer {i - 1} gives "
                                 f"{self.weights[i - 1].shape[0]}")
            b = self.biases[i]
            if b is not None and tuple(b.shape) != (w.shape[0],):
                raise ValueError(f"bias {i} must have shape ({w.shape[0]},), got {tuple(b.shape)}")

    @property
    def in_dim(self) -> int:
        return self.weights[0].shape[1]

    @property
    def out_dim(self) -> int:
        return self.weights[-1].shape[0]

    def flops_per_row(self) -> int:
        """Multiply-adds x2 of one forward pass for one input row."""
        return sum(2 * w.shape[0] * w.shape[1] for w in self.weights)


@dataclass(frozen=True)
class GaussianSpec:
    """p(z_l | z_{l+1}) = N(mu, diag sigma^2); ``mlp`` maps z_{l+1} to [mu, raw] (2 d_l outputs),
    sigma = exp(raw) + ``sigma_floor`` (the CVPR code's parameterisation)."""
    mlp: MLPSpec
    sigma_floor: float = 0.01


@dataclass(frozen=True)
class PriorSpec:
    """The joint latent prior: dims d_1..d_L (z_1 next to the image, z_L on top).

    ``layer_terms[l]`` is f_{l+1} or None; ``joint_term`` is f_0 on concat(z_1..z_L) or None;
    ``gaussians[l]`` is p(z_{l+1} | z_{l+2}) for l < L-1 (so L-1 of them); the top is N(0, I).
    ``space`` is "z" (sample z) or "eps" (sample the reparameterisation noise).
    ``energy_sign`` multiplies the summed terms: -1 for negative energies f (jebm's models),
    +1 for a plain energy network (lower = more probable). ``base_sigma`` (one per layer, or None)
    replaces the generator's Gaussians by N(0, base_sigma^2 I): the LEBM prior_sigma form.
    """
    dims: tuple[int, ...]
    layer_terms: tuple[MLPSpec | None, ...]
    joint_term: MLPSpec | None = None
    gaussians: tuple[GaussianSpec, ...] = ()
    space: str = "z"
    energy_sign: float = -1.0
    base_sigma: tuple[float, ...] | None = None

    def __post_init__(self):
        L = len(self.dims)
        if L < 1 or any(int(d) < 1 for d in self.dims):
            raise ValueError(f"dims must be one positive int per layer, got {self.dims}")
        if len(self.layer_terms) != L:
            raise ValueError(f"need one layer term (or None) per layer: {L} layers, "
                             f"{len(self.layer_terms)} terms")
        if self.space not in ("z", "eps"):
            raise ValueError(f"space must be 'z' or 'eps', got {self.space!r}")
        for l, t in enumerate(self.layer_terms):
            if t is not None and (t.in_dim != self.dims[l] or t.out_dim != 1):
                raise ValueError(f"layer term {l + 1} must map {self.dims[l]} -> 1, got {t.in_dim} -> {t.out_dim}")
        if self.joint_term is not None and (self.joint_term.in_dim != sum(self.dims) or self.joint_term.out_dim != 1):
            raise ValueError(f"joint term must map {sum(self.dims)} -> 1")
        if self.base_sigma is None:
            if len(self.gaussians) != L - 1:
                raise ValueError(f"need {L - 1} inter-layer Gaussians for {L} layers, got {len(self.gaussians)}")
            for l, g in enumerate(self.gaussians):
                if g.mlp.in_dim != self.dims[l + 1] or g.mlp.out_dim != 2 * self.dims[l]:
                    raise ValueError(f"Gaussian {l + 1} must map {self.dims[l + 1]} -> {2 * self.dims[l]}")
        else:
            if self.gaussians:
                raise ValueError("give either inter-layer Gaussians or base_sigma, not both")
            if len(self.base_sigma) != L or any(not s > 0 for s in self.base_sigma):
                raise ValueError("base_sigma needs one positive value per layer (inf: no base term), "
                                 f"got {self.base_sigma}")
            if self.space != "z":
                raise ValueError("base_sigma priors are sampled in z-space")

    def mlps(self, decoder=None) -> PriorMLPs:
        """Every MLP of the prior, in the order the kernels number them: the layer terms (layer 1
        first, absent ones skipped), the joint term, the Gaussians p(z_l | z_{l+1}) (l = 1 first),
        then ``decoder`` when it is an ``MLPSpec`` (a posterior's; any other decoder is not counted).
        Each entry has its number, role, layer and the name the refusal messages use; the result
        also gives each role's numbers (``PriorMLPs``)."""
        entries: list[PriorMLP] = []

        def add(role: str, layer: int | None, name: str, m: MLPSpec) -> int:
            entries.append(PriorMLP(len(entries), role, layer, name, m))
            return len(entries) - 1

        terms = tuple(-1 if t is None else add("layer term", l, f"layer term {l + 1}", t)
                      for l, t in enumerate(self.layer_terms))
        joint = -1 if self.joint_term is None else add("joint term", None, "joint term", self.joint_term)
        gaussians = tuple(add("Gaussian", l, f"Gaussian {l + 1}", g.mlp) for l, g in enumerate(self.gaussians))
        dec = add("decoder", None, "decoder", decoder) if isinstance(decoder, MLPSpec) else -1
        return PriorMLPs(entries, terms=terms, joint=joint, gaussians=gaussians, decoder=dec)

    def flops_per_chain_step(self) -> int:
        """Approximate FLOPs of one energy+gradient evaluation for one chain (backward ~ 2x forward)."""
        return 3 * sum(e.mlp.flops_per_row() for e in self.mlps())


class PriorMLP(NamedTuple):
    """One MLP of a prior (``PriorSpec.mlps``)."""
    index: int          # its number in the kernels' tables and the custom op's encoding
    role: str           # "layer term", "joint term", "Gaussian" or "decoder"
    layer: int | None   # l (0-based): f_{l+1}'s layer, or the Gaussian p(z_{l+1} | z_{l+2}); None otherwise
    name: str           # as the refusal messages say it: "layer term 1", "joint term", "Gaussian 1", "decoder"
    mlp: MLPSpec


class PriorMLPs(tuple):
    """``PriorSpec.mlps``: a tuple of ``PriorMLP`` in the kernels' order, with each role's numbers
    (-1: none): ``terms`` (one per layer), ``joint``, ``gaussians`` (one per Gaussian), ``decoder``."""
    terms: tuple[int, ...]
    joint: int
    gaussians: tuple[int, ...]
    decoder: int

    def __new__(cls, entries, *, terms, joint, gaussians, decoder):
        self = super().__new__(cls, entries)
        self.terms, self.joint, self.gaussians, self.decoder = terms, joint, gaussians, decoder
        return self


_SEQ_ACTS = {
    nn.LeakyReLU: ("leaky_relu", lambda m: float(m.negative_slope)),
    nn.SiLU: ("silu", lambda m: 0.0),
    nn.Tanh: ("tanh", lambda m: 0.0),
    nn.ReLU: ("relu", lambda m: 0.0),
    nn.ELU: ("elu", lambda m: float(m.alpha)),
}


def _activation_of(m: nn.Module) -> tuple[str, float] | None:
    if type(m) in _SEQ_ACTS:
        name, param = _SEQ_ACTS[type(m)]
        return name, param(m)
    if type(m) is nn.GELU:
        return ("gelu_tanh" if m.approximate == "tanh" else "gelu"), 0.0
    if type(m) is nn.Softplus:
        if m.threshold != 20:
            return None
        return "softplus", float(m.beta)
    return None


def mlp_spec_from_sequential(seq: nn.Module) -> MLPSpec | None:
    """The MLPSpec of ``nn.Sequential(Linear, act, Linear, act, ..., Linear)``, or None when the
    module is not of that family (other layers, mixed activations, a trailing activation)."""
    if type(seq) is not nn.Sequential or len(seq) == 0:
        return None
    mods = list(seq)
    linears, acts = mods[0::2], mods[1::2]
    if len(linears) != len(acts) + 1 or any(type(m) is not nn.Linear for m in linears):
        return None
    parsed = [_activation_of(a) for a in acts]
    if any(p is None for p in parsed) or len(set(parsed)) > 1:
        return None
    name, param = parsed[0] if parsed else ("identity", 0.0)
    return MLPSpec(tuple(m.weight for m in linears), tuple(m.bias for m in linears), name, param)


def activation(h: torch.Tensor, name: str, param: float) -> torch.Tensor:
    if name == "leaky_relu":
        return F.leaky_relu(h, param)
    if name == "gelu":
        return F.gelu(h)
    if name == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    if name == "silu":
        return F.silu(h)
    if name == "softplus":
        return F.softplus(h, beta=param)
    if name == "tanh":
        return torch.tanh(h)
    if name == "relu":
        return torch.relu(h)
    if name == "elu":
        return F.elu(h, param)
    return h


def mlp_forward(spec: MLPSpec, x: torch.Tensor) -> torch.Tensor:
    h = x
    last = len(spec.weights) - 1
    for i, (w, b) in enumerate(zip(spec.weights, spec.biases)):
        h = F.linear(h, w, b)
        if i < last:
            h = activation(h, spec.activation, spec.act_param)
    return activation(h, spec.out_activation, spec.act_param)


def gaussian_params(g: GaussianSpec, z_above: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) of p(z_l | z_{l+1} = z_above)."""
    out = mlp_forward(g.mlp, z_above)
    mu, raw = out.chunk(2, dim=-1)
    return mu, torch.exp(raw) + g.sigma_floor


def eps_to_z(spec: PriorSpec, eps: list[torch.Tensor]) -> list[torch.Tensor]:
    """The reparameterisation z_L = eps_L, z_l = mu_l(z_{l+1}) + sigma_l(z_{l+1}) * eps_l."""
    L = len(spec.dims)
    z: list[torch.Tensor] = [None] * L  # type: ignore[list-item]
    z[L - 1] = eps[L - 1]
    for l in range(L - 2, -1, -1):
        mu, sigma = gaussian_params(spec.gaussians[l], z[l + 1])
        z[l] = mu + sigma * eps[l]
    return z


def _terms(spec: PriorSpec, z: list[torch.Tensor]) -> torch.Tensor:
    """sum_l f_l(z_l) + f_0(concat z), shape [B]."""
    total = torch.zeros(z[0].shape[0], dtype=z[0].dtype, device=z[0].device)
    for t, zl in zip(spec.layer_terms, z):
        if t is not None:
            total = total + mlp_forward(t, zl).squeeze(-1)
    if spec.joint_term is not None:
        total = total + mlp_forward(spec.joint_term, torch.cat(z, dim=-1)).squeeze(-1)
    return total


def neg_log_base(spec: PriorSpec, z: list[torch.Tensor]) -> torch.Tensor:
    """-log p_beta(z) up to a constant, shape [B] (z-space)."""
    if spec.base_sigma is not None:
        nlp = torch.zeros(z[0].shape[0], dtype=z[0].dtype, device=z[0].device)
        for zl, s in zip(z, spec.base_sigma):
            if s != math.inf:
                nlp = nlp + zl.pow(2).sum(-1) / (2 * s * s)
        return nlp
    L = len(spec.dims)
    nlp = 0.5 * z[L - 1].pow(2).sum(-1)
    for l in range(L - 1):
        mu, sigma = gaussian_params(spec.gaussians[l], z[l + 1])
        nlp = nlp + (0.5 * ((z[l] - mu) / sigma).pow(2) + torch.log(sigma)).sum(-1)
    return nlp


def prior_energy(spec: PriorSpec, x: list[torch.Tensor]) -> torch.Tensor:
    """U of the prior at the sampled variables ``x`` (z or eps per ``spec.space``), shape [B]."""
    if spec.space == "eps":
        z = eps_to_z(spec, x)
        return spec.energy_sign * _terms(spec, z) + 0.5 * sum(e.pow(2).sum(-1) for e in x)
    return spec.energy_sign * _terms(spec, x) + neg_log_base(spec, x)


def posterior_energy(spec: PriorSpec, decoder, x_obs: torch.Tensor, sigma_x: float,
                     x: list[torch.Tensor]) -> torch.Tensor:
    """U(z | x) = U(z) + ||x - g(z_1)||^2 / (2 sigma_x^2), shape [B]; ``decoder`` is an MLPSpec or
    any callable from z_1 [B, d_1] to images shaped like ``x_obs``."""
    z1 = eps_to_z(spec, x)[0] if spec.space == "eps" else x[0]
    recon = mlp_forward(decoder, z1) if isinstance(decoder, MLPSpec) else decoder(z1)
    diff = (x_obs - recon.reshape(x_obs.shape)).reshape(x_obs.shape[0], -1)
    return prior_energy(spec, x) + diff.pow(2).sum(-1) / (2 * sigma_x * sigma_x)
