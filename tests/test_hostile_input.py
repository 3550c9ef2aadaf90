"""Property test: whatever langevin is given, on every backend this machine has, it either raises a
clear ValueError/TypeError or returns what the reference returns. It never crashes the interpreter."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import jebm_kernels as jk

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64]
SPECIAL = [0.0, -0.0, 1e-30, 1e30, float("nan"), float("inf"), float("-inf")]


def make_energy(kind: str, d: int):
    torch.manual_seed(0)
    if kind == "sequential":
        return nn.Sequential(nn.Linear(d, 5), nn.Tanh(), nn.Linear(5, 1))
    if kind == "quadratic":
        return lambda z: 0.5 * (z.reshape(z.shape[0], -1) ** 2).sum(-1)
    return lambda z: z.reshape(z.shape[0], -1).sum(-1, keepdim=True)  # wrong shape: [B, 1]


@st.composite
def calls(draw):
    batch = draw(st.integers(0, 6))
    d = draw(st.integers(1, 7))
    dtype = draw(st.sampled_from(DTYPES))
    z = torch.randn(batch, d * 2, dtype=torch.float64).to(dtype) if dtype != torch.int64 else torch.ones(batch, d * 2, dtype=dtype)
    if draw(st.booleans()):
        z = z[:, ::2]  # a non-contiguous view [B, d]
    else:
        z = z[:, :d]
    if batch and dtype.is_floating_point and draw(st.booleans()):
        z = z.clone()
        z.view(-1)[draw(st.integers(0, z.numel() - 1))] = draw(st.sampled_from(SPECIAL))
    step = draw(st.one_of(st.floats(1e-3, 1.0), st.sampled_from(SPECIAL + [-0.1])))
    return dict(
        energy_kind=draw(st.sampled_from(["sequential", "quadratic", "wrong_shape"])),
        d=d, z=z, n_steps=draw(st.integers(0, 3)), step_size=step,
        noise_scale=draw(st.sampled_from([0.0, 0.5, 1.0, -1.0, float("nan")])),
        prior_sigma=draw(st.sampled_from([None, 1.0, 0.0])),
        mala=draw(st.booleans()),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls())
def test_langevin_raises_clearly_or_matches_reference(call):
    energy = make_energy(call.pop("energy_kind"), call.pop("d"))
    z = call.pop("z")
    results = {}
    for backend in jk.available_backends():
        try:
            results[backend] = jk.langevin(energy, z, generator=(11, 0), backend=backend, **call)
        except (ValueError, TypeError) as exc:
            assert str(exc), "an error must say what was wrong"
            results[backend] = exc
    ref = results["reference"]
    for backend, out in results.items():
        if isinstance(ref, Exception):
            # Bad input is bad on every backend; a fused backend may refuse earlier, never accept.
            assert isinstance(out, Exception), f"{backend} accepted what the reference rejects: {ref}"
        elif not isinstance(out, Exception):
            tol = 1e-4 if ref.dtype == torch.float32 else 1e-10
            assert out.dtype == ref.dtype and out.shape == ref.shape
            assert torch.allclose(out, ref, atol=tol, rtol=tol, equal_nan=True), backend
        else:
            # A fused backend may decline an input the reference serves only by naming why.
            assert backend != "reference" and "cannot serve" in str(out), out


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_weights_are_reported_not_sampled(value):
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        net[0].weight[0, 0] = value
    z = torch.randn(2, 3)
    for backend in jk.available_backends():
        if backend == "cpu":  # reads the weights itself: it must check them
            with pytest.raises(ValueError, match="NaN|inf"):
                jk.langevin(net, z, n_steps=1, step_size=0.1, backend=backend)
        else:  # autograd through the module: the non-finite result shows the problem
            out = jk.langevin(net, z, n_steps=1, step_size=0.1, backend=backend)
            assert not torch.isfinite(out).all()
