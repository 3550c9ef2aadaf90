"""Checkpoint files (``jebm.train.checkpoint``): a write that fails leaves the old checkpoint, and
loading a checkpoint never crashes and never runs code: a truncated or damaged file, one from an
incompatible format version, or a pickle naming arbitrary objects (a __reduce__ that would call
os.system) gives a clear ValueError, through every entry point (load_checkpoint, load_run,
train(resume=True), the CLI)."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import child_env

import jebm
from jebm.cli import main
from jebm.train.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME, load_checkpoint, save_checkpoint

TINY = dict(dims=[4, 2], ebm_hidden=[8], gauss_hidden=[8], dec_hidden=[16], prior_steps=2, post_steps=2,
            batch_size=20, sample_every=0, n_samples=4)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ck") / "run"
    jebm.train(iters=1, out_dir=run, progress=False, **TINY)
    return run


@pytest.fixture
def good(good_run, tmp_path) -> Path:
    """A copy of a good checkpoint file to damage."""
    p = tmp_path / CHECKPOINT_NAME
    p.write_bytes((good_run / CHECKPOINT_NAME).read_bytes())
    return p


class RunsShell:
    """Unpickling this would call os.system (the classic malicious pickle)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class RunsPython:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("keep", [0, 1, 10, 100, 0.5, -1])
def test_truncated_file(good, keep):
    data = good.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    good.write_bytes(data[:n])
    with pytest.raises(ValueError, match="not a readable jebm checkpoint"):
        load_checkpoint(good)


@pytest.mark.parametrize("version,match", [(99, "written by a newer jebm: upgrade jebm"),
                                           (0, "checkpoint format 0 is not one this jebm reads"),
                                           ("2", "checkpoint format '2' is not one"),
                                           (True, "checkpoint format True is not one")])
def test_incompatible_version(good, version, match):
    ck = load_checkpoint(good)
    save_checkpoint({**ck, "format_version": version}, good)
    with pytest.raises(ValueError, match=match):
        load_checkpoint(good)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the plain pickle below
@pytest.mark.parametrize("payload", [RunsShell, RunsPython])
@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_code_is_refused_not_run(good_run, tmp_path, payload, legacy):
    marker = tmp_path / "marker"
    ck = load_checkpoint(good_run)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        torch.save({**ck, "config": {"x": payload(marker)}}, f, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ValueError, match="not a readable jebm checkpoint"):
        load_checkpoint(evil)
    # a plain pickle, not torch's format at all
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"format_version": 2, "model": payload(marker)}))
    with pytest.raises(ValueError, match="not a readable jebm checkpoint"):
        load_checkpoint(raw)
    # through the run-folder entry points too
    run = tmp_path / "run"
    run.mkdir()
    (run / CHECKPOINT_NAME).write_bytes(evil.read_bytes())
    with pytest.raises(ValueError, match="no good checkpoint"):
        jebm.train(out_dir=run, resume=True, progress=False)
    with pytest.raises(ValueError, match="no good checkpoint"):
        jebm.load_run(run)
    assert not marker.exists(), "loading a checkpoint ran code from its pickle"


def test_damaged_content_fails_the_digest(good):
    ck = load_checkpoint(good)
    name = next(iter(ck["model"]))
    ck["model"][name] = ck["model"][name] + 1  # content changed, digest kept: what bit rot looks like
    torch.save(ck, good)
    with pytest.raises(ValueError, match="does not match its sha256 digest"):
        load_checkpoint(good)


def test_not_a_checkpoint_or_wrong_types(tmp_path, good):
    p = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, p)
    with pytest.raises(ValueError, match="not a jebm checkpoint \\(missing"):
        load_checkpoint(p)
    torch.save([1, 2, 3], p)
    with pytest.raises(ValueError, match="not a jebm checkpoint"):
        load_checkpoint(p)
    ck = load_checkpoint(good)
    save_checkpoint({**ck, "iteration": "3", "philox": [1]}, p)
    with pytest.raises(ValueError, match="iteration '3' is not an int.*philox \\[1\\] is not"):
        load_checkpoint(p)
    with pytest.raises(ValueError, match="no such run folder or checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_newest_good_falls_back_and_names_every_problem(good_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    data = (good_run / CHECKPOINT_NAME).read_bytes()
    (run / CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])
    (run / PREVIOUS_NAME).write_bytes(data)
    with pytest.warns(RuntimeWarning, match="skipped a damaged checkpoint"):
        assert jebm.load_run(run).checkpoint == run / PREVIOUS_NAME
    (run / PREVIOUS_NAME).write_bytes(b"junk")
    with pytest.raises(ValueError, match=f"no good checkpoint: .*{CHECKPOINT_NAME}.*{PREVIOUS_NAME}"):
        load_checkpoint(run)


def test_cli_reports_a_bad_checkpoint_in_one_line(good, capsys):
    good.write_bytes(good.read_bytes()[:200])
    assert main(["sample", str(good), "--n", "4"]) == 2
    err = capsys.readouterr().err
    assert "jebm sample: error:" in err and "not a readable jebm checkpoint" in err and "Traceback" not in err


FUZZ = r'''
import random, sys, torch
from jebm.train.checkpoint import load_checkpoint, content_digest
src, dst = sys.argv[1], sys.argv[2]
good = open(src, "rb").read()
ref = load_checkpoint(src)["sha256"]
rng = random.Random(0)
outcomes = {"refused": 0, "unchanged": 0}
for i in range(150):
    data = bytearray(good)
    kind = i % 3
    if kind == 0:    # flip a few bytes
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # cut
        data = data[: rng.randrange(len(data))]
    else:            # splice random bytes in
        at = rng.randrange(len(data))
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    open(dst, "wb").write(bytes(data))
    try:
        ck = load_checkpoint(dst)
    except ValueError:
        outcomes["refused"] += 1
        continue
    # accepted: then it must be the very same checkpoint (the damage hit bytes nothing reads)
    assert ck["sha256"] == ref == content_digest({k: v for k, v in ck.items() if k != "sha256"}), i
    outcomes["unchanged"] += 1
print(outcomes)
'''


@pytest.mark.slow
def test_random_damage_is_refused_or_harmless_in_a_child_interpreter(good, tmp_path):
    """150 random byte flips, cuts and splices: each load raises ValueError or returns the intact
    checkpoint; the child interpreter never crashes (a segfault would show as a negative rc)."""
    script = tmp_path / "fuzz.py"
    script.write_text(FUZZ)
    proc = subprocess.run([sys.executable, str(script), str(good), str(tmp_path / "damaged.pt")],
                          capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'refused'" in proc.stdout, proc.stdout
    print(f"\nrandom damage to a checkpoint: {proc.stdout.strip()}")


def test_atomic_save_leaves_the_old_checkpoint_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    good = {"format_version": 1, "config": {}, "iteration": 1, "image_shape": [1, 8, 8], "model": {},
            "optimizers": {}, "philox": [0, 0]}
    save_checkpoint(good, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({**good, "iteration": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_atomic_write_takes_text_bytes_or_a_writer_and_leaves_nothing_on_failure(tmp_path):
    from jebm.atomic import atomic_write

    path = tmp_path / "new" / "f.txt"  # parent folders are created
    assert atomic_write(path, "caf\u00e9") == path and path.read_bytes() == "caf\u00e9".encode()
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    atomic_write(path, lambda f: f.write(b"written"), fsync=True)
    assert path.read_bytes() == b"written"

    def half_then_fail(f):
        f.write(b"half")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"written" and [p.name for p in path.parent.iterdir()] == ["f.txt"]
