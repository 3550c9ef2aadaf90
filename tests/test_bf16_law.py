"""bf16 chains have the fp32 chains' law (precision.py): statistics over many chains, not element-wise
equality (bf16 products round each gradient by ~2^-9 of its terms, which the chain's noise swamps).

Each target's energy goes through a matrix product, so bf16 reaches it. The fp32 and bf16 samples
are independent (other seeds, other starts). Thresholds:
- moments: every mean and variance within 4.5 Monte-Carlo standard errors (false alarm < 1e-4 per
  target, all coordinates together);
- the energy-distance two-sample test at level ALPHA = 0.01, with its power shown on the same
  target: the same test, same N, does reject the fp32 chain of the energy with every weight 2%
  larger;
- same noise: after 20 steps the bf16 chain stays within 2% of one step's noise (s tau) of the fp32
  chain, on average per coordinate (two fp32 chains with different noise end 3 steps' noise apart).
Run on every instruction set the machine has with ``JEBM_ISA`` (the cpu backend's bf16 builds exist
only on AVX-512 with AVX512-BF16; elsewhere bf16 runs the fp32 kernel and says so).
"""
import copy
import math

import pytest
import torch
from torch import nn

import jebm_kernels as jk
from jebm_kernels.extension import cpu_bf16_reason
from jebm_kernels.precision import bf16_hardware_reason
from tests.law import energy_distance_test, mean_shift_z, moment_z

pytestmark = pytest.mark.skipif(bf16_hardware_reason(torch.device("cpu")) is not None,
                                reason="this CPU has no bf16 instructions: bf16 runs fp32 (test_precision.py)")

ALPHA = 0.01
MOMENT_Z = 4.5


def backends(slow_reference=False):
    """The reference's autocast loop, and the cpu backend (its fused bf16 kernel on an MLP energy,
    autocast + the C++ update on the others)."""
    ref = pytest.param("reference", marks=pytest.mark.slow) if slow_reference else "reference"
    return [ref, pytest.param("cpu", marks=pytest.mark.skipif(
        jk.available_backends().count("cpu") == 0, reason="the C++ extension is not built"))]


def endpoints(energy, z0, *, seed, precision, backend, n_steps, step_size, **kw):
    out, info = jk.langevin(energy, z0, n_steps=n_steps, step_size=step_size, generator=(seed, 0),
                            precision=precision, backend=backend, return_info=True, **kw)
    if precision == "bf16" and info["precision"] != "bf16" and info["fused"]:
        pytest.skip(f"no bf16 build of the fused kernel here: {info['precision_note']}")
    return out, info


# ------------------------------------------------------------------------------ 2-D targets

def _rotation(theta):
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]])


class Gaussian(nn.Module):
    """U = |z P|^2 / 2: N(0, (P P^T)^-1)."""

    def __init__(self):
        super().__init__()
        self.P = nn.Parameter(_rotation(0.6) @ torch.diag(torch.tensor([1.3, 0.8])))

    def forward(self, z):
        return 0.5 * (z @ self.P).pow(2).sum(-1)


class Mixture(nn.Module):
    """Two Gaussians N(+-mu, sigma^2 R R^T) with weights 0.3 / 0.7, the offsets through a matmul."""

    def __init__(self):
        super().__init__()
        self.R = nn.Parameter(_rotation(0.4))
        self.mu = torch.tensor([[1.2, 0.0], [-1.2, 0.0]])
        self.logw = torch.tensor([0.3, 0.7]).log()
        self.sigma = 0.7

    def forward(self, z):
        y = z @ self.R  # coordinates in the mixture's own frame
        d2 = (y[:, None, :] - self.mu).pow(2).sum(-1) / (2 * self.sigma ** 2)
        return -torch.logsumexp(self.logw - d2, dim=1)

    def moments(self):
        w = self.logw.exp()
        m = (w[:, None] * self.mu).sum(0)
        var = (w[:, None] * (self.sigma ** 2 + self.mu ** 2)).sum(0) - m ** 2
        cov_y = torch.diag(var)
        return self.R @ m, torch.diagonal(self.R @ cov_y @ self.R.T)


class Banana(nn.Module):
    """y = z R: U = y1^2 / 2 + (y2 - b (y1^2 - 1))^2 / 2; E y = 0, Var y1 = 1, Var y2 = 1 + 2 b^2."""

    def __init__(self, b=0.4):
        super().__init__()
        self.R = nn.Parameter(_rotation(-0.3))
        self.b = b

    def forward(self, z):
        y = z @ self.R
        return 0.5 * y[:, 0] ** 2 + 0.5 * (y[:, 1] - self.b * (y[:, 0] ** 2 - 1)) ** 2

    def moments(self):
        cov_y = torch.diag(torch.tensor([1.0, 1 + 2 * self.b ** 2]))
        return torch.zeros(2), torch.diagonal(self.R @ cov_y @ self.R.T)


def ula_gaussian_moments(A: torch.Tensor, s: float):
    """The unadjusted Langevin chain's exact stationary law on U = z^T A z / 2 with step s:
    x' = (I - h A) x + s xi, so each eigen-direction has variance s^2 / (1 - (1 - h l)^2)."""
    h = s * s / 2
    lam, Q = torch.linalg.eigh(A.double())
    v = s * s / (1 - (1 - h * lam) ** 2)
    return torch.zeros(2), torch.diagonal(Q @ torch.diag(v) @ Q.T).float()


def fp32_and_bf16(target, backend, *, N, s, K, seed):
    """Independent fp32 and bf16 endpoints of N chains of K steps from N(0, I) starts."""
    g = torch.Generator().manual_seed(10 + seed)
    z32, _ = endpoints(target, torch.randn(N, 2, generator=g), seed=seed, precision="fp32", backend=backend,
                       n_steps=K, step_size=s)
    z16, info = endpoints(target, torch.randn(N, 2, generator=g), seed=seed + 1, precision="bf16",
                          backend=backend, n_steps=K, step_size=s)
    assert info["precision"] == "bf16"
    return z32, z16


@pytest.mark.parametrize("backend", backends(slow_reference=True))
def test_gaussian_bf16_matches_the_exact_law_of_the_chain(backend):
    target, s = Gaussian(), 0.35
    z32, z16 = fp32_and_bf16(target, backend, N=3000, s=s, K=250, seed=1)
    mean, var = ula_gaussian_moments((target.P @ target.P.T).detach(), s)
    assert moment_z(z32, mean=mean, var=var) < MOMENT_Z  # the fp32 chain has mixed
    assert moment_z(z16, mean=mean, var=var) < MOMENT_Z
    assert moment_z(z16, z32) < MOMENT_Z


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("target", [Mixture, Banana])
def test_mixture_and_banana_bf16_moments_and_two_sample(target, backend):
    target = target()
    z32, z16 = fp32_and_bf16(target, backend, N=3000, s=0.2, K=800, seed=3)
    assert moment_z(z16, z32) < MOMENT_Z
    _, p = energy_distance_test(z16, z32)
    assert p > ALPHA
    # both chains have reached the target (its exact moments, up to the step's bias of ~h times the
    # curvature: a few % of the variances here)
    mean, var = target.moments()
    for z in (z32, z16):
        assert (z.mean(0) - mean).abs().max() < 0.08 and ((z.var(0) - var).abs() / var).max() < 0.06


# ------------------------------------------------------------------------------ an MLP energy

def strong_lebm_prior(scale=5.0):
    """The LEBM prior's shape (100-200-200-1, GELU) with weights large enough to shape the chain's
    law (mean |dU/dz| about 10 at the start, against |z| / prior_sigma about 10)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(100, 200), nn.GELU(), nn.Linear(200, 200), nn.GELU(), nn.Linear(200, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net


def lebm_endpoints(net, *, seed, precision, backend, N=2000):
    z0 = torch.randn(N, 100, generator=torch.Generator().manual_seed(1000 + seed))
    return endpoints(net, z0, seed=seed, precision=precision, backend=backend, n_steps=60, step_size=0.4,
                     prior_sigma=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends())
def test_mlp_energy_bf16_law_and_the_tests_power(backend):
    net = strong_lebm_prior()
    heavier = copy.deepcopy(net)
    with torch.no_grad():
        for p in heavier.parameters():
            p.mul_(1.02)
    z32, _ = lebm_endpoints(net, seed=1, precision="fp32", backend=backend)
    z16, info = lebm_endpoints(net, seed=2, precision="bf16", backend=backend)
    z32_changed, _ = lebm_endpoints(heavier, seed=3, precision="fp32", backend=backend)
    assert info["precision"] == "bf16"
    if backend == "cpu" and cpu_bf16_reason() is None:
        assert info["fused"]  # the bf16 kernel itself
    _, p_bf16 = energy_distance_test(z16, z32)
    _, p_changed = energy_distance_test(z32_changed, z32)
    assert p_changed < ALPHA, "the test must detect a 2% change of the weights (its power)"
    assert p_bf16 > ALPHA
    assert abs(mean_shift_z(z16, z32)) < 3.3 and mean_shift_z(z32_changed, z32) > 5.0


@pytest.mark.parametrize("backend", backends())
def test_same_noise_bf16_stays_within_a_small_fraction_of_a_step(backend):
    net = strong_lebm_prior()
    z0 = torch.randn(200, 100, generator=torch.Generator().manual_seed(5))
    kw = dict(n_steps=20, step_size=0.4, prior_sigma=1.0, generator=(9, 0), backend=backend, return_info=True)
    a, _ = jk.langevin(net, z0, precision="fp32", **kw)
    b, info = jk.langevin(net, z0, precision="bf16", **kw)
    if info["precision"] != "bf16" and info["fused"]:
        pytest.skip(f"no bf16 build of the fused kernel here: {info['precision_note']}")
    step_noise = 0.4  # s * tau
    diff = (a - b).abs()
    assert float(diff.max()) > 0  # bf16 did run
    assert float(diff.mean()) < 0.02 * step_noise
