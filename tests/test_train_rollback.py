"""Rollback on divergence (``rollback_retries``): reload the last good checkpoint and retry with
smaller learning rates and Langevin step sizes (the trainer's, ``jebm.train.run_state``), give up
after the retries, and the settings' checks."""
import json

import torch

import jebm
from jebm.train.checkpoint import load_checkpoint

CFG = dict(dims=[4, 2], ebm_hidden=[8], gauss_hidden=[8], dec_hidden=[16], prior_steps=4, post_steps=4,
           batch_size=20, sample_every=0, n_samples=4, persistent_prior=True, seed=4)


def read_lines(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]


def test_rollback_reloads_the_last_good_state_and_retries_with_smaller_steps(tmp_path, monkeypatch):
    from jebm.model import JEBM
    calls = {"n": 0}
    real = JEBM.sample_posterior

    def poisoned(self, x, **kw):
        z = real(self, x, **kw)
        calls["n"] += 1
        if calls["n"] == 5:  # iteration 5's posterior chain blows up, once
            z = [torch.full_like(t, float("nan")) for t in z]
        return z

    monkeypatch.setattr(JEBM, "sample_posterior", poisoned)
    run = tmp_path / "rb"
    res = jebm.train(iters=8, out_dir=run, progress=False, checkpoint_every=2, rollback_retries=2,
                     rollback_lr_factor=0.5, rollback_step_factor=0.25, **CFG)
    assert res.iterations == 8 and res.rollbacks == 1
    lines = read_lines(run)
    event = next(l for l in lines if "rollback" in l)
    assert event == {"iter": 4, "rollback": 1, "diverged_at": 5, "diverged": "loss_recon", "lr_scale": 0.5,
                     "step_scale": 0.25}
    assert [l["iter"] for l in lines if "rollback" not in l] == list(range(1, 9))  # 5 was redone, logged once
    assert all(l["lr_scale"] == 1.0 for l in lines if "sec_per_iter" in l and l["iter"] <= 4)
    assert all(l["lr_scale"] == 0.5 and l["step_scale"] == 0.25 for l in lines if "sec_per_iter" in l and l["iter"] > 4)
    ck = load_checkpoint(res.checkpoint)
    assert ck["rollback"] == {"count": 1, "lr_scale": 0.5, "step_scale": 0.25}
    assert ck["optimizers"]["gen"]["param_groups"][0]["lr"] == 0.5 * res.config["lr_gen"]
    # a resumed run keeps the smaller settings
    monkeypatch.undo()
    more = jebm.train(iters=9, out_dir=run, resume=True, progress=False)
    assert read_lines(run)[-1]["lr_scale"] == 0.5 and more.rollbacks == 1


def test_rollback_gives_up_after_its_retries_with_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "rb"
    # A prior step of 1e4 overflows at once; halving it twice does not help.
    try:
        jebm.train(iters=4, out_dir=run, progress=False, rollback_retries=2, **{**CFG, "prior_step_size": 1e4})
    except jebm.TrainingDiverged as exc:
        assert exc.iteration == 1 and "diverged at iteration 1" in str(exc)
    else:
        raise AssertionError("a run that keeps diverging must raise TrainingDiverged")
    events = [l for l in read_lines(run) if "rollback" in l]
    assert [(e["rollback"], e["step_scale"]) for e in events] == [(1, 0.5), (2, 0.25)]
    assert load_checkpoint(run)["iteration"] == 0


def test_rollback_settings_are_checked():
    import pytest
    with pytest.raises(ValueError, match="rollback_lr_factor must be a number in"):
        jebm.resolve_config(rollback_lr_factor=0)
    with pytest.raises(ValueError, match="would retry the same"):
        jebm.resolve_config(rollback_retries=1, rollback_lr_factor=1, rollback_step_factor=1)
    with pytest.raises(ValueError, match="rollback_retries must be an int"):
        jebm.resolve_config(rollback_retries=-1)
    with pytest.raises(ValueError, match="name the same setting"):
        jebm.train(iters=1, out_dir="unused", checkpoint_every=2, ckpt_every=3, progress=False)
    from jebm.cli import build_parser
    a = build_parser().parse_args(["train", "--checkpoint-every", "5", "--rollback", "2"])
    assert (a.checkpoint_every, a.rollback) == (5, 2)
