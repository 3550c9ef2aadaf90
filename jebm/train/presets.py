"""Named configurations and the one function that turns (preset, overrides) into a run config.

A run config is a flat dict of plain Python values (ints, floats, strings, bools, None, lists),
so it goes into ``config.json`` and into checkpoints loaded with ``torch.load(weights_only=True)``
unchanged. ``resolve_config`` checks every key and value once, so a typo in an override fails at
the start of a run with a message naming the key, not an hour later.

Presets:

``"default"``
    Small enough to train on the bundled 8x8 digits (or mnist5k, 28x28) in about a minute on 2 CPU
    cores: two latent layers d = (16, 8), MLP energies and Gaussians of width 64, an MLP decoder
    16-128-128-(C*H*W); 2000 iterations of batch 100. Each setting below was measured
    (docs/training.md, "Defaults and what they rest on"):
    - MLE scheme: Langevin in z-space, as the CVPR code (eps-space posterior chains shrink sigma of
      p(z_1|z_2) towards its floor and the run diverges on digits); the papers' chain lengths, prior
      60 steps of s = 0.3 (s = 0.4 diverges on digits) and posterior 40 steps of s = 0.1; Adam 3e-4
      for every part.
    - ``ebm_l2`` = 0.1: alpha's loss gains 0.1 (F(z+)^2 + F(z-)^2); without it the gap F(z+) - F(z-)
      runs away and the prior chain diverges on digits.
    - Variational scheme (``SCHEME_DEFAULTS``): eps-space prior chains (in z-space sigma explodes and
      the chain diverges), lr_ebm 1e-4, and tanh in p(z_l|z_{l+1})'s MLP: with sigma = exp(raw) +
      floor unbounded, F(z(eps)) grows exponentially along some eps_2 and the eps-space prior energy
      is unbounded below; tanh bounds raw (and so sigma) for any fixed weights.

``"cvpr-cifar10"``
    Cui, Wu & Han, CVPR 2023, CIFAR-10 (their ``train_cifar10.py``): L = 2, d = (128, 100);
    f_1 128-200-200-200-1, f_2 100-100-1 with two hidden layers of 100; p(z_1|z_2) 100-200x4-256;
    the LEBM transposed-convolution decoder (ngf = 64) onto 3x32x32; prior 60 Langevin steps of
    s = 0.4, posterior 40 of s = 0.1, in z-space from N(0, I) noise; Adam lr 2e-5 (EBM) and 1e-4
    (generator); batch 100; sigma_x = 0.3. 50,500 iterations = 101 epochs of 500 batches.

``"iccv-svhn"``
    The five-layer hierarchy of Cui, Wu & Han, ICCV 2023, on SVHN 3x32x32. The paper's exact
    widths are not reproduced here; our choice: d = (64, 32, 16, 8, 4), halving per layer so
    the top layers carry the global factors and the bottom the detail (the hierarchical-sampling
    grid shows that split), layer energies with two hidden layers (200 wide for the two bottom
    layers, 100 above), the joint term f_0 on concat(z) (168 -> 200 -> 200 -> 1, the ICCV
    addition), Gaussians with two hidden layers of 200, the same conv decoder and chain settings
    as the CVPR preset, sampled in eps-space (five stacked Gaussians make z-space stiff).
"""
from __future__ import annotations

import copy
import math

import jebm_kernels as jk

from ..model.blocks import ACTIVATIONS
from ..model.config import is_int as _is_int
from ..model.config import is_real as _is_real
from ..model.config import normalize_hidden
from ..model.config import widths as _widths

__all__ = ["PRESETS", "SCHEME_DEFAULTS", "RUN_KEYS", "PRECISIONS", "resolve_config", "validate_config",
           "upgrade_config", "describe_presets"]

# Every key a run config has, with the "default" preset's value.
_BASE = dict(
    # data
    dataset="digits",
    data_root=None,
    exclude_class=None,      # held-out class (outlier protocol)
    validation=False,        # True: train on the train split minus its validation part (load_dataset(validation="fit"))
    # model
    dims=[16, 8],
    ebm=True,                # False: the Gaussian-prior baseline (no f terms at all)
    ebm_hidden=[64, 64],     # widths of f_l's hidden layers; a list of lists gives one per layer
    joint_hidden=None,       # widths of f_0's hidden layers on concat(z); None: no joint term
    gauss_hidden=[64, 64],   # widths of p(z_l|z_{l+1})'s hidden layers (one list, or one per Gaussian)
    ebm_activation="leaky_relu",    # hidden activation of the f terms (jebm.model.blocks.ACTIVATIONS)
    gauss_activation="leaky_relu",  # hidden activation of p(z_l|z_{l+1})'s MLP; "tanh" bounds mu and sigma
    decoder="mlp",           # "mlp" or "conv" (transposed convolutions; H = W, divisible by 4)
    dec_hidden=[128, 128],   # MLP decoder hidden widths
    ngf=64,                  # conv decoder base width (channels ngf*16, ngf*8, ngf*4)
    sigma_x=0.3,
    sigma_floor=0.01,
    # sampling
    space="z",               # "z" or "eps": where the chains run (default preset: z for mle, eps for variational)
    prior_steps=60,
    prior_step_size=0.3,     # float or one per layer
    post_steps=40,
    post_step_size=0.1,
    noise_scale=1.0,
    persistent_prior=False,  # True: the negative-phase prior chains continue across iterations
    # learned short-run posterior step sizes (jebm.train.short_run; Nijkamp et al., ECCV 2020)
    learn_step_size=False,   # True: one posterior step size per layer, learned (post_step_size is the start)
    lr_step_size=0.02,       # Adam learning rate of the log step sizes
    entropy_estimator="series", # log|det Jacobian| per step: "series" (Hutchinson) or "exact" (Hessian, small D)
    entropy_terms=2,         # series: terms of log det(I - A) = -sum tr(A^n)/n
    entropy_probes=1,        # series: Hutchinson probes per chain and step
    # optimisation
    scheme="mle",            # "mle" or "variational"
    iters=2000,
    batch_size=100,
    lr_ebm=3e-4,             # default preset: 3e-4 for mle, 1e-4 for variational
    lr_gen=3e-4,
    lr_infer=3e-4,
    adam_betas=[0.9, 0.999],
    grad_clip=None,          # clip each optimiser's gradient to this total norm (None: no clipping)
    ebm_l2=0.1,              # alpha's loss gains ebm_l2 * (mean F(z+)^2 + mean F(z-)^2) (0: none)
    infer_hidden=[256, 256], # variational: bottom-up feature widths (MLP encoder)
    infer_head_hidden=[128], # variational: widths of the q(z_l | z_{l+1}, x) heads
    nif=32,                  # variational conv encoder base width
    # bookkeeping
    seed=0,
    backend="auto",
    device="cpu",            # where the model, data and chains live ("cuda", "cuda:1", ...)
    precision="fp32",        # "fp32" or "bf16": bf16 products in the chains and the losses, fp32 weights and sums
    preset="default",
    log_every=1,
    ckpt_every=100,          # checkpoint every N iterations (train(checkpoint_every=N), --checkpoint-every N)
    keep_checkpoints=0,      # also keep the newest N checkpoints as checkpoint_<iteration>.pt (0: none; the
                             # outlier protocol's checkpoint average scores them)
    rollback_retries=0,      # on NaN/inf: reload the last good checkpoint and retry, at most N times (0: stop)
    rollback_lr_factor=0.5,  # each rollback multiplies the learning rates by this
    rollback_step_factor=0.5,  # ... and the Langevin step sizes by this
    sample_every=200,        # write samples_<iter>.png / reconstructions_<iter>.png; 0: only at the end
    n_samples=64,
)

# The "default" preset's settings that depend on the learning scheme (applied before the overrides).
SCHEME_DEFAULTS: dict[str, dict] = {
    "mle": {},
    "variational": dict(space="eps", lr_ebm=1e-4, gauss_activation="tanh"),
}

PRESETS: dict[str, dict] = {
    "default": {},
    "cvpr-cifar10": dict(
        dims=[128, 100],
        ebm_hidden=[[200, 200, 200], [100, 100]],
        gauss_hidden=[[200, 200, 200, 200]],
        decoder="conv", ngf=64,
        space="z",
        prior_steps=60, prior_step_size=0.4, post_steps=40, post_step_size=0.1,
        lr_ebm=2e-5, lr_gen=1e-4, lr_infer=1e-4,
        batch_size=100, iters=50_500,
        infer_hidden=[512], infer_head_hidden=[200, 200], nif=32,
        ckpt_every=1000, sample_every=5000, n_samples=100,
    ),
    "iccv-svhn": dict(
        dims=[64, 32, 16, 8, 4],
        ebm_hidden=[[200, 200], [200, 200], [100, 100], [100, 100], [100, 100]],
        joint_hidden=[200, 200],
        gauss_hidden=[[200, 200]] * 4,
        decoder="conv", ngf=64,
        space="eps",
        prior_steps=60, prior_step_size=0.4, post_steps=40, post_step_size=0.1,
        lr_ebm=2e-5, lr_gen=1e-4, lr_infer=1e-4,
        batch_size=100, iters=50_000,
        infer_hidden=[512], infer_head_hidden=[200, 200], nif=32,
        ckpt_every=1000, sample_every=5000, n_samples=100,
    ),
}

RUN_KEYS = tuple(_BASE)
# What a run's products may run in (jebm.train.trainer.Trainer: the chains and the losses).
PRECISIONS = ("fp32", "bf16")


def describe_presets() -> str:
    return ", ".join(PRESETS)


def _int(cfg, key, lo):
    v = cfg[key]
    if not _is_int(v) or v < lo:
        raise ValueError(f"{key} must be an int >= {lo}, got {v!r}")
    cfg[key] = int(v)


def _pos_float(cfg, key, allow_zero=False):
    v = cfg[key]
    if not _is_real(v) or not math.isfinite(v) or (v < 0 if allow_zero else v <= 0):
        raise ValueError(f"{key} must be a finite number {'>=' if allow_zero else '>'} 0, got {v!r}")
    cfg[key] = float(v)


def _per_layer(cfg, key, L):
    v = cfg[key]
    vals = list(v) if isinstance(v, (list, tuple)) else [v]
    if isinstance(v, (list, tuple)) and len(vals) != L:
        raise ValueError(f"{key} needs one value per latent layer ({L}), got {len(vals)}")
    if not all(_is_real(s) and math.isfinite(s) and s > 0 for s in vals):
        raise ValueError(f"{key} must be a positive number or one per layer, got {v!r}")
    cfg[key] = [float(s) for s in vals] if isinstance(v, (list, tuple)) else float(v)


def resolve_config(preset: str = "default", **overrides) -> dict:
    """The full run config of ``preset`` with ``overrides`` applied, every value checked.

    Raises ValueError for an unknown preset or a bad value and TypeError for an unknown key.
    """
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {describe_presets()}")
    unknown = sorted(k for k in overrides if k not in _BASE)
    if unknown:
        raise TypeError(f"unknown config key(s) {unknown}; known keys: {', '.join(RUN_KEYS)}")
    cfg = copy.deepcopy(_BASE)
    cfg.update(copy.deepcopy(PRESETS[preset]))
    if preset == "default":
        cfg.update(copy.deepcopy(SCHEME_DEFAULTS.get(overrides.get("scheme", cfg["scheme"]), {})))
    cfg.update({k: copy.deepcopy(v) for k, v in overrides.items()})
    cfg["preset"] = preset
    return validate_config(cfg)


# Keys added after runs were saved without them, with the value that reproduces those runs (where
# it differs from the current default).
_LEGACY = dict(ebm_activation="leaky_relu", gauss_activation="leaky_relu", grad_clip=None, validation=False,
               ebm_l2=0.0)


def upgrade_config(saved: dict) -> dict:
    """A saved run config with the keys added since it was written filled in by the values that
    reproduce the behaviour from before they existed (``_LEGACY``, else the default), then validated."""
    if not isinstance(saved, dict):
        raise ValueError(f"a run config must be a dict, got {type(saved).__name__}")
    cfg = copy.deepcopy(_BASE)
    cfg.update(copy.deepcopy(_LEGACY))
    cfg.update(copy.deepcopy(saved))
    return validate_config(cfg)


def validate_config(cfg: dict) -> dict:
    """Check and normalise a run config in place (tuples become lists); returns it."""
    missing = [k for k in _BASE if k not in cfg]
    if missing:
        raise ValueError(f"run config lacks key(s) {missing}")
    if not isinstance(cfg["dataset"], str):
        raise TypeError(f"dataset must be a string, got {type(cfg['dataset']).__name__}")
    if cfg["data_root"] is not None and not isinstance(cfg["data_root"], str):
        cfg["data_root"] = str(cfg["data_root"])
    if cfg["exclude_class"] is not None and not _is_int(cfg["exclude_class"]):
        raise ValueError(f"exclude_class must be an int class label or None, got {cfg['exclude_class']!r}")
    dims = cfg["dims"]
    if not isinstance(dims, (list, tuple)) or not dims or not all(_is_int(d) and d > 0 for d in dims):
        raise ValueError(f"dims must be a non-empty list of positive ints (one per latent layer), got {dims!r}")
    cfg["dims"] = [int(d) for d in dims]
    L = len(dims)
    cfg["ebm_hidden"] = normalize_hidden(cfg["ebm_hidden"], L, "ebm_hidden")
    if L > 1:
        cfg["gauss_hidden"] = normalize_hidden(cfg["gauss_hidden"], L - 1, "gauss_hidden")
    else:
        cfg["gauss_hidden"] = []
    if cfg["joint_hidden"] is not None:
        cfg["joint_hidden"] = _widths(cfg["joint_hidden"], "joint_hidden")
    for key in ("ebm", "persistent_prior", "learn_step_size", "validation"):
        if not isinstance(cfg[key], bool):
            raise ValueError(f"{key} must be True or False, got {cfg[key]!r}")
    for key in ("ebm_activation", "gauss_activation"):
        if cfg[key] not in ACTIVATIONS:
            raise ValueError(f"{key} must be one of {tuple(ACTIVATIONS)}, got {cfg[key]!r}")
    if cfg["decoder"] not in ("mlp", "conv"):
        raise ValueError(f"decoder must be 'mlp' or 'conv', got {cfg['decoder']!r}")
    cfg["dec_hidden"] = _widths(cfg["dec_hidden"], "dec_hidden")
    cfg["infer_hidden"] = _widths(cfg["infer_hidden"], "infer_hidden")
    cfg["infer_head_hidden"] = _widths(cfg["infer_head_hidden"], "infer_head_hidden")
    for key in ("ngf", "nif"):
        _int(cfg, key, 1)
    for key in ("sigma_x", "sigma_floor", "lr_ebm", "lr_gen", "lr_infer", "lr_step_size"):
        _pos_float(cfg, key)
    _pos_float(cfg, "noise_scale", allow_zero=True)
    if cfg["space"] not in ("z", "eps"):
        raise ValueError(f"space must be 'z' or 'eps', got {cfg['space']!r}")
    for key in ("prior_steps", "post_steps", "log_every", "ckpt_every", "sample_every", "iters", "seed",
                "keep_checkpoints"):
        _int(cfg, key, 0)
    for key in ("batch_size", "n_samples", "log_every", "ckpt_every"):
        _int(cfg, key, 1)
    _per_layer(cfg, "prior_step_size", L)
    _per_layer(cfg, "post_step_size", L)
    _int(cfg, "rollback_retries", 0)
    for key in ("rollback_lr_factor", "rollback_step_factor"):
        v = cfg[key]
        if not _is_real(v) or not 0 < v <= 1:
            raise ValueError(f"{key} must be a number in (0, 1], got {v!r}")
        cfg[key] = float(v)
    if cfg["rollback_retries"] and cfg["rollback_lr_factor"] == cfg["rollback_step_factor"] == 1:
        raise ValueError("rollback_retries > 0 with rollback_lr_factor = rollback_step_factor = 1 would retry the "
                         "same diverging iterations: make one factor < 1")
    if cfg["entropy_estimator"] not in ("exact", "series"):
        raise ValueError(f"entropy_estimator must be 'exact' or 'series', got {cfg['entropy_estimator']!r}")
    for key in ("entropy_terms", "entropy_probes"):
        _int(cfg, key, 1)
    if cfg["learn_step_size"] and cfg["post_steps"] < 1:
        raise ValueError("learn_step_size=True needs post_steps >= 1: the step sizes are learned through the "
                         "posterior chain (post_steps=0 has no chain)")
    _pos_float(cfg, "ebm_l2", allow_zero=True)
    if cfg["grad_clip"] is not None:
        _pos_float(cfg, "grad_clip")
    betas = cfg["adam_betas"]
    if (not isinstance(betas, (list, tuple)) or len(betas) != 2
            or not all(_is_real(b) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"adam_betas must be two numbers in [0, 1), got {betas!r}")
    cfg["adam_betas"] = [float(b) for b in betas]
    if cfg["scheme"] not in ("mle", "variational"):
        raise ValueError(f"scheme must be 'mle' or 'variational', got {cfg['scheme']!r}")
    if not isinstance(cfg["backend"], str):
        raise TypeError(f"backend must be a string, got {type(cfg['backend']).__name__}")
    if cfg["backend"] != "auto" and cfg["backend"] not in jk.BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {jk.BACKENDS}, got {cfg['backend']!r}")
    if cfg["precision"] not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (--set precision=bf16), got {cfg['precision']!r}")
    if not isinstance(cfg["device"], str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {type(cfg['device']).__name__}")
    try:
        import torch
        torch.device(cfg["device"])
    except RuntimeError as exc:
        raise ValueError(f"device {cfg['device']!r} is not a torch device: {exc}") from None
    if cfg["seed"] >= 2**63:
        raise ValueError(f"seed must be < 2**63, got {cfg['seed']}")
    return cfg
