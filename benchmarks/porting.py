"""The porting examples of docs/porting.md, before and after, timed side by side on this machine.

    python -m benchmarks.porting [--repeats 7] [--post-batch 16] [--quick]

Before: code as users have it, written here after the official LEBM repository (Pang et al.
2020, ``train_svhn.py``: ``_netE`` with its own ``GELU`` class on z ``[B, nz, 1, 1]``, ``_netG`` of
transposed convolutions, ``sample_langevin_prior_z`` / ``sample_langevin_post_z`` with their
defaults: prior 60 steps of 0.4 with e_prior_sig 1, posterior 20 steps of 0.1 with g_llhd_sigma
0.3) and a hand-written MALA loop. After: the same chains through ``jebm_kernels.langevin``.
Each pair runs interleaved (before, after, before, ...) and reports medians and their ratio;
the noise differs (torch.randn against jebm's Philox), so only speed is compared here (the
tests compare jebm's chains with its reference element by element).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import jebm_kernels as jk
from jebm.bench.machine import machine
from jebm.bench.timing import interleaved_medians

# ---- the LEBM code's networks, as written there ----------------------------------------------------

class GELU(nn.Module):
    def forward(self, x):
        return F.gelu(x)


class NetE(nn.Module):
    def __init__(self, nz=100, ndf=200, nez=1):
        super().__init__()
        self.nez = nez
        self.ebm = nn.Sequential(nn.Linear(nz, ndf), GELU(), nn.Linear(ndf, ndf), GELU(), nn.Linear(ndf, nez))

    def forward(self, z):
        return self.ebm(z.squeeze()).view(-1, self.nez, 1, 1)


class NetG(nn.Module):
    def __init__(self, nz=100, ngf=64, nc=3):
        super().__init__()
        self.gen = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(ngf * 2, nc, 4, 2, 1), nn.Tanh())

    def forward(self, z):
        return self.gen(z)


# ---- before: the LEBM samplers and a MALA loop, as users write them -------------------------------

E_STEPS, E_STEP, E_PRIOR_SIG = 60, 0.4, 1.0
G_STEPS, G_STEP, G_LLHD_SIGMA = 20, 0.1, 0.3


def sample_langevin_prior_z(z, net_e):
    z = z.clone().detach().requires_grad_(True)
    for _ in range(E_STEPS):
        en = net_e(z)
        z_grad = torch.autograd.grad(en.sum(), z)[0]
        z.data = z.data - 0.5 * E_STEP * E_STEP * (z_grad + 1.0 / (E_PRIOR_SIG * E_PRIOR_SIG) * z.data)
        z.data += E_STEP * torch.randn_like(z).data
    return z.detach()


def sample_langevin_post_z(z, x, net_g, net_e):
    mse = nn.MSELoss(reduction="sum")
    z = z.clone().detach().requires_grad_(True)
    for _ in range(G_STEPS):
        x_hat = net_g(z)
        g_log_lkhd = 1.0 / (2.0 * G_LLHD_SIGMA * G_LLHD_SIGMA) * mse(x_hat, x)
        z_grad_g = torch.autograd.grad(g_log_lkhd, z)[0]
        en = net_e(z)
        z_grad_e = torch.autograd.grad(en.sum(), z)[0]
        z.data = z.data - 0.5 * G_STEP * G_STEP * (z_grad_g + z_grad_e + 1.0 / (E_PRIOR_SIG * E_PRIOR_SIG) * z.data)
        z.data += G_STEP * torch.randn_like(z).data
    return z.detach()


def mala_loop(energy, z, n_steps, step):
    """Metropolis-adjusted Langevin, one proposal per chain per step, as users write it."""
    def u_and_grad(x):
        x = x.detach().requires_grad_(True)
        u = energy(x)
        return u.detach(), torch.autograd.grad(u.sum(), x)[0]

    h = step * step / 2
    u, g = u_and_grad(z)
    for _ in range(n_steps):
        xi = torch.randn_like(z)
        prop = z - h * g + step * xi
        u_p, g_p = u_and_grad(prop)
        fwd = (xi * xi).sum(-1) / 2
        back = ((z - prop + h * g_p) ** 2).sum(-1) / (2 * step * step)
        accept = torch.rand(z.shape[0]).log() < (u - u_p - back + fwd)
        z = torch.where(accept[:, None], prop, z)
        u = torch.where(accept, u_p, u)
        g = torch.where(accept[:, None], g_p, g)
    return z


# ---- after: the same chains through jebm_kernels.langevin ------------------------------------------

def jebm_prior(z, net_e):
    # LEBM's energy en = netE(z) on z [B, nz, 1, 1] plus the N(0, e_prior_sig^2) term: traced and fused
    return jk.langevin(lambda t: net_e(t).view(-1), z, n_steps=E_STEPS, step_size=E_STEP, prior_sigma=E_PRIOR_SIG)


def jebm_post(z, x, net_g, net_e):
    def energy(t):  # the same terms per chain: sums over a chain's pixels give LEBM's gradient
        recon = (net_g(t) - x).pow(2).flatten(1).sum(1) / (2.0 * G_LLHD_SIGMA * G_LLHD_SIGMA)
        return recon + net_e(t).view(-1)
    return jk.langevin(energy, z, n_steps=G_STEPS, step_size=G_STEP, prior_sigma=E_PRIOR_SIG)


def jebm_mala(energy, z, n_steps, step):
    return jk.langevin(energy, z, n_steps=n_steps, step_size=step, mala=True)


# ---- timing ------------------------------------------------------------------------------------------

def _pair(before, after, repeats):
    """Median seconds of (before, after), interleaved, after one warm-up call of each (allocations,
    the tracer's first look)."""
    m = interleaved_medians({"before": before, "after": after}, rounds=repeats)
    return m["before"], m["after"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--post-batch", type=int, default=16, help="batch of the posterior chain (LEBM's conv decoder)")
    ap.add_argument("--quick", action="store_true", help="one repeat, small batches (a smoke run)")
    args = ap.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    torch.manual_seed(0)
    net_e, net_g = NetE(), NetG()
    for p in (*net_e.parameters(), *net_g.parameters()):
        p.requires_grad_(False)
    rows = []
    for B in ((8,) if args.quick else (8, 100, 1000)):
        z = torch.randn(B, 100, 1, 1)
        b, a = _pair(lambda: sample_langevin_prior_z(z, net_e), lambda: jebm_prior(z, net_e), repeats)
        rows.append(("LEBM `sample_langevin_prior_z` (60 x 0.4, netE 100-200-200-1)", B, b, a))
    B = 4 if args.quick else args.post_batch
    z, x = torch.randn(B, 100, 1, 1), torch.rand(B, 3, 32, 32) * 2 - 1
    b, a = _pair(lambda: sample_langevin_post_z(z, x, net_g, net_e), lambda: jebm_post(z, x, net_g, net_e), repeats)
    rows.append(("LEBM `sample_langevin_post_z` (20 x 0.1, netG 4 transposed convs, ngf 64)", B, b, a))
    w = torch.randn(64, 32) / 8

    def quartic(t):  # a closure no kernel fuses: autograd's gradient, jebm's update and MALA terms
        return 0.5 * t.pow(2).sum(-1) + 0.1 * torch.tanh(t @ w).pow(4).sum(-1)

    for B in ((8,) if args.quick else (8, 100, 1000)):
        z = torch.randn(B, 64)
        b, a = _pair(lambda: mala_loop(quartic, z, 60, 0.3), lambda: jebm_mala(quartic, z, 60, 0.3), repeats)
        rows.append(("hand-written MALA loop (60 x 0.3, a closure energy, d 64)", B, b, a))
    m = machine()
    simd = " ".join(f for f in m["simd_flags"] if f.startswith(("avx", "fma", "amx")))
    print(f"machine: {m['cpu_model']} ({m['cpus']} CPUs; {simd}); isa {jk.extension.isa()}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {repeats}, interleaved")
    print("| chain | B | before (ms) | jebm (ms) | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name, B, b, a in rows:
        print(f"| {name} | {B} | {b * 1e3:.1f} | {a * 1e3:.1f} | {b / a:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
