"""jebm_kernels.diagnostics: nested R-hat against hand-computed cases and its limits, and the
ArviZ-backed ESS / split R-hat (skipped where ArviZ is not installed) on chains with known answers."""
import math
import sys

import numpy as np
import pytest
import torch

import jebm_kernels as jk
from jebm_kernels import diagnostics as dg


def test_nested_rhat_by_hand():
    # K = 2 superchains of M = 2 chains of N = 2 draws. Chain means 1, 3 | 5, 7, chain variances 2;
    # superchain means 2, 6 -> B = (2-4)^2 + (6-4)^2 = 8; W = mean_k(var(chain means) + mean chain var) = 2 + 2
    x = torch.tensor([[0.0, 2.0], [2.0, 4.0], [4.0, 6.0], [6.0, 8.0]])
    assert dg.nested_rhat(x, 2).item() == pytest.approx(math.sqrt(1 + 8 / 4))
    # the same superchains named by id, chains interleaved
    assert dg.nested_rhat(x[[0, 2, 1, 3]], [0, 1, 0, 1]).item() == pytest.approx(math.sqrt(3))
    # N = 1: no within-chain term. Chain means 0, 2 | 4, 6: B = 8, W = 2 -> sqrt(5)
    one_draw = torch.tensor([[0.0], [2.0], [4.0], [6.0]])
    assert dg.nested_rhat(one_draw, 2).item() == pytest.approx(math.sqrt(5))


def test_nested_rhat_is_per_parameter():
    x = torch.tensor([[0.0, 2.0], [2.0, 4.0], [4.0, 6.0], [6.0, 8.0]])
    stacked = torch.stack([x, 2 * x + 1, torch.zeros_like(x) + torch.tensor([0.0, 1.0])], dim=-1)  # [4, 2, 3]
    got = dg.nested_rhat(stacked, 2)
    assert got.shape == (3,)
    assert got[0].item() == pytest.approx(math.sqrt(3)) and got[1].item() == pytest.approx(math.sqrt(3))
    assert got[2].item() == pytest.approx(1.0)  # every superchain alike


def test_nested_rhat_near_one_for_well_mixed_langevin_chains():
    # the nested design: 16 superchains, each of 8 chains started from one point
    K, M = 16, 8
    gen = torch.Generator().manual_seed(0)
    x0 = (3 * torch.randn(K, 2, generator=gen)).repeat_interleave(M, 0)
    s = jk.LangevinSampler(lambda z: 0.5 * (z ** 2).sum(-1), step_size=0.05)
    traj = s.sample(x=x0, n_steps=300, thin=10, return_trajectory=True, generator=(1, 0))  # [128, 30, 2]
    assert dg.nested_rhat(traj, K, burn_in=10).max().item() < 1.05


def test_nested_rhat_large_for_chains_stuck_in_different_modes():
    K, M = 8, 4
    starts = torch.tensor([[-1.0], [1.0]]).repeat(K // 2, 1).repeat_interleave(M, 0)  # superchains at -1, +1, ...
    s = jk.LangevinSampler(lambda z: 20 * ((z ** 2 - 1) ** 2).sum(-1), step_size=0.005)
    traj = s.sample(x=starts, n_steps=200, thin=10, return_trajectory=True, generator=(2, 0))
    assert dg.nested_rhat(traj, K).item() > 2


@pytest.mark.parametrize("superchains,match", [(3, "divide"), (1, ">= 2"), ([0, 0, 0, 1], "equal size"),
                                               ([0, 1], "one integer id per chain"), ("ab", "one integer id"),
                                               ([0.5, 0.5, 1.5, 1.5], "integer")])
def test_nested_rhat_refuses_bad_superchains(superchains, match):
    with pytest.raises(ValueError, match=match):
        dg.nested_rhat(torch.randn(4, 5), superchains)


@pytest.mark.parametrize("trajectory,kwargs,err,match", [
    ([[1.0, 2.0]], {}, TypeError, "tensor or a NumPy array"),
    (torch.randn(4), {}, ValueError, r"\[n_chains, n_draws"),
    (torch.randn(4, 6), dict(burn_in=-1), ValueError, "burn_in"),
    (torch.full((4, 6), float("nan")), {}, ValueError, "NaN or inf"),
    (torch.randn(4, 6, dtype=torch.complex64), {}, TypeError, "real numbers"),
])
def test_bad_trajectories_are_named(trajectory, kwargs, err, match):
    with pytest.raises(err, match=match):
        dg.nested_rhat(trajectory, 2, **kwargs)


# ---- ArviZ-backed ---------------------------------------------------------------------------------

def test_missing_arviz_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)  # import arviz now raises ImportError
    with pytest.raises(ImportError, match=r"pip install jebm\[diagnostics\]"):
        dg.summary(torch.randn(4, 20, 2))
    assert dg.nested_rhat(torch.randn(4, 20, 2), 2).shape == (2,)  # needs no extra


def test_ess_and_rhat_on_chains_with_known_answers():
    pytest.importorskip("arviz")
    rng = np.random.default_rng(0)
    iid = rng.normal(size=(4, 1000))
    assert 3000 < dg.ess(iid).item() < 5000  # 4000 independent draws
    assert dg.rhat(iid).item() < 1.01
    # AR(1) with rho = 0.9: ESS ~ n (1 - rho) / (1 + rho)
    rho, ar = 0.9, np.zeros((4, 2000))
    eps = rng.normal(size=(4, 2000))
    for t in range(1, 2000):
        ar[:, t] = rho * ar[:, t - 1] + math.sqrt(1 - rho ** 2) * eps[:, t]
    expected = 8000 * (1 - rho) / (1 + rho)
    assert 0.6 * expected < dg.ess(torch.from_numpy(ar)).item() < 1.5 * expected
    apart = iid + np.array([[0.0], [0.0], [3.0], [3.0]])  # two pairs of chains in different places
    assert dg.rhat(apart).item() > 1.5


def test_summary_layout_matches_arviz_parameter_by_parameter():
    az = pytest.importorskip("arviz")
    traj = torch.randn(6, 50, 2, 3, generator=torch.Generator().manual_seed(3))
    out = dg.summary(traj, superchains=3)
    assert set(out) == {"ess", "ess_tail", "rhat", "nested_rhat", "worst", "n_chains", "n_draws", "n_superchains"}
    for key in ("ess", "ess_tail", "rhat", "nested_rhat"):
        assert out[key].shape == (2, 3) and out[key].dtype == torch.float64
    for i in range(2):
        for j in range(3):
            one = traj[:, :, i, j].double().numpy()  # ArviZ on that one parameter alone
            assert out["ess"][i, j].item() == pytest.approx(float(az.ess(one, method="bulk")))
            assert out["ess_tail"][i, j].item() == pytest.approx(float(az.ess(one, method="tail")))
            assert out["rhat"][i, j].item() == pytest.approx(float(az.rhat(one)))
    assert out["worst"] == {"ess": out["ess"].min().item(), "ess_tail": out["ess_tail"].min().item(),
                            "rhat": out["rhat"].max().item(), "nested_rhat": out["nested_rhat"].max().item()}
    assert (out["n_chains"], out["n_draws"], out["n_superchains"]) == (6, 50, 3)


def test_summary_of_a_sampler_trajectory_in_one_call():
    pytest.importorskip("arviz")
    s = jk.LangevinSampler(lambda z: 0.5 * (z ** 2).sum(-1), step_size=0.1)
    traj = s.sample(dim=3, n_samples=8, n_steps=400, thin=4, return_trajectory=True, generator=(4, 0))
    out = dg.summary(traj, burn_in=25)
    assert out["n_draws"] == 75 and out["nested_rhat"] is None and out["worst"]["nested_rhat"] is None
    assert out["worst"]["rhat"] < 1.1 and out["worst"]["ess"] > 50


@pytest.mark.parametrize("trajectory,kwargs,match", [
    (torch.randn(1, 20, 2), {}, "at least 2 chains"),
    (torch.randn(4, 6, 2), dict(burn_in=3), "at least 4 draws"),
])
def test_summary_refuses_what_rhat_cannot_use(trajectory, kwargs, match):
    pytest.importorskip("arviz")
    with pytest.raises(ValueError, match=match):
        dg.summary(trajectory, **kwargs)
