"""Evaluating one trained run (``jebm.evaluate.run_eval``): eval.json, the PNG grids and the held-out
AUPRC; variational runs evaluated with their inference model; bad arguments refused."""
import json

import pytest
import torch

import jebm
from jebm.data import load_dataset
from jebm.evaluate.outlier import outlier_experiment
from jebm.evaluate.run_eval import evaluate_run, sample_images
from jebm.evaluate.scores import reconstruction_error

TINY = dict(dims=[6, 3], ebm_hidden=[16], gauss_hidden=[16], dec_hidden=[32], infer_hidden=[32],
            infer_head_hidden=[16], prior_steps=5, post_steps=5, batch_size=50, sample_every=0, n_samples=9)


@pytest.fixture(scope="module")
def mle_run(tmp_path_factory):
    return jebm.train(iters=60, out_dir=tmp_path_factory.mktemp("ev") / "mle", progress=False, exclude_class=1,
                      **{**TINY, "post_steps": 10})


def test_evaluate_run_writes_json_pngs_and_the_held_out_auprc(mle_run, tmp_path):
    res = evaluate_run(mle_run.run_dir, tmp_path, n_test=120, n_hier=4)
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk["reconstruction"] == res["reconstruction"]
    assert res["outlier"]["held_out_class"] == 1 and 0 <= res["outlier"]["auprc"] <= 1
    assert 0 < res["reconstruction"]["mse_per_pixel"] < 4
    assert (tmp_path / "hierarchical.png").is_file() and (tmp_path / "eval_samples.png").is_file()


def test_variational_runs_are_evaluated_with_their_inference_model(tmp_path):
    res = jebm.train(scheme="variational", iters=5, out_dir=tmp_path / "v", progress=False, **TINY)
    run = jebm.load_run(res.run_dir)
    x = load_dataset("digits", split="test").images[:30]
    amort = reconstruction_error(run.model, x, infer=run.infer, seed=1)
    lang = reconstruction_error(run.model, x, infer=run.infer, method="langevin", seed=1)
    assert amort["n_images"] == 30 and amort != lang
    assert evaluate_run(res.run_dir, tmp_path / "e", n_test=30, n_hier=3)["posterior"] == "amortised"
    with pytest.raises(ValueError, match="needs the inference model"):
        reconstruction_error(run.model, x, method="amortised")
    with pytest.raises(ValueError, match=r"images must have shape \[N, 1, 8, 8\]"):
        reconstruction_error(run.model, torch.zeros(3, 3, 8, 8))


def test_eval_functions_reject_bad_arguments(mle_run, tmp_path):
    with pytest.raises(TypeError, match="run folder"):
        sample_images(42)
    with pytest.raises(ValueError, match="seed must be"):
        sample_images(mle_run.run_dir, tmp_path / "s.png", seed=-1)
    with pytest.raises(ValueError, match="classes must be"):
        outlier_experiment(classes=[], out_dir=tmp_path)
    with pytest.raises(TypeError, match="sets ebm and exclude_class itself"):
        outlier_experiment(classes=[1], out_dir=tmp_path, ebm=False)
    with pytest.raises(ValueError, match="not a jebm checkpoint|not a readable jebm checkpoint"):
        bad = tmp_path / "bad.pt"
        torch.save({"hello": torch.zeros(1)}, bad)
        jebm.load_run(bad)
