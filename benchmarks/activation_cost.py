"""What the activation and the noise cost inside the fused prior chain.

    python -m benchmarks.activation_cost

LEBM's prior chain (MLP 100-200-200-1, K = 60, prior_sigma 1) with the same weights and shapes and
its GELU swapped for SiLU, LeakyReLU and ReLU, at batch 100 and 1000, against this machine's FMA
peak (``benchmarks/fma_peak.c``, measured here) in executed FLOPs (forward + input gradient = 2 x
the forward's multiply-adds x 2). The difference between GELU and ReLU is the activation's cost;
what ReLU leaves below the peak is the noise (one Box-Muller normal per latent per step), the
update and the per-chain work, which no activation choice removes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import jebm_kernels as jk
from jebm.bench.machine import FmaPeak
from jebm.bench.timing import time_calls
from jebm_kernels.spec import mlp_spec_from_sequential


def _best(fn, n: int = 7) -> float:
    """The fastest of ``n`` calls after one warm-up call."""
    return min(time_calls(fn, rounds=n, warmup=1)[1])


def main() -> int:
    threads = torch.get_num_threads()
    fma = FmaPeak(Path(__file__).with_name("fma_peak.c"))
    if fma.lib is None:
        print(f"no FMA peak: {fma.reason}")
        return 1
    peak, _ = fma.gflops(0.2, threads)
    print(f"isa {jk.extension.isa()}, {threads} threads, FMA peak {peak:.0f} GFLOP/s; LEBM prior chain, K = 60")
    torch.manual_seed(0)
    lin = [nn.Linear(100, 200), nn.Linear(200, 200), nn.Linear(200, 1)]
    acts = {"gelu": nn.GELU, "silu": nn.SiLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "relu": nn.ReLU}
    print("| B | activation | ms / chain | executed GFLOP/s | % of FMA peak |")
    print("|---:|---|---:|---:|---:|")
    for B in (100, 1000):
        z = torch.randn(B, 100)
        for name, act in acts.items():
            net = nn.Sequential(lin[0], act(), lin[1], act(), lin[2])
            executed = 2 * mlp_spec_from_sequential(net).flops_per_row() * B * 60
            t = _best(lambda: jk.langevin(net, z, n_steps=60, step_size=0.4, prior_sigma=1.0, generator=(1, 0),
                                          backend="cpu"))
            print(f"| {B} | {name} | {t * 1e3:.2f} | {executed / t / 1e9:.0f} | {executed / t / 1e9 / peak:.0%} |")
    n = 1000 * 100 * 60
    buf = torch.empty(n)
    t = _best(lambda: jk.extension.cpu_ext.philox_randn(1, 0, n, buf.data_ptr(), threads))
    print(f"\nthe noise alone (_C.philox_randn, the same SIMD code): {n:,} normals (B = 1000's chain) in "
          f"{t * 1e3:.2f} ms; the chain's FLOPs at the FMA peak alone would take "
          f"{2 * 120_400 * n / 100 / peak / 1e6:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
