"""The multi-layer update (jebm_kernels/update/) on every fused backend against the torch
reference: one launch moves every layer, x_l - s_l^2/2 g_l + s_l tau xi_l, drawing step k's
normals (and MALA's uniforms) from the shared Philox stream in problem.py's layout.

The uniforms must be bit for bit the reference's (they decide MALA's accept/reject); the normals
agree to the float32 rounding of log/cos in Box-Muller (torch's and the kernels' libm differ by an
ulp or two: |diff| <= 2e-6 for |xi| < 6), and the moved state to that times s tau plus one
rounding of the update.
"""
import pytest
import torch
from backend_runners import GPU
from helpers import assert_close_where

import jebm_kernels as jk
from jebm_kernels.arguments import make_problem
from jebm_kernels.update import reference as update_reference


def quartic(zs):
    return sum(0.25 * (t ** 4).sum(-1) + 0.5 * (t ** 2).sum(-1) for t in zs)


def update_problem(backend, B, dims, *, mala, generator=(2**64 - 5, 2**32 - 40)):
    gen = torch.Generator().manual_seed(2)
    x = backend.to_device([torch.randn(B, d, generator=gen) for d in dims])
    g = backend.to_device([torch.randn(B, d, generator=gen) for d in dims])
    problem, _ = make_problem(quartic, x, n_steps=3, step_size=[0.3 / (l + 1) for l in range(len(dims))],
                              noise_scale=0.7, prior_sigma=None, generator=generator, mala=mala, return_info=False)
    return problem, x, g


@pytest.mark.parametrize("B,dims,mala", [(1, (1,), False), (5, (3, 17), True), (33, (129, 2, 7), True)])
def test_each_step_draws_the_reference_stream(backend, B, dims, mala):
    """Steps 0..2 of one call: the counter advances by B * D (+ B) per step; the low word wraps."""
    problem, x, g = update_problem(backend, B, dims, mala=mala)
    for k in range(problem.n_steps):
        ref_prop, ref_noise, ref_uniform = update_reference.propose(problem, x, g, k)
        prop, noise, uniform = backend.propose(problem, x, g, k)
        if mala:
            assert torch.equal(uniform, ref_uniform), "MALA uniforms are tl.rand at offset + B*D + b"
            for l in range(len(dims)):
                assert_close_where(noise[l], ref_noise[l], atol=2e-6, what=f"step {k} normals, layer {l + 1}")
        else:
            assert uniform is None
        for l in range(len(dims)):
            assert_close_where(prop[l], ref_prop[l], atol=4e-6, rtol=1e-6, what=f"step {k} move, layer {l + 1}")


def test_seed_and_offset_read_from_a_tensor(backend):
    """The graph-safe form: a philox tensor on the state's device; its offset plus the step's."""
    if backend.name == "cpu":
        pytest.skip("the C++ update takes seed and offset on the host (a CPU philox tensor is read there)")
    problem, x, g = update_problem(backend, 5, (3, 17), mala=True)
    ref_prop, ref_noise, ref_uniform = update_reference.propose(problem, x, g, 2)
    seed, offset = problem.seed, problem.offset
    problem.philox = torch.tensor([seed - 2**64, offset - 7], dtype=torch.int64, device=backend.device)
    problem.offset = 7  # counts from the tensor's offset now
    prop, noise, uniform = backend.propose(problem, x, g, 2)
    assert torch.equal(uniform, ref_uniform)
    for l in range(2):
        assert_close_where(prop[l], ref_prop[l], atol=4e-6, rtol=1e-6, what=f"seed from memory, layer {l + 1}")


@pytest.mark.parametrize("batch,dims,mala", [(1, (1,), False), (7, (3, 17), False), (7, (3, 17), True),
                                             (100, (129,), True)])
def test_chains_equal_the_reference(backend, batch, dims, mala):
    """A non-fusable energy's whole chain: autograd gradients, this backend's update."""
    torch.manual_seed(batch)
    z0 = backend.to_device([torch.randn(batch, d) for d in dims])
    kw = dict(n_steps=12, step_size=[0.3 / (i + 1) for i in range(len(dims))], generator=(7, 3), mala=mala,
              noise_scale=0.9)
    ref, ref_info = jk.langevin(quartic, z0, backend="reference", return_info=True, **kw)
    out, info = backend.langevin(quartic, z0, **kw)
    # 12 contracting steps keep the per-step rounding differences near 1e-6
    for a, b in zip(out, ref):
        assert_close_where(a, b, atol=2e-5, rtol=2e-5, what=f"{backend.name} vs reference, dims {dims}")
    if mala:
        assert info["accept"] == pytest.approx(ref_info["accept"], abs=1.0 / batch + 1e-9)


def test_triton_kernel_clamp_and_noise_out():
    """The Triton kernel's own options (clamp, writing the normals out) against the formula."""
    pytest.importorskip("triton")
    from jebm_kernels.update.triton import launch
    device = "cuda" if GPU else "cpu"
    B, dims, s, tau = 7, [1, 3, 17], [0.3, 0.2, 0.05], 0.8
    sizes = [B * d for d in dims]
    x = torch.randn(sum(sizes), device=device)
    g = torch.randn_like(x)
    seed, offset = 2**33 + 1, 2**32 - 5  # the counter's low word wraps inside the call
    tables = dict(starts=torch.tensor([0, sizes[0], sizes[0] + sizes[1]], device=device),
                  size_t=torch.tensor(sizes, device=device), h=torch.tensor([v * v / 2 for v in s], device=device),
                  c=torch.tensor([v * tau for v in s], device=device))
    out, noise, uniform = launch(x, g, sizes, seed, offset, n_uniform=B, write_noise=True, clamp=(-1.5, 1.5),
                                 block=32, **tables)
    xi = jk.philox_randn(seed, offset, sum(sizes), device=device)
    assert_close_where(noise, xi, atol=2e-6, what="normals")
    assert torch.equal(uniform, jk.philox_rand(seed, offset + sum(sizes), B, device=device))
    per = torch.cat([torch.full((n,), v) for n, v in zip(sizes, s)]).to(device)
    expected = ((x - per * per / 2 * g) + per * tau * xi).clamp(-1.5, 1.5)
    assert_close_where(out, expected, atol=1e-6, what="moved state")
