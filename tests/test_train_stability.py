"""The training stabilisers, each small and checked here: the sigma diagnostics the trainers log,
the F penalty (``ebm_l2``: alpha's gradient only), gradient clipping (``grad_clip``), the hidden
activations of the f terms and of p(z_l|z_{l+1}) (tanh bounds them), the scheme-dependent defaults,
and saved configs from before these keys loading as they were trained."""
import json

import pytest
import torch

import jebm
import jebm_kernels as jk
from jebm.model import JEBM
from jebm.train.build import build_model, load_training_data
from jebm.train.presets import resolve_config, upgrade_config

TINY = dict(dims=[6, 3], ebm_hidden=[16], gauss_hidden=[16], dec_hidden=[32], infer_hidden=[32],
            infer_head_hidden=[16], prior_steps=3, post_steps=3, batch_size=20, sample_every=0, n_samples=4)


def test_defaults_depend_on_the_scheme():
    mle, var = resolve_config(), resolve_config(scheme="variational")
    assert (mle["space"], var["space"]) == ("z", "eps")
    assert mle["gauss_activation"] == "leaky_relu" and var["gauss_activation"] == "tanh"
    assert mle["ebm_l2"] == var["ebm_l2"] == 0.1 and mle["iters"] == 2000
    assert resolve_config(scheme="variational", space="z")["space"] == "z"  # an override wins
    assert resolve_config("cvpr-cifar10", scheme="variational")["space"] == "z"  # only the default preset


def test_saved_configs_without_the_new_keys_load_as_trained():
    old = resolve_config()
    for k in ("ebm_activation", "gauss_activation", "ebm_l2", "grad_clip", "validation"):
        old.pop(k)
    up = upgrade_config(old)
    assert (up["ebm_activation"], up["gauss_activation"], up["ebm_l2"], up["grad_clip"], up["validation"]) == \
        ("leaky_relu", "leaky_relu", 0.0, None, False)


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="gauss_activation must be one of"):
        resolve_config(gauss_activation="sigmoid")
    with pytest.raises(ValueError, match="ebm_l2 must be a finite number >= 0"):
        resolve_config(ebm_l2=-1.0)
    with pytest.raises(ValueError, match="grad_clip must be a finite number > 0"):
        resolve_config(grad_clip=0.0)
    with pytest.raises(ValueError, match="ebm_activation must be one of"):
        JEBM((1, 8, 8), [4, 2], ebm_activation="swish")


def test_tanh_bounds_sigma_and_keeps_the_prior_fusable():
    torch.manual_seed(0)
    m = JEBM((1, 8, 8), [4, 2], ebm_hidden=[8], gauss_hidden=[8], dec_hidden=[16], gauss_activation="tanh",
             ebm_activation="tanh")
    assert isinstance(m.gaussians[0][1], torch.nn.Tanh) and isinstance(m.layer_energies[0][1], torch.nn.Tanh)
    spec = m.prior_spec()
    assert spec.gaussians[0].mlp.activation == "tanh" and spec.layer_terms[0].activation == "tanh"
    # |raw| <= |b| + sum |W| of the last layer, however far z_2 goes: sigma is bounded
    last = m.gaussians[0][-1]
    bound = (last.bias.abs() + last.weight.abs().sum(1))[4:].max().detach()
    far = [torch.zeros(5, 4), 1e4 * torch.randn(5, 2)]
    sig = m.conditional_sigmas(far)[0]
    assert float(sig.max()) <= float(torch.exp(bound)) + 0.01 + 1e-4
    # the fused cpu prior chain agrees with the reference on it
    if "cpu" in jk.available_backends():
        z0 = [torch.randn(7, 4), torch.randn(7, 2)]
        a = jk.langevin(m.prior_energy_fn(), z0, n_steps=5, step_size=0.3, generator=(3, 0), backend="reference")
        b = jk.langevin(m.prior_energy_fn(), z0, n_steps=5, step_size=0.3, generator=(3, 0), backend="cpu")
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scheme", ["mle", "variational"])
def test_f_penalty_moves_only_alpha_and_sigma_is_logged(scheme):
    cfg = resolve_config(scheme=scheme, backend="reference", **TINY)
    data = load_training_data(cfg)
    x = data.images[:20]

    def grads(ebm_l2):
        model, tr = build_model({**cfg, "ebm_l2": ebm_l2}, data.shape, "cpu")
        values, total = tr.loss(x, generator=jk.PhiloxGenerator(5), backend="reference")
        total.backward()
        return values, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    v0, g0 = grads(0.0)
    v1, g1 = grads(0.5)
    assert {"sigma_l1", "sigma_l1_p10"} <= set(v0) and 0.01 < v0["sigma_l1_p10"] <= v0["sigma_l1"]
    changed = {n for n in g0 if not torch.equal(g0[n], g1[n])}
    assert changed and all(n.startswith("layer_energies") for n in changed)  # alpha only


def test_grad_clip_bounds_each_optimisers_step(tmp_path):
    res = jebm.train(iters=3, out_dir=tmp_path / "c", progress=False, grad_clip=1e-3, **TINY)
    assert res.config["grad_clip"] == 1e-3
    lines = [json.loads(l) for l in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all("sigma_l1" in l for l in lines)
    model, tr = build_model(resolve_config(grad_clip=1e-3, backend="reference", **TINY), (1, 8, 8), "cpu")
    x = load_training_data(resolve_config(**TINY)).images[:20]
    _, total = tr.loss(x, generator=jk.PhiloxGenerator(0), backend="reference")
    captured = {}
    for name, opt in tr.optimizers().items():
        orig = opt.step

        def step(*a, name=name, opt=opt, orig=orig, **k):
            captured[name] = float(torch.sqrt(sum(p.grad.pow(2).sum() for g in opt.param_groups for p in g["params"]
                                                  if p.grad is not None)))
            return orig(*a, **k)
        opt.step = step
    tr.apply(total)
    assert set(captured) == {"gen", "ebm"} and all(v <= 1e-3 * 1.0001 for v in captured.values())
