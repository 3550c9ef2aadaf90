"""The whole prior chain (jebm_kernels/prior_chain/) on every fused backend against the reference,
element by element after the whole chain, with the same Philox noise.

Backends (the ``backend`` fixture, tests/backend_runners.py): cpu (the C++ kernels), triton (a
GPU, or Triton's interpreter on the CPU), cuda (a GPU, or csrc's CUDA sources emulated on the host).
The interpreter and the emulation run short chains (``Runner.steps``); the compiled kernels run the
papers' 40-60 steps.

Tolerance. Every backend draws the same Philox noise and takes the same float32 steps in the same
order; they differ only in float32 rounding: GEMMs sum in another order (oneDNN's blocked sums vs.
one FMA chain per chain lane, numpy's sgemm per tile in the interpreter), the activations'
exp/erf/tanh/log are other ~1-ulp implementations, and Box-Muller's log/cos differ by an ulp for
~5-8% of the normals. Those ~1e-7-relative differences enter every step's gradient and are carried
along: a contracting chain (every energy here has a Gaussian base) keeps them at that level.
Measured (printed with -s): max |backend - reference| after 40-60 steps is 1e-7 .. 1.2e-6 (the
CVPR shapes, B = 100, are the worst) for states of size ~1-10. The bound, |diff| <= 2e-5 + 2e-5
|ref|, leaves ~15x room for other CPUs and torch builds and is still ~10^4 below the noise one
step adds (s * tau * xi ~ 0.05-0.4), so a real bug (a wrong term, sign, noise counter, layer or
activation) fails it by orders of magnitude.

MALA. An accept decision compares log(u) with log_alpha, a difference of energies of size ~10-100
computed in float32; two backends' log_alpha differ by ~1e-6 .. 1e-5. A decision may therefore
differ only where |log_alpha - log u| is below MARGIN (1e-3) on the reference: the test replays
the reference loop step by step, records every chain's log_alpha and log u, and checks each
disagreement against that margin; chains that never disagree must then match to the tolerance.
"""
import math

import helpers
import pytest
import torch
from backend_runners import ATOL, RTOL, check, run_both
from helpers import assert_close_where, make_mlp, make_prior, reference_mala_trace, start
from torch import nn

import jebm_kernels as jk
from jebm_kernels.arguments import make_problem
from jebm_kernels.spec import ACTIVATIONS, GaussianSpec, PriorSpec

MARGIN = 1e-3


# ------------------------------------------------------------------------------------ the math

@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation(backend, act):
    spec = make_prior((3, 17), hidden=(24, 24), act=act, seed=ACTIVATIONS.index(act))
    ref, ref_info, out, info = run_both(backend, jk.PriorEnergy(spec), start(7, spec.dims), n_steps=40,
                                        step_size=[0.3, 0.2])
    check(backend, out, ref, f"activation {act}")
    helpers.check_info(info, ref_info)


@pytest.mark.parametrize("act", ["tanh", "softplus", "gelu_tanh", "elu"])
def test_out_activation_and_no_bias(backend, act):
    gen = torch.Generator().manual_seed(5)
    term = make_mlp([17, 20, 1], "silu", out_act=act, gen=gen, bias=False)
    spec = PriorSpec((17,), (term,), energy_sign=1.0, base_sigma=(1.0,))
    ref, _, out, _ = run_both(backend, jk.PriorEnergy(spec), start(7, (17,)), n_steps=30, step_size=0.3)
    check(backend, out, ref, f"out_activation {act}")


@pytest.mark.parametrize("dims,B,space,joint", [
    ((1,), 1, "z", False),
    ((129,), 7, "z", True),
    ((3, 17), 100, "z", True),
    ((3, 17), 7, "eps", False),
    ((17, 100, 1), 7, "eps", True),
    ((100, 3), 1, "eps", True),
    ((129, 17, 3), 17, "eps", False),
])
def test_odd_shapes_both_spaces(backend, dims, B, space, joint):
    """Dims 1, 3, 17, 100, 129 and batches 1, 7, 17, 100 against every kernel's blocks (16-chain
    Triton blocks, 4/8-chain CUDA blocks, SIMD-width CPU blocks) and column chunks."""
    spec = make_prior(dims, hidden=(40, 33), space=space, joint=joint, seed=len(dims) + B)
    steps = [0.3 / (1 + l) for l in range(len(dims))]
    ref, ref_info, out, info = run_both(backend, jk.PriorEnergy(spec), start(B, dims), n_steps=60, step_size=steps,
                                        noise_scale=0.9)
    check(backend, out, ref, f"dims {dims} B={B} {space} joint={joint}")
    helpers.check_info(info, ref_info)


def test_mixed_activations_three_layers(backend):
    """One prior whose MLPs use different activations, out-activations and a bias-free layer:
    Softplus(beta 1.5), none, Tanh(out Softplus) terms; joint ReLU; Gaussians LeakyReLU and GELU."""
    gen = torch.Generator().manual_seed(2)
    dims = (17, 1, 3)
    terms = (make_mlp([17, 9, 1], "softplus", gen=gen), None,
             make_mlp([3, 9, 1], "tanh", out_act="softplus", gen=gen, bias=False))
    joint = make_mlp([21, 11, 1], "relu", gen=gen)
    gauss = (GaussianSpec(make_mlp([1, 10, 34], "leaky_relu", gen=gen, gain=0.5), 0.01),
             GaussianSpec(make_mlp([3, 10, 2], "gelu", gen=gen, gain=0.5), 0.01))
    spec = PriorSpec(dims, terms, joint, gauss, space="eps", energy_sign=-1.0)
    ref, ref_info, out, info = run_both(backend, jk.PriorEnergy(spec), start(17, dims), n_steps=30,
                                        step_size=[0.3, 0.25, 0.2])
    check(backend, out, ref, "eps-space (17, 1, 3), B=17, joint, mixed activations")
    helpers.check_info(info, ref_info)


def test_joint_term_only_base_sigma_with_inf_and_prior_sigma(backend):
    gen = torch.Generator().manual_seed(3)
    spec = PriorSpec((5, 4), (None, None), joint_term=make_mlp([9, 16, 1], "gelu", gen=gen),
                     energy_sign=1.0, base_sigma=(2.0, math.inf))
    ref, _, out, _ = run_both(backend, jk.PriorEnergy(spec), start(7, (5, 4)), n_steps=40, step_size=0.2,
                              prior_sigma=[1.0, 3.0])
    check(backend, out, ref, "joint term, base_sigma (2, inf), prior_sigma")


@pytest.mark.parametrize("B", [1, 7, 100])
def test_lebm_sequential_with_prior_sigma(backend, B):
    """The LEBM energy MLP passed straight to langevin, read as an energy with prior_sigma."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(100, 200), nn.GELU(), nn.Linear(200, 200), nn.GELU(), nn.Linear(200, 1))
    z = torch.randn(B, 100)
    ref, ref_info, out, info = run_both(backend, net, z, n_steps=60 if not backend.slow else 2, step_size=0.4,
                                        prior_sigma=1.0)
    check(backend, out, ref, f"LEBM B={B}")
    helpers.check_info(info, ref_info)


def test_cvpr_shapes(backend):
    """The CVPR CIFAR-10 prior (L = 2, d = (128, 100), LeakyReLU 0.2), z-space, step 0.4, B = 100."""
    if backend.slow:
        pytest.skip(f"the {backend.name} interpreter/emulation would take minutes at these shapes; "
                    "test_odd_shapes_both_spaces covers the same code paths there")
    gen = torch.Generator().manual_seed(11)
    spec = PriorSpec((128, 100),
                     (make_mlp([128, 200, 200, 200, 1], gen=gen), make_mlp([100, 100, 100, 1], gen=gen)),
                     gaussians=(GaussianSpec(make_mlp([100, 200, 200, 200, 200, 256], gen=gen, gain=0.5), 0.01),))
    ref, ref_info, out, info = run_both(backend, jk.PriorEnergy(spec), start(100, spec.dims), n_steps=60,
                                        step_size=0.4)
    check(backend, out, ref, "CVPR prior B=100")
    helpers.check_info(info, ref_info)


def test_jebm_model_prior(backend):
    model_mod = pytest.importorskip("jebm.model")
    torch.manual_seed(0)
    model = model_mod.JEBM((1, 4, 4), dims=(8, 4), joint_hidden=(16,), decoder="mlp", dec_hidden=(32,))
    model = model.to(backend.device)
    for space in ("z", "eps"):
        ref, _, out, _ = run_both(backend, model.prior_energy_fn(space), start(7, model.dims), n_steps=30,
                                  step_size=0.3)
        check(backend, out, ref, f"jebm prior, {space}")


# ------------------------------------------------------------------------------------ the noise

def test_graph_safe_seed_and_offset_read_from_a_tensor(backend):
    """The kernel reads (seed, base offset) from an int64 tensor on the state's device and adds
    the problem's offset: what a captured CUDA graph needs to draw new noise on every replay."""
    if backend.name == "cpu":
        pytest.skip("the C++ chain takes seed and offset on the host (a CPU philox tensor is read there)")
    spec = backend.to_device(make_prior((3, 1), hidden=(9,), space="eps", seed=3, gauss_hidden=(7,)))
    z = backend.to_device(start(1, spec.dims))
    seed, offset = 2**64 - 2, 2**33 + 5
    kw = dict(n_steps=4, step_size=0.3, noise_scale=1.0, prior_sigma=None, mala=True, return_info=False)
    ref = jk.langevin(jk.PriorEnergy(spec), z, generator=(seed, offset), backend="reference", **kw)
    problem, _ = make_problem(jk.PriorEnergy(spec), z, generator=(12345, 100), **kw)  # another seed
    problem.philox = torch.tensor([seed - 2**64, offset - 100], dtype=torch.int64, device=backend.device)
    if backend.name == "triton":
        from jebm_kernels.prior_chain import triton as prior_chain_triton
        out, _ = prior_chain_triton.run(problem)
    else:
        from jebm_kernels.prior_chain import cuda as prior_chain_cuda
        out, _ = (prior_chain_cuda.run(problem, ext=backend.emu) if backend.slow else prior_chain_cuda.run(problem))
    check(backend, out, ref, "eps-space (3, 1), B=1, MALA, seed and offset from memory")


# ------------------------------------------------------------------------------------- MALA

@pytest.mark.parametrize("dims,B,space,step", [((17,), 100, "z", 1.0), ((3, 17), 17, "eps", 1.0),
                                               ((129,), 7, "z", 0.8)])
def test_mala_decisions_match_except_at_the_threshold(backend, dims, B, space, step):
    spec = backend.to_device(make_prior(dims, hidden=(32, 32), space=space, seed=B))
    energy = jk.PriorEnergy(spec)
    z = backend.to_device(start(B, dims))
    K = backend.steps(60) if not backend.slow else 6
    kw = dict(n_steps=K, step_size=step, noise_scale=1.0, prior_sigma=None, mala=True, return_info=True)
    problem, _ = make_problem(energy, z, generator=(99, 0), **kw)
    ref_x, ref_dec, ref_margin = reference_mala_trace(problem)
    # the replay is the reference backend, bit for bit
    for a, b in zip(ref_x, jk.langevin(energy, z, generator=(99, 0), backend="reference", **kw)[0]):
        assert torch.equal(a, b)
    rate = float(ref_dec.float().mean())
    assert 0.2 < rate < 0.95, f"accept rate {rate}: choose a step size that makes decisions matter"
    if backend.name == "triton":  # no decision record: a chain may leave the reference only near the threshold
        out, _ = backend.langevin(energy, z, generator=(99, 0), **kw)
        near = (ref_margin < MARGIN).any(0)
        diverged = torch.zeros(B, dtype=torch.bool, device=ref_dec.device)
        for a, b in zip(out, ref_x):
            diverged |= ((a - b).abs() > ATOL + RTOL * b.abs()).any(1)
        assert not bool((diverged & ~near).any()), "a chain left the reference without a decision near the threshold"
    else:
        problem, _ = make_problem(energy, z, generator=(99, 0), **kw)
        record = torch.zeros(K, B, dtype=torch.uint8, device=backend.device)
        out, stats = backend.run_with_record(problem, record)
        dec = record.bool()
        diverged = torch.zeros(B, dtype=torch.bool, device=ref_dec.device)
        for k in range(K):
            differ = (dec[k] != ref_dec[k]) & ~diverged
            if differ.any():
                worst = float(ref_margin[k][differ].max())
                assert worst < MARGIN, f"step {k}: a decision differs with |log_alpha - log u| = {worst}"
                diverged |= differ
        assert torch.allclose(stats[:, 2].float(), dec.float().mean(1)), "accept rates are the decisions' means"
    print(f"MALA {dims} {space} on {backend.name}: accept rate {rate:.2f}, threshold flips {int(diverged.sum())}")
    assert int(diverged.sum()) <= max(1, B // 10)
    keep = ~diverged
    for l, (a, b) in enumerate(zip(out, ref_x)):
        assert_close_where(a[keep], b[keep], atol=ATOL, rtol=RTOL, what=f"MALA layer {l + 1}")


# --------------------------------------------------------------------------- inputs and outputs

def test_noncontiguous_input_is_not_modified_and_zero_steps(backend):
    spec = make_prior((5,), hidden=(8,))
    big = backend.to_device(torch.randn(7, 10))
    z = [big[:, ::2]]
    before = big.clone()
    ref, _, out, _ = run_both(backend, jk.PriorEnergy(spec), z, n_steps=10, step_size=0.2)
    check(backend, out, ref, "non-contiguous start")
    assert torch.equal(big, before)
    out0, _ = backend.langevin(backend.to_device(jk.PriorEnergy(spec)), z, n_steps=0, step_size=0.2)
    assert torch.equal(out0[0], z[0]) and out0[0].data_ptr() != z[0].data_ptr()


# ------------------------------------------------------------------- one numbering, one packing

def test_every_backend_numbers_the_mlps_as_prior_spec_mlps():
    """``PriorSpec.mlps`` is the one numbering: layer terms (absent ones skipped), the joint term,
    the Gaussians, an MLP decoder; the op's encoding and the GPU kernels' tables use it."""
    from jebm_kernels.prior_chain.cuda import CudaWeights
    from jebm_kernels.prior_chain.triton import TritonTables

    gen = torch.Generator().manual_seed(4)
    dims = (3, 2, 4)
    terms = (None, helpers.make_mlp([2, 5, 1], gen=gen), helpers.make_mlp([4, 1], gen=gen, bias=False))
    joint = helpers.make_mlp([9, 6, 1], "silu", gen=gen)
    gaussians = tuple(GaussianSpec(helpers.make_mlp([dims[l + 1], 5, 2 * dims[l]], "tanh", gen=gen), 0.02)
                      for l in range(2))
    spec = PriorSpec(dims, terms, joint, gaussians)
    decoder = helpers.make_mlp([3, 7], gen=gen)
    mlps = spec.mlps(decoder)
    assert [(e.index, e.role, e.layer, e.name) for e in mlps] == [
        (0, "layer term", 1, "layer term 2"), (1, "layer term", 2, "layer term 3"),
        (2, "joint term", None, "joint term"), (3, "Gaussian", 0, "Gaussian 1"), (4, "Gaussian", 1, "Gaussian 2"),
        (5, "decoder", None, "decoder")]
    assert [e.mlp for e in mlps] == [terms[1], terms[2], joint, gaussians[0].mlp, gaussians[1].mlp, decoder]
    assert (mlps.terms, mlps.joint, mlps.gaussians, mlps.decoder) == ((-1, 0, 1), 2, (3, 4), 5)
    assert spec.mlps().decoder == -1 and len(spec.mlps(lambda z: z)) == 5  # a callable decoder is not an MLP

    structure, _, params = jk.ops.encode_prior(spec)
    assert structure[:5] == [3, 0, 1, 2, 5] and structure[5 + 3:5 + 3 + 3 + 2] == [-1, 0, 1, 3, 4]
    assert torch.equal(params[0], terms[1].weights[0])
    cuda = CudaWeights(spec, torch.device("cpu"), {a: i for i, a in enumerate(ACTIVATIONS)})
    assert (cuda.terms, cuda.joint, cuda.gauss) == ([-1, 0, 1], 2, [3, 4]) and len(cuda.mlps) == 5
    tables = TritonTables(spec, torch.device("cpu"), torch.float32)
    assert tables.joint == 2 and tables.lay.view(3, 4)[:, 2:].tolist() == [[-1, 3], [0, 4], [1, -1]]
    assert torch.equal(tables.weights, cuda.weights)


def test_packed_weights_hold_wt_w_and_bias_at_their_offsets():
    from jebm_kernels.prior_chain.packing import PackedWeights

    gen = torch.Generator().manual_seed(5)
    spec = PriorSpec((3,), (helpers.make_mlp([3, 4, 1], gen=gen),), helpers.make_mlp([3, 2, 1], gen=gen, bias=False),
                     base_sigma=(1.0,))
    packed = PackedWeights(spec.mlps(), torch.device("cpu"))
    assert packed.weights.numel() == (2 * 12 + 4 + 2 * 4 + 1) + (2 * 6 + 2 * 2)
    for e, linears in zip(spec.mlps(), packed.linears):
        for (w, b), p in zip(zip(e.mlp.weights, e.mlp.biases), linears):
            n = w.numel()
            assert (p.n_out, p.n_in) == tuple(w.shape)
            assert torch.equal(packed.weights[p.wt:p.wt + n].view(p.n_in, p.n_out), w.t())
            assert torch.equal(packed.weights[p.w:p.w + n].view(p.n_out, p.n_in), w)
            assert (p.bias == -1) == (b is None)
            if b is not None:
                assert torch.equal(packed.weights[p.bias:p.bias + p.n_out], b)
    with pytest.raises(TypeError, match="one dtype"):
        PackedWeights(PriorSpec((3,), (helpers.make_mlp([3, 1]),), base_sigma=(1.0,)).mlps(), torch.device("cpu"),
                      torch.float64)
    assert PackedWeights(PriorSpec((2,), (None,), base_sigma=(1.0,)).mlps(), torch.device("cpu")).weights.numel() == 1
