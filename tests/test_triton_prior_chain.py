"""The Triton whole-prior-chain kernel (Triton's interpreter on the CPU, or a GPU) against the
reference, element by element after the whole chain, with the same Philox noise.

Tolerance. |triton - reference| <= 2e-5 + 2e-5 |reference|, as for the cpu backend (see
test_cpu_backend.py): the two draw the same noise and take the same float32 steps in the same
order, differing only in float32 rounding (GEMM summation order: numpy's sgemm per tile chunk, or
the GPU's FMA chain, vs. torch's; the kernel's own tanh/softplus/erf against torch's; Box-Muller's
log/cos, a few ulp). Measured under the interpreter (printed with -s): max |diff| 1e-7 .. 6e-7
after these chains, states of size ~1-10; the bound leaves ~30x room and is still ~10^4 below one
step's noise (s * tau * xi ~ 0.1-0.3), so a wrong term, sign, layer, activation or noise counter
fails by orders of magnitude.

Cost. The interpreter runs every tile operation in Python (~0.3-1 s per step per 16-chain block
here), so each case is a short chain (3-6 steps) and the activations are spread over the MLPs of a
few priors instead of one prior per activation: every activation, both spaces, the joint term,
base_sigma with inf, prior_sigma, out-activations, no-bias layers and MALA are each in some case.
Odd shapes: dims 1, 3, 17, 129 and batches 1, 7, 17 (two 16-chain blocks, the second with one
row) and 100 (seven blocks) against the kernel's default tiles (16 chains, 32 / 64 columns), so
the chunk and row masks and the multi-chunk GEMM loops all run.
"""
import math
import os

import pytest
import torch
from torch import nn

import jebm_kernels as jk
from jebm_kernels.problem import make_problem
from jebm_kernels.spec import GaussianSpec, PriorSpec

import helpers
from helpers import assert_close_where, make_mlp, reference_mala_trace, start

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs a GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = RTOL = 2e-5
MARGIN = 1e-3  # |log_alpha - log u| below which a MALA decision may flip on rounding (test_cpu_backend)


def to_device(spec: PriorSpec) -> PriorSpec:
    def mv(m):
        return None if m is None else type(m)(tuple(w.to(DEVICE) for w in m.weights),
                                               tuple(None if b is None else b.to(DEVICE) for b in m.biases),
                                               m.activation, m.act_param, m.out_activation)
    return PriorSpec(spec.dims, tuple(mv(t) for t in spec.layer_terms), mv(spec.joint_term),
                     tuple(GaussianSpec(mv(g.mlp), g.sigma_floor) for g in spec.gaussians),
                     spec.space, spec.energy_sign, spec.base_sigma)


def mixed_prior(dims, space, acts, *, joint_act=None, out_acts=None, no_bias=(), seed=0):
    """A prior whose MLPs use different activations: acts[l] for layer term l (None: no term),
    the Gaussians take the activations after the terms'; out_acts[l] the terms' output ones."""
    gen = torch.Generator().manual_seed(seed)
    L = len(dims)
    out_acts = out_acts or [None] * L
    terms = tuple(None if a is None else make_mlp([d, 9, 1], a, out_act=o or "identity", gen=gen,
                                                  bias=l not in no_bias)
                  for l, (d, a, o) in enumerate(zip(dims, acts[:L], out_acts)))
    joint = make_mlp([sum(dims), 11, 1], joint_act, gen=gen) if joint_act else None
    gauss = tuple(GaussianSpec(make_mlp([dims[l + 1], 10, 2 * dims[l]], acts[L + l], gen=gen, gain=0.5), 0.01)
                  for l in range(L - 1))
    return to_device(PriorSpec(tuple(dims), terms, joint, gauss, space=space, energy_sign=-1.0))


def run_both(energy, z, **kw):
    kw.setdefault("generator", (2**63 + 977, 2**32 - 3))  # seed past 2^63, counter low word wraps
    ref, ref_info = jk.langevin(energy, z, backend="reference", return_info=True, **kw)
    out, info = jk.langevin(energy, z, backend="triton", return_info=True, **kw)
    assert info["backend"] == "triton"
    return ref, ref_info, out, info


def check_close(out, ref, what):
    helpers.check_close(out, ref, what, atol=ATOL, rtol=RTOL, who="triton")


def test_z_space_joint_term_out_activations_no_bias():
    # terms: LeakyReLU (out Softplus), GELU erf (no bias, out Tanh); joint GELU tanh; Gaussian SiLU
    spec = mixed_prior((3, 17), "z", ["leaky_relu", "gelu", "silu"], joint_act="gelu_tanh",
                       out_acts=["softplus", "tanh"], no_bias=(1,), seed=1)
    z = [t.to(DEVICE) for t in start(7, spec.dims)]
    ref, ref_info, out, info = run_both(jk.PriorEnergy(spec), z, n_steps=5, step_size=[0.3, 0.2],
                                        noise_scale=0.9)
    check_close(out, ref, "z-space (3, 17), B=7, joint")
    helpers.check_info(info, ref_info)


def test_eps_space_three_layers_seventeen_chains():
    # terms: Softplus(beta 1.5), none, Tanh; joint ReLU; Gaussians LeakyReLU and GELU erf
    spec = mixed_prior((17, 1, 3), "eps", ["softplus", None, "tanh", "leaky_relu", "gelu"],
                       joint_act="relu", seed=2)
    z = [t.to(DEVICE) for t in start(17, spec.dims)]
    ref, ref_info, out, info = run_both(jk.PriorEnergy(spec), z, n_steps=3, step_size=[0.3, 0.25, 0.2])
    check_close(out, ref, "eps-space (17, 1, 3), B=17, joint")
    helpers.check_info(info, ref_info)


def test_eps_space_one_chain_and_the_graph_safe_seed_pointer():
    """B = 1 in eps-space, run by the kernel reading (seed, offset) from a tensor (the CUDA-graph
    variant): the same numbers as the reference at that (seed, offset)."""
    from jebm_kernels.prior_chain import triton as prior_chain_triton
    from jebm_kernels.problem import make_problem
    spec = mixed_prior((3, 1), "eps", ["gelu_tanh", "silu", "tanh"], seed=3)
    z = [t.to(DEVICE) for t in start(1, spec.dims)]
    seed, offset = 2**64 - 2, 2**33 + 5
    ref = jk.langevin(jk.PriorEnergy(spec), z, n_steps=4, step_size=0.3, generator=(seed, offset),
                      backend="reference")
    philox = torch.tensor([seed - 2**64, offset - 100], dtype=torch.int64, device=DEVICE)
    problem, _ = make_problem(jk.PriorEnergy(spec), z, n_steps=4, step_size=0.3, noise_scale=1.0, prior_sigma=None,
                              generator=(12345, 100), mala=False, return_info=False)  # another seed
    problem.philox = philox  # the kernel reads seed and base from it; the problem's offset (100) is added
    out, _ = prior_chain_triton.run(problem)
    check_close(out, ref, "eps-space (3, 1), B=1, seed from a tensor")


def test_lebm_sequential_129_dims_100_chains():
    """An nn.Sequential energy (base_sigma inf, energy_sign +1) with prior_sigma: 129 inputs and 70
    hidden units are several 32/64-column chunks; 100 chains are seven 16-chain blocks."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(129, 70), nn.ReLU(), nn.Linear(70, 1)).to(DEVICE)
    z = torch.randn(100, 129, device=DEVICE)
    ref, ref_info, out, info = run_both(net, z, n_steps=2, step_size=0.4, prior_sigma=1.0)
    check_close(out, ref, "LEBM Sequential 129-70-1, B=100")
    helpers.check_info(info, ref_info)


def test_base_sigma_with_inf_and_joint_only():
    gen = torch.Generator().manual_seed(4)
    spec = to_device(PriorSpec((1, 3), (None, None), joint_term=make_mlp([4, 9, 1], "gelu", gen=gen),
                               energy_sign=1.0, base_sigma=(2.0, math.inf)))
    z = [t.to(DEVICE) for t in start(7, spec.dims)]
    ref, _, out, _ = run_both(jk.PriorEnergy(spec), z, n_steps=4, step_size=0.2, prior_sigma=[1.0, 3.0])
    check_close(out, ref, "joint term only, base_sigma (2, inf), prior_sigma (1, 3)")


def test_mala_decisions_match_except_at_the_threshold():
    """A chain's final state equals the reference's unless one of its decisions sat within MARGIN
    of the threshold on the reference (a flipped decision moves a chain by ~s xi >> tolerance)."""
    spec = mixed_prior((3, 17), "z", ["leaky_relu", "silu", "tanh"], seed=5)
    energy = jk.PriorEnergy(spec)
    B, K = 17, 6
    z = [t.to(DEVICE) for t in start(B, spec.dims)]
    kw = dict(n_steps=K, step_size=[1.0, 0.6], noise_scale=1.0, prior_sigma=None, mala=True,
              return_info=True)
    problem, _ = make_problem(energy, z, generator=(99, 0), **kw)
    ref_x, ref_dec, ref_margin = reference_mala_trace(problem)
    out, info = jk.langevin(energy, z, generator=(99, 0), backend="triton", **kw)
    rate = float(ref_dec.float().mean())
    assert 0.3 < rate < 0.9, f"accept rate {rate}: choose a step size that makes decisions matter"
    near = (ref_margin < MARGIN).any(0)
    far = torch.zeros(B, dtype=torch.bool, device=ref_dec.device)
    for a, b in zip(out, ref_x):
        far |= ((a - b).abs() > ATOL + RTOL * b.abs()).any(1)
    assert not bool((far & ~near).any()), (
        f"chains {torch.nonzero(far & ~near).flatten().tolist()} left the reference without a "
        f"decision near the threshold")
    keep = ~far
    assert int(keep.sum()) >= B - max(1, B // 10)
    for l, (a, b) in enumerate(zip(out, ref_x)):
        assert_close_where(a[keep], b[keep], atol=ATOL, rtol=RTOL, what=f"MALA layer {l + 1}")
    ref_rates = ref_dec.float().mean(1).tolist()
    assert info["accept"] == pytest.approx(ref_rates, abs=int(far.sum()) / B + 1e-6)
    print(f"MALA: accept rate {rate:.2f}, chains off the reference at a threshold: {int(far.sum())}")
