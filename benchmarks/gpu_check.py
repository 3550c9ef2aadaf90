"""The GPU acceptance run: one command, from a bare GPU machine to one JSON and one markdown
summary with PASS/FAIL for the GPU targets.

    python3 -m benchmarks.gpu_check --out DIR        # default DIR: $OUT when set, else gpu_check_out/
    python3 -m benchmarks.gpu_check --dry-run        # the plan (any machine; exits 0)
    python3 -m benchmarks.gpu_check --fetch-wheels wheels/   # beforehand: the wheels the GPU machine lacks
    python3 -m benchmarks.gpu_check --only bench-train-cuda  # a rerun of some steps

On a machine with a CUDA GPU (docs/gpu.md): copy the working tree there and run,
from its root, ``PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check --out DIR`` (``RUN_COMMAND``).
Where that machine has no package registry, fill ``wheels/`` (git-ignored) beforehand with
``--fetch-wheels wheels/`` on a machine that has one and copy it along with the tree; without it
the run still works: the tests that need arviz, torchebm or mlxtend skip.

Steps, in order, each in its own process with its own timeout (one failure or hang does not
lose the others' results), inside a global budget (``--budget-s``, default 450 s, so the command
ends inside 8 minutes); after every step ``gpu_check.json`` and ``gpu_check.md`` are rewritten in
the output folder and the output of every step is appended to ``gpu_check.log``:

1. ``environment``: GPU (nvidia-smi, compute capability), Python, torch, Triton, nvcc; which of
   the test and benchmark packages are importable.
2. ``wheels``: ``pip install --no-index --no-deps --target`` of the wheels copied along in ``wheels/``
   (none needed for the GPU tests; they let the CPU-only tests that need them run too).
3. ``install``: ``JEBM_CUDA=1 JEBM_CUDA_ARCH=<the GPU's capability, e.g. 90> pip install
   --no-build-isolation --no-deps -e .`` (falls back to ``setup.py build_ext --inplace``); then a
   fresh process checks that the cuda and triton backends are available.
4. ``bench-prior``: the CVPR CIFAR-10 prior (``make_case("cvpr", 100)``: B = 100, K = 60): the
   eager reference (``langevin(backend="reference")``), the reference captured as a CUDA graph
   (``GraphSafeChain(kernel="reference")``: the reference's ops, autograd and the torch
   update, with its Philox noise computed from a device tensor, captured once and replayed), the
   fused triton and cuda chains through ``langevin``, and the cuda chain in a captured
   ``GraphSafeChain``; final states compared with the reference's.
5. ``bench-train-cuda``: one MLE iteration of the ``cvpr-cifar10`` preset (batch 100 of random
   3x32x32 images) with ``backend="cuda"``: eager (``JEBM_DEVICE_PATH=0``: the per-iteration code
   path of the CPU), the device path without graphs (``eager-device``) and graphed (the default
   on CUDA: ``jebm.train.device_step``).
6. ``gpu-tests``: the test files that run on the GPU when there is one (``GPU_TEST_FILES``),
   pytest-xdist over the cores, JUnit XML in ``junit-gpu.xml``.
7. ``bench-train-triton`` / ``bench-train-reference``: step 5 with those backends (eager, graphed).
8. ``suite-rest``: every other test file, in whatever budget is left (JUnit in ``junit-suite.xml``).

Targets: the fused prior chain (cuda, triton) at least 20x the eager reference and 2x
the reference captured as a CUDA graph; Triton's bf16 chain at least 1.3x its float32 one; the
graphed training iteration at least 3x the eager one (per backend).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JSON_NAME, MD_NAME, LOG_NAME = "gpu_check.json", "gpu_check.md", "gpu_check.log"
DEFAULT_BUDGET_S = 450.0
RESERVE_S = 10.0  # left at the end for writing the summary

RUN_COMMAND = "PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check --out DIR"

# The test files with tests that run on a GPU when there is one (torch.cuda / the backend fixture /
# GPU-only tests); tests/test_gpu_check.py checks that the list stays complete.
GPU_TEST_FILES = (
    "tests/test_device_step.py", "tests/test_graph_chain.py", "tests/test_custom_ops.py", "tests/test_dispatch.py",
    "tests/test_prior_chain.py", "tests/test_update.py", "tests/test_posterior_chain.py", "tests/test_model.py",
    "tests/test_philox.py", "tests/test_hostile_input.py", "tests/test_precision.py", "tests/test_bf16_law.py",
    "tests/test_bf16_kernels.py",
)

# The test extras a GPU machine's Python may lack (the run expects pytest, pytest-xdist, hypothesis and
# pybind11 there; the environment step reports what is missing), pinned to the versions tested here;
# all pure-Python wheels.
WHEELS = ("arviz==0.23.4", "xarray-einstats==0.9.1", "h5netcdf==1.8.2", "platformdirs==4.14.8", "torchebm==0.8.9",
          "mlxtend==0.25.0")
WHEEL_TARGET = "/tmp/jebm-wheels"

PRIOR_TARGETS = {"vs_eager_reference": 20.0, "vs_graphed_reference": 2.0}
# bf16 operands on tensor cores against the same kernel's float32 (Triton's tl.dot; csrc's CUDA
# kernel computes in float32 and runs a bf16 call in float32, saying so)
BF16_TARGET = 1.3
TRAIN_TARGET = 3.0
TRAIN_BACKENDS = ("cuda", "triton", "reference")


@dataclass(frozen=True)
class Step:
    name: str
    expected_s: float   # a design estimate for one GPU from a bare machine, not a measurement
    timeout_s: float
    what: str


STEPS = (
    Step("environment", 10, 60, "GPU, Python, torch, Triton, nvcc; test packages present"),
    Step("wheels", 5, 60, "pip install --no-index --no-deps --target of the wheels in wheels/ (if any)"),
    Step("install", 100, 300, "JEBM_CUDA=1 JEBM_CUDA_ARCH=<cc> pip install --no-build-isolation --no-deps -e . "
                              "(the CPU extension and nvcc for one architecture, in parallel)"),
    Step("bench-prior", 30, 150, "CVPR prior B=100 K=60: reference eager / CUDA-graphed, triton, cuda, cuda graphed; "
                                 "bf16: reference under autocast, triton bf16"),
    Step("bench-train-cuda", 35, 150, "cvpr-cifar10 MLE iteration, backend cuda: eager, eager-device, graphed"),
    Step("gpu-tests", 120, 240, f"pytest -n 12 on the {len(GPU_TEST_FILES)} GPU test files "
                                "(Triton compiles for the GPU)"),
    Step("bench-train-triton", 30, 120, "cvpr-cifar10 MLE iteration, backend triton: eager, graphed"),
    Step("bench-train-reference", 35, 120, "cvpr-cifar10 MLE iteration, backend reference: eager, graphed"),
    Step("suite-rest", 85, 600, "pytest -n 12 on every other test file, in whatever budget is left"),
)
STEP_NAMES = tuple(s.name for s in STEPS)


# ------------------------------------------------------------------------------------------------
# the plan and the summary
# ------------------------------------------------------------------------------------------------

def plan_text(budget_s: float = DEFAULT_BUDGET_S) -> str:
    lines = [f"gpu_check: {len(STEPS)} steps, global budget {budget_s:.0f} s (expected durations are design "
             "estimates for one GPU from a bare machine, not measurements)", ""]
    total = 0.0
    for i, s in enumerate(STEPS, 1):
        total += s.expected_s
        lines.append(f"{i:2d}. {s.name:22s} expected ~{s.expected_s:4.0f} s  (timeout {s.timeout_s:3.0f} s)  {s.what}")
    lines += ["", f"expected total ~{total:.0f} s ({total / 60:.1f} min); the last step gets what the budget leaves",
              "", "targets: fused prior chain (cuda, triton) >= 20x eager reference and >= 2x the reference "
              "captured as a CUDA graph (CVPR prior, B=100, K=60); triton bf16 >= 1.3x triton fp32; graphed "
              "cvpr-cifar10 MLE iteration >= 3x the eager one (per backend)", "",
              "on the GPU machine, from the working tree's root:",
              "  " + RUN_COMMAND]
    return "\n".join(lines)


def _fmt_ms(s):
    return "-" if s is None else f"{s * 1e3:.3g} ms"


def _ratio(a, b):
    return None if (a is None or b is None or b <= 0) else a / b


def evaluate_targets(results: dict) -> list[dict]:
    """PASS/FAIL/MISSING for each GPU target, from the measurements in ``results``."""
    out = []
    prior = (results.get("steps", {}).get("bench-prior", {}).get("data") or {}).get("providers", {})

    def sec(name):
        return (prior.get(name) or {}).get("median_s")

    ref, ref_graph = sec("reference"), sec("reference-graphed")
    for fused in ("cuda", "triton"):
        for key, base, base_name in (("vs_eager_reference", ref, "eager reference"),
                                     ("vs_graphed_reference", ref_graph, "reference captured as a CUDA graph")):
            r = _ratio(base, sec(fused))
            need = PRIOR_TARGETS[key]
            out.append({"target": f"prior chain {fused} >= {need:g}x the {base_name}", "measured": r, "needed": need,
                        "verdict": "MISSING" if r is None else ("PASS" if r >= need else "FAIL")})
    r = _ratio(sec("triton"), sec("triton-bf16"))
    out.append({"target": f"prior chain triton bf16 >= {BF16_TARGET:g}x triton fp32", "measured": r,
                "needed": BF16_TARGET, "verdict": "MISSING" if r is None else ("PASS" if r >= BF16_TARGET else "FAIL")})
    for backend in TRAIN_BACKENDS:
        data = results.get("steps", {}).get(f"bench-train-{backend}", {}).get("data") or {}
        modes = data.get("modes", {})
        r = _ratio((modes.get("eager") or {}).get("s_per_iter"), (modes.get("graphed") or {}).get("s_per_iter"))
        out.append({"target": f"graphed training iteration ({backend}) >= {TRAIN_TARGET:g}x the eager one",
                    "measured": r, "needed": TRAIN_TARGET,
                    "verdict": "MISSING" if r is None else ("PASS" if r >= TRAIN_TARGET else "FAIL")})
    return out


def summary_markdown(results: dict) -> str:
    env = (results.get("steps", {}).get("environment", {}).get("data") or {})
    gpu = env.get("gpu_name") or "unknown GPU"
    md = [f"# gpu_check: {gpu}", "",
          f"Measured on {gpu} (compute capability {env.get('capability', '?')}), torch {env.get('torch', '?')}, "
          f"Triton {env.get('triton', '?')}, CUDA {env.get('cuda', '?')}, {env.get('cpu_count', '?')} CPU cores; "
          f"started {results.get('started', '?')}, {results.get('elapsed_s', 0):.0f} s in all.", "",
          "## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    for t in evaluate_targets(results):
        m = "-" if t["measured"] is None else f"{t['measured']:.2f}x"
        md.append(f"| {t['target']} | {m} | **{t['verdict']}** |")
    md += ["", "## Steps", "", "| step | status | seconds | expected (estimate) | notes |", "|---|---|---|---|---|"]
    for s in STEPS:
        r = results.get("steps", {}).get(s.name)
        if r is None:
            md.append(f"| {s.name} | not run | - | {s.expected_s:.0f} | |")
            continue
        note = r.get("summary") or ""
        md.append(f"| {s.name} | {r['status']} | {r.get('seconds', 0):.1f} | {s.expected_s:.0f} | {note} |")
    prior = (results.get("steps", {}).get("bench-prior", {}).get("data") or {})
    if prior.get("providers"):
        ref = (prior["providers"].get("reference") or {}).get("median_s")
        md += ["", f"## Prior chain: {prior.get('title', 'CVPR prior')}, B = {prior.get('batch')}, "
               f"K = {prior.get('n_steps')}", "",
               "| provider | median | min | rounds | speed-up vs eager reference | max abs diff vs reference |",
               "|---|---|---|---|---|---|"]
        for name, p in prior["providers"].items():
            if p.get("error"):
                md.append(f"| {name} | error: {p['error'][:120]} | | | | |")
                continue
            r = _ratio(ref, p.get("median_s"))
            diff = p.get("max_abs_diff")
            md.append(f"| {name} | {_fmt_ms(p.get('median_s'))} | {_fmt_ms(p.get('min_s'))} | {p.get('rounds', '-')} | "
                      f"{'-' if r is None else f'{r:.1f}x'} | {'-' if diff is None else f'{diff:.2e}'} |")
    rows = []
    for backend in TRAIN_BACKENDS:
        data = results.get("steps", {}).get(f"bench-train-{backend}", {}).get("data") or {}
        for mode, m in (data.get("modes") or {}).items():
            graphs = "-" if "chains" not in m else f"{m.get('captured')}/{m.get('chains')}"
            note = m.get("error", "") or "; ".join(m.get("capture_errors") or [])[:200]
            rows.append(f"| {backend} | {mode} | {_fmt_ms(m.get('s_per_iter'))} | {m.get('iters', '-')} | "
                        f"{_fmt_ms(m.get('warmup_s'))} | {graphs} | {note} |")
    if rows:
        md += ["", "## Training iteration: cvpr-cifar10 preset, MLE, batch 100 (random 3x32x32 images)", "",
               "| backend | mode | per iteration | timed iterations | warm-up (2 it., incl. capture) "
               "| chains captured | error |", "|---|---|---|---|---|---|---|", *rows]
    md.append("")
    return "\n".join(md)


def write_results(out_dir: Path, results: dict) -> None:
    results = {**results, "targets": evaluate_targets(results)}
    for name, text in ((JSON_NAME, json.dumps(results, indent=2, default=str)), (MD_NAME, summary_markdown(results))):
        _atomic_write(out_dir / name, text)


def _load_atomic_write():
    """``jebm.atomic.atomic_write``, loaded by its path: the orchestrator never imports the jebm
    package (torch, its extensions), so a broken install cannot lose the summary."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_gpu_check_atomic", ROOT / "jebm" / "atomic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.atomic_write


_atomic_write = _load_atomic_write()


# ------------------------------------------------------------------------------------------------
# running the steps
# ------------------------------------------------------------------------------------------------

_PYTEST_SUMMARY = re.compile(r"=+ (.*\d+ (?:passed|failed|error|errors|skipped).*) in [\d.]+s")


def pytest_summary(output: str) -> str | None:
    found = _PYTEST_SUMMARY.findall(output)
    return found[-1] if found else None


def step_command(step: Step, out_dir: Path, partial: Path) -> list[str]:
    py = sys.executable
    if step.name in ("gpu-tests", "suite-rest"):
        if step.name == "gpu-tests":
            files, junit = list(GPU_TEST_FILES), "junit-gpu.xml"
        else:
            files = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("test_*.py"))
                     if str(p.relative_to(ROOT)) not in GPU_TEST_FILES]
            junit = "junit-suite.xml"
        xdist = ["-n", str(max(1, min(12, (os.cpu_count() or 2) - 2)))] if _has_module("xdist") else []
        per_test = ["--timeout=150"] if _has_module("pytest_timeout") else []  # one hung test does not eat the step
        return [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *xdist, *per_test, f"--junitxml={out_dir / junit}",
                *files]
    return [py, "-m", "benchmarks.gpu_check", "--step", step.name, "--partial", str(partial)]


def _has_module(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def run_step(step: Step, out_dir: Path, timeout_s: float, env: dict, log) -> dict:
    """Run one step in its own process group (killed whole at the timeout: pytest-xdist workers
    too), its output streamed into the log as it comes."""
    partial = Path(tempfile.mkdtemp(prefix="gpu_check_")) / f"{step.name}.json"
    cmd = step_command(step, out_dir, partial)
    log.write(f"\n===== {step.name}: {' '.join(cmd)} (timeout {timeout_s:.0f} s)\n")
    log.flush()
    start_pos = log.tell()
    t0 = time.perf_counter()
    rc = None
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout_s)
        status = "passed" if rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        status = "timeout"
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    seconds = time.perf_counter() - t0
    log.flush()
    with open(log.name, errors="replace") as f:
        f.seek(start_pos)
        output = f.read()
    data = None
    if partial.exists():
        try:
            data = json.loads(partial.read_text())
        except json.JSONDecodeError:
            data = None
    shutil.rmtree(partial.parent, ignore_errors=True)
    summary = pytest_summary(output) if step.name in ("gpu-tests", "suite-rest") else (data or {}).get("summary")
    return {"status": status, "returncode": rc, "seconds": seconds, "expected_s": step.expected_s,
            "timeout_s": timeout_s, "summary": summary, "data": data, "tail": output[-3000:]}


def orchestrate(out_dir: Path, budget_s: float, only: list[str] | None, wheels_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "budget_s": budget_s, "steps": {},
               "plan": [s.__dict__ for s in STEPS]}
    env = dict(os.environ, PYTHONUNBUFFERED="1", JEBM_GPU_CHECK_WHEELS=str(wheels_dir))
    env.pop("TRITON_INTERPRET", None)
    with open(out_dir / LOG_NAME, "a") as log:
        for step in STEPS:
            if only and step.name not in only and step.name != "environment":
                continue
            left = budget_s - (time.perf_counter() - start) - RESERVE_S
            if left < 5:
                results["steps"][step.name] = {"status": "skipped (budget spent)", "seconds": 0.0}
                write_results(out_dir, results)
                continue
            timeout = min(step.timeout_s, left)
            print(f"[gpu_check] {step.name} (expected ~{step.expected_s:.0f} s, timeout {timeout:.0f} s)", flush=True)
            r = run_step(step, out_dir, timeout, env, log)
            results["steps"][step.name] = r
            data = r.get("data") or {}
            if step.name == "environment" and data.get("capability"):
                env["JEBM_CUDA_ARCH"] = data["capability"].replace(".", "")
            if step.name == "wheels" and data.get("installed"):
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [WHEEL_TARGET, env.get("PYTHONPATH")]))
            results["elapsed_s"] = time.perf_counter() - start
            write_results(out_dir, results)
            print(f"[gpu_check] {step.name}: {r['status']} in {r['seconds']:.1f} s  {r.get('summary') or ''}",
                  flush=True)
    results["elapsed_s"] = time.perf_counter() - start
    write_results(out_dir, results)
    print(summary_markdown({**results}), flush=True)
    failed = [n for n, r in results["steps"].items() if r["status"] != "passed"]
    verdicts = [t["verdict"] for t in evaluate_targets(results)]
    return 1 if failed or "FAIL" in verdicts else 0


# ------------------------------------------------------------------------------------------------
# the steps that run Python (each in its own process: ``--step NAME --partial FILE``)
# ------------------------------------------------------------------------------------------------

class Partial:
    """A step's results, rewritten after each measurement (what a timeout leaves is kept)."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def update(self, **kw):
        self.data.update(kw)
        self.save()

    def save(self):
        _atomic_write(self.path, json.dumps(self.data, indent=1, default=str))


def _run(cmd, **kw) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
        return p.returncode, p.stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return -1, f"{type(exc).__name__}: {exc}"


def step_environment(part: Partial) -> int:
    import platform
    info = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "executable": sys.executable}
    rc, smi = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap", "--format=csv,noheader"])
    info["nvidia_smi"] = smi.strip()
    rc, nvcc = _run(["nvcc", "--version"])
    info["nvcc"] = nvcc.strip().splitlines()[-1] if rc == 0 and nvcc.strip() else None
    packages = {}
    for mod in ("pytest", "pytest_benchmark", "xdist", "hypothesis", "pybind11", "setuptools", "wheel", "triton",
                "arviz", "torchebm", "mlxtend", "tensorboard", "sklearn", "skimage", "matplotlib", "tqdm", "PIL"):
        packages[mod] = _has_module(mod)
    info["packages"] = packages
    part.update(**info)
    import torch
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.is_available()}
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001
        info["triton"] = f"not importable: {exc}"
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_name=torch.cuda.get_device_name(0), capability=f"{major}.{minor}",
                    multiprocessors=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1))
    missing = [m for m in ("pytest", "xdist", "hypothesis", "pybind11") if not packages[m]]
    part.update(**info, summary=f"{info.get('gpu_name', 'no GPU')}, torch {info['torch']}, triton {info['triton']}"
                                + (f"; missing: {', '.join(missing)}" if missing else ""))
    return 0 if torch.cuda.is_available() else 1


def step_wheels(part: Partial) -> int:
    folder = Path(os.environ.get("JEBM_GPU_CHECK_WHEELS", "wheels"))
    wheels = sorted(str(p) for p in folder.glob("*.whl")) if folder.is_dir() else []
    if not wheels:
        part.update(installed=[], summary=f"no wheels in {folder}/ (the tests needing arviz/torchebm/mlxtend skip)")
        return 0
    rc, out = _run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", WHEEL_TARGET, *wheels])
    print(out)
    part.update(installed=[Path(w).name for w in wheels] if rc == 0 else [], pip_rc=rc,
                summary=f"{len(wheels)} wheels into {WHEEL_TARGET}" if rc == 0 else "pip failed")
    return rc


_VERIFY = """
import json, jebm_kernels as jk
from jebm_kernels import extension
print("VERIFY " + json.dumps({"available": jk.available_backends(), "cuda_error": extension.cuda_error()}))
"""


def step_install(part: Partial) -> int:
    env = dict(os.environ, JEBM_CUDA="1")
    if not env.get("JEBM_CUDA_ARCH"):
        import torch
        major, minor = torch.cuda.get_device_capability()
        env["JEBM_CUDA_ARCH"] = f"{major}{minor}"
    part.update(arch=env["JEBM_CUDA_ARCH"])
    t0 = time.perf_counter()
    rc, out = _run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."],
                   cwd=ROOT, env=env)
    print(out[-6000:])
    how = "pip install --no-build-isolation --no-deps -e ."
    if rc != 0:
        rc, out = _run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, env=env)
        print(out[-6000:])
        how = "setup.py build_ext --inplace (pip failed)"
    part.update(how=how, build_rc=rc, build_s=time.perf_counter() - t0)
    vrc, vout = _run([sys.executable, "-c", _VERIFY], cwd=ROOT, env=dict(os.environ))
    print(vout)
    found = [l for l in vout.splitlines() if l.startswith("VERIFY ")]
    verify = json.loads(found[-1][7:]) if found else {"error": vout[-2000:]}
    ok = rc == 0 and {"cuda", "triton"} <= set(verify.get("available", []))
    part.update(verify=verify, summary=f"{how}: backends {verify.get('available')}"
                                        + ("" if ok else f"; cuda: {verify.get('cuda_error')}"))
    return 0 if ok else 1


def _device() -> str:
    """Where the benchmark steps run: "cuda"; "cpu" only for tests/test_gpu_check.py's smoke runs."""
    return os.environ.get("JEBM_GPU_CHECK_DEVICE", "cuda")


def _smoke() -> bool:
    """Tiny sizes (tests/test_gpu_check.py runs the benchmark steps' code on the CPU with it)."""
    return os.environ.get("JEBM_GPU_CHECK_SMOKE", "0") == "1"


def _sync():
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _time(fn, *, budget_s: float, max_rounds: int = 30, min_rounds: int = 3, warmup: int = 2):
    """Wall time of fn() with the GPU synchronised before and after each call, over rounds that fill
    ``budget_s`` (``jebm.bench.timing.time_rounds``): (last result, stats)."""
    from jebm.bench.timing import time_rounds

    if _smoke():
        budget_s, max_rounds, min_rounds, warmup = 0.0, 1, 1, 0
    out, st = time_rounds(fn, budget_s=budget_s, min_rounds=min_rounds, max_rounds=max_rounds, warmup=warmup,
                          sync=_sync)
    return out, {"median_s": st["median"], "min_s": st["min"], "mean_s": st["mean"], "rounds": st["rounds"]}


def step_bench_prior(part: Partial) -> int:

    import jebm_kernels as jk
    from jebm.bench.configs import CONFIG_TITLES, NOISE_SEED, make_case

    device = _device()
    case = make_case("cvpr", 4, n_steps=2) if _smoke() else make_case("cvpr", 100, n_steps=60)
    case = case.to(device)
    part.update(title=CONFIG_TITLES["cvpr"], batch=case.batch, n_steps=case.n_steps, step_size=case.step_size,
                providers={}, timing="wall clock per chain, torch.cuda.synchronize() before and after each call; "
                                     "median over rounds after 2 warm-up calls")
    providers = part.data["providers"]
    chain_kw = dict(n_steps=case.n_steps, step_size=case.step_size, prior_sigma=case.prior_sigma,
                    generator=(NOISE_SEED, 0))
    ref_out = None

    def measure(name, make, what):
        nonlocal ref_out
        try:
            fn = make()
            first = [t.detach().clone() for t in fn()]  # the first call replays (NOISE_SEED, 0)
            _, stats = _time(fn, budget_s=2.0)
            entry = {**stats, "what": what}
            if ref_out is None:
                ref_out = first
            else:
                entry["max_abs_diff"] = max(float((a - b).abs().max()) for a, b in zip(first, ref_out))
        except Exception as exc:  # noqa: BLE001  (one provider's failure must not lose the others)
            entry = {"error": f"{type(exc).__name__}: {exc}", "what": what}
        providers[name] = entry
        part.save()

    measure("reference", lambda: (lambda: case.langevin("reference")),
            "langevin(backend='reference'): autograd + the torch update, one Python iteration per step")

    def graphed(cls, **kw):
        def make():
            chain = cls(case.energy, case.layers, **chain_kw, **kw)
            if device == "cuda":
                chain.capture()
            return lambda: chain(case.layers)
        return make

    measure("reference-graphed", graphed(jk.GraphSafeChain, kernel="reference"),
            "the reference's ops (autograd + torch update) with Philox noise computed from a device tensor, "
            "captured once in a CUDA graph and replayed (GraphSafeChain(kernel='reference'))")
    for b in ("triton", "cuda"):
        measure(b, lambda b=b: (lambda: case.langevin(b)), f"langevin(backend='{b}'): the fused whole-chain kernel")
    measure("cuda-graphed", graphed(jk.GraphSafeChain, kernel="cuda"),
            "GraphSafeChain(kernel='cuda') captured: the fused kernel replayed from a CUDA graph")
    measure("reference-bf16", lambda: (lambda: case.langevin("reference", precision="bf16")),
            "langevin(backend='reference', precision='bf16'): the energy under torch.autocast(bfloat16)")
    measure("triton-bf16", lambda: (lambda: case.langevin("triton", precision="bf16")),
            "langevin(backend='triton', precision='bf16'): tl.dot on bf16 operands, float32 accumulation "
            "(max_abs_diff against the fp32 reference is bf16 rounding, not an error)")
    ref = (providers.get("reference") or {}).get("median_s")
    parts = [f"{n} {_fmt_ms(p.get('median_s'))}" for n, p in providers.items() if p.get("median_s")]
    part.update(summary="; ".join(parts) + (f" (reference {_fmt_ms(ref)})" if ref else ""))
    return 0 if all("error" not in p for p in providers.values()) else 1


def step_bench_train(part: Partial, backend: str) -> int:
    import functools

    import torch

    import jebm_kernels as jk
    from jebm.bench.timing import time_calls
    from jebm.model import JEBM
    from jebm.train import make_trainer
    from jebm.train.device_step import ENV
    from jebm.train.presets import resolve_config

    device = _device()
    small = dict(batch_size=4, prior_steps=2, post_steps=2, ngf=2, dims=[8, 4], ebm_hidden=[8], gauss_hidden=[8])
    cfg = resolve_config("cvpr-cifar10", scheme="mle", backend=backend, **(small if _smoke() else {}))
    shape = (3, 8, 8) if _smoke() else (3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(cfg["batch_size"], *shape, generator=gen) * 2 - 1).to(device)
    modes = {"eager": "0", "graphed": "auto" if device == "cuda" else "1"}
    if backend == "cuda":
        modes = {"eager": "0", "eager-device": "eager", "graphed": "auto"}
    part.update(backend=backend, preset="cvpr-cifar10", scheme="mle", batch=cfg["batch_size"],
                prior_steps=cfg["prior_steps"], post_steps=cfg["post_steps"], modes={},
                timing="2 warm-up iterations (graph capture included), then n iterations back to back, "
                       "torch.cuda.synchronize() at the start and the end; seconds per iteration")
    ok = True
    for mode, env_value in modes.items():
        os.environ[ENV] = env_value
        entry = {"JEBM_DEVICE_PATH": env_value}
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg["seed"])
                model = JEBM.from_config(cfg, shape).to(device)
                trainer = make_trainer(model, cfg)
            model.train()
            step = functools.partial(trainer.step, x, generator=jk.PhiloxGenerator(cfg["seed"]), backend=backend)
            _, (per_it,) = time_calls(step, calls=2, sync=_sync)  # the warm-up (graph capture included)
            n = 1 if _smoke() else int(min(10, max(3, 3.0 // max(per_it, 1e-3))))
            (values, bad), (s_per_iter,) = time_calls(step, calls=n, sync=_sync)
            entry.update(s_per_iter=s_per_iter, iters=n, warmup_s=2 * per_it,
                         loss_recon=float(values["loss_recon"]), graphs=trainer.device_path is not None
                         and trainer.device_path.capture)
            if trainer.device_path is not None:
                entries = list(trainer.device_path.chains.entries.values())
                entry.update(chains=len(entries), captured=sum(e.captured for e in entries),
                             capture_errors=[e.capture_error for e in entries if e.capture_error])
            del model, trainer, step
        except Exception as exc:  # noqa: BLE001
            entry["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
            ok = False
        part.data["modes"][mode] = entry
        part.save()
        if device == "cuda":
            torch.cuda.empty_cache()
    m = part.data["modes"]
    r = _ratio((m.get("eager") or {}).get("s_per_iter"), (m.get("graphed") or {}).get("s_per_iter"))
    part.update(summary=", ".join(f"{k} {_fmt_ms(v.get('s_per_iter'))}" for k, v in m.items())
                + ("" if r is None else f"; graphed {r:.2f}x eager"))
    return 0 if ok else 1


def run_python_step(name: str, partial: Path) -> int:
    part = Partial(partial)
    if name == "environment":
        return step_environment(part)
    if name == "wheels":
        return step_wheels(part)
    if name == "install":
        return step_install(part)
    if name == "bench-prior":
        return step_bench_prior(part)
    if name.startswith("bench-train-"):
        return step_bench_train(part, name[len("bench-train-"):])
    raise SystemExit(f"unknown step {name!r}; steps: {', '.join(STEP_NAMES)}")


# ------------------------------------------------------------------------------------------------
# wheels for the GPU machine (run beforehand, where pip reaches a package registry)
# ------------------------------------------------------------------------------------------------

def fetch_command(folder: str) -> list[str]:
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for a in ("--platform", p)]
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
            "--implementation", "cp", *platforms, "-d", folder, *WHEELS]


def fetch_wheels(folder: str) -> int:
    Path(folder).mkdir(parents=True, exist_ok=True)
    cmd = fetch_command(folder)
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd)


# ------------------------------------------------------------------------------------------------

def default_out() -> Path:
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "gpu_check_out"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="output folder (default $OUT, else gpu_check_out/)")
    ap.add_argument("--dry-run", action="store_true", help="list the steps and their expected durations; exit 0")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="global time budget in seconds")
    ap.add_argument("--only", default=None, help=f"comma-separated steps to run (of {', '.join(STEP_NAMES)})")
    ap.add_argument("--wheels", type=Path, default=ROOT / "wheels",
                    help="folder of wheels copied along (default wheels/)")
    ap.add_argument("--fetch-wheels", metavar="DIR", default=None,
                    help="download the wheels the GPU machine lacks into DIR (where pip reaches a registry) and exit")
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--partial", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.fetch_wheels:
        return fetch_wheels(a.fetch_wheels)
    if a.step:
        return run_python_step(a.step, a.partial or Path(tempfile.mkdtemp()) / f"{a.step}.json")
    only = [s.strip() for s in a.only.split(",")] if a.only else None
    if only and set(only) - set(STEP_NAMES):
        ap.error(f"unknown steps {sorted(set(only) - set(STEP_NAMES))}; steps: {', '.join(STEP_NAMES)}")
    if a.dry_run:
        print(plan_text(a.budget_s))
        return 0
    import torch
    if not torch.cuda.is_available():
        print(plan_text(a.budget_s))
        print("\nno CUDA GPU here (torch.cuda.is_available() is False): nothing to measure; --dry-run lists the plan")
        return 2
    return orchestrate(a.out or default_out(), a.budget_s, only, a.wheels)


if __name__ == "__main__":
    sys.exit(main())
