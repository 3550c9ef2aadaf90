"""The held-out-class outlier protocol (``jebm.evaluate.outlier``): outlier.json and outlier.png
are written, the three models get the same budget, finished runs are reused, the test set is the
papers' (inliers' test split plus every image of the held-out class), the validation protocol never
reads the test split, a diverging run is recorded in its cell and the table goes on."""
import json

import pytest
import torch

from jebm.data import load_dataset
from jebm.evaluate.outlier import (
    MODELS,
    OUTLIER_DEFAULTS,
    format_outlier_table,
    model_overrides,
    outlier_experiment,
    outlier_settings,
    outlier_test_set,
)
from jebm.evaluate.report import write_report
from jebm.train.checkpoint import kept_checkpoints, save_checkpoint
from jebm.train.presets import resolve_config

TINY = dict(dims=[6, 3], ebm_hidden=[16], gauss_hidden=[16], dec_hidden=[32], infer_hidden=[32],
            infer_head_hidden=[16], prior_steps=5, post_steps=5, batch_size=50, sample_every=0, n_samples=9)


@pytest.mark.slow
def test_outlier_experiment_writes_json_and_png_and_reuses_finished_runs(tmp_path):
    kw = dict(classes=[1], seeds=[0, 1], iters=4, out_dir=tmp_path / "o", progress=False, **TINY)
    summary = outlier_experiment(**kw)
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
    again = outlier_experiment(**kw)
    assert ckpt.stat().st_mtime_ns == before  # finished runs are reused, not retrained
    assert again["per_class"] == summary["per_class"]
    # the three models, AUROC, -F alone (none for the Gaussian prior), the mean over classes
    assert summary["models"] == list(MODELS) and summary["n_chains"] == 8
    for r in summary["runs"]:
        assert r["lebm_iterations"] == 4 and 0 <= r["lebm_auroc"] <= 1 and 0 <= r["ebm_negF_auprc"] <= 1
        assert r["gauss_negF_auprc"] is None
        lebm = json.loads((tmp_path / "o" / f"c1_s{r['seed']}_lebm" / "config.json").read_text())
        assert lebm["dims"] == [6] and lebm["ebm"] is True and lebm["exclude_class"] == 1
    assert summary["mean_of_class_means"]["ebm"]["mean"] == pytest.approx(summary["per_class"]["1"]["ebm"]["mean"])
    text = format_outlier_table(summary)
    assert "held-out 1: EBM prior" in text and "LEBM" in text and "AUROC" in text and "-F(z) alone" in text


def test_the_protocol_test_set_is_the_papers():
    images, positive = outlier_test_set("digits", None, 4)
    test = load_dataset("digits", split="test")
    every_4 = load_dataset("digits", split="all", only_class=4)
    # the inliers' test split, then every image of the held-out class (train split included)
    assert int(positive.sum()) == len(every_4) and int((~positive).sum()) == int((test.labels != 4).sum())
    assert torch.equal(images[positive], every_4.images)
    assert 0.3 < float(positive.double().mean()) < 0.45  # about 36% positives, as on MNIST
    # validation: inside the train split only (no test image), the held-out class's train images
    v_images, v_positive = outlier_test_set("digits", None, 4, validation=True)
    train = load_dataset("digits", split="train")
    assert int(v_positive.sum()) == int((train.labels == 4).sum())
    train_rows = {tuple(r.tolist()) for r in train.images.reshape(len(train), -1)}
    assert all(tuple(r.tolist()) in train_rows for r in v_images.reshape(len(v_images), -1))
    assert int((~v_positive).sum()) == len(load_dataset("digits", validation="val", exclude_class=4))
    # and the validation runs train on the rest of the train split ("fit")
    assert resolve_config(validation=True)["validation"] is True


def test_a_diverging_run_is_recorded_and_the_table_goes_on(tmp_path):
    # the EBM models' prior chains blow up at once (step 1e4); the Gaussian prior samples ancestrally
    s = outlier_experiment(classes=[1], seeds=[0], iters=3, out_dir=tmp_path / "d", progress=False,
                           n_chains=2, **{**TINY, "prior_step_size": 1e4})
    row = s["runs"][0]
    assert "diverged at iteration 1" in row["ebm_diverged"] and "lebm_diverged" in row
    assert 0 <= row["gauss_auprc"] <= 1 and "ebm_auprc" not in row
    assert s["per_class"]["1"]["ebm"]["diverged"] == 1 and s["per_class"]["1"]["ebm"]["mean"] is None
    assert s["per_class"]["1"]["gauss"]["n"] == 1 and (tmp_path / "d" / "outlier.png").is_file()
    assert "diverged" in format_outlier_table(s)
    # the report's section shows it too
    html = write_report(tmp_path / "d" / "c1_s0_gauss", outlier=tmp_path / "d" / "outlier.json").read_text()
    assert "LEBM (baseline)" in html and "diverged" in html


def test_models_and_arguments():
    cfg = resolve_config(dims=[16, 8], ebm_hidden=[[64, 64], [32]], joint_hidden=[8])
    assert model_overrides("lebm", cfg) == {"ebm": True, "dims": [16], "ebm_hidden": [[64, 64]], "joint_hidden": None}
    assert model_overrides("gauss", cfg) == {"ebm": False}
    with pytest.raises(ValueError, match="unknown model"):
        model_overrides("vae", cfg)
    with pytest.raises(ValueError, match="models must be distinct names"):
        outlier_experiment(classes=[1], models=["ebm", "ebm"])
    with pytest.raises(ValueError, match="n_chains must be an int >= 1"):
        outlier_experiment(classes=[1], n_chains=0)
    with pytest.raises(ValueError, match="jobs must be an int >= 1"):
        outlier_experiment(classes=[1], jobs=0)


def test_settings_take_the_data_sets_defaults_and_given_values_win():
    generic = outlier_settings("digits")
    assert generic["score_sigma_x"] == "model" and generic["score_prior"] == "U"  # the exact -log p(x, z)
    assert generic["checkpoint_average"] == 1 and generic["refine_steps"] == 0
    mn = outlier_settings("mnist5k")
    for k, v in OUTLIER_DEFAULTS["mnist5k"].items():
        assert mn[k] == ({**generic["train"], **v} if k == "train" else v)
    given = outlier_settings("mnist5k", score_sigma_x="model", score_prior="U", train={"lr_ebm": 1e-4})
    assert given["score_sigma_x"] == "model" and given["score_prior"] == "U" and given["train"]["lr_ebm"] == 1e-4
    with pytest.raises(TypeError, match="unknown outlier setting"):
        outlier_settings("digits", sigma=1.0)
    with pytest.raises(ValueError, match="score_prior must be one of"):
        outlier_experiment(classes=[1], score_prior="eps")
    with pytest.raises(ValueError, match="score_sigma_x must be a number > 0 or 'model'"):
        outlier_experiment(classes=[1], score_sigma_x=-1.0)
    with pytest.raises(ValueError, match="checkpoint_average must be an int >= 1"):
        outlier_experiment(classes=[1], checkpoint_average=0)
    with pytest.raises(TypeError, match="checkpoint_average=N"):
        outlier_experiment(classes=[1], keep_checkpoints=3)


def test_keep_checkpoints_keeps_the_newest_n_and_none_by_default(tmp_path):
    obj = {"format_version": 2, "image_shape": [1, 8, 8], "model": {"w": torch.zeros(2)}, "optimizers": {},
           "philox": [1, 0]}
    for it in range(0, 6):
        save_checkpoint({**obj, "config": {"keep_checkpoints": 3}, "iteration": it}, tmp_path / "a" / "checkpoint.pt")
        save_checkpoint({**obj, "config": {"keep_checkpoints": 0}, "iteration": it}, tmp_path / "b" / "checkpoint.pt")
    kept = kept_checkpoints(tmp_path / "a")
    assert [p.name for p in kept] == ["checkpoint_0000003.pt", "checkpoint_0000004.pt", "checkpoint_0000005.pt"]
    assert torch.load(kept[-1], weights_only=True)["iteration"] == 5
    assert kept_checkpoints(tmp_path / "b") == [] and resolve_config()["keep_checkpoints"] == 0


def test_score_options_and_the_checkpoint_average(tmp_path):
    s = outlier_experiment(classes=[1], seeds=[0], iters=6, out_dir=tmp_path / "o", progress=False, n_chains=1,
                           models=["ebm", "gauss"], score_sigma_x=2.0, score_prior="F", checkpoint_average=3,
                           **{**TINY, "ckpt_every": 2})
    assert s["score"]["exact"] is False and s["score"]["formula"].endswith("- F(z)")
    assert "not the exact" in s["score"]["note"]
    row = s["runs"][0]
    # each part beside the score; the Gaussian prior has no F, so its score ranks as its reconstruction error
    for k in ("auprc", "auroc", "joint_auprc", "joint_auroc", "recon_auprc", "U_auprc", "U_auroc", "negF_auprc"):
        assert 0 <= row[f"ebm_{k}"] <= 1
    assert row["gauss_negF_auprc"] is None and row["gauss_auprc"] == row["gauss_recon_auprc"]
    # the last 3 checkpoints, each scored; the final one is the run's own score
    assert row["ebm_ckpt_iterations"] == [2, 4, 6] and row["ebm_ckpt_auprc"][-1] == row["ebm_auprc"]
    cell = s["per_class"]["1"]["ebm"]
    assert cell["ckpt_n"] == 3 and cell["ckpt_auprc"]["mean"] == pytest.approx(sum(row["ebm_ckpt_auprc"]) / 3)
    cfg = json.loads((tmp_path / "o" / "c1_s0_ebm" / "config.json").read_text())
    assert cfg["keep_checkpoints"] == 3
    text = format_outlier_table(s)
    assert "not the exact -log p(x, z)" in text and "last 3 checkpoints" in text and "joint" in text
    html = write_report(tmp_path / "o" / "c1_s0_ebm", outlier=tmp_path / "o" / "outlier.json").read_text()
    assert "exact -log p(x, z)" in html and "-F(z) alone" in html and "last 3 checkpoints" in html
