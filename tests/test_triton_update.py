"""The Triton multi-layer update (run by Triton's interpreter on the CPU) against the reference."""
import os

import pytest
import torch

import jebm_kernels as jk
from helpers import assert_close_where

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs a GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_kernel_matches_the_formula_with_clamp_and_noise_out():
    from jebm_kernels.update.triton import launch
    B, dims, s, tau = 7, [1, 3, 17], [0.3, 0.2, 0.05], 0.8
    sizes = [B * d for d in dims]
    x = torch.randn(sum(sizes), device=DEVICE)
    g = torch.randn_like(x)
    seed, offset = 2**33 + 1, 2**32 - 5  # the counter's low word wraps inside the call
    tables = dict(starts=torch.tensor([0, sizes[0], sizes[0] + sizes[1]], device=DEVICE),
                  size_t=torch.tensor(sizes, device=DEVICE), h=torch.tensor([v * v / 2 for v in s], device=DEVICE),
                  c=torch.tensor([v * tau for v in s], device=DEVICE))
    out, noise, uniform = launch(x, g, sizes, seed, offset, n_uniform=B, write_noise=True, clamp=(-1.5, 1.5),
                                 block=32, **tables)
    xi = jk.philox_randn(seed, offset, sum(sizes), device=DEVICE)
    assert_close_where(noise, xi, atol=2e-6, what="normals")
    assert torch.equal(uniform, jk.philox_rand(seed, offset + sum(sizes), B, device=DEVICE))
    per = torch.cat([torch.full((n,), v) for n, v in zip(sizes, s)]).to(DEVICE)
    expected = ((x - per * per / 2 * g) + per * tau * xi).clamp(-1.5, 1.5)
    assert_close_where(out, expected, atol=1e-6, what="moved state")


def quartic(zs):
    return sum(0.25 * (t ** 4).sum(-1) + 0.5 * (t ** 2).sum(-1) for t in zs)


@pytest.mark.parametrize("batch,dims,mala", [(1, (1,), False), (7, (3, 17), False), (7, (3, 17), True),
                                             (100, (129,), True)])
def test_chains_equal_the_reference(batch, dims, mala):
    torch.manual_seed(batch)
    z0 = [torch.randn(batch, d, device=DEVICE) for d in dims]
    kw = dict(n_steps=12, step_size=[0.3 / (i + 1) for i in range(len(dims))], generator=(7, 3),
              mala=mala, return_info=True, noise_scale=0.9)
    ref, ref_info = jk.langevin(quartic, z0, backend="reference", **kw)
    tri, tri_info = jk.langevin(quartic, z0, backend="triton", **kw)
    # Same noise, same order of float32 operations, except log/cos in Box-Muller (a few ulp) and
    # possible FMA contraction: 12 contracting steps keep the difference near 1e-6.
    for a, b in zip(tri, ref):
        assert_close_where(a, b, atol=2e-5, rtol=2e-5, what=f"triton vs reference, dims {dims}")
    if mala:
        assert tri_info["accept"] == pytest.approx(ref_info["accept"], abs=1.0 / batch + 1e-9)


def test_auto_does_not_pick_the_interpreter_for_cpu_tensors():
    if DEVICE != "cpu":
        pytest.skip("only meaningful without a GPU")
    _, info = jk.langevin(quartic, [torch.randn(2, 2)], n_steps=1, step_size=0.1, return_info=True)
    assert info["backend"] != "triton"


def test_triton_rejects_float64_clearly():
    with pytest.raises(ValueError, match="float32"):
        jk.langevin(quartic, [torch.randn(2, 2, dtype=torch.float64, device=DEVICE)], n_steps=1,
                    step_size=0.1, backend="triton")
