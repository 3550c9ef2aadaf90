"""The bf16 speed ratios side by side: every provider of a configuration timed round by round in
turn (``jebm.bench.timing.interleaved_medians``), so a change in the machine's load touches each
alike. A quick, interleaved complement to the suite (``python -m pytest benchmarks``) for the bf16
targets of BENCHMARKS.md.

    python -m benchmarks.bf16_ratios [--config lebm --batches 100 1000] [--rounds 7] [--threads 2]

Prints one markdown table per configuration and batch: median ms per chain, and each provider's
speed-up over ``plain``, ``plain-bf16``, ``compiled-bf16`` and ``cpu``.
"""
from __future__ import annotations

import argparse

import torch

from jebm.bench.configs import make_case
from jebm.bench.machine import machine
from jebm.bench.providers import make_runner
from jebm.bench.timing import interleaved_medians

PROVIDERS = ("plain", "plain-bf16", "compiled", "compiled-bf16", "cpu", "cpu-bf16")
BASES = ("plain", "plain-bf16", "compiled-bf16", "cpu")


def measure(config: str, batch: int, rounds: int, providers=PROVIDERS) -> dict:
    case = make_case(config, batch)
    fns, skipped = {}, {}
    for p in providers:
        run, why = make_runner(p, case)
        if run is None:
            skipped[p] = why
        else:
            fns[p] = run
    return {"medians": interleaved_medians(fns, rounds=rounds, warmup=2), "skipped": skipped}


def table(config: str, batch: int, result: dict) -> str:
    med = result["medians"]
    bases = [b for b in BASES if b in med]
    lines = [f"**{config}, B = {batch}**", "", "| provider | ms | " + " | ".join(f"vs {b}" for b in bases) + " |",
             "|---|---:|" + "---:|" * len(bases)]
    for p, s in med.items():
        lines.append(f"| {p} | {s * 1e3:.2f} | " + " | ".join(f"{med[b] / s:.2f}x" for b in bases) + " |")
    lines += [f"| {p} | skipped: {why} |" + " |" * len(bases) for p, why in result["skipped"].items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="lebm")
    ap.add_argument("--batches", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    ap.add_argument("--providers", nargs="+", default=list(PROVIDERS))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    flags = [f for f in info["simd_flags"] if f.startswith(("avx512_bf16", "amx", "avx2"))]
    print(f"{info['cpu_model']} ({', '.join(flags)}); torch {info['torch']}; {torch.get_num_threads()} threads; "
          f"load average {info['load_average_at_start']}; {args.rounds} interleaved rounds, medians")
    for b in args.batches:
        print()
        print(table(args.config, b, measure(args.config, b, args.rounds, args.providers)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
