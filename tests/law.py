"""Two-sample statistics for comparing the laws of chain endpoints (test_bf16_law.py).

- ``energy_distance_test``: Szekely & Rizzo's energy distance with a permutation p-value. With labels
  s = +1 (x) / -1 (y), sum_ij D_ij s_i s_j = sum D_xx + sum D_yy - 2 sum D_xy, so the statistic
  of every permutation is one matrix product with the distance matrix.
- ``mean_shift_z``: the chi-square of the per-coordinate two-sample z-scores of the means, as a
  standard normal deviate (Wilson-Hilferty): about N(0, 1) when the laws agree.
- ``moment_z``: the largest |z| of the means and variances of x against y (or against known
  values), each scaled by its Monte-Carlo standard error.
"""
from __future__ import annotations

import math

import torch


def energy_distance_test(x: torch.Tensor, y: torch.Tensor, *, n_perm: int = 400, seed: int = 0) -> tuple[float, float]:
    """(statistic, permutation p-value) of the energy distance between samples x [N, d], y [M, d]."""
    z = torch.cat([x, y]).double()
    n, m = x.shape[0], y.shape[0]
    dist = torch.cdist(z, z)
    g = torch.Generator().manual_seed(seed)
    s0 = torch.cat([torch.full((n,), 1.0 / n), torch.full((m,), -1.0 / m)]).double()
    labels = torch.stack([s0] + [s0[torch.randperm(n + m, generator=g)] for _ in range(n_perm)], 1)
    stats = -(labels * (dist @ labels)).sum(0)
    return float(stats[0]), float(((stats[1:] >= stats[0]).sum() + 1) / (n_perm + 1))


def mean_shift_z(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double(), y.double()
    se = (x.var(0) / x.shape[0] + y.var(0) / y.shape[0]).sqrt()
    chi = float((((x.mean(0) - y.mean(0)) / se) ** 2).sum())
    d = x.shape[1]
    return ((chi / d) ** (1 / 3) - (1 - 2 / (9 * d))) / math.sqrt(2 / (9 * d))


def _var_se(x: torch.Tensor) -> torch.Tensor:
    c = x - x.mean(0)
    m2, m4 = c.pow(2).mean(0), c.pow(4).mean(0)
    return ((m4 - m2 * m2) / x.shape[0]).sqrt()


def moment_z(x: torch.Tensor, y: torch.Tensor | None = None, *, mean=None, var=None) -> float:
    """max |z| over coordinates of the means and variances of x against y's (two-sample) or against
    known ``mean`` / ``var`` (one-sample)."""
    x = x.double()
    if y is not None:
        y = y.double()
        zm = (x.mean(0) - y.mean(0)) / (x.var(0) / x.shape[0] + y.var(0) / y.shape[0]).sqrt()
        zv = (x.var(0) - y.var(0)) / (_var_se(x) ** 2 + _var_se(y) ** 2).sqrt()
    else:
        mean, var = torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(var, dtype=torch.float64)
        zm = (x.mean(0) - mean) / (x.var(0) / x.shape[0]).sqrt()
        zv = (x.var(0) - var) / _var_se(x)
    return float(torch.cat([zm.abs(), zv.abs()]).max())
