"""The fused CPU backend against the reference, element by element after the whole chain.

Tolerance. Both backends draw the same Philox noise and take the same float32 steps in the same
order; they differ only in float32 rounding: the GEMMs sum in another order (oneDNN's blocked sums
vs. one FMA chain per chain lane), the activations' exp/erf/tanh/log are other ~1-ulp
implementations, and Box-Muller's log/cos are correctly rounded here where torch's are off by an
ulp for ~5-8% of the normals. Those ~1e-7-relative differences enter every step's gradient and
are carried along: a contracting chain (every energy here has a Gaussian base) keeps them at that
level; directions where the step multiplies differences by |1 - h * curvature| > 1 amplify them.
Measured on every case below (printed with -s): max |cpu - reference| after 40-60 steps is
1e-7 .. 1.2e-6 (the CVPR shapes, B = 100, are the worst) for states of size ~1-10. The bound,
|diff| <= 2e-5 + 2e-5 |ref|, leaves ~15x room for other CPUs and torch builds (other GEMM
kernels round differently) and is still ~10^4 below the noise one step adds (s * tau * xi ~
0.05-0.4), so a real bug (a wrong term, sign, noise counter or layer) fails it by orders of
magnitude.

MALA. An accept decision compares log(u) with log_alpha, a difference of energies of size ~10-100
computed in float32; the two backends' log_alpha differ by ~1e-6 .. 1e-5. A decision may therefore
differ only where |log_alpha - log u| is below MARGIN (1e-3) on the reference: the test replays
the reference loop step by step, records every chain's log_alpha and log u, and checks each
disagreement against that margin; chains that never disagree must then match to the tolerance.
"""
import math

import pytest
import torch
from torch import nn

import jebm_kernels as jk
from jebm_kernels import extension
from jebm_kernels.prior_chain import cpu as prior_chain_cpu
from jebm_kernels.problem import make_problem
from jebm_kernels.spec import ACTIVATIONS, GaussianSpec, MLPSpec, PriorSpec

import helpers
from helpers import (TinyConvDecoder, assert_close_where, check_info, make_mlp, make_prior, reference_mala_trace,
                     start)

pytestmark = pytest.mark.skipif(extension.cpu_error() is not None,
                                reason=f"the C++ extension is not built: {extension.cpu_error()}")

ATOL = RTOL = 2e-5
MARGIN = 1e-3


def run_both(energy, z, **kw):
    kw.setdefault("generator", (1234, 0))
    kw.setdefault("return_info", True)
    ref, ref_info = jk.langevin(energy, z, backend="reference", **kw)
    out, info = jk.langevin(energy, z, backend="cpu", **kw)
    assert info["backend"] == "cpu"
    return ref, ref_info, out, info


def check_close(out, ref, what):
    helpers.check_close(out, ref, what, atol=ATOL, rtol=RTOL, who="cpu")


# ------------------------------------------------------------------------------------------ basics

def test_available_and_auto():
    assert "cpu" in jk.available_backends()
    assert extension.isa() in ("avx512", "avx2", "generic")
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    _, info = jk.langevin(net, torch.randn(4, 3), n_steps=2, step_size=0.1, prior_sigma=1.0, return_info=True)
    assert info["backend"] == "cpu"
    _, info = jk.langevin(lambda z: (z ** 2).sum(-1), torch.randn(4, 3), n_steps=2, step_size=0.1, return_info=True)
    assert info["backend"] == "reference"  # nothing to fuse: auto falls back quietly


def test_lebm_sequential_with_prior_sigma():
    """The LEBM energy MLP passed straight to langevin, read as an energy with prior_sigma."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(100, 200), nn.GELU(), nn.Linear(200, 200), nn.GELU(), nn.Linear(200, 1))
    for B in (1, 7, 100):
        z = torch.randn(B, 100)
        ref, ref_info, out, info = run_both(net, z, n_steps=60, step_size=0.4, prior_sigma=1.0)
        check_close(out, ref, f"LEBM B={B}")
        check_info(info, ref_info)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation(act):
    spec = make_prior((3, 17), hidden=(24, 24), act=act, seed=ACTIVATIONS.index(act))
    z = start(7, spec.dims)
    ref, ref_info, out, info = run_both(jk.PriorEnergy(spec), z, n_steps=40, step_size=[0.3, 0.2])
    check_close(out, ref, f"activation {act}")
    check_info(info, ref_info)


@pytest.mark.parametrize("act", ["tanh", "softplus", "gelu_tanh"])
def test_out_activation_and_no_bias(act):
    gen = torch.Generator().manual_seed(5)
    term = make_mlp([17, 20, 1], "silu", out_act=act, gen=gen, bias=False)
    spec = PriorSpec((17,), (term,), energy_sign=1.0, base_sigma=(1.0,))
    ref, _, out, _ = run_both(jk.PriorEnergy(spec), start(7, (17,)), n_steps=30, step_size=0.3)
    check_close(out, ref, f"out_activation {act}")


@pytest.mark.parametrize("dims,B,space,joint", [
    ((1,), 1, "z", False),
    ((129,), 7, "z", True),
    ((3, 17), 100, "z", True),
    ((3, 17), 7, "eps", False),
    ((17, 100, 1), 7, "eps", True),
    ((100, 3), 1, "eps", True),
    ((129, 17, 3), 100, "eps", False),
])
def test_odd_shapes_both_spaces(dims, B, space, joint):
    spec = make_prior(dims, hidden=(40, 33), space=space, joint=joint, seed=len(dims) + B)
    z = start(B, dims)
    steps = [0.3 / (1 + l) for l in range(len(dims))]
    ref, ref_info, out, info = run_both(jk.PriorEnergy(spec), z, n_steps=60, step_size=steps, noise_scale=0.9)
    check_close(out, ref, f"dims {dims} B={B} {space} joint={joint}")
    check_info(info, ref_info)


def test_joint_term_only_and_base_sigma_with_inf():
    gen = torch.Generator().manual_seed(3)
    spec = PriorSpec((5, 4), (None, None), joint_term=make_mlp([9, 16, 1], "gelu", gen=gen),
                     energy_sign=1.0, base_sigma=(2.0, math.inf))
    ref, _, out, _ = run_both(jk.PriorEnergy(spec), start(7, (5, 4)), n_steps=40, step_size=0.2,
                              prior_sigma=[1.0, 3.0])
    check_close(out, ref, "joint term, base_sigma (2, inf), prior_sigma")


def test_cvpr_shapes():
    """The CVPR CIFAR-10 prior (L = 2, d = (128, 100), LeakyReLU 0.2), z-space, step 0.4."""
    gen = torch.Generator().manual_seed(11)
    spec = PriorSpec((128, 100),
                     (make_mlp([128, 200, 200, 200, 1], gen=gen), make_mlp([100, 100, 100, 1], gen=gen)),
                     gaussians=(GaussianSpec(make_mlp([100, 200, 200, 200, 200, 256], gen=gen, gain=0.5), 0.01),))
    ref, ref_info, out, info = run_both(jk.PriorEnergy(spec), start(100, spec.dims), n_steps=60, step_size=0.4)
    check_close(out, ref, "CVPR prior B=100")
    check_info(info, ref_info)


# ---------------------------------------------------------------------------------------- posterior

@pytest.mark.parametrize("space", ["z", "eps"])
def test_posterior_mlp_decoder(space):
    spec = make_prior((6, 4), hidden=(20,), space=space, seed=7)
    gen = torch.Generator().manual_seed(8)
    dec = make_mlp([6, 30, 16], "leaky_relu", out_act="tanh", gen=gen)
    x_obs = torch.rand(7, 1, 4, 4, generator=gen) * 2 - 1
    energy = jk.PosteriorEnergy(spec, dec, x_obs, 0.3)
    ref, ref_info, out, info = run_both(energy, start(7, spec.dims), n_steps=40, step_size=0.1)
    check_close(out, ref, f"posterior, MLP decoder, {space}")
    check_info(info, ref_info)


@pytest.mark.parametrize("space,mala", [("z", False), ("eps", False), ("eps", True)])
def test_posterior_conv_decoder(space, mala):
    torch.manual_seed(4)
    spec = make_prior((6, 4), hidden=(20,), space=space, seed=9)
    dec = TinyConvDecoder(6)
    x_obs = torch.rand(7, 1, 4, 4) * 2 - 1
    energy = jk.PosteriorEnergy(spec, dec, x_obs, 0.3)
    ref, ref_info, out, info = run_both(energy, start(7, spec.dims), n_steps=30, step_size=0.05, mala=mala)
    check_close(out, ref, f"posterior, conv decoder, {space}, mala={mala}")
    check_info(info, ref_info, mala)
    if mala:
        assert info["accept"] == ref_info["accept"]


def test_jebm_model_prior_and_posterior():
    model_mod = pytest.importorskip("jebm.model")
    torch.manual_seed(0)
    model = model_mod.JEBM((1, 4, 4), dims=(8, 4), joint_hidden=(16,), decoder="mlp", dec_hidden=(32,))
    for space in ("z", "eps"):
        z = start(7, model.dims)
        ref, _, out, _ = run_both(model.prior_energy_fn(space), z, n_steps=30, step_size=0.3)
        check_close(out, ref, f"jebm prior, {space}")
        x = torch.rand(7, 1, 4, 4) * 2 - 1
        ref, _, out, _ = run_both(model.posterior_energy_fn(x, space), z, n_steps=30, step_size=0.1)
        check_close(out, ref, f"jebm posterior, {space}")


# --------------------------------------------------------------------------------------------- MALA

@pytest.mark.parametrize("dims,B,space,step", [((17,), 100, "z", 1.0), ((3, 17), 100, "eps", 1.0),
                                               ((129,), 7, "z", 0.8)])
def test_mala_decisions_match_except_at_the_threshold(dims, B, space, step):
    spec = make_prior(dims, hidden=(32, 32), space=space, seed=B)
    energy = jk.PriorEnergy(spec)
    z = start(B, dims)
    K = 60
    kw = dict(n_steps=K, step_size=step, noise_scale=1.0, prior_sigma=None, mala=True, return_info=True)
    problem, _ = make_problem(energy, z, generator=(99, 0), **kw)
    ref_x, ref_dec, ref_margin = reference_mala_trace(problem)
    # the replay is the reference backend, bit for bit
    for a, b in zip(ref_x, jk.langevin(energy, z, generator=(99, 0), backend="reference", **kw)[0]):
        assert torch.equal(a, b)
    problem, _ = make_problem(energy, z, generator=(99, 0), **kw)
    record = torch.zeros(K, B, dtype=torch.uint8)
    out, _ = prior_chain_cpu.run(problem, accept_record=record)
    cpu_dec = record.bool()
    rate = float(ref_dec.float().mean())
    assert 0.3 < rate < 0.9, f"accept rate {rate}: choose a step size that makes decisions matter"
    diverged = torch.zeros(B, dtype=torch.bool)
    for k in range(K):
        differ = (cpu_dec[k] != ref_dec[k]) & ~diverged
        if differ.any():
            worst = float(ref_margin[k][differ].max())
            assert worst < MARGIN, f"step {k}: a decision differs with |log_alpha - log u| = {worst}"
            diverged |= differ
    print(f"MALA {dims} {space}: accept rate {rate:.2f}, chains with a threshold flip: {int(diverged.sum())}")
    assert int(diverged.sum()) <= max(1, B // 10)
    keep = ~diverged
    for l, (a, b) in enumerate(zip(out, ref_x)):
        assert_close_where(a[keep], b[keep], atol=ATOL, rtol=RTOL, what=f"MALA layer {l + 1}")


# ------------------------------------------------------------------------------- dispatch, checks

def test_explicit_cpu_refuses_what_it_cannot_serve():
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    z = torch.randn(4, 3)
    kw = dict(n_steps=1, step_size=0.1, backend="cpu")
    with pytest.raises(ValueError, match="float32"):
        jk.langevin(net.double(), z.double(), **kw)
    with pytest.raises(ValueError, match="nothing to fuse"):
        jk.langevin(lambda t: (t ** 2).sum(-1), z, **kw)
    with pytest.raises(ValueError, match="not of the fusable family"):
        jk.langevin(nn.Sequential(nn.Linear(3, 8), nn.Dropout(), nn.Linear(8, 1)), z, **kw)
    with pytest.raises(ValueError, match="not of the fusable family"):
        jk.langevin(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)), z, **kw)
    bad = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    with torch.no_grad():
        bad[2].bias[0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        jk.langevin(bad, z, **kw)
    spec = make_prior((3,), hidden=(8,))
    f64 = PriorSpec((3,), (MLPSpec(tuple(w.double() for w in spec.layer_terms[0].weights),
                                   spec.layer_terms[0].biases),), gaussians=())
    with pytest.raises(ValueError, match="float32"):
        jk.langevin(jk.PriorEnergy(f64), [z], **kw)
    x_obs = torch.full((4, 16), float("nan"))
    post = jk.PosteriorEnergy(spec, make_mlp([3, 16]), x_obs, 0.3)
    with pytest.raises(ValueError, match="x_obs contains NaN"):
        jk.langevin(post, [z], **kw)
    with pytest.raises(ValueError, match=r"\[B, d\]"):
        jk.langevin(jk.PriorEnergy(make_prior((4,), hidden=(8,))), [torch.randn(2, 2, 2)], **kw)


def test_noncontiguous_input_is_not_modified_and_zero_steps():
    spec = make_prior((5,), hidden=(8,))
    big = torch.randn(7, 10)
    z = [big[:, ::2]]
    before = big.clone()
    ref, _, out, _ = run_both(jk.PriorEnergy(spec), z, n_steps=10, step_size=0.2)
    check_close(out, ref, "non-contiguous start")
    assert torch.equal(big, before)
    out0 = jk.langevin(jk.PriorEnergy(spec), z, n_steps=0, step_size=0.2, backend="cpu")
    assert torch.equal(out0[0], z[0]) and out0[0].data_ptr() != z[0].data_ptr()
    with pytest.raises(ValueError, match="takes z as a list"):
        jk.langevin(jk.PriorEnergy(spec), z[0], n_steps=1, step_size=0.2, backend="cpu")


def test_threads_and_instruction_sets_do_not_change_a_chain():
    """Each chain's arithmetic is the same whatever the thread count; the generic build (no FMA)
    differs from the SIMD ones only by rounding."""
    spec = make_prior((17, 3), hidden=(33,), space="eps", joint=True)
    z = start(50, spec.dims)
    kw = dict(n_steps=20, step_size=0.3, generator=(5, 0), backend="cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = jk.langevin(jk.PriorEnergy(spec), z, **kw)
        torch.set_num_threads(max(2, threads))
        two = jk.langevin(jk.PriorEnergy(spec), z, **kw)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)
    from jebm_kernels import _C
    best = _C.isa()
    try:
        for name in _C.available_isas():
            _C.set_isa(name)
            other = jk.langevin(jk.PriorEnergy(spec), z, **kw)
            for a, b in zip(other, one):
                assert_close_where(a, b, atol=ATOL, rtol=RTOL, what=f"isa {name}")
    finally:
        _C.set_isa(best)
