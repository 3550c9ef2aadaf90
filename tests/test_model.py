"""The JEBM model: energies against independent formulas and finite differences, the hand-over to
jebm_kernels, sampling through ``jebm_kernels.langevin``, and bad input."""
import math

import pytest
import torch

import jebm_kernels as jk
from jebm.model import JEBM, ConvDecoder, InferenceModel, randn_layers
from jebm.train.presets import resolve_config


def small_model(dims=(5, 4, 3), joint=True, decoder="mlp", image_shape=(1, 4, 4), dtype=torch.float64, **kw):
    torch.manual_seed(0)
    m = JEBM(image_shape, dims, ebm_hidden=[7, 6], joint_hidden=[6] if joint else None, gauss_hidden=[8],
             decoder=decoder, dec_hidden=[9], ngf=2, **kw)
    return m.to(dtype)


def rand_z(model, B=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, d, generator=g, dtype=torch.float64) for d in model.dims]


def manual_eps_to_z(model, eps):
    """The reparameterisation written out from the modules, independent of jebm_kernels.spec."""
    z = list(eps)
    for l in range(model.n_layers - 2, -1, -1):
        mu, raw = model.gaussians[l](z[l + 1]).chunk(2, dim=-1)
        z[l] = mu + (torch.exp(raw) + 0.01) * eps[l]
    return z


def manual_log_p_beta(model, z):
    lp = torch.distributions.Normal(0.0, 1.0).log_prob(z[-1]).sum(-1)
    for l in range(model.n_layers - 1):
        mu, raw = model.gaussians[l](z[l + 1]).chunk(2, dim=-1)
        lp = lp + torch.distributions.Normal(mu, torch.exp(raw) + 0.01).log_prob(z[l]).sum(-1)
    return lp


def manual_F(model, z):
    total = sum(f(zl).squeeze(-1) for f, zl in zip(model.layer_energies, z))
    if model.joint is not None:
        total = total + model.joint(torch.cat(z, -1)).squeeze(-1)
    return total


def test_log_p_beta_and_F_match_independent_formulas():
    m = small_model()
    z = rand_z(m)
    torch.testing.assert_close(m.log_p_beta(z), manual_log_p_beta(m, z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.F(z), manual_F(m, z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.energy(z), -manual_F(m, z) - manual_log_p_beta(m, z), rtol=1e-12, atol=1e-12)


def test_prior_spec_energy_is_the_model_energy_up_to_the_gaussian_constant():
    # jebm_kernels drops the constants of the Gaussian log densities; the model keeps them.
    m = small_model()
    z = rand_z(m)
    u_kernel = jk.PriorEnergy(m.prior_spec("z"))(z)
    const = 0.5 * sum(m.dims) * math.log(2 * math.pi)
    torch.testing.assert_close(u_kernel, m.energy(z) - const, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("joint", [True, False])
def test_eps_space_prior_energy_is_the_design_formula(joint):
    # docs/design.md, section 1: U(eps) = -F(z(eps)) + ||eps||^2 / 2.
    m = small_model(joint=joint)
    eps = rand_z(m, B=4, seed=2)
    expected = -manual_F(m, manual_eps_to_z(m, eps)) + 0.5 * sum(e.pow(2).sum(-1) for e in eps)
    torch.testing.assert_close(jk.PriorEnergy(m.prior_spec("eps"))(eps), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.eps_to_z(eps), manual_eps_to_z(m, eps), rtol=1e-12, atol=1e-12)


def test_z_to_eps_inverts_eps_to_z():
    m = small_model()
    eps = rand_z(m, seed=3)
    torch.testing.assert_close(m.z_to_eps(m.eps_to_z(eps)), eps, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("space", ["z", "eps"])
@pytest.mark.parametrize("decoder,image_shape", [("mlp", (1, 4, 4)), ("conv", (1, 8, 8))])
def test_energy_gradients_match_finite_differences(space, decoder, image_shape):
    """The gradients the sampler follows (autograd through the specs) against central differences."""
    m = small_model(decoder=decoder, image_shape=image_shape)
    z = [t.requires_grad_(True) for t in rand_z(m, B=2, seed=4)]
    x = torch.rand(2, *image_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    prior = m.prior_energy_fn(space)
    post = m.posterior_energy_fn(x, space)
    # gradcheck compares the analytic Jacobian with central finite differences in float64.
    assert torch.autograd.gradcheck(lambda *zs: prior(list(zs)), tuple(z), eps=1e-6, atol=1e-6, rtol=1e-5)
    assert torch.autograd.gradcheck(lambda *zs: post(list(zs)), tuple(z), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_posterior_energy_is_prior_plus_reconstruction():
    m = small_model()
    z = rand_z(m)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64) * 2 - 1
    u_post = m.posterior_energy_fn(x, "z")(z)
    u_prior = jk.PriorEnergy(m.prior_spec("z"))(z)
    recon = (x - m.decode(z[0])).flatten(1).pow(2).sum(-1) / (2 * 0.3 ** 2)
    torch.testing.assert_close(u_post, u_prior + recon, rtol=1e-12, atol=1e-12)
    # neg_log_joint is the outlier score: reconstruction energy + U(z)
    torch.testing.assert_close(m.neg_log_joint(x, z), recon + m.energy(z), rtol=1e-12, atol=1e-12)


def test_specs_are_fusable_plain_tensors():
    m = small_model(dtype=torch.float32)
    spec = m.prior_spec("eps")
    assert spec.space == "eps" and spec.dims == m.dims and spec.energy_sign == -1.0
    assert all(t is not None and t.activation == "leaky_relu" and t.act_param == 0.2 for t in spec.layer_terms)
    assert spec.joint_term is not None and len(spec.gaussians) == 2
    assert all(not w.requires_grad for t in spec.layer_terms for w in t.weights)
    live = m.prior_spec("z", detach=False)
    assert live.layer_terms[0].weights[0] is m.layer_energies[0][0].weight
    dec = m.decoder_spec()
    assert isinstance(dec, jk.MLPSpec) and dec.out_activation == "tanh"
    z1 = torch.randn(3, m.dims[0])
    torch.testing.assert_close(jk.spec.mlp_forward(dec, z1).reshape(3, 1, 4, 4), m.decode(z1))
    conv = small_model(decoder="conv", image_shape=(3, 8, 8), dtype=torch.float32)
    assert isinstance(conv.decoder_spec(), ConvDecoder)


def test_all_sampling_goes_through_langevin(monkeypatch):
    m = small_model(dtype=torch.float32)
    calls = []
    real = jk.langevin

    def spy(energy, z, **kw):
        calls.append((type(energy).__name__, kw["n_steps"], kw["step_size"], kw["generator"]))
        return real(energy, z, **kw)

    monkeypatch.setattr(jk, "langevin", spy)
    g = jk.PhiloxGenerator(7)
    x = torch.rand(3, 1, 4, 4) * 2 - 1
    m.sample_prior(3, generator=g, n_steps=4, step_size=[0.3, 0.2, 0.1])
    m.sample_posterior(x, generator=g, n_steps=5, step_size=0.05)
    assert calls[0][:3] == ("PriorEnergy", 4, [0.3, 0.2, 0.1]) and calls[0][3] is g
    assert calls[1][:3] == ("PosteriorEnergy", 5, 0.05) and calls[1][3] is g
    rows = m.hierarchical_samples(4, generator=g, n_steps=3)
    assert len(calls) == 2 + 1 + 3  # the base prior draw, then one chain per layer
    assert len(rows) == 3 and all(r.shape == (4, 1, 4, 4) for r in rows)
    assert all(bool(torch.isfinite(r).all()) for r in rows)
    assert all(float(r.std(0).mean()) > 0 for r in rows)  # each row holds different resamples


@pytest.mark.parametrize("space", ["z", "eps"])
def test_sampling_is_reproducible_from_the_philox_stream(space):
    m = small_model(dtype=torch.float32, space=space, prior_steps=5, post_steps=5)
    a, info = m.sample_prior(6, generator=jk.PhiloxGenerator(11), return_info=True)
    b = m.sample_prior(6, generator=jk.PhiloxGenerator(11))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert [t.shape for t in a] == [torch.Size([6, d]) for d in m.dims]
    # the returned z is the chain state mapped to z-space
    z_state = m.eps_to_z(info["state"]) if space == "eps" else info["state"]
    assert all(torch.allclose(u, v) for u, v in zip(a, z_state))
    x = m.generate(6, generator=jk.PhiloxGenerator(11))
    assert x.shape == (6, 1, 4, 4) and float(x.abs().max()) <= 1.0


def test_persistent_chain_continues_from_init():
    m = small_model(dtype=torch.float32, prior_steps=3)
    _, info = m.sample_prior(4, generator=jk.PhiloxGenerator(1), return_info=True)
    _, info2 = m.sample_prior(4, generator=jk.PhiloxGenerator(2), init=info["state"], n_steps=0, return_info=True)
    assert all(torch.equal(u, v) for u, v in zip(info["state"], info2["state"]))


def test_gaussian_baseline_has_no_ebm_and_samples_exactly(monkeypatch):
    m = small_model(dtype=torch.float32, ebm=False)
    assert not m.has_ebm and m.ebm_parameters() == []
    assert all(t is None for t in m.prior_spec().layer_terms)
    z = rand_z(m)
    assert torch.equal(m.F([t.float() for t in z]), torch.zeros(3))
    monkeypatch.setattr(jk, "langevin", lambda *a, **k: pytest.fail("p_beta is sampled exactly, not by Langevin"))
    s = m.sample_prior(5, generator=jk.PhiloxGenerator(3))
    assert [t.shape[1] for t in s] == list(m.dims)


def test_randn_layers_draws_from_the_philox_stream():
    g = jk.PhiloxGenerator(5, 100)
    a, b = randn_layers(3, [2, 4], g)
    flat = jk.philox_randn(5, 100, 18)
    assert torch.equal(a.flatten(), flat[:6]) and torch.equal(b.flatten(), flat[6:])
    assert g.offset == 118


def test_single_layer_and_deep_models():
    one = JEBM((1, 4, 4), [3], ebm_hidden=[5], dec_hidden=[6])
    assert len(one.gaussians) == 0 and one.prior_spec().gaussians == ()
    assert one.sample_prior(2, n_steps=2)[0].shape == (2, 3)
    five = JEBM((1, 4, 4), [8, 6, 4, 3, 2], ebm_hidden=[5], gauss_hidden=[5], joint_hidden=[5], dec_hidden=[6])
    assert len(five.gaussians) == 4 and five.prior_spec().joint_term.in_dim == 23
    assert len(five.sample_prior(2, n_steps=2)) == 5


def test_cvpr_preset_shapes():
    cfg = resolve_config("cvpr-cifar10")
    m = JEBM.from_config(cfg, (3, 32, 32))
    assert m.dims == (128, 100)
    f1 = [l.weight.shape for l in m.layer_energies[0] if isinstance(l, torch.nn.Linear)]
    f2 = [l.weight.shape for l in m.layer_energies[1] if isinstance(l, torch.nn.Linear)]
    g = [l.weight.shape for l in m.gaussians[0] if isinstance(l, torch.nn.Linear)]
    assert f1 == [(200, 128), (200, 200), (200, 200), (1, 200)]
    assert f2 == [(100, 100), (100, 100), (1, 100)]
    assert g == [(200, 100), (200, 200), (200, 200), (200, 200), (256, 200)]
    assert isinstance(m.decoder, ConvDecoder)
    assert m.decode(torch.randn(2, 128)).shape == (2, 3, 32, 32)
    assert (cfg["prior_steps"], cfg["prior_step_size"], cfg["post_steps"], cfg["post_step_size"]) == (60, 0.4, 40, 0.1)
    assert (cfg["lr_ebm"], cfg["lr_gen"], cfg["batch_size"], cfg["sigma_x"]) == (2e-5, 1e-4, 100, 0.3)
    svhn = JEBM.from_config(resolve_config("iccv-svhn"), (3, 32, 32))
    assert svhn.n_layers == 5 and svhn.joint is not None


def test_inference_model_log_q_is_the_normal_density():
    torch.manual_seed(0)
    q = InferenceModel((1, 4, 4), [3, 2], hidden=[8], head_hidden=[5]).double()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    noise = [torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)]
    z, log_q = q(x, noise)
    h = q.features(x)
    mu2, s2 = q._dist(q.top(h))
    mu1, s1 = q._dist(q.heads[0](torch.cat([h, z[1]], -1)))
    expected = (torch.distributions.Normal(mu2, s2).log_prob(z[1]).sum(-1)
                + torch.distributions.Normal(mu1, s1).log_prob(z[0]).sum(-1))
    torch.testing.assert_close(log_q, expected, rtol=1e-12, atol=1e-12)


def test_bad_input_raises_clear_errors():
    m = small_model(dtype=torch.float32)
    with pytest.raises(ValueError, match="3 latent layers"):
        m.F([torch.randn(2, 5), torch.randn(2, 4)])
    with pytest.raises(TypeError, match="list of 3 tensors"):
        m.F(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"latent layer 2 must have shape \[B, 4\]"):
        m.F([torch.randn(2, 5), torch.randn(2, 7), torch.randn(2, 3)])
    with pytest.raises(ValueError, match=r"images must have shape \[B, 1, 4, 4\]"):
        m.sample_posterior(torch.randn(2, 1, 5, 5))
    with pytest.raises(TypeError, match="float64"):
        m.sample_posterior(torch.randn(2, 1, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="number of samples"):
        m.sample_prior(0)
    with pytest.raises(ValueError, match="step_size"):
        m.sample_prior(2, step_size=-1.0)
    with pytest.raises(ValueError, match="divisible by 4"):
        JEBM((1, 6, 6), [4], decoder="conv")
    with pytest.raises(ValueError, match="decoder must be"):
        JEBM((1, 4, 4), [4], decoder="resnet")
    with pytest.raises(ValueError, match="dims"):
        JEBM((1, 4, 4), [4, 0])
    with pytest.raises(TypeError, match="generator"):
        randn_layers(2, [3], generator=42)
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_config("cvpr")
    with pytest.raises(TypeError, match="unknown config key"):
        resolve_config(dimz=[3])
    with pytest.raises(ValueError, match="ebm_hidden gives 3 width lists"):
        resolve_config(dims=[4, 2], ebm_hidden=[[3], [3], [3]])
    with pytest.raises(ValueError, match="prior_step_size needs one value per latent layer"):
        resolve_config(prior_step_size=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="space must be"):
        resolve_config(space="x")


FUSED = [b for b in jk.available_backends() if b != "reference"]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("space", ["z", "eps"])
@pytest.mark.parametrize("decoder,image_shape", [("mlp", (1, 8, 8)), ("conv", (1, 8, 8))])
def test_model_chains_match_the_reference_on_every_backend(backend, space, decoder, image_shape):
    """The model's PriorSpec / PosteriorEnergy hand-over: a fused backend given the same Philox
    stream runs the same chains as the reference (float32 rounding over 10 steps)."""
    torch.manual_seed(0)
    m = JEBM(image_shape, [8, 4, 3], ebm_hidden=[16], joint_hidden=[8], gauss_hidden=[16], dec_hidden=[32],
             decoder=decoder, ngf=2, space=space)
    x = torch.rand(5, *image_shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for draw in (lambda b, g: m.sample_prior(5, n_steps=10, generator=g, backend=b, return_info=True),
                 lambda b, g: m.sample_posterior(x, n_steps=10, generator=g, backend=b, return_info=True)):
        ref, _ = draw("reference", jk.PhiloxGenerator(3))
        got, info = draw(backend, jk.PhiloxGenerator(3))
        assert info["sampler"]["backend"] == backend
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
