"""What the soundness checks of a fused call cost, against the fused chain they guard.

    python -m benchmarks.fusion_checks [--batches 8,100,1000] [--rounds 9]

For the LEBM prior (100-200-200-1 GELU, K = 60, prior_sigma 1) written two ways, the module passed
as it is (read from its layers: the checks are the reading, the environment and the weights'
content compared with the packed copy) and a closure ``lambda z: net(z).squeeze(-1)`` (traced:
the same, plus at a trace's first call the trace and the start check, one autograd evaluation of
the energy and one of the kernel), it
times per call: the whole ``langevin`` call, the fused chain alone (``prior_chain.cpu.run`` on a
problem already read and checked), everything before it (arguments, selection, reading and checks)
and, for the closure, a trace's first call (traced and checked at the start: paid once per trace
key). Medians of ``--rounds`` rounds of ``--calls`` calls each, alternating the first three (the first
calls are timed after them, one per round).
"""
from __future__ import annotations

import argparse

import jebm_kernels as jk
from jebm.bench.configs import NOISE_SEED, make_case
from jebm.bench.machine import machine
from jebm.bench.timing import interleaved_medians
from jebm_kernels import dispatch, traces
from jebm_kernels.arguments import make_problem
from jebm_kernels.prior_chain import cpu


def _forms(batch: int) -> dict:
    case = make_case("lebm", batch)
    net = case.net
    return {"nn.Sequential": (net, case.z0), "closure (traced)": (lambda z: net(z).squeeze(-1), case.z0)}


def _kw():
    return dict(n_steps=60, step_size=0.4, noise_scale=1.0, prior_sigma=1.0, generator=(NOISE_SEED, 0), mala=False,
                return_info=False)


def measure(energy, z, rounds: int, calls: int) -> dict:
    def prepared():
        problem, _ = make_problem(energy, z, **_kw())
        backend = dispatch.select("auto", problem)
        if not backend.will_fuse(problem):
            raise SystemExit(f"not fused: {backend.why_not_fused(problem)}")
        return problem

    def whole():
        jk.langevin(energy, z, n_steps=60, step_size=0.4, prior_sigma=1.0, generator=(NOISE_SEED, 0))

    def first():  # a trace's first call: traced (fake tensors) and checked at the start
        traces.clear()
        whole()

    problem = prepared()
    runs = {"call": whole, "chain": lambda: cpu.run(problem), "checks": prepared}
    times = interleaved_medians(runs, rounds=rounds, calls=calls)
    times.update(interleaved_medians({"first": first}, rounds=rounds))  # after the others: it drops every trace
    whole()
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="8,100,1000")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=10)
    args = ap.parse_args(argv)
    m = machine()
    print(f"{m['cpu_model']} ({m['cpus']} cores; {' '.join(m['simd_flags'])}); torch {m['torch']}, "
          f"{m['torch_threads']} threads; cpu kernels: {jk.extension.isa()}\n")
    print("| energy | B | langevin call (ms) | fused chain (ms) | before the chain (ms) | before / chain "
          "| first call of a trace (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for batch in (int(b) for b in args.batches.split(",")):
        for name, (energy, z) in _forms(batch).items():
            r = measure(energy, z, args.rounds, args.calls)
            first = f"{r['first'] * 1e3:.1f}" if name.startswith("closure") else "-"
            print(f"| {name} | {batch} | {r['call'] * 1e3:.3f} | {r['chain'] * 1e3:.3f} | {r['checks'] * 1e3:.3f} | "
                  f"{r['checks'] / r['chain']:.1%} | {first} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
