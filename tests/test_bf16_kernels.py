"""The fused kernels' bf16 builds against a bf16-rounded reference: the torch specification with
every Linear layer's input and weight rounded to bf16 and the products summed in float32 (what
``vdpbf16ps`` and ``tl.dot`` on bf16 operands compute). Element-wise, over one step: a
longer one would let an input sitting on a bf16 rounding boundary round the other way in one
implementation (test_bf16_law.py compares the laws of long chains)."""
import pytest
import torch
import torch.nn.functional as F
from helpers import make_prior, start

import jebm_kernels as jk
from jebm_kernels import extension

_LINEAR = F.linear


def _round(t):
    return t.bfloat16().float()


class _RoundedLinear(torch.autograd.Function):
    """y = round(x) round(W)^T + b, and dL/dx = round(dL/dy) round(W): each GEMM's operands rounded
    to bf16, float32 sums, in the forward pass and in the input gradient alike (the kernels' GEMMs)."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(w)
        return _LINEAR(_round(x), _round(w), b)

    @staticmethod
    def backward(ctx, gy):
        (w,) = ctx.saved_tensors
        return _round(gy) @ _round(w), None, None


def bf16_rounded_linear(x, w, b=None):
    return _RoundedLinear.apply(x, w, b)


def bf16_rounded_reference(monkeypatch, energy, z, **kw):
    """The reference backend at fp32 with every F.linear rounded as the bf16 kernels round it."""
    with monkeypatch.context() as m:
        m.setattr(F, "linear", bf16_rounded_linear)
        return jk.langevin(energy, z, backend="reference", precision="fp32", **kw)


def kernel_backends():
    cpu = pytest.param("cpu", marks=pytest.mark.skipif(extension.cpu_bf16_reason() is not None,
                                                       reason=str(extension.cpu_bf16_reason())))
    return [cpu, "triton"]


def _available(backend):
    if backend == "triton":
        pytest.importorskip("triton")
        if not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("dims,space,joint", [((7,), "z", False), ((5, 3), "eps", True), ((6, 4), "z", False)])
def test_the_bf16_kernel_is_the_bf16_rounded_reference(monkeypatch, backend, dims, space, joint):
    _available(backend)
    spec = make_prior(dims, hidden=(19, 13), act="gelu", space=space, joint=joint, seed=3)
    energy = jk.PriorEnergy(spec)
    B = 17 if backend == "triton" else 37
    z = start(B, dims, seed=4)
    kw = dict(n_steps=1, step_size=[0.5] * len(dims), generator=(7, 0), return_info=True)
    ref, _ = bf16_rounded_reference(monkeypatch, energy, z, **kw)
    out, info = jk.langevin(energy, z, backend=backend, precision="bf16", **kw)
    assert info["fused"] and info["precision"] == "bf16", info["precision_note"]
    fp32, _ = jk.langevin(energy, z, backend="reference", precision="fp32", **kw)
    for o, r, f in zip(out, ref, fp32):
        torch.testing.assert_close(o, r, rtol=2e-4, atol=2e-4)
        # and bf16 is really what ran: the plain fp32 chain is several times further away
        assert float((o - f).abs().max()) > 3 * float((o - r).abs().max())


@pytest.mark.parametrize("backend", kernel_backends())
def test_bf16_kernel_mala_and_statistics(backend):
    _available(backend)
    spec = make_prior((6,), hidden=(11,), act="tanh", seed=5)
    energy = jk.PriorEnergy(spec)
    z = start(16, (6,), seed=6)
    out, info = jk.langevin(energy, z, backend=backend, precision="bf16", n_steps=4, step_size=0.2, mala=True,
                            generator=(2, 0), return_info=True)
    assert info["fused"] and info["precision"] == "bf16"
    assert len(info["accept"]) == 4 and all(0 <= a <= 1 for a in info["accept"])
    assert all(torch.isfinite(t).all() for t in out)
