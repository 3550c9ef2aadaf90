"""Two checkouts side by side: the same ``langevin`` calls timed under each, in alternating
interpreter processes on one machine, so a change's cost is a ratio measured in one run.

    git worktree add /tmp/before <commit> && (cd /tmp/before && python setup.py build_ext --inplace)
    python -m benchmarks.ab --before /tmp/before [--configs lebm,cvpr] [--batches 8,100] [--rounds 7]

Each round starts one process per checkout (``PYTHONPATH`` at its root: its jebm and jebm_kernels,
its compiled extension); a process times every (configuration, batch) case of
``jebm.bench.configs`` for ``--calls`` calls after a warm-up and reports the median call. The
table gives, per case, the median over rounds of each side and after / before. Both processes
run the same torch with the same threads; nothing else should run on the machine.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timing():
    """This checkout's ``jebm.bench.timing``, loaded by its path: a child's ``PYTHONPATH`` puts the
    measured checkout's jebm first, and both sides must be timed by the same code."""
    spec = importlib.util.spec_from_file_location("_ab_timing", ROOT / "jebm" / "bench" / "timing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _child(configs: list[str], batches: list[int], calls: int, backend: str) -> None:
    import torch

    import jebm_kernels
    from jebm.bench.configs import make_case
    root = os.environ["PYTHONPATH"].split(os.pathsep)[0]
    if not Path(jebm_kernels.__file__).resolve().is_relative_to(Path(root).resolve()):
        raise SystemExit(f"jebm_kernels was imported from {jebm_kernels.__file__}, not from {root}")
    torch.set_num_threads(int(os.environ.get("JEBM_AB_THREADS", torch.get_num_threads())))
    time_calls = _timing().time_calls
    out = {}
    for config in configs:
        for batch in batches:
            case = make_case(config, batch)
            _, times = time_calls(lambda: case.langevin(backend), rounds=calls, warmup=2)
            out[f"{config}/B={batch}"] = statistics.median(times)
    print(json.dumps(out))


def _run(root: Path, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--configs", args.configs,
           "--batches", args.batches, "--calls", str(args.calls), "--backend", args.backend]
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{root}: the timing process failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, help="the other checkout's root (its extension built in place)")
    ap.add_argument("--after", type=Path, default=ROOT, help="default: this checkout")
    ap.add_argument("--configs", default="lebm,cvpr,iccv,posterior,closure-mlp")
    ap.add_argument("--batches", default="8,100,1000")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=15)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    configs = args.configs.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    if args.child:
        _child(configs, batches, args.calls, args.backend)
        return 0
    if args.before is None:
        ap.error("--before is required")
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    results: dict = {name: [] for name in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            results[name].append(_run(sides[name], args))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print("| case | before (ms) | after (ms) | after / before |\n|---|---:|---:|---:|")
    for case in results["before"][0]:
        b = statistics.median(x[case] for x in results["before"]) * 1e3
        a = statistics.median(x[case] for x in results["after"]) * 1e3
        print(f"| {case} | {b:.3f} | {a:.3f} | {a / b:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
