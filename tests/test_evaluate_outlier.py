"""The held-out-class outlier protocol (``jebm.evaluate.outlier``): outlier.json and outlier.png
are written, both priors get the same budget, finished runs are reused."""
import json

from jebm.evaluate.outlier import outlier_experiment

TINY = dict(dims=[6, 3], ebm_hidden=[16], gauss_hidden=[16], dec_hidden=[32], infer_hidden=[32],
            infer_head_hidden=[16], prior_steps=5, post_steps=5, batch_size=50, sample_every=0, n_samples=9)


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


