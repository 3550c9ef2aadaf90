"""The sampler API on targets with known answers, its bookkeeping, and its input checks."""
import math

import pytest
import torch
from torch import nn

import jebm_kernels as jk
from jebm_kernels import extension


def gaussian_energy(mu, prec):
    def energy(z):
        d = z - mu
        return 0.5 * ((d @ prec) * d).sum(-1)
    return energy


def test_ula_on_a_gaussian_matches_the_discretised_stationary_law():
    """ULA on U = (z-mu)^T A (z-mu)/2 with z' = z - h A (z-mu) + s xi, h = s^2/2, is a linear AR(1)
    chain; its stationary law is N(mu, V diag(1 / (lam (1 - h lam / 2))) V^T) for A = V diag(lam) V^T:
    the known O(h) bias of the discretisation, which the test allows for exactly, not by slack."""
    torch.manual_seed(0)
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)
    prec = torch.linalg.inv(cov)
    s = 0.6  # h * lam_max ~ 0.6: stable, with a bias well above the Monte Carlo error
    h = s * s / 2
    lam, V = torch.linalg.eigh(prec)
    stationary = V @ torch.diag(1 / (lam * (1 - h * lam / 2))) @ V.T
    n = 20000
    z0 = torch.randn(n, 2, dtype=torch.float64)
    z = jk.langevin(gaussian_energy(mu, prec), z0, n_steps=300, step_size=s,
                    generator=torch.Generator().manual_seed(1), backend="reference")
    mean, emp_cov = z.mean(0), torch.cov(z.T)
    # Monte Carlo standard errors for N independent chains: sqrt(C_ii / N) for the mean,
    # sqrt((C_ii C_jj + C_ij^2) / N) for the covariance; 5 of them is a deterministic-seed margin.
    se_mean = torch.sqrt(torch.diag(stationary) / n)
    se_cov = torch.sqrt((torch.outer(torch.diag(stationary), torch.diag(stationary)) + stationary ** 2) / n)
    assert ((mean - mu).abs() < 5 * se_mean).all(), (mean, mu)
    assert ((emp_cov - stationary).abs() < 5 * se_cov).all(), (emp_cov, stationary)
    # ...and the exact covariance is measurably different from the biased one, so the test has teeth.
    assert ((stationary - cov).abs().max() > 10 * se_cov.max())


def mixture_target():
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    means = torch.tensor([[-1.5, 0.0], [1.5, 0.5]], dtype=torch.float64)
    sd = 0.7

    def energy(z):
        d2 = ((z.unsqueeze(1) - means) ** 2).sum(-1)  # [B, 2]
        return -torch.logsumexp(torch.log(w) - d2 / (2 * sd * sd), dim=1)

    def draw(n, g):
        k = torch.multinomial(w, n, replacement=True, generator=g)
        return means[k] + sd * torch.randn(n, 2, dtype=torch.float64, generator=g)

    mean = (w[:, None] * means).sum(0)
    outer = means[:, :, None] * means[:, None, :] + sd * sd * torch.eye(2, dtype=torch.float64)
    second = (w[:, None, None] * outer).sum(0)
    return energy, draw, mean, second - torch.outer(mean, mean)


def test_mala_keeps_a_2d_mixture_invariant_where_ula_drifts():
    energy, draw, mean, cov = mixture_target()
    n, s = 20000, 1.0
    z0 = draw(n, torch.Generator().manual_seed(3))
    z, info = jk.langevin(energy, z0, n_steps=40, step_size=s, mala=True, return_info=True,
                          generator=torch.Generator().manual_seed(4), backend="reference")
    se_mean = torch.sqrt(torch.diag(cov) / n)
    se_cov = torch.sqrt((torch.outer(torch.diag(cov), torch.diag(cov)) + cov ** 2) / n)
    # Chains started in the target stay there under MALA: moments within 5 Monte Carlo errors.
    assert ((z.mean(0) - mean).abs() < 5 * se_mean).all(), (z.mean(0), mean)
    assert ((torch.cov(z.T) - cov).abs() < 5 * se_cov).all(), (torch.cov(z.T), cov)
    assert 0.2 < info["accept_rate"] < 0.95
    # The same step without the correction is visibly biased: the correction is doing the work.
    z_ula = jk.langevin(energy, z0, n_steps=40, step_size=s, generator=torch.Generator().manual_seed(4))
    assert ((torch.cov(z_ula.T) - cov).abs() > 10 * se_cov).any()


def test_replay_from_info_reproduces_the_call_exactly():
    energy = gaussian_energy(torch.zeros(3), torch.eye(3))
    z0 = torch.randn(7, 3)
    out, info = jk.langevin(energy, z0, n_steps=10, step_size=0.3, return_info=True)
    again = jk.langevin(energy, z0, n_steps=10, step_size=0.3, generator=(info["seed"], info["offset"]))
    assert torch.equal(out, again)
    assert len(info["energy"]) == 10 and len(info["grad_norm"]) == 10 and info["accept"] == []
    # a closure no kernel fuses: the cpu backend's loop where the extension is built
    assert info["backend"] == ("reference" if extension.cpu_error() else "cpu") and info["accept_rate"] is None


def test_a_stream_continues_across_calls():
    """Ten steps in one call equal two calls of five on one PhiloxGenerator: the offset advances."""
    energy = lambda zs: sum((t ** 2).sum(-1) for t in zs)
    z0 = [torch.randn(5, 3), torch.randn(5, 2)]
    whole = jk.langevin(energy, z0, n_steps=10, step_size=[0.2, 0.1], generator=jk.PhiloxGenerator(77))
    g = jk.PhiloxGenerator(77)
    half = jk.langevin(energy, z0, n_steps=5, step_size=[0.2, 0.1], generator=g)
    assert g.offset == 5 * 5 * (3 + 2) and g.seed == 77
    rest = jk.langevin(energy, half, n_steps=5, step_size=[0.2, 0.1], generator=g)
    for a, b in zip(whole, rest):
        assert torch.equal(a, b)


def test_update_matches_the_documented_formula_for_one_step():
    """One step by hand: z - s^2/2 grad U + s tau xi, xi from philox_randn at the documented layout."""
    z0 = [torch.randn(4, 3), torch.randn(4, 2, 2)]
    s, tau, seed = [0.3, 0.2], 0.5, 123
    energy = lambda zs: (zs[0] ** 2).sum(-1) + 0.5 * (zs[1] ** 4).sum((1, 2))
    out = jk.langevin(energy, z0, n_steps=1, step_size=s, noise_scale=tau, generator=(seed, 0), prior_sigma=2.0)
    xi = jk.philox_randn(seed, 0, 4 * 3 + 4 * 4)
    grad0 = 2 * z0[0] + z0[0] / 4
    grad1 = 2 * z0[1] ** 3 + z0[1] / 4
    exp0 = z0[0] - s[0] ** 2 / 2 * grad0 + s[0] * tau * xi[:12].reshape(4, 3)
    exp1 = z0[1] - s[1] ** 2 / 2 * grad1 + s[1] * tau * xi[12:].reshape(4, 2, 2)
    torch.testing.assert_close(out[0], exp0)
    torch.testing.assert_close(out[1], exp1)
    assert out[1].shape == (4, 2, 2)


def test_inputs_are_not_modified_and_zero_steps_is_a_copy():
    z0 = torch.randn(3, 2)
    keep = z0.clone()
    out = jk.langevin(lambda z: (z ** 2).sum(-1), z0, n_steps=0, step_size=0.1)
    assert torch.equal(out, keep) and out is not z0
    jk.langevin(lambda z: (z ** 2).sum(-1), z0, n_steps=3, step_size=0.1)
    assert torch.equal(z0, keep)


def test_sequential_energy_is_read_as_lebm_energy():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 1))
    z0 = torch.randn(5, 6)
    out = jk.langevin(net, z0, n_steps=4, step_size=0.1, prior_sigma=1.0, generator=(5, 0), backend="reference")
    by_hand = jk.langevin(lambda z: net(z).squeeze(1), z0, n_steps=4, step_size=0.1, prior_sigma=1.0,
                          generator=(5, 0), backend="reference")
    assert torch.equal(out, by_hand)


def test_prior_energy_in_eps_space_pushes_forward_to_the_base():
    """With no energy terms the eps-space prior is exactly N(0, I) and the z-space prior is p_beta."""
    torch.manual_seed(0)
    g = jk.GaussianSpec(jk.MLPSpec((torch.randn(4, 2),), (torch.randn(4),), "identity"))
    spec = jk.PriorSpec(dims=(2, 2), layer_terms=(None, None), gaussians=(g,), space="eps")
    eps = [torch.randn(3, 2), torch.randn(3, 2)]
    u = jk.PriorEnergy(spec)(eps)
    torch.testing.assert_close(u, 0.5 * (eps[0] ** 2).sum(-1) + 0.5 * (eps[1] ** 2).sum(-1))


def test_torchebm_style_sampler_converts_eta_and_thins():
    energy = gaussian_energy(torch.zeros(2), torch.eye(2))
    sampler = jk.LangevinSampler(energy, step_size=0.02, noise_scale=1.0)
    x0 = torch.randn(6, 2)
    traj, diag = sampler.sample(x=x0, n_steps=12, thin=4, return_trajectory=True, return_diagnostics=True,
                                generator=jk.PhiloxGenerator(9))
    assert traj.shape == (6, 3, 2) and diag["energy"].shape == (3,)  # torchebm's layout: one row per kept state
    # torchebm's eta = 0.02 is our s = sqrt(2 eta) = 0.2, and thinning does not change the stream.
    direct = jk.langevin(energy, x0, n_steps=12, step_size=math.sqrt(0.04), generator=(9, 0))
    torch.testing.assert_close(traj[:, -1], direct, rtol=0, atol=0)


def test_available_backends_lists_reference():
    assert "reference" in jk.available_backends()


E = lambda z: (z ** 2).sum(-1)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(z=torch.randn(4)), ValueError, "batch first"),
    (dict(z=[torch.randn(4, 2), torch.randn(3, 2)]), ValueError, "same batch size"),
    (dict(z=[torch.randn(4, 2), torch.randn(4, 2, dtype=torch.float64)]), TypeError, "one dtype"),
    (dict(z=[torch.randn(4, 2), torch.empty(4, 2, device="meta")]), ValueError, "one device"),
    (dict(z=torch.tensor([[0.0, float("nan")]])), ValueError, "NaN or inf"),
    (dict(z=torch.randn(2, 3).half()), TypeError, "float32 or float64"),
    (dict(z=torch.randn(0, 3)), ValueError, "empty batch"),
    (dict(z=[]), ValueError, "empty list"),
    (dict(z="zz"), TypeError, "torch.Tensor"),
    (dict(step_size=0.0), ValueError, "step_size"),
    (dict(step_size=-1.0), ValueError, "step_size"),
    (dict(step_size=[0.1, 0.2]), ValueError, "one value per layer"),
    (dict(n_steps=-1), ValueError, "n_steps"),
    (dict(n_steps=2.5), ValueError, "n_steps"),
    (dict(noise_scale=-1.0), ValueError, "noise_scale"),
    (dict(prior_sigma=0.0), ValueError, "prior_sigma"),
    (dict(energy=lambda z: z.sum()), ValueError, "one value per chain"),
    (dict(energy=lambda z: z), ValueError, "one value per chain"),
    (dict(energy=lambda z: 3.0), TypeError, "must return a tensor"),
    (dict(energy=42), TypeError, "callable"),
    (dict(backend="gpu-magic"), ValueError, "unknown backend"),
    (dict(generator="seed"), TypeError, "generator"),
    (dict(mala=True, noise_scale=0.0), ValueError, "noise_scale > 0"),
])
def test_bad_input_gets_a_clear_error(kwargs, err, match):
    args = dict(energy=E, z=torch.randn(4, 2), n_steps=2, step_size=0.1) | kwargs
    energy, z = args.pop("energy"), args.pop("z")
    with pytest.raises(err, match=match):
        jk.langevin(energy, z, **args)


def test_info_reads_the_statistics_only_when_asked_and_check_finite_can_be_skipped():
    """The per-step lists come from the [K, 3] statistics tensor on first access (a caller on a GPU
    that never looks at them never waits for the device); check_finite=False skips the host read of
    the start (the chain then simply carries the NaN)."""
    z = torch.randn(4, 2)
    out, info = jk.langevin(E, z, n_steps=3, step_size=0.1, generator=(1, 0), return_info=True, mala=True)
    assert not info._read and tuple(info["stats"].shape) == (3, 3)
    assert "energy" in info and len(info) == 13 and list(info)[-4:] == ["energy", "grad_norm", "accept", "accept_rate"]
    assert info.get("backend") == "cpu" and not info._read  # keys, in, len and the other fields need no read
    assert len(info["energy"]) == 3 and info._read
    assert info == dict(info) and dict(info) == info and repr(info) == repr(dict(info))
    assert info["accept_rate"] == sum(info["accept"]) / 3 and "grad_norm" in info
    assert info["energy"] == [float(v) for v in info["stats"][:, 0]]
    bad = z.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        jk.langevin(E, bad, n_steps=1, step_size=0.1)
    out = jk.langevin(E, bad, n_steps=1, step_size=0.1, check_finite=False)
    assert torch.isnan(out[0]).any() and torch.isfinite(out[1:]).all()


def test_graph_safe_chain_position_is_set_on_the_device():
    chain = jk.GraphSafeChain(E, torch.randn(4, 2), n_steps=2, step_size=0.1, generator=(5, 0), kernel="reference")
    chain.set_position(2**64 - 3, 77)
    assert chain.state() == (2**64 - 3, 77) and not chain.captured
    with pytest.raises(ValueError, match="offset"):
        chain.set_position(1, -1)
