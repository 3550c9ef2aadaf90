"""The JEBM model: a multi-layer Gaussian generator with a joint latent-space EBM prior.

Math (docs/design.md, section 1), layers l = 1..L, z_1 next to the image:
    p(z_L) = N(0, I),  p(z_l | z_{l+1}) = N(mu_l, diag sigma_l^2),  sigma_l = exp(raw) + floor
    p(x | z_1) = N(g(z_1), sigma_x^2 I)
    p(z) = exp(F(z)) p_beta(z) / Z,  F(z) = sum_l f_l(z_l) + f_0(concat z)   (f: negative energies)
    U(z) = -F(z) - log p_beta(z),  U(z | x) = U(z) + ||x - g(z_1)||^2 / (2 sigma_x^2)
    eps-space: U(eps) = -F(z(eps)) + ||eps||^2 / 2.

Every MLP is an ``nn.Sequential`` of Linear and LeakyReLU(0.2) layers ending in a Linear
(``jebm.model.blocks.mlp``), so ``jebm_kernels.mlp_spec_from_sequential`` reads it and
``prior_spec`` hands the whole prior (weights and structure) to the sampler; a fused backend can
then run the chain without calling back into Python. All Langevin sampling goes through ``jebm_kernels.langevin``.

Randomness: every method that draws noise takes ``generator``, a ``jebm_kernels.PhiloxGenerator``
(a trainer keeps one and checkpoints it), a ``torch.Generator``, or None (torch's default
generator seeds a fresh stream). Chain starting points are drawn from the same Philox stream as
the Langevin noise, so a run is reproducible from one (seed, offset).
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

import jebm_kernels as jk
from jebm_kernels.spec import eps_to_z, gaussian_params, neg_log_base

from .blocks import ACTIVATIONS, LOG_2PI, ConvDecoder, mlp, randn_layers
from .config import ReadOnlyConfig, normalize_hidden

__all__ = ["JEBM", "MODEL_KEYS"]

# The config keys the model reads (architecture and default sampler settings).
MODEL_KEYS = ("dims", "ebm", "ebm_hidden", "joint_hidden", "gauss_hidden", "decoder", "dec_hidden", "ngf",
              "sigma_x", "sigma_floor", "space", "prior_steps", "prior_step_size", "post_steps",
              "post_step_size", "noise_scale", "ebm_activation", "gauss_activation")


class JEBM(nn.Module):
    """Joint latent-space EBM prior over a multi-layer Gaussian generator.

    Args:
        image_shape: (C, H, W) of the images, scaled to [-1, 1].
        dims: latent dims (d_1, ..., d_L), z_1 next to the image.
        ebm: False builds the Gaussian-prior baseline (the same generator, no f terms).
        ebm_hidden / gauss_hidden: hidden widths of the f_l / p(z_l|z_{l+1}) MLPs: one list for
            all, or one list per module.
        joint_hidden: hidden widths of f_0 on concat(z); None for no joint term.
        decoder: "mlp" (tanh output) or "conv" (transposed convolutions).
        Sampler defaults (used when a sampling method is called without them): ``space``,
        ``prior_steps``, ``prior_step_size``, ``post_steps``, ``post_step_size``, ``noise_scale``.

    ``config`` records these arguments and is read-only (``jebm.model.config.ReadOnlyConfig``): a
    trainer or a loaded run passes its own ``SamplingSettings`` to every sampling call instead of
    changing the defaults.
    """

    def __init__(self, image_shape, dims=(16, 8), *, ebm: bool = True, ebm_hidden=(64, 64), joint_hidden=None,
                 gauss_hidden=(64, 64), decoder: str = "mlp", dec_hidden=(128, 128), ngf: int = 64,
                 sigma_x: float = 0.3, sigma_floor: float = 0.01, space: str = "eps", prior_steps: int = 30,
                 prior_step_size=0.4, post_steps: int = 30, post_step_size=0.1, noise_scale: float = 1.0,
                 ebm_activation: str = "leaky_relu", gauss_activation: str = "leaky_relu"):
        super().__init__()
        if not isinstance(image_shape, (tuple, list, torch.Size)) or len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}")
        dims = [int(d) for d in dims]
        if not dims or any(d < 1 for d in dims):
            raise ValueError(f"dims must be one positive int per latent layer, got {dims!r}")
        if space not in ("z", "eps"):
            raise ValueError(f"space must be 'z' or 'eps', got {space!r}")
        if not sigma_x > 0:
            raise ValueError(f"sigma_x must be > 0, got {sigma_x}")
        for name, act in (("ebm_activation", ebm_activation), ("gauss_activation", gauss_activation)):
            if act not in ACTIVATIONS:
                raise ValueError(f"{name} must be one of {tuple(ACTIVATIONS)}, got {act!r}")
        L = len(dims)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.dims = tuple(dims)
        self.sigma_x = float(sigma_x)
        self.sigma_floor = float(sigma_floor)
        # Read-only from here on: whoever samples passes its own settings (jebm.model.sampling).
        self.config = ReadOnlyConfig(
            dims=list(dims), ebm=bool(ebm), ebm_hidden=normalize_hidden(list(ebm_hidden), L, "ebm_hidden"),
            joint_hidden=None if joint_hidden is None else [int(w) for w in joint_hidden],
            gauss_hidden=normalize_hidden(list(gauss_hidden), L - 1, "gauss_hidden") if L > 1 else [],
            decoder=decoder, dec_hidden=[int(w) for w in dec_hidden], ngf=int(ngf), sigma_x=float(sigma_x),
            sigma_floor=float(sigma_floor), space=space, prior_steps=int(prior_steps),
            prior_step_size=prior_step_size, post_steps=int(post_steps), post_step_size=post_step_size,
            noise_scale=float(noise_scale), ebm_activation=ebm_activation, gauss_activation=gauss_activation)
        cfg = self.config
        # gaussians[l] is p(z_{l+1} | z_{l+2}) in 1-based terms: maps d_{l+2} -> [mu, raw] (2 d_{l+1}).
        self.gaussians = nn.ModuleList(
            mlp([dims[l + 1], *cfg["gauss_hidden"][l], 2 * dims[l]], gauss_activation) for l in range(L - 1))
        if ebm:
            self.layer_energies = nn.ModuleList(mlp([d, *h, 1], ebm_activation)
                                                for d, h in zip(dims, cfg["ebm_hidden"]))
            self.joint = mlp([sum(dims), *cfg["joint_hidden"], 1], ebm_activation) if joint_hidden is not None else None
        else:
            self.layer_energies = None
            self.joint = None
        C, H, W = self.image_shape
        if decoder == "mlp":
            # The tanh is applied in decode(): a trailing activation would take the Sequential
            # out of the fusable family; decoder_spec() records it as out_activation="tanh".
            self.decoder = mlp([dims[0], *cfg["dec_hidden"], C * H * W])
        elif decoder == "conv":
            self.decoder = ConvDecoder(dims[0], self.image_shape, ngf)
        else:
            raise ValueError(f"decoder must be 'mlp' or 'conv', got {decoder!r}")

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: dict, image_shape) -> "JEBM":
        """Build from a run config (``jebm.train.presets.resolve_config``) or a model's ``config``."""
        return cls(image_shape, **{k: cfg[k] for k in MODEL_KEYS})

    @property
    def n_layers(self) -> int:
        return len(self.dims)

    @property
    def has_ebm(self) -> bool:
        return self.layer_energies is not None

    def ebm_parameters(self) -> list[nn.Parameter]:
        """alpha: the f terms."""
        if not self.has_ebm:
            return []
        params = list(self.layer_energies.parameters())
        if self.joint is not None:
            params += list(self.joint.parameters())
        return params

    def generator_parameters(self) -> list[nn.Parameter]:
        """beta and g: the inter-layer Gaussians and the decoder."""
        return list(self.gaussians.parameters()) + list(self.decoder.parameters())

    # ---- specs handed to jebm_kernels ----------------------------------------------------------
    def prior_spec(self, space: str | None = None, *, detach: bool = True) -> jk.PriorSpec:
        """The prior as a ``jebm_kernels.PriorSpec`` (weights and structure) in ``space``.

        ``detach=True`` (for sampling) hands over detached weights: a chain needs gradients with
        respect to z only, and a fused backend gets plain tensors. ``detach=False`` keeps the
        parameters, so losses built on the spec back-propagate into the model."""
        space = self.config["space"] if space is None else space

        def read(seq):
            s = jk.mlp_spec_from_sequential(seq)
            if detach:
                s = replace(s, weights=tuple(w.detach() for w in s.weights),
                            biases=tuple(None if b is None else b.detach() for b in s.biases))
            return s

        terms = tuple(read(f) for f in self.layer_energies) if self.has_ebm else (None,) * self.n_layers
        joint = read(self.joint) if self.joint is not None else None
        gaussians = tuple(jk.GaussianSpec(read(g), self.sigma_floor) for g in self.gaussians)
        return jk.PriorSpec(dims=self.dims, layer_terms=terms, joint_term=joint, gaussians=gaussians,
                            space=space, energy_sign=-1.0)

    def decoder_spec(self, *, detach: bool = True):
        """The decoder as the sampler wants it: an ``MLPSpec`` with ``out_activation="tanh"`` for the
        MLP decoder (fusable whole), the module itself for the conv decoder (autograd does it)."""
        if isinstance(self.decoder, ConvDecoder):
            return self.decoder
        s = replace(jk.mlp_spec_from_sequential(self.decoder), out_activation="tanh")
        if detach:
            s = replace(s, weights=tuple(w.detach() for w in s.weights),
                        biases=tuple(None if b is None else b.detach() for b in s.biases))
        return s

    def prior_energy_fn(self, space: str | None = None) -> jk.PriorEnergy:
        return jk.PriorEnergy(self.prior_spec(space))

    def posterior_energy_fn(self, x: torch.Tensor, space: str | None = None) -> jk.PosteriorEnergy:
        self._check_images(x)
        return jk.PosteriorEnergy(self.prior_spec(space), self.decoder_spec(), x, self.sigma_x)

    # ---- densities and energies (differentiable, on the live parameters) -----------------------
    def decode(self, z1: torch.Tensor) -> torch.Tensor:
        """g(z_1): images [B, C, H, W] in [-1, 1]."""
        out = self.decoder(z1)
        if not isinstance(self.decoder, ConvDecoder):
            out = torch.tanh(out)
        return out.reshape(z1.shape[0], *self.image_shape)

    def F(self, z: list[torch.Tensor]) -> torch.Tensor:
        """F(z) = sum_l f_l(z_l) + f_0(concat z), shape [B] (0 for the Gaussian baseline)."""
        z = self._check_latents(z)
        total = torch.zeros(z[0].shape[0], dtype=z[0].dtype, device=z[0].device)
        if not self.has_ebm:
            return total
        for f, zl in zip(self.layer_energies, z):
            total = total + f(zl).squeeze(-1)
        if self.joint is not None:
            total = total + self.joint(torch.cat(z, dim=-1)).squeeze(-1)
        return total

    def log_p_beta(self, z: list[torch.Tensor]) -> torch.Tensor:
        """log p_beta(z) = log N(z_L; 0, I) + sum_l log N(z_l; mu_l, sigma_l^2), with constants, [B]."""
        z = self._check_latents(z)
        D = sum(self.dims)
        return -neg_log_base(self.prior_spec("z", detach=False), z) - 0.5 * D * LOG_2PI

    @torch.no_grad()
    def conditional_sigmas(self, z: list[torch.Tensor]) -> list[torch.Tensor]:
        """sigma_l(z_{l+1}) of p(z_l | z_{l+1}) at ``z``, one [B, d_l] tensor per l = 1..L-1
        (a diagnostic: a sigma stuck at ``sigma_floor`` is the collapse of that layer)."""
        z = self._check_latents(z)
        spec = self.prior_spec("z")
        return [gaussian_params(spec.gaussians[l], z[l + 1])[1] for l in range(self.n_layers - 1)]

    def sigma_metrics(self, z: list[torch.Tensor]) -> dict:
        """``sigma_l<l>``: the median of sigma_l over a batch and dims, and ``sigma_l<l>_p10``: its
        10th percentile, for l = 1..L-1 (logged by the trainers)."""
        out = {}
        for l, s in enumerate(self.conditional_sigmas(z), start=1):
            flat = s.detach().flatten().float()  # float quantiles: no host tensor to copy (GPU path)
            out[f"sigma_l{l}"], out[f"sigma_l{l}_p10"] = flat.quantile(0.5), flat.quantile(0.1)
        return out

    def energy(self, z: list[torch.Tensor]) -> torch.Tensor:
        """Prior energy U(z) = -F(z) - log p_beta(z) in z-space, [B] (with log p_beta's constant)."""
        return -self.F(z) - self.log_p_beta(z)

    def recon_energy(self, x: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """||x - g(z_1)||^2 / (2 sigma_x^2), [B]."""
        diff = (x - self.decode(z1)).reshape(x.shape[0], -1)
        return diff.pow(2).sum(-1) / (2 * self.sigma_x ** 2)

    def neg_log_joint(self, x: torch.Tensor, z: list[torch.Tensor]) -> torch.Tensor:
        """||x - g(z_1)||^2/(2 sigma_x^2) + U(z): the outlier score (docs/design.md, section 7), [B]."""
        self._check_images(x)
        return self.recon_energy(x, z[0]) + self.energy(z)

    def eps_to_z(self, eps: list[torch.Tensor]) -> list[torch.Tensor]:
        """z_L = eps_L, z_l = mu_l(z_{l+1}) + sigma_l(z_{l+1}) eps_l (differentiable in beta)."""
        return eps_to_z(self.prior_spec("eps", detach=False), self._check_latents(eps))

    def z_to_eps(self, z: list[torch.Tensor]) -> list[torch.Tensor]:
        """The inverse map: eps_l = (z_l - mu_l(z_{l+1})) / sigma_l(z_{l+1})."""
        z = self._check_latents(z)
        spec = self.prior_spec("z", detach=False)
        eps = list(z)
        for l in range(self.n_layers - 1):
            mu, sigma = gaussian_params(spec.gaussians[l], z[l + 1])
            eps[l] = (z[l] - mu) / sigma
        return eps

    # ---- sampling ------------------------------------------------------------------------------
    def _settings(self, kind, n_steps, step_size, noise_scale, space):
        cfg = self.config
        return (cfg[f"{kind}_steps"] if n_steps is None else n_steps,
                cfg[f"{kind}_step_size"] if step_size is None else step_size,
                cfg["noise_scale"] if noise_scale is None else noise_scale,
                cfg["space"] if space is None else space)

    def _param(self) -> torch.Tensor:
        return next(self.decoder.parameters())

    def _run_chain(self, energy, init, n, space, n_steps, step_size, noise_scale, generator, backend,
                   precision="auto"):
        p = self._param()
        start = init if init is not None else randn_layers(n, self.dims, generator, device=p.device, dtype=p.dtype)
        start = self._check_latents(start)
        if n_steps == 0:
            state, info = [t.detach().clone() for t in start], None
        else:
            state, info = jk.langevin(energy, list(start), n_steps=n_steps, step_size=step_size,
                                      noise_scale=noise_scale, generator=generator, backend=backend,
                                      return_info=True, precision=precision)
        with torch.no_grad():
            z = self.eps_to_z(state) if space == "eps" else state
        return [t.detach() for t in z], state, info

    def sample_prior(self, n: int, *, n_steps: int | None = None, step_size=None, noise_scale=None,
                     space: str | None = None, generator=None, backend: str = "auto", init=None,
                     return_info: bool = False, precision: str = "auto"):
        """z ~ p(z) by short-run Langevin from N(0, I) noise (or from ``init``, in ``space``,
        for persistent chains); returns z-space layers [n, d_l] (and an info dict with the chain's
        final ``state`` in its own space and the sampler's info). ``precision``: ``langevin``'s.

        The Gaussian baseline (no EBM) has p = p_beta exactly, so it is sampled ancestrally."""
        _check_count(n)
        n_steps, step_size, noise_scale, space = self._settings("prior", n_steps, step_size, noise_scale, space)
        if not self.has_ebm and init is None:
            p = self._param()
            eps = randn_layers(n, self.dims, generator, device=p.device, dtype=p.dtype)
            with torch.no_grad():
                z = [t.detach() for t in self.eps_to_z(eps)]
            return (z, {"state": eps, "sampler": None, "exact": True}) if return_info else z
        z, state, info = self._run_chain(self.prior_energy_fn(space), init, n, space, n_steps, step_size,
                                         noise_scale, generator, backend, precision)
        return (z, {"state": state, "sampler": info, "exact": False}) if return_info else z

    def sample_posterior(self, x: torch.Tensor, *, n_steps: int | None = None, step_size=None, noise_scale=None,
                         space: str | None = None, generator=None, backend: str = "auto", init=None,
                         return_info: bool = False, precision: str = "auto"):
        """z ~ p(z | x) by short-run Langevin on U(z | x) from noise (or ``init``); z-space layers.
        ``precision``: ``langevin``'s."""
        self._check_images(x)
        n_steps, step_size, noise_scale, space = self._settings("post", n_steps, step_size, noise_scale, space)
        z, state, info = self._run_chain(self.posterior_energy_fn(x.detach(), space), init, x.shape[0], space,
                                         n_steps, step_size, noise_scale, generator, backend, precision)
        return (z, {"state": state, "sampler": info}) if return_info else z

    def sample_ancestral(self, n: int, *, generator=None) -> list[torch.Tensor]:
        """z ~ p_beta (the generator's Gaussians alone, no EBM tilt)."""
        _check_count(n)
        p = self._param()
        with torch.no_grad():
            return [t.detach() for t in self.eps_to_z(randn_layers(n, self.dims, generator,
                                                                    device=p.device, dtype=p.dtype))]

    @torch.no_grad()
    def generate(self, n: int, **kwargs) -> torch.Tensor:
        """n images g(z_1), z ~ p(z) (``sample_prior``'s keyword arguments apply)."""
        return self.decode(self.sample_prior(n, **kwargs)[0])

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """g(z_1) at a posterior sample of each image (``sample_posterior``'s keywords apply)."""
        return self.decode(self.sample_posterior(x, **kwargs)[0])

    def hierarchical_samples(self, n: int, *, n_steps: int | None = None, step_size=None, noise_scale=None,
                             space: str | None = None, generator=None, backend: str = "auto",
                             precision: str = "auto"):
        """Hierarchical sampling (docs/design.md, section 7): draw one z from the prior, then for each
        layer l (top first) resample z_l ``n`` times with the other layers fixed, by Langevin on
        U restricted to layer l. Returns one image tensor [n, C, H, W] per layer, top layer first.

        In eps-space "fixed" means the other layers' noise is fixed, so resampling a top layer
        moves the layers under it through the generator (the papers' figure); in z-space the
        other z_l stay exactly as they are."""
        _check_count(n)
        n_steps, step_size, noise_scale, space = self._settings("prior", n_steps, step_size, noise_scale, space)
        steps = list(step_size) if isinstance(step_size, (list, tuple)) else [step_size] * self.n_layers
        _, info = self.sample_prior(1, n_steps=n_steps, step_size=step_size, noise_scale=noise_scale,
                                    space=space, generator=generator, backend=backend, return_info=True,
                                    precision=precision)
        base = info["state"]
        energy_all = self.prior_energy_fn(space)
        p = self._param()
        rows = []
        for l in reversed(range(self.n_layers)):
            fixed = [b.expand(n, -1).clone() for b in base]

            def energy_l(v, l=l, fixed=fixed):
                return energy_all(fixed[:l] + [v] + fixed[l + 1:])

            start = randn_layers(n, [self.dims[l]], generator, device=p.device, dtype=p.dtype)[0]
            v = jk.langevin(energy_l, start, n_steps=max(n_steps, 1), step_size=steps[l], noise_scale=noise_scale,
                            generator=generator, backend=backend, precision=precision)
            state = fixed[:l] + [v.detach()] + fixed[l + 1:]
            with torch.no_grad():
                z = self.eps_to_z(state) if space == "eps" else state
                rows.append(self.decode(z[0]))
        return rows

    # ---- checks --------------------------------------------------------------------------------
    def _check_latents(self, z) -> list[torch.Tensor]:
        if torch.is_tensor(z) or not isinstance(z, (list, tuple)):
            raise TypeError(f"latents must be a list of {self.n_layers} tensors [B, d_l], got {type(z).__name__}")
        if len(z) != self.n_layers:
            raise ValueError(f"the model has {self.n_layers} latent layers, got {len(z)} tensors")
        for l, (t, d) in enumerate(zip(z, self.dims)):
            if not torch.is_tensor(t):
                raise TypeError(f"latent layer {l + 1} must be a tensor, got {type(t).__name__}")
            if t.dim() != 2 or t.shape[1] != d or t.shape[0] != z[0].shape[0]:
                raise ValueError(f"latent layer {l + 1} must have shape [B, {d}] with one B for all layers; "
                                 f"got {tuple(t.shape)}")
        return list(z)

    def _check_images(self, x) -> None:
        if not torch.is_tensor(x):
            raise TypeError(f"images must be a tensor [B, C, H, W], got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape or x.shape[0] == 0:
            raise ValueError(f"images must have shape [B, {', '.join(map(str, self.image_shape))}] with B >= 1, "
                             f"got {tuple(x.shape)}")
        p = self._param()
        if x.dtype != p.dtype or x.device != p.device:
            raise TypeError(f"images are {x.dtype} on {x.device} but the model is {p.dtype} on {p.device}")


def _check_count(n) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of samples must be an int >= 1, got {n!r}")
