"""The ``jebm`` command: train / sample / eval write their files; bad input gives a clear message
and a non-zero exit code instead of a traceback."""
import json
import subprocess
import sys

import pytest
import torch

from jebm.cli import main, parse_set

TINY = ["--set", "dims=[6,3]", "--set", "ebm_hidden=[16]", "--set", "gauss_hidden=[16]", "--set", "dec_hidden=[32]",
        "--set", "prior_steps=4", "--set", "post_steps=4", "--set", "batch_size=40", "--set", "n_samples=9",
        "--set", "sample_every=3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--dataset", "digits", "--scheme", "mle", "--iters", "6", "--out", str(out),
                 "--backend", "reference", "--seed", "1", "--preset", "default", "--no-progress", *TINY]) == 0
    return out


def test_train_writes_metrics_pngs_and_checkpoint(trained, capsys):
    lines = [json.loads(l) for l in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [l["iter"] for l in lines] == [1, 2, 3, 4, 5, 6]
    assert all(l["sec_per_iter"] > 0 and "loss_recon" in l and "loss_ebm" in l for l in lines)
    for name in ("checkpoint.pt", "config.json", "samples.png", "reconstructions.png", "samples_000003.png",
                 "reconstructions_000003.png", "loss_curves.png"):
        assert (trained / name).is_file(), name
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["dims"] == [6, 3] and cfg["seed"] == 1 and cfg["backend"] == "reference"
    assert torch.load(trained / "checkpoint.pt", weights_only=True)["iteration"] == 6


def test_train_resume_continues_the_run(trained, tmp_path, capsys):
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    assert main(["train", "--out", str(run), "--resume", "--iters", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "iterations:  8" in out and "final metrics" in out
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 8


def test_sample_writes_a_grid(trained, tmp_path, capsys):
    png = tmp_path / "s.png"
    assert main(["sample", str(trained), "--n", "12", "--out", str(png), "--backend", "reference"]) == 0
    assert png.is_file() and str(png) in capsys.readouterr().out
    # a checkpoint path works as well as the run folder
    assert main(["sample", str(trained / "checkpoint.pt"), "--n", "4", "--out", str(tmp_path / "t.png")]) == 0


def test_eval_writes_json_and_pngs(trained, tmp_path):
    out = tmp_path / "ev"
    assert main(["eval", str(trained), "--out", str(out), "--n-test", "60", "--n-hier", "5"]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["n_test"] == 60 and res["posterior"] == "langevin" and res["iteration"] == 6
    assert 0 < res["reconstruction"]["mse_per_pixel"] < 4  # pixels in [-1, 1]: the error is at most 4
    assert res["hierarchical_rows"] == ["z_2", "z_1"]
    for name in ("hierarchical.png", "eval_samples.png", "eval_reconstructions.png"):
        assert (out / name).is_file()


def test_python_dash_m_jebm_is_the_same_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "jebm", "train", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for flag in ("--dataset", "--data-root", "--scheme", "--iters", "--out", "--backend", "--seed", "--resume",
                 "--preset"):
        assert flag in r.stdout


@pytest.mark.parametrize("argv,message", [
    (["train", "--iters", "2", "--set", "nope=1"], "unknown config key"),
    (["train", "--iters", "2", "--set", "dims"], "--set expects KEY=VALUE"),
    (["train", "--iters", "2", "--set", "space=w"], "space must be"),
    (["train", "--iters", "2", "--dataset", "npz", "--data-root", "/nonexistent/x.npz"], "npz"),
    (["sample", "/nonexistent/run"], "no such run folder or checkpoint"),
    (["sample", "RUN", "--n", "0"], "n must be an int >= 1"),
    (["eval"], "needs a run folder"),
    (["eval", "--outlier", "--classes", "11", "--iters", "1"], "classes [11] do not occur"),
])
def test_bad_input_exits_with_a_clear_message(argv, message, trained, tmp_path, capsys):
    argv = [str(trained) if a == "RUN" else a for a in argv]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "bad"), "--no-progress"]
    if "--outlier" in argv:
        argv += ["--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_argparse_rejects_unknown_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--scheme", "vae"])
    assert e.value.code == 2 and "invalid choice: 'vae'" in capsys.readouterr().err


def test_parse_set_reads_literals_and_strings():
    assert parse_set(["dims=[32, 16]", "space=z", "joint_hidden=None", "lr-gen=1e-3", "ebm=False"]) == {
        "dims": [32, 16], "space": "z", "joint_hidden": None, "lr_gen": 1e-3, "ebm": False}


def test_divergence_exits_1_with_the_iteration(tmp_path, capsys):
    argv = ["train", "--iters", "3", "--out", str(tmp_path / "d"), "--no-progress", *TINY,
            "--set", "prior_step_size=1e4"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "diverged at iteration 1" in err and "checkpoint" in err


def test_eval_outlier_runs_the_protocol_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["eval", "--outlier", "--classes", "4", "--seeds", "0", "--iters", "2", "--out", str(out),
                 "--no-progress", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "held-out 4: EBM prior" in printed and "Gaussian prior" in printed and "(2 iterations)" in printed
    summary = json.loads((out / "outlier.json").read_text())
    assert summary["iters"] == 2 and summary["classes"] == [4] and (out / "outlier.png").is_file()
