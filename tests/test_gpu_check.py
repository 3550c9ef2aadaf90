"""benchmarks/gpu_check.py, the GPU acceptance run, checked without a GPU: the dry run, the
summary and the targets from fake measurements, the orchestration (budget, --only, incremental
writes, a step's failure or timeout), the list of GPU test files, the wheel download command,
and the benchmark steps' own code run on the CPU at tiny sizes (``JEBM_GPU_CHECK_SMOKE``)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check as gc

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_lists_every_step_with_its_expected_duration_and_exits_0():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for step in gc.STEPS:
        assert re.search(rf"{re.escape(step.name)}\s+expected ~\s*{step.expected_s:.0f} s", proc.stdout), step.name
    assert "design estimates" in proc.stdout and gc.RUN_COMMAND in proc.stdout
    assert sum(s.expected_s for s in gc.STEPS) <= gc.DEFAULT_BUDGET_S <= 480 - 20  # inside 8 minutes


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_the_run_says_so_and_measures_nothing(capsys, tmp_path):
    assert gc.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA GPU here" in capsys.readouterr().out
    assert not (tmp_path / gc.JSON_NAME).exists()


def fake_results(prior=None, train=None):
    env = {"gpu_name": "NVIDIA H200", "capability": "9.0", "torch": "2.11.0", "triton": "3.6.0"}
    steps = {"environment": {"status": "passed", "seconds": 3.0, "data": env}}
    if prior is not None:
        steps["bench-prior"] = {"status": "passed", "seconds": 20.0, "data": {
            "title": "CVPR", "batch": 100, "n_steps": 60,
            "providers": {k: ({"median_s": v, "min_s": v, "rounds": 5} if v is not None else {"error": "boom"})
                          for k, v in prior.items()}}}
    for backend, (eager, graphed) in (train or {}).items():
        steps[f"bench-train-{backend}"] = {"status": "passed", "seconds": 30.0, "data": {"modes": {
            "eager": {"s_per_iter": eager, "iters": 5}, "graphed": {"s_per_iter": graphed, "iters": 5}}}}
    return {"started": "now", "elapsed_s": 100.0, "steps": steps}


def test_targets_pass_fail_and_missing_from_fake_measurements(tmp_path):
    res = fake_results(prior={"reference": 0.100, "reference-graphed": 0.010, "cuda": 0.004, "triton": 0.006},
                       train={"cuda": (0.30, 0.09), "triton": (0.30, 0.15)})
    verdicts = {t["target"]: (t["verdict"], t["measured"]) for t in gc.evaluate_targets(res)}
    assert verdicts["prior chain cuda >= 20x the eager reference"] == ("PASS", pytest.approx(25.0))
    assert verdicts["prior chain cuda >= 2x the reference captured as a CUDA graph"] == ("PASS", pytest.approx(2.5))
    assert verdicts["prior chain triton >= 20x the eager reference"][0] == "FAIL"          # 16.7x
    assert verdicts["prior chain triton >= 2x the reference captured as a CUDA graph"][0] == "FAIL"  # 1.67x
    assert verdicts["graphed training iteration (cuda) >= 3x the eager one"] == ("PASS", pytest.approx(3.333, rel=1e-3))
    assert verdicts["graphed training iteration (triton) >= 3x the eager one"][0] == "FAIL"
    assert verdicts["graphed training iteration (reference) >= 3x the eager one"] == ("MISSING", None)

    gc.write_results(tmp_path, res)
    saved = json.loads((tmp_path / gc.JSON_NAME).read_text())
    assert [t["verdict"] for t in saved["targets"]].count("PASS") == 3
    md = (tmp_path / gc.MD_NAME).read_text()
    assert md.startswith("# gpu_check: NVIDIA H200") and "Measured on NVIDIA H200" in md
    assert "| prior chain cuda >= 20x the eager reference | 25.00x | **PASS** |" in md
    assert "**MISSING**" in md and "**FAIL**" in md
    assert "| cuda | graphed | 90 ms | 5 |" in md
    assert "| bench-prior | passed | 20.0 |" in md and "| gpu-tests | not run |" in md


def test_a_provider_error_is_reported_not_fatal(tmp_path):
    res = fake_results(prior={"reference": 0.1, "reference-graphed": None, "cuda": 0.001, "triton": None})
    gc.write_results(tmp_path, res)
    md = (tmp_path / gc.MD_NAME).read_text()
    assert "| reference-graphed | error: boom |" in md
    v = {t["target"]: t["verdict"] for t in gc.evaluate_targets(res)}
    assert v["prior chain cuda >= 2x the reference captured as a CUDA graph"] == "MISSING"
    assert v["prior chain cuda >= 20x the eager reference"] == "PASS"


def test_orchestration_writes_after_every_step_and_keeps_to_the_budget(tmp_path, monkeypatch):
    seen = []

    def fake_run_step(step, out_dir, timeout_s, env, log):
        assert timeout_s <= step.timeout_s
        seen.append(step.name)
        if seen[:-1]:  # the summary of the previous steps is on disk already
            assert set(json.loads((out_dir / gc.JSON_NAME).read_text())["steps"]) == set(seen[:-1])
        status = {"bench-prior": "timeout", "gpu-tests": "failed"}.get(step.name, "passed")
        data = {"capability": "9.0"} if step.name == "environment" else None
        if step.name == "environment":
            assert "JEBM_CUDA_ARCH" not in env
        if step.name == "install":
            assert env["JEBM_CUDA_ARCH"] == "90"
        return {"status": status, "seconds": 1.0, "data": data, "summary": None}

    monkeypatch.setattr(gc, "run_step", fake_run_step)
    rc = gc.orchestrate(tmp_path, 1000.0, None, tmp_path / "wheels")
    assert rc == 1 and seen == list(gc.STEP_NAMES)  # a timeout and a failure do not stop the later steps
    saved = json.loads((tmp_path / gc.JSON_NAME).read_text())
    assert saved["steps"]["bench-prior"]["status"] == "timeout" and saved["steps"]["suite-rest"]["status"] == "passed"

    seen.clear()
    gc.orchestrate(tmp_path / "only", 1000.0, ["bench-train-cuda"], tmp_path / "wheels")
    assert seen == ["environment", "bench-train-cuda"]

    seen.clear()
    clock = iter(range(0, 10_000, 40))
    monkeypatch.setattr(gc.time, "perf_counter", lambda: float(next(clock)))
    gc.orchestrate(tmp_path / "budget", 150.0, None, tmp_path / "wheels")
    saved = json.loads((tmp_path / "budget" / gc.JSON_NAME).read_text())
    assert saved["steps"]["suite-rest"]["status"] == "skipped (budget spent)" and "suite-rest" not in seen


def test_pytest_summary_and_step_commands(tmp_path):
    out = "....\n===== 250 passed, 3 skipped, 1 warning in 93.21s (0:01:33) =====\n"
    assert gc.pytest_summary(out) == "250 passed, 3 skipped, 1 warning"
    assert gc.pytest_summary("killed") is None
    cmd = gc.step_command(gc.STEPS[gc.STEP_NAMES.index("gpu-tests")], tmp_path, tmp_path / "p.json")
    assert cmd[1:3] == ["-m", "pytest"] and f"--junitxml={tmp_path / 'junit-gpu.xml'}" in cmd
    assert all(f in cmd for f in gc.GPU_TEST_FILES)
    rest = gc.step_command(gc.STEPS[gc.STEP_NAMES.index("suite-rest")], tmp_path, tmp_path / "p.json")
    assert not set(gc.GPU_TEST_FILES) & set(rest) and "tests/test_gpu_check.py" in rest
    assert gc.step_command(gc.STEPS[0], tmp_path, tmp_path / "p.json")[1:5] == ["-m", "benchmarks.gpu_check", "--step",
                                                                                "environment"]


def test_the_gpu_test_files_are_every_file_with_gpu_tests():
    pattern = re.compile(r"torch\.cuda\.is_available\(\)|backend_runners|needs_gpu|"
                         r"def test_\w*\([^)]*\bbackend\b")
    found = set()
    for p in sorted((ROOT / "tests").glob("test_*.py")):
        rel = str(p.relative_to(ROOT))
        if rel in ("tests/test_cuda_build.py", "tests/test_gpu_check.py"):
            continue  # the host emulation of the CUDA kernels (skips its GPU-present tests); this file
        if pattern.search(p.read_text()):
            found.add(rel)
    assert found == set(gc.GPU_TEST_FILES)
    assert all((ROOT / f).is_file() for f in gc.GPU_TEST_FILES)


def test_fetch_wheels_command_targets_the_gpu_machine():
    cmd = gc.fetch_command("wheels")
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and cmd[cmd.index("-d") + 1] == "wheels"
    assert all(w in cmd for w in gc.WHEELS) and all("==" in w for w in gc.WHEELS)
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "/wheels/" in ignored and "gpu_check_out/" in ignored


@pytest.mark.slow
@pytest.mark.parametrize("step", ["bench-prior", "bench-train-reference"])
def test_benchmark_steps_run_on_the_cpu_at_tiny_sizes(tmp_path, step):
    env = {"JEBM_GPU_CHECK_DEVICE": "cpu", "JEBM_GPU_CHECK_SMOKE": "1", "TRITON_INTERPRET": "1"}
    import os
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--step", step, "--partial",
                           str(tmp_path / "p.json")], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})
    data = json.loads((tmp_path / "p.json").read_text())
    if step == "bench-prior":
        p = data["providers"]
        assert p["reference"]["median_s"] > 0 and p["reference-graphed"]["max_abs_diff"] == 0.0
        assert "error" in p["cuda"]  # no GPU here: recorded, and the step goes on
        assert "triton" in p and proc.returncode == 1
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        m = data["modes"]
        assert m["eager"]["loss_recon"] == m["graphed"]["loss_recon"]  # the device path computes the same iteration
        assert "graphed" in data["summary"]


def test_a_step_streams_its_output_and_is_killed_whole_at_its_timeout(tmp_path, monkeypatch):
    pid_file = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
              "print('started', flush=True)\n"
              "time.sleep(60)\n")
    monkeypatch.setattr(gc, "step_command", lambda step, out_dir, partial: [sys.executable, "-c", script])
    with open(tmp_path / gc.LOG_NAME, "a") as log:
        r = gc.run_step(gc.STEPS[0], tmp_path, 3.0, dict(__import__("os").environ), log)
    assert r["status"] == "timeout" and "started" in r["tail"] and r["seconds"] < 30
    assert "started" in (tmp_path / gc.LOG_NAME).read_text()
    import time
    pid = int(pid_file.read_text())
    def gone():  # no such process, or a zombie waiting for whoever adopted it
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except (FileNotFoundError, ProcessLookupError):
            return True

    for _ in range(50):  # the grandchild went with its group
        if gone():
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the step's child process outlived the timeout")

    monkeypatch.setattr(gc, "step_command", lambda step, out_dir, partial: [
        sys.executable, "-c", f"import json; open({str(partial)!r}, 'w').write(json.dumps({{'summary': 'ok'}}))"])
    with open(tmp_path / gc.LOG_NAME, "a") as log:
        r = gc.run_step(gc.STEPS[0], tmp_path, 30.0, dict(__import__("os").environ), log)
    assert r["status"] == "passed" and r["data"] == {"summary": "ok"} and r["summary"] == "ok"
