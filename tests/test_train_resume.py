"""Resume (``jebm.train(resume=True)``): a checkpoint round-trips through ``load_run``, a resumed run
equals an uninterrupted one bit for bit, metrics logged after the checkpoint are dropped, resume
mistakes are reported; and crash-safe resume: a `jebm train` process is killed with SIGKILL at
several points, among them in the middle of a checkpoint write, and resumed each time; no
checkpoint on disk is ever corrupt, and the final parameters, optimiser state, Philox offset and
logged losses equal those of an uninterrupted run bit for bit (CPU, the default auto backend; both
reference and cpu backends are deterministic).

The kill points are made deterministic: the process announces, through a signal file, that it
has reached the point and then sleeps there until the test kills it:
1. while torch.save is writing iteration 3's checkpoint (half the bytes in the temporary file);
2. after iteration 6's checkpoint is written and fsync'ed, before the renames
   (the test-only hook JEBM_TEST_PAUSE_CHECKPOINT of jebm.train.checkpoint);
3. inside the update of iteration 8 (between two checkpoints: its chains sampled, no step taken);
then checkpoint.pt is damaged on disk, and the last resume must fall back to checkpoint.prev.pt.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import child_env

import jebm
from jebm.train.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME, load_checkpoint

ITERS = 12
CFG = dict(dims=[4, 2], ebm_hidden=[8], gauss_hidden=[8], dec_hidden=[16], prior_steps=4, post_steps=4,
           batch_size=20, sample_every=0, n_samples=4, persistent_prior=True, seed=4)

# A driver for the killed process: it installs the pause for its kill point, then runs the CLI.
DRIVER = r'''
import io, os, sys, time
from pathlib import Path
mode, arg, signal_file, *cli = sys.argv[1:]

def pause():
    Path(signal_file).write_text(str(os.getpid()))
    time.sleep(600)

if mode == "in_save":  # inside torch.save of iteration `arg`'s checkpoint, half of it written
    import torch
    real_save = torch.save
    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("iteration") == int(arg):
            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            pause()
        return real_save(obj, f, *a, **k)
    torch.save = save
elif mode == "in_update":  # inside the `arg`-th update this process makes
    from jebm.train.mle import MLETrainer
    real_apply, calls = MLETrainer.apply, []
    def apply(self, total):
        calls.append(1)
        if len(calls) == int(arg):
            pause()
        return real_apply(self, total)
    MLETrainer.apply = apply
from jebm.cli import main
sys.exit(main(cli))
'''


def cli_args(out: Path, resume: bool) -> list[str]:
    sets = [a for k, v in CFG.items() if k != "seed" for a in ("--set", f"{k}={v!r}")]
    return ["train", "--out", str(out), "--iters", str(ITERS), "--checkpoint-every", "3", "--seed", str(CFG["seed"]),
            "--no-progress", *sets] + (["--resume"] if resume else [])


def run_and_kill(tmp_path: Path, out: Path, mode: str, arg, *, resume: bool, env=None) -> None:
    """Start the driver, wait until it reports it reached its kill point, SIGKILL it."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    flag = tmp_path / f"reached-{mode}-{arg}"
    proc = subprocess.Popen([sys.executable, str(driver), mode, str(arg), str(flag), *cli_args(out, resume)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(**(env or {})))
    deadline = time.monotonic() + 240
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before reaching {mode} {arg}:\n"
                                 + proc.stderr.read()[-3000:])
        assert time.monotonic() < deadline, f"the run never reached {mode} {arg}"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()


def checkpoints_on_disk(out: Path) -> dict:
    """{file name: iteration} of every checkpoint in the folder; each must load and verify."""
    return {name: load_checkpoint(out / name)["iteration"] for name in (CHECKPOINT_NAME, PREVIOUS_NAME)
            if (out / name).exists()}


def temporaries(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if ".tmp-" in p.name)


@pytest.mark.slow
def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path):
    t0 = time.perf_counter()
    full = jebm.train(iters=ITERS, out_dir=tmp_path / "full", checkpoint_every=3, progress=False, **CFG)
    out = tmp_path / "crash"

    # 1. killed while torch.save writes iteration 3: only the initial checkpoint is a checkpoint
    run_and_kill(tmp_path, out, "in_save", 3, resume=False)
    assert checkpoints_on_disk(out) == {CHECKPOINT_NAME: 0}
    assert len(temporaries(out)) == 1  # the half-written file, never read

    # 2. killed after iteration 6's file is written, before the renames
    run_and_kill(tmp_path, out, "pause", 6, resume=True,
                 env={"JEBM_TEST_PAUSE_CHECKPOINT": f"6:{tmp_path / 'reached-pause-6'}"})
    assert checkpoints_on_disk(out) == {CHECKPOINT_NAME: 3, PREVIOUS_NAME: 0}
    assert len(temporaries(out)) == 1  # the stale one of run 1 was removed on resume; this is run 2's

    # 3. killed inside iteration 8's update (resumed from 3, so its 5th update), after checkpoint 6
    run_and_kill(tmp_path, out, "in_update", 5, resume=True)
    assert checkpoints_on_disk(out) == {CHECKPOINT_NAME: 6, PREVIOUS_NAME: 3}
    assert temporaries(out) == []
    logged = [json.loads(l)["iter"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 8))  # iteration 8 never finished

    # 4. checkpoint.pt is damaged on disk: the resume continues from checkpoint.prev.pt (iteration 3)
    raw = bytearray((out / CHECKPOINT_NAME).read_bytes())
    for i in range(len(raw) // 3, len(raw) // 3 + 64):
        raw[i] ^= 0xFF
    (out / CHECKPOINT_NAME).write_bytes(bytes(raw))
    done = subprocess.run([sys.executable, "-m", "jebm", *cli_args(out, resume=True)], capture_output=True,
                          text=True, timeout=300, env=child_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipped a damaged checkpoint" in done.stderr
    assert (out / (CHECKPOINT_NAME + ".damaged")).exists()
    assert checkpoints_on_disk(out) == {CHECKPOINT_NAME: ITERS, PREVIOUS_NAME: 9}

    a, b = load_checkpoint(full.checkpoint), load_checkpoint(out)
    assert a["philox"] == b["philox"] and a["iteration"] == b["iteration"] == ITERS
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"parameter {k} differs from the uninterrupted run"
    for name in a["optimizers"]:
        sa, sb = a["optimizers"][name]["state"], b["optimizers"][name]["state"]
        for i in sa:
            assert all(torch.equal(sa[i][s], sb[i][s]) for s in ("exp_avg", "exp_avg_sq", "step")), (name, i)
    assert all(torch.equal(u, v) for u, v in zip(a["buffers"]["prior_chains"]["state"],
                                                 b["buffers"]["prior_chains"]["state"]))
    la = [json.loads(l) for l in (full.run_dir / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["iter"] for l in lb] == list(range(1, ITERS + 1))
    assert [l["loss_recon"] for l in la] == [l["loss_recon"] for l in lb]
    print(f"\nkill-and-resume test: {time.perf_counter() - t0:.1f} s")


def test_checkpoint_holds_every_rng_state_the_data_order_and_the_philox_offset(tmp_path):
    import random
    before = (torch.get_rng_state(), random.getstate())
    res = jebm.train(iters=2, out_dir=tmp_path / "r", progress=False, **CFG)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]  # caller's untouched
    ck = load_checkpoint(res.checkpoint)
    assert {"torch", "python", "numpy"} <= set(ck["rng"])
    assert ck["data_order"] == {"n": ck["data_order"]["n"], "batch_size": 20, "seed": 4, "next_iteration": 2,
                                "world_size": 1}
    assert ck["philox"][0] == 4 and ck["philox"][1] > 0 and isinstance(ck["sha256"], str)


def test_global_rng_draws_inside_training_resume_exactly(tmp_path, monkeypatch):
    """A user's module drawing from torch's global RNG (dropout-like) still resumes bit for bit:
    the training loop's global generators are checkpointed and restored."""
    from jebm.model import JEBM
    real = JEBM.decode

    def noisy_decode(self, z1):
        return real(self, z1) + 1e-3 * torch.randn_like(z1[:, :1]).reshape(-1, 1, 1, 1)

    monkeypatch.setattr(JEBM, "decode", noisy_decode)
    kw = dict(progress=False, checkpoint_every=2, **CFG)
    full = jebm.train(iters=5, out_dir=tmp_path / "full", **kw)
    jebm.train(iters=3, out_dir=tmp_path / "split", **kw)
    resumed = jebm.train(iters=5, out_dir=tmp_path / "split", resume=True, progress=False)
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# ---- resume of an uninterrupted process (in this process) ---------------------------------------

# Tiny but real: two latent layers, short chains; a few hundredths of a second per iteration.
TINY = dict(dims=[8, 4], ebm_hidden=[32], gauss_hidden=[32], dec_hidden=[64], infer_hidden=[64],
            infer_head_hidden=[32], prior_steps=8, post_steps=8, batch_size=50, sample_every=0, n_samples=16)


def read_metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]


def test_checkpoint_round_trip(tmp_path):
    res = jebm.train(scheme="variational", iters=6, out_dir=tmp_path / "r", progress=False, seed=3, **TINY)
    # weights_only=True: the checkpoint holds tensors and plain Python values only.
    raw = torch.load(res.checkpoint, weights_only=True)
    assert raw["iteration"] == 6 and raw["config"]["seed"] == 3 and raw["config"]["scheme"] == "variational"
    assert isinstance(raw["philox"][0], int) and isinstance(raw["philox"][1], int) and raw["philox"][1] > 0
    assert set(raw["optimizers"]) == {"gen", "ebm"} and "infer" in raw["modules"]
    run = jebm.load_run(res.run_dir)
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, raw["model"][k]), k
    for k, v in run.infer.state_dict().items():
        assert torch.equal(v, raw["modules"]["infer"][k]), k
    assert run.iteration == 6 and run.config == raw["config"]
    # no temporary files left behind by the atomic writes
    assert not [p.name for p in res.run_dir.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("scheme,persistent", [("mle", False), ("variational", False), ("mle", True)])
def test_resume_equals_an_uninterrupted_run(tmp_path, scheme, persistent):
    kw = dict(scheme=scheme, backend="reference", progress=False, seed=5, **TINY, persistent_prior=persistent)
    full = jebm.train(iters=10, out_dir=tmp_path / "full", **kw)
    jebm.train(iters=4, out_dir=tmp_path / "split", **kw)
    resumed = jebm.train(iters=10, out_dir=tmp_path / "split", resume=True, progress=False)
    assert resumed.iterations == 10 and resumed.run_dir == tmp_path / "split"
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    assert b["iteration"] == 10 and a["philox"] == b["philox"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"parameter {k} differs after resume"
    for name in a["optimizers"]:
        sa, sb = a["optimizers"][name]["state"], b["optimizers"][name]["state"]
        assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    if persistent:  # the persistent chains are part of the checkpoint
        assert all(torch.equal(u, v) for u, v in zip(a["buffers"]["prior_chains"]["state"],
                                                     b["buffers"]["prior_chains"]["state"]))
    la, lb = read_metrics(full.run_dir), read_metrics(resumed.run_dir)
    assert [l["iter"] for l in lb] == list(range(1, 11))
    key = "loss_recon"
    assert [l[key] for l in la] == [l[key] for l in lb]


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    run = tmp_path / "r"
    jebm.train(iters=4, out_dir=run, progress=False, ckpt_every=2, **TINY)
    # A run killed after logging iterations 5 and 6 but before checkpointing them:
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iter": 5, "loss_recon": 1.0}) + "\n" + '{"iter": 6, "loss_rec')
    jebm.train(iters=6, out_dir=run, resume=True, progress=False)
    assert [l["iter"] for l in read_metrics(run)] == [1, 2, 3, 4, 5, 6]
    assert read_metrics(run)[4]["loss_recon"] != 1.0


def test_resume_and_new_run_mistakes_are_reported(tmp_path):
    run = tmp_path / "r"
    with pytest.raises(ValueError, match="nothing to resume"):
        jebm.train(iters=2, out_dir=run, resume=True, progress=False)
    jebm.train(iters=2, out_dir=run, progress=False, **TINY)
    with pytest.raises(ValueError, match="already holds a run"):
        jebm.train(iters=2, out_dir=run, progress=False, **TINY)
    with pytest.raises(ValueError, match="scheme='variational' \\(run has 'mle'\\)"):
        jebm.train(iters=4, out_dir=run, resume=True, scheme="variational", progress=False)


