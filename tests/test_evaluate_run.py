"""Evaluation: AUPRC, outlier scores, reconstruction error, the held-out-class protocol's files."""
import json

import pytest
import torch

import jebm
import jebm_kernels as jk
from jebm import eval as ev
from jebm.data import load_dataset

TINY = dict(dims=[6, 3], ebm_hidden=[16], gauss_hidden=[16], dec_hidden=[32], infer_hidden=[32],
            infer_head_hidden=[16], prior_steps=5, post_steps=5, batch_size=50, sample_every=0, n_samples=9)


@pytest.fixture(scope="module")
def mle_run(tmp_path_factory):
    return jebm.train(iters=60, out_dir=tmp_path_factory.mktemp("ev") / "mle", progress=False, exclude_class=1,
                      **{**TINY, "post_steps": 10})


def test_auprc_is_average_precision():
    # ranked: pos (P=1/1), neg, pos (P=2/3), neg  ->  AP = (1 + 2/3) / 2
    ap = ev.auprc(torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.tensor([1, 0, 1, 0]))
    assert ap == pytest.approx(5 / 6)
    assert ev.auprc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([True, False, False])) == 1.0
    with pytest.raises(ValueError, match="both positives"):
        ev.auprc(torch.tensor([1.0, 2.0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="NaN or inf"):
        ev.auprc(torch.tensor([float("nan"), 2.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="1-D of one length"):
        ev.auprc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1]))


def test_outlier_score_is_the_negative_log_joint_at_a_posterior_sample(mle_run):
    run = jebm.load_run(mle_run.run_dir)
    x = load_dataset("digits", split="test").images[:20]
    s = ev.outlier_scores(run.model, x, seed=4)
    assert s.shape == (20,) and torch.equal(s, ev.outlier_scores(run.model, x, seed=4))
    z = run.model.sample_posterior(x, generator=ev._gen(4))
    torch.testing.assert_close(s, run.model.neg_log_joint(x, z).detach())


def test_trained_model_scores_inverted_digits_as_anomalous(mle_run):
    # Inverted digits (white background) are far from anything the model was trained on: even a
    # briefly trained model must separate them almost perfectly.
    run = jebm.load_run(mle_run.run_dir)
    digits = load_dataset("digits", split="test").images[:100]
    s_digits = ev.outlier_scores(run.model, digits)
    s_inverted = ev.outlier_scores(run.model, -digits)
    assert float(s_inverted.mean()) > float(s_digits.mean())
    labels = torch.cat([torch.zeros(100), torch.ones(100)])
    assert ev.auprc(torch.cat([s_digits, s_inverted]), labels) > 0.95


def test_evaluate_run_writes_json_pngs_and_the_held_out_auprc(mle_run, tmp_path):
    res = ev.evaluate_run(mle_run.run_dir, tmp_path, n_test=120, n_hier=4)
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk["reconstruction"] == res["reconstruction"]
    assert res["outlier"]["held_out_class"] == 1 and 0 <= res["outlier"]["auprc"] <= 1
    assert 0 < res["reconstruction"]["mse_per_pixel"] < 4
    assert (tmp_path / "hierarchical.png").is_file() and (tmp_path / "eval_samples.png").is_file()


def test_variational_runs_are_evaluated_with_their_inference_model(tmp_path):
    res = jebm.train(scheme="variational", iters=5, out_dir=tmp_path / "v", progress=False, **TINY)
    run = jebm.load_run(res.run_dir)
    x = load_dataset("digits", split="test").images[:30]
    amort = ev.reconstruction_error(run.model, x, infer=run.infer, seed=1)
    lang = ev.reconstruction_error(run.model, x, infer=run.infer, method="langevin", seed=1)
    assert amort["n_images"] == 30 and amort != lang
    assert ev.evaluate_run(res.run_dir, tmp_path / "e", n_test=30, n_hier=3)["posterior"] == "amortised"
    with pytest.raises(ValueError, match="needs the inference model"):
        ev.reconstruction_error(run.model, x, method="amortised")
    with pytest.raises(ValueError, match=r"images must have shape \[N, 1, 8, 8\]"):
        ev.reconstruction_error(run.model, torch.zeros(3, 3, 8, 8))


def test_outlier_experiment_writes_json_and_png_and_reuses_finished_runs(tmp_path):
    kw = dict(classes=[1], seeds=[0, 1], iters=4, out_dir=tmp_path / "o", progress=False, **TINY)
    summary = ev.outlier_experiment(**kw)
    on_disk = json.loads((tmp_path / "o" / "outlier.json").read_text())
    assert on_disk["per_class"]["1"]["ebm"]["n"] == 2 and len(on_disk["runs"]) == 2
    for r in summary["runs"]:
        assert 0 <= r["ebm_auprc"] <= 1 and 0 <= r["gauss_auprc"] <= 1
        assert r["ebm_iterations"] == r["gauss_iterations"] == 4  # the same budget for both priors
        cfg = json.loads((tmp_path / "o" / f"c1_s{r['seed']}_gauss" / "config.json").read_text())
        assert cfg["ebm"] is False and cfg["exclude_class"] == 1
    assert (tmp_path / "o" / "outlier.png").is_file()
    ckpt = tmp_path / "o" / "c1_s0_ebm" / "checkpoint.pt"
    before = ckpt.stat().st_mtime_ns
    again = ev.outlier_experiment(**kw)
    assert ckpt.stat().st_mtime_ns == before  # finished runs are reused, not retrained
    assert again["per_class"] == summary["per_class"]


def test_eval_functions_reject_bad_arguments(mle_run, tmp_path):
    with pytest.raises(TypeError, match="run folder"):
        ev.sample_images(42)
    with pytest.raises(ValueError, match="seed must be"):
        ev.sample_images(mle_run.run_dir, tmp_path / "s.png", seed=-1)
    with pytest.raises(ValueError, match="classes must be"):
        ev.outlier_experiment(classes=[], out_dir=tmp_path)
    with pytest.raises(TypeError, match="sets ebm and exclude_class itself"):
        ev.outlier_experiment(classes=[1], out_dir=tmp_path, ebm=False)
    with pytest.raises(ValueError, match="not a jebm checkpoint|not a readable jebm checkpoint"):
        bad = tmp_path / "bad.pt"
        torch.save({"hello": torch.zeros(1)}, bad)
        jebm.load_run(bad)
