"""Shared test helpers: where two tensors differ, and the prior cases the fused backends are
checked on (random MLP / prior specs, starting points, the reference MALA loop with margins)."""
import math

import pytest
import torch
from torch import nn

from jebm_kernels.chain import autograd_energy_and_grad
from jebm_kernels.spec import GaussianSpec, MLPSpec, PriorSpec
from jebm_kernels.update import reference as update_reference

ACT_PARAM = {"leaky_relu": 0.2, "softplus": 1.5}


def assert_close_where(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float = 0.0, what=""):
    """Like torch.testing.assert_close, but the message says *where* the tensors differ most."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.double() - expected.double()).abs()
    bound = atol + rtol * expected.double().abs()
    bad = diff > bound
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        worst = tuple(int(i) for i in torch.unravel_index(torch.argmax(diff - bound), diff.shape))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements differ; first at {idx}: "
            f"{actual[idx].item()!r} vs {expected[idx].item()!r}; worst at {worst}: "
            f"{actual[worst].item()!r} vs {expected[worst].item()!r} (atol={atol}, rtol={rtol})")


def make_mlp(sizes, act="leaky_relu", out_act="identity", gen=None, bias=True, gain=1.0):
    ws, bs = [], []
    for i in range(len(sizes) - 1):
        bound = gain / math.sqrt(sizes[i])
        ws.append((torch.rand(sizes[i + 1], sizes[i], generator=gen) * 2 - 1) * bound)
        bs.append((torch.rand(sizes[i + 1], generator=gen) * 2 - 1) * bound if bias else None)
    return MLPSpec(tuple(ws), tuple(bs), act, ACT_PARAM.get(act, 0.2), out_act)


def make_prior(dims, hidden=(32, 32), act="leaky_relu", space="z", joint=False, seed=0, terms=True,
               gauss_hidden=(32,)):
    gen = torch.Generator().manual_seed(seed)
    L = len(dims)
    layer_terms = tuple(make_mlp([d, *hidden, 1], act, gen=gen) if terms else None for d in dims)
    joint_term = make_mlp([sum(dims), *hidden, 1], act, gen=gen) if joint else None
    gaussians = tuple(GaussianSpec(make_mlp([dims[l + 1], *gauss_hidden, 2 * dims[l]], act, gen=gen, gain=0.5), 0.01)
                      for l in range(L - 1))
    return PriorSpec(tuple(dims), layer_terms, joint_term, gaussians, space=space, energy_sign=-1.0)


def start(B, dims, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, d, generator=gen) for d in dims]


def reference_mala_trace(problem):
    """chain.run_chain's MALA loop, recording each chain's decision and |log_alpha - log u|."""
    s, tau = problem.step_sizes, problem.noise_scale
    energy_and_grad = autograd_energy_and_grad(problem)
    x = [t.clone() for t in problem.z]
    u, g = energy_and_grad(x)
    decisions, margins = [], []
    for k in range(problem.n_steps):
        prop, noise, uniform = update_reference.propose(problem, x, g, k)
        u_p, g_p = energy_and_grad(prop)
        log_q_fwd = -0.5 * sum(nl.pow(2).sum(-1) for nl in noise)
        log_q_bwd = -sum((xl - pl + (sl * sl / 2) * gpl).pow(2).sum(-1) / (2 * (sl * tau) ** 2)
                         for xl, pl, gpl, sl in zip(x, prop, g_p, s))
        log_alpha = u - u_p + log_q_bwd - log_q_fwd
        log_u = torch.log(uniform.to(log_alpha.dtype))
        accept = log_u < log_alpha
        decisions.append(accept)
        margins.append((log_alpha - log_u).abs())
        acc = accept.unsqueeze(1)
        x = [torch.where(acc, pl, xl) for pl, xl in zip(prop, x)]
        g = [torch.where(acc, gpl, gl) for gpl, gl in zip(g_p, g)]
        u = torch.where(accept, u_p, u)
    return x, torch.stack(decisions), torch.stack(margins)


def check_close(out, ref, what, *, atol, rtol, who):
    """Every layer of ``out`` (backend ``who``) within atol + rtol |ref| of the reference's."""
    outs = out if isinstance(out, list) else [out]
    refs = ref if isinstance(ref, list) else [ref]
    worst = max(float((a - b).abs().max()) for a, b in zip(outs, refs))
    print(f"{what}: max |{who} - reference| = {worst:.2e}")
    for l, (a, b) in enumerate(zip(outs, refs)):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.isfinite(a).all(), f"{what}: non-finite state"
        assert_close_where(a, b, atol=atol, rtol=rtol, what=f"{what}, layer {l + 1}")


def check_info(info, ref_info, mala=False):
    """Per-step chain statistics agree with the reference's (means of float32 values ~1-100)."""
    assert len(info["energy"]) == len(ref_info["energy"])
    for e, r in zip(info["energy"], ref_info["energy"]):
        assert e == pytest.approx(r, rel=1e-4, abs=1e-3)
    for e, r in zip(info["grad_norm"], ref_info["grad_norm"]):
        assert e == pytest.approx(r, rel=1e-4, abs=1e-3)
    assert (len(info["accept"]) > 0) == mala


class TinyConvDecoder(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, 8 * 2 * 2)
        self.up = nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1)

    def forward(self, z):
        return torch.tanh(self.up(torch.relu(self.fc(z)).reshape(-1, 8, 2, 2)))


def child_env(**extra) -> dict:
    """The environment of a child interpreter (a killed `jebm train`, torchrun's workers) that
    imports the same jebm and jebm_kernels as this test process, installed or not."""
    import os
    from pathlib import Path

    import jebm
    import jebm_kernels
    roots = list(dict.fromkeys(str(Path(m.__file__).resolve().parents[1]) for m in (jebm, jebm_kernels)))
    path = os.pathsep.join(roots + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    return {**os.environ, "PYTHONPATH": path, **extra}
