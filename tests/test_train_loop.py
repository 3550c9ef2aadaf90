"""The training loop (``jebm.train.loop``): each scheme lowers its loss, the Gaussian baseline runs
no prior chain, divergence stops with a clear message and a good checkpoint, bad arguments are
refused, and the trainer's persistent prior chains continue across iterations. (Resume:
test_train_resume.py; checkpoint files: test_train_checkpoint.py; data order:
test_train_data_order.py.)"""
import json

import pytest
import torch

import jebm
from jebm.train.checkpoint import load_checkpoint

# Tiny but real: two latent layers, short chains; a few hundredths of a second per iteration.
TINY = dict(dims=[8, 4], ebm_hidden=[32], gauss_hidden=[32], dec_hidden=[64], infer_hidden=[64],
            infer_head_hidden=[32], prior_steps=8, post_steps=8, batch_size=50, sample_every=0, n_samples=16)


def read_metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]


def window_means(lines, key, k=10):
    vals = [l[key] for l in lines]
    return sum(vals[:k]) / k, sum(vals[-k:]) / k


@pytest.mark.parametrize("scheme,key", [("mle", "loss_recon"), ("variational", "neg_elbo")])
def test_short_training_lowers_the_loss(tmp_path, scheme, key):
    # the learning rates of a few-hundred-iteration run (the defaults, 3e-4, are for 2000 iterations)
    res = jebm.train(scheme=scheme, iters=60, out_dir=tmp_path / scheme, progress=False, lr_gen=1e-3, lr_infer=1e-3,
                     **TINY)
    lines = read_metrics(res.run_dir)
    assert [l["iter"] for l in lines] == list(range(1, 61))
    first, last = window_means(lines, key)
    # The decoder starts from noise; 60 iterations remove well over a third of the error.
    assert last < 0.65 * first, f"{key}: first-10 mean {first:.2f}, last-10 mean {last:.2f}"
    assert all(l["sec_per_iter"] > 0 for l in lines)
    if scheme == "mle":
        assert {"loss_beta", "loss_ebm", "F_pos", "F_neg", "logp_neg"} <= set(lines[-1])
    else:
        assert {"kl", "loss_ebm", "F_pos", "F_neg"} <= set(lines[-1])
    assert res.iterations == 60 and res.checkpoint.is_file()
    assert res.samples_png.is_file() and res.reconstructions_png.is_file()
    assert (res.run_dir / "loss_curves.png").is_file() and (res.run_dir / "config.json").is_file()


def test_gaussian_baseline_trains_without_a_prior_chain(tmp_path):
    res = jebm.train(iters=20, out_dir=tmp_path / "g", progress=False, ebm=False, **TINY)
    lines = read_metrics(res.run_dir)
    assert "loss_ebm" not in lines[-1] and "F_neg" not in lines[-1]
    ck = load_checkpoint(res.checkpoint)
    assert set(ck["optimizers"]) == {"gen"}


def test_divergence_at_the_first_iteration_keeps_the_initial_checkpoint(tmp_path):
    # A prior step of 1e4 overflows the chain at once: the energies become inf / NaN.
    with pytest.raises(jebm.TrainingDiverged, match="diverged at iteration 1:") as info:
        jebm.train(iters=5, out_dir=tmp_path / "d", progress=False, **{**TINY, "prior_step_size": 1e4})
    assert info.value.iteration == 1 and isinstance(info.value, RuntimeError)
    ck = load_checkpoint(info.value.checkpoint)
    assert ck["iteration"] == 0
    assert all(bool(torch.isfinite(v).all()) for v in ck["model"].values())


def test_divergence_later_stops_with_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = jebm.JEBM.sample_posterior

    def poisoned(self, x, **kw):
        z = real(self, x, **kw)
        calls["n"] += 1
        if calls["n"] == 5:  # the posterior chain of iteration 5 blows up
            z = [torch.full_like(t, float("nan")) for t in z]
        return z

    monkeypatch.setattr(jebm.JEBM, "sample_posterior", poisoned)
    run = tmp_path / "d"
    with pytest.raises(jebm.TrainingDiverged) as info:
        jebm.train(iters=10, out_dir=run, progress=False, ckpt_every=2, **TINY)
    msg = str(info.value)
    assert "diverged at iteration 5" in msg and "loss_recon" in msg and "iteration 4" in msg
    assert str(run / "checkpoint.pt") in msg
    ck = load_checkpoint(run)
    assert ck["iteration"] == 4 and all(bool(torch.isfinite(v).all()) for v in ck["model"].values())
    last = read_metrics(run)[-1]
    assert last["iter"] == 5 and last["diverged"] == "loss_recon"
    # Resuming from the good checkpoint continues (with the poison gone it trains on).
    monkeypatch.undo()
    res = jebm.train(iters=6, out_dir=run, resume=True, progress=False)
    assert res.iterations == 6


def test_train_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        jebm.train(dataset="cifar", iters=1, out_dir=tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="scheme must be"):
        jebm.train(scheme="vae", iters=1, out_dir=tmp_path / "b", progress=False)
    with pytest.raises(TypeError, match="unknown config key"):
        jebm.train(iters=1, out_dir=tmp_path / "c", progress=False, learning_rate=1.0)
    with pytest.raises(ValueError, match="iters must be an int"):
        jebm.train(iters=-3, out_dir=tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match="backend"):
        jebm.train(iters=1, out_dir=tmp_path / "e", progress=False, backend="gpu")
    with pytest.raises(ValueError, match="npz"):
        jebm.train(dataset="npz", data_root=tmp_path / "missing.npz", iters=1, out_dir=tmp_path / "f", progress=False)


def test_persistent_prior_chains_continue_across_iterations(monkeypatch):
    import jebm_kernels as jk
    from jebm.model import JEBM
    from jebm.train.trainer import PriorChains
    torch.manual_seed(0)
    m = JEBM((1, 8, 8), [4, 2], ebm_hidden=[8], gauss_hidden=[8], dec_hidden=[8], prior_steps=2)
    inits = []
    real = JEBM.sample_prior

    def spy(self, n, **kw):
        inits.append(kw.get("init"))
        return real(self, n, **kw)

    monkeypatch.setattr(JEBM, "sample_prior", spy)
    g = jk.PhiloxGenerator(0)
    chains = PriorChains(persistent=True)
    chains.sample(m, 5, generator=g, backend="reference")
    first_state = chains.state
    chains.sample(m, 5, generator=g, backend="reference")
    assert inits[0] is None and inits[1] is first_state and chains.state is not first_state
    short_run = PriorChains(persistent=False)
    short_run.sample(m, 5, generator=g, backend="reference")
    short_run.sample(m, 5, generator=g, backend="reference")
    assert inits[2] is None and inits[3] is None and short_run.state_dict() == {}
