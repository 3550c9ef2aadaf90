"""Learned short-run posterior step sizes (jebm.train.short_run; their evaluation:
jebm.evaluate.step_sizes): the entropy estimators against the exact log-determinant of a linear
K-step map, the chain's gradient against finite differences, the chain against the reference
backend (same Philox noise), and on the digits data a training run whose learned step sizes reach
a lower posterior objective on held-out images than the fixed default."""
import json
import math
import warnings

import pytest
import torch

import jebm
import jebm_kernels as jk
from jebm.data import load_dataset
from jebm.evaluate import step_sizes
from jebm.evaluate.step_sizes import posterior_objective
from jebm.model import JEBM, randn_layers
from jebm.train import short_run
from jebm.train.mle import MLETrainer
from jebm.train.presets import resolve_config
from jebm.train.short_run import StepSizes, short_run_chain

DIMS = (3, 2)


@pytest.fixture(autouse=True)
def one_thread():
    """These chains are tiny tensors and hundreds of autograd calls: a second intra-op thread only
    adds synchronisation (about ten times slower with 2 threads on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
TINY = dict(dims=[8, 4], ebm_hidden=[32], gauss_hidden=[32], dec_hidden=[64], infer_hidden=[64],
            infer_head_hidden=[32], prior_steps=8, post_steps=8, batch_size=50, sample_every=0, n_samples=4)


def gaussian_target(seed=0):
    """U(v) = v^T P v / 2 over two layers (3 + 2 dims), P SPD with eigenvalues in [0.5, 4]."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    P = q @ torch.diag(torch.linspace(0.5, 4.0, 5, dtype=torch.float64)) @ q.T

    def energy(v):
        z = torch.cat(v, dim=-1)
        return 0.5 * ((z @ P) * z).sum(-1)
    return P, energy


def start(B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, d, generator=g, dtype=torch.float64) for d in DIMS]


def step_matrix(P, s):
    """I - diag(h) P, h per coordinate: the Jacobian of one Langevin step on the Gaussian."""
    h = torch.cat([torch.full((d,), float(sl) ** 2 / 2, dtype=torch.float64) for d, sl in zip(DIMS, s)])
    return torch.eye(5, dtype=torch.float64) - h[:, None] * P


def test_exact_estimator_is_the_log_det_of_the_linear_k_step_map():
    P, energy = gaussian_target()
    s = torch.tensor([0.3, 0.5], dtype=torch.float64)
    K = 4
    res = short_run_chain(energy, start(8), s, n_steps=K, generator=(7, 0), estimator="exact")
    expected = K * torch.linalg.slogdet(step_matrix(P, s)).logabsdet
    torch.testing.assert_close(res.logdet, expected.expand(8), rtol=1e-12, atol=1e-12)
    # The map is linear: v_K - (noise part) = M^K v_0, so the log-det is that of M^K exactly.
    assert float(expected) < 0  # a contraction: the chain concentrates


def test_series_estimator_is_unbiased_for_its_truncation_and_converges_to_the_log_det():
    P, energy = gaussian_target()
    s = torch.tensor([0.3, 0.5], dtype=torch.float64)
    A = torch.eye(5, dtype=torch.float64) - step_matrix(P, s)            # diag(h) P, spectral radius 0.5
    K, B = 2, 64
    for n_terms in (2, 12):
        truncated = -sum(torch.trace(torch.linalg.matrix_power(A, n)) / n for n in range(1, n_terms + 1))
        res = short_run_chain(energy, start(B), s, n_steps=K, generator=(11, 0), estimator="series",
                              n_terms=n_terms, n_probes=8)
        per_step = res.logdet / K
        se = float(per_step.std() / math.sqrt(B))
        assert abs(float(per_step.mean()) - float(truncated)) < 4 * se + 1e-12, (n_terms, per_step.mean(), truncated)
    exact = torch.linalg.slogdet(step_matrix(P, s)).logabsdet
    tail = -sum(torch.trace(torch.linalg.matrix_power(A, n)) / n for n in range(1, 31))
    assert abs(float(tail - exact)) < 1e-8  # 30 terms: the truncation is gone at radius 0.5


def test_chain_gradient_matches_finite_differences():
    """The backward through the chain (reparameterised noise, Hessian's dependence on v_k, log-det)
    on a non-quadratic energy, in float64, against central differences."""
    P, quad = gaussian_target()

    def energy(v):
        z = torch.cat(v, dim=-1)
        return quad(v) + 0.1 * z.pow(4).sum(-1) + torch.sin(z).sum(-1)

    v0 = start(4)
    for estimator in ("exact", "series"):
        def objective(log_s):
            res = short_run_chain(energy, v0, log_s.exp(), n_steps=3, generator=(3, 5), estimator=estimator,
                                  n_terms=3, n_probes=2)
            return res.objective.mean()
        log_s = torch.log(torch.tensor([0.3, 0.4], dtype=torch.float64)).requires_grad_(True)
        assert torch.autograd.gradcheck(objective, (log_s,), eps=1e-6, atol=1e-6, rtol=1e-5)


def tiny_model(seed=0, **over):
    cfg = resolve_config("default", **{**TINY, **over})
    data = load_dataset("digits", None, split="train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = JEBM.from_config(cfg, data.shape)
    return model, cfg, data


@pytest.mark.parametrize("space", ["eps", "z"])
def test_chain_reproduces_the_reference_backend(space):
    model, _, data = tiny_model(space=space)
    x = data.images[:13]                                   # an odd batch
    s = torch.tensor([0.12, 0.07])
    gen = jk.PhiloxGenerator(42, 1000)
    v0 = randn_layers(13, model.dims, gen)
    state = gen.state()
    ref = jk.langevin(model.posterior_energy_fn(x, space), v0, n_steps=6, step_size=s.tolist(),
                      generator=jk.PhiloxGenerator(*state), backend="reference")
    ours_gen = jk.PhiloxGenerator(*state)
    res = short_run_chain(model.posterior_energy_fn(x, space), v0, s, n_steps=6, generator=ours_gen, estimator="exact")
    for a, b in zip(res.state, ref):
        torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-5)
    # The same counters were consumed: what comes after the chain is unchanged by this mode.
    assert ours_gen.offset == state[1] + 6 * 13 * sum(model.dims)


def test_learned_step_sizes_beat_the_fixed_default_on_digits(tmp_path):
    """MLE training with learn_step_size=True on digits; then, on held-out test images with fresh
    noise, the learned step sizes reach a lower posterior objective (expected energy minus the
    entropy estimate, exact log-det) than the preset's fixed 0.1, with the same starts and noise."""
    res = jebm.train(iters=24, out_dir=tmp_path / "run", progress=False, seed=1, backend="reference",
                     learn_step_size=True, lr_step_size=0.05, **{**TINY, "batch_size": 40})
    lines = [json.loads(l) for l in (res.run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    assert len(lines) == 24
    for line in lines:
        assert {"step_size_post_l1", "step_size_post_l2", "post_objective", "post_logdet"} <= set(line)
    assert lines[0]["step_size_post_l1"] == pytest.approx(0.1) and lines[0]["step_size_post_l2"] == pytest.approx(0.1)
    learned = step_sizes.learned_step_sizes(res.checkpoint)
    assert learned is not None and len(learned) == 2
    assert max(abs(math.log(v / 0.1)) for v in learned) > 0.2, learned  # they moved
    ck = torch.load(res.checkpoint, weights_only=True)
    assert "step_size" in ck["optimizers"] and "step_sizes" in ck["modules"]

    run = jebm.load_run(res.run_dir)
    assert run.model.config["post_step_size"] == pytest.approx(learned)  # eval and sampling use them
    test = load_dataset("digits", None, split="test").images[:100]
    j_learned = posterior_objective(run.model, test, learned, seed=5)
    j_fixed = posterior_objective(run.model, test, 0.1, seed=5)
    diff = j_learned - j_fixed
    se = float(diff.std() / math.sqrt(diff.shape[0]))
    assert float(diff.mean()) < -3 * se, (learned, float(j_learned.mean()), float(j_fixed.mean()), se)


def test_variational_refinement_learns_and_logs_step_sizes(tmp_path):
    res = jebm.train(scheme="variational", iters=4, out_dir=tmp_path / "v", progress=False, backend="reference",
                     learn_step_size=True, lr_step_size=0.05, **{**TINY, "post_steps": 3})
    lines = [json.loads(l) for l in (res.run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    assert all({"step_size_post_l1", "step_size_post_l2", "neg_elbo", "F_pos"} <= set(l) for l in lines)
    assert lines[-1]["step_size_post_l1"] != lines[0]["step_size_post_l1"]
    ck = torch.load(res.checkpoint, weights_only=True)
    assert {"infer", "step_sizes"} <= set(ck["modules"]) and "step_size" in ck["optimizers"]


def test_resume_with_learned_step_sizes_is_exact(tmp_path):
    full = jebm.train(iters=4, out_dir=tmp_path / "full", progress=False, backend="reference", learn_step_size=True,
                      **{**TINY, "post_steps": 3, "prior_steps": 3})
    jebm.train(iters=2, out_dir=tmp_path / "half", progress=False, backend="reference", learn_step_size=True,
               ckpt_every=2, **{**TINY, "post_steps": 3, "prior_steps": 3})
    resumed = jebm.train(iters=4, out_dir=tmp_path / "half", resume=True, progress=False, backend="reference")
    keep = ("step_size_post_l1", "step_size_post_l2", "post_objective", "loss_recon")
    assert {k: full.metrics[k] for k in keep} == {k: resumed.metrics[k] for k in keep}


def test_fused_backends_fall_back_to_the_reference_and_say_so_once(monkeypatch):
    monkeypatch.setattr(short_run, "_FALLBACK_WARNED", False)
    monkeypatch.setattr(jk, "available_backends", lambda: ["cpu", "reference"])
    model, cfg, _ = tiny_model(learn_step_size=True, backend="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MLETrainer(model, cfg)
        MLETrainer(model, cfg)
        short_run.warn_fused_fallback("auto")
    msgs = [str(w.message) for w in caught if "learn_step_size" in str(w.message)]
    assert len(msgs) == 1 and "reference backend" in msgs[0] and "shown once" in msgs[0]
    monkeypatch.setattr(short_run, "_FALLBACK_WARNED", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        short_run.warn_fused_fallback("reference")
    assert not [w for w in caught if "learn_step_size" in str(w.message)]


@pytest.mark.parametrize("override,match", [
    (dict(learn_step_size="yes"), "learn_step_size must be True or False"),
    (dict(learn_step_size=True, post_steps=0), "post_steps >= 1"),
    (dict(entropy_estimator="hutch"), "entropy_estimator must be"),
    (dict(entropy_terms=0), "entropy_terms must be an int >= 1"),
    (dict(lr_step_size=-1.0), "lr_step_size must be a finite number > 0"),
])
def test_bad_config_is_refused(override, match):
    with pytest.raises(ValueError, match=match):
        resolve_config("default", **override)


def test_bad_chain_arguments_are_refused():
    _, energy = gaussian_target()
    with pytest.raises(ValueError, match="entropy estimator must be one of"):
        short_run_chain(energy, start(2), torch.tensor([0.1, 0.1], dtype=torch.float64), n_steps=1, estimator="x")
    with pytest.raises(ValueError, match="one value per layer"):
        short_run_chain(energy, start(2), torch.tensor([0.1], dtype=torch.float64), n_steps=1)
    with pytest.raises(ValueError, match="step_size must be finite and > 0"):
        short_run_chain(energy, start(2), torch.tensor([0.1, -0.1], dtype=torch.float64), n_steps=1)
    with pytest.raises(ValueError, match="finite and > 0"):
        StepSizes([0.1, 0.0], 2)
