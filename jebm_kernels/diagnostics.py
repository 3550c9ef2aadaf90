"""Convergence diagnostics for Langevin chains: ESS, split R-hat, nested R-hat.

Why this module: users of a sampler ask "how many effective draws, and did the chains mix?". The
answers are well-kept elsewhere, so ESS and R-hat come from ArviZ (an optional extra:
``pip install jebm[diagnostics]``): bulk and tail ESS, and the rank-normalised split R-hat of
Vehtari et al. (2021), ArviZ's default. Nested R-hat (Margossian et al. 2024), the diagnostic for
many short chains -- the regime of short-run EBM sampling -- is not in ArviZ, so it is written here
from the paper, in torch, and needs no extra.

Every function takes a trajectory laid out as ``LangevinSampler.sample(return_trajectory=True)``
returns it and as ArviZ reads (chain, draw, ...): [n_chains, n_draws, *param_shape], and returns
one value per parameter, shaped ``param_shape``. ``summary`` gives them all in one call.
"""
from __future__ import annotations

import warnings
from numbers import Integral

import torch

__all__ = ["summary", "ess", "rhat", "nested_rhat"]

_MIN_DRAWS = 4  # ArviZ's minimum for ESS and split R-hat


def summary(trajectory, *, superchains=None, burn_in: int = 0) -> dict:
    """ESS, R-hat and (with ``superchains``) nested R-hat of every parameter, and the worst of each.

    Args:
        trajectory: [n_chains, n_draws, *param_shape] (a tensor or a NumPy array).
        superchains: None, the number K of superchains (chains taken in order, n_chains / K each:
            start K points and repeat each, ``x0.repeat_interleave(n_chains // K, 0)``), or one
            superchain id per chain.
        burn_in: draws to drop from the start of every chain.

    Returns:
        a dict: ``ess`` (bulk) and ``ess_tail`` (min over the 5% and 95% quantiles), ``rhat``,
        ``nested_rhat`` (None without ``superchains``), each a float64 tensor of ``param_shape``;
        ``worst``: the smallest ESS and the largest R-hats as floats (NaN if any parameter's is);
        ``n_chains``, ``n_draws`` (after burn-in), ``n_superchains``.
    """
    draws = _draws(trajectory, burn_in)
    _check_rhat_shape(draws)
    out = {"ess": _arviz_stat(draws, "ess", method="bulk"), "ess_tail": _arviz_stat(draws, "ess", method="tail"),
           "rhat": _arviz_stat(draws, "rhat", method="rank"), "nested_rhat": None}
    n_super = None
    if superchains is not None:
        groups = _superchain_groups(draws.shape[0], superchains)
        out["nested_rhat"] = _nested_rhat(draws, groups)
        n_super = groups.shape[0]
    out["worst"] = {"ess": float(out["ess"].min()), "ess_tail": float(out["ess_tail"].min()),
                    "rhat": float(out["rhat"].max()),
                    "nested_rhat": None if out["nested_rhat"] is None else float(out["nested_rhat"].max())}
    out.update(n_chains=draws.shape[0], n_draws=draws.shape[1], n_superchains=n_super)
    return out


def ess(trajectory, *, method: str = "bulk", burn_in: int = 0) -> torch.Tensor:
    """Effective sample size per parameter, from ``arviz.ess`` (``method``: "bulk", "tail", ...)."""
    return _arviz_stat(_draws(trajectory, burn_in), "ess", method=method)


def rhat(trajectory, *, method: str = "rank", burn_in: int = 0) -> torch.Tensor:
    """Split R-hat per parameter, from ``arviz.rhat`` (default: rank-normalised, Vehtari et al. 2021)."""
    draws = _draws(trajectory, burn_in)
    _check_rhat_shape(draws)
    return _arviz_stat(draws, "rhat", method=method)


def nested_rhat(trajectory, superchains, *, burn_in: int = 0) -> torch.Tensor:
    """Nested R-hat per parameter (Margossian, Hoffman, Sountsov, Riou-Durand, Vehtari, Gelman,
    "Nested R-hat: assessing the convergence of Markov chain Monte Carlo when running many short
    chains", Bayesian Analysis 2024, eqs. 15-19), for K superchains of M chains of N draws each,
    the chains of a superchain started from one point:

        chain means  m_km = mean_n x_kmn,    superchain means  m_k = mean_m m_km,   m = mean_k m_k
        B_nu = 1/(K-1) sum_k (m_k - m)^2                               between superchains
        W_nu = 1/K sum_k [ 1/(M-1) sum_m (m_km - m_k)^2                 between its chains (0 if M = 1)
                           + 1/M sum_m 1/(N-1) sum_n (x_kmn - m_km)^2 ] within its chains (0 if N = 1)
        nested R-hat = sqrt(1 + B_nu / W_nu)

    It tends to 1 as the superchains agree; the paper suggests 1 + 0.01-ish thresholds with many
    superchains. ``superchains``: K (chains in order, n_chains / K per superchain) or one id per chain.
    """
    draws = _draws(trajectory, burn_in, min_draws=1)
    return _nested_rhat(draws, _superchain_groups(draws.shape[0], superchains))


def _nested_rhat(draws: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    x = draws[groups]                                   # [K, M, N, *params]
    K, M, N = x.shape[:3]
    chain_mean = x.mean(dim=2)                          # [K, M, *params]
    super_mean = chain_mean.mean(dim=1)                 # [K, *params]
    between_super = super_mean.var(dim=0, unbiased=True)
    between_chains = chain_mean.var(dim=1, unbiased=True) if M > 1 else torch.zeros_like(super_mean)
    within_chains = x.var(dim=2, unbiased=True).mean(dim=1) if N > 1 else torch.zeros_like(super_mean)
    within_super = (between_chains + within_chains).mean(dim=0)
    return torch.sqrt(1 + between_super / within_super)


def _superchain_groups(n_chains: int, superchains) -> torch.Tensor:
    """[K, M] chain indices, one row per superchain."""
    if isinstance(superchains, Integral) and not isinstance(superchains, bool):
        K = int(superchains)
        if K < 2 or n_chains % K:
            raise ValueError(f"superchains={K} must be >= 2 and divide the {n_chains} chains into equal superchains")
        return torch.arange(n_chains).reshape(K, n_chains // K)
    try:
        ids = superchains.cpu() if torch.is_tensor(superchains) else torch.as_tensor(superchains)
    except (TypeError, ValueError, RuntimeError):
        ids = None
    if (ids is None or ids.dim() != 1 or ids.numel() != n_chains or ids.dtype.is_floating_point
            or ids.dtype == torch.bool):
        raise ValueError(f"superchains must be an int K or one integer id per chain ({n_chains}), got "
                         f"{superchains!r}")
    labels = ids.unique()
    rows = [torch.nonzero(ids == k).flatten() for k in labels]
    if len(rows) < 2 or len({len(r) for r in rows}) != 1:
        raise ValueError(f"superchains must form at least 2 groups of equal size, got sizes {[len(r) for r in rows]}")
    return torch.stack(rows)


def _draws(trajectory, burn_in: int, *, min_draws: int = _MIN_DRAWS) -> torch.Tensor:
    """The trajectory as a CPU float64 tensor [chains, draws, *params], checked, burn-in dropped."""
    if not torch.is_tensor(trajectory):
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy is a dependency
            np = None
        if np is None or not isinstance(trajectory, np.ndarray):
            raise TypeError(f"trajectory must be a tensor or a NumPy array [n_chains, n_draws, ...], got "
                            f"{type(trajectory).__name__}")
        trajectory = torch.from_numpy(trajectory)
    if not (trajectory.dtype.is_floating_point or trajectory.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"trajectory must hold real numbers, got dtype {trajectory.dtype}")
    if trajectory.dim() < 2:
        raise ValueError(f"trajectory must be [n_chains, n_draws, *param_shape], got shape {tuple(trajectory.shape)}")
    if not isinstance(burn_in, Integral) or isinstance(burn_in, bool) or burn_in < 0:
        raise ValueError(f"burn_in must be an int >= 0, got {burn_in!r}")
    draws = trajectory.detach().to("cpu", torch.float64)[:, burn_in:]
    if draws.shape[1] < min_draws:
        raise ValueError(f"need at least {min_draws} draws per chain after burn_in={burn_in}, got {draws.shape[1]} "
                         f"(trajectory shape {tuple(trajectory.shape)})")
    if not bool(torch.isfinite(draws).all()):
        raise ValueError("trajectory contains NaN or inf: diagnostics need finite draws")
    return draws


def _check_rhat_shape(draws: torch.Tensor) -> None:
    if draws.shape[0] < 2:
        raise ValueError(f"R-hat compares chains: need at least 2 chains, got {draws.shape[0]}")


def _arviz():
    try:
        with warnings.catch_warnings():
            # ArviZ 0.2x announces its 1.0 refactor with a FutureWarning on every first import
            warnings.simplefilter("ignore", FutureWarning)
            import arviz
    except ImportError as exc:
        raise ImportError("ESS and R-hat come from ArviZ, which is not installed: pip install jebm[diagnostics] "
                          "(nested_rhat needs no extra)") from exc
    return arviz


def _arviz_stat(draws: torch.Tensor, name: str, **kwargs) -> torch.Tensor:
    """``arviz.<name>`` of every parameter, back as a float64 tensor of the parameter shape."""
    az = _arviz()
    data = az.convert_to_dataset(draws.numpy(), group="posterior")  # one variable "x": (chain, draw, ...)
    return torch.from_numpy(getattr(az, name)(data, **kwargs)["x"].values.astype("float64")).reshape(draws.shape[2:])
