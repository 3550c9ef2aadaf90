"""The fused kernels as torch.library custom ops (jebm_kernels/ops.py): schema, fake and dispatch
checks (torch.library.opcheck), torch.compile(fullgraph=True) of a module that calls them, and the
ops' results against the reference backend with the same Philox noise.

Tolerance against the reference: 2e-5 + 2e-5 |ref|, as in test_prior_chain.py (the ops run the
cpu backend's C++ chain; see there for the measured differences and why). Compiled against eager
is exact (torch.equal): the compiled graph calls the same op on the same inputs, and the torch ops
around it are element-wise ops inductor does not reorder.
"""
import os

import helpers
import pytest
import torch
from helpers import make_prior, start
from torch import nn

import jebm_kernels as jk
from jebm_kernels import extension, ops
from jebm_kernels.philox import torch_philox_rand, torch_philox_randn

pytestmark = [
    pytest.mark.skipif(extension.cpu_error() is not None,
                       reason=f"the C++ extension is not built: {extension.cpu_error()}"),
    # torch.compile imports torch.jit internals that warn about their own deprecation
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]
ATOL = RTOL = 2e-5
SEED, OFFSET = 2**63 + 11, 2**32 - 7  # a seed past 2^63 (negative as int64) and a wrapping counter


def reference(energy, z, *, n_steps, step_size, noise_scale=1.0, prior_sigma=None, mala=False,
              seed=SEED, offset=OFFSET):
    return jk.langevin(energy, z, n_steps=n_steps, step_size=step_size, noise_scale=noise_scale,
                       prior_sigma=prior_sigma, mala=mala, generator=(seed, offset), backend="reference",
                       return_info=True)


def op_args(spec, z, *, n_steps, step_sizes, noise_scale=1.0, prior_sigma=(), mala=False, stats=True):
    structure, settings, params = ops.encode_prior(spec)
    return (list(z), params, structure, settings, ops.philox_tensor(SEED, OFFSET), list(step_sizes),
            noise_scale, list(prior_sigma), n_steps, mala, stats)


# ----------------------------------------------------------------------------------- opcheck

@pytest.mark.parametrize("space,mala,stats", [("z", False, True), ("eps", True, True), ("eps", False, False)])
def test_opcheck_prior_chain(space, mala, stats):
    spec = make_prior((3, 17), hidden=(9,), space=space, joint=True, seed=1)
    args = op_args(spec, start(7, spec.dims), n_steps=4, step_sizes=[0.3, 0.2], mala=mala, stats=stats)
    torch.library.opcheck(torch.ops.jebm.prior_chain.default, args)


@pytest.mark.parametrize("mala", [False, True])
def test_opcheck_multi_layer_update(mala):
    x = start(7, (1, 3, 17))
    g = start(7, (1, 3, 17), seed=2)
    args = (x, g, ops.philox_tensor(SEED, OFFSET), 123, [0.3, 0.2, 0.1], 0.9, mala)
    torch.library.opcheck(torch.ops.jebm.multi_layer_update.default, args)


# ---------------------------------------------------------------------- the ops vs the reference

@pytest.mark.parametrize("space,mala", [("z", False), ("eps", True)])
def test_prior_chain_op_equals_the_reference(space, mala):
    spec = make_prior((17, 3), hidden=(20,), space=space, joint=space == "z", seed=3)
    z = start(7, spec.dims)
    out, stats = torch.ops.jebm.prior_chain(*op_args(spec, z, n_steps=20, step_sizes=[0.3, 0.2],
                                                     noise_scale=0.9, mala=mala))
    ref, info = reference(jk.PriorEnergy(spec), z, n_steps=20, step_size=[0.3, 0.2], noise_scale=0.9, mala=mala)
    helpers.check_close(out, ref, f"prior_chain op, {space}", atol=ATOL, rtol=RTOL, who="op")
    assert stats.shape == (20, 3)
    assert stats[:, 0].tolist() == pytest.approx(info["energy"], rel=1e-4, abs=1e-3)
    assert stats[:, 1].tolist() == pytest.approx(info["grad_norm"], rel=1e-4, abs=1e-3)
    if mala:
        assert stats[:, 2].tolist() == pytest.approx(info["accept"], abs=1.0 / 7 + 1e-6)


def test_prior_chain_op_base_sigma_and_prior_sigma():
    net = nn.Sequential(nn.Linear(17, 12), nn.Softplus(beta=1.5), nn.Linear(12, 1))
    z = torch.randn(7, 17)
    spec = jk.PriorSpec((17,), (jk.mlp_spec_from_sequential(net),), energy_sign=1.0, base_sigma=(float("inf"),))
    out, _ = torch.ops.jebm.prior_chain(*op_args(spec, [z], n_steps=10, step_sizes=[0.4], prior_sigma=[1.0]))
    ref, _ = reference(net, z, n_steps=10, step_size=0.4, prior_sigma=1.0)
    helpers.check_close(out[0], ref, "prior_chain op, Sequential + prior_sigma", atol=ATOL, rtol=RTOL, who="op")


def test_update_op_equals_the_formula_and_the_noise_stream():
    B, dims, s, tau, step_offset = 7, (1, 3, 17), [0.3, 0.2, 0.1], 0.8, 1000
    x, g = start(B, dims), start(B, dims, seed=5)
    moved, noise, uniform = ops.multi_layer_update(x, g, ops.philox_tensor(SEED, OFFSET), step_size=s,
                                                   noise_scale=tau, step_offset=step_offset, mala=True)
    base = OFFSET + step_offset
    xi = torch_philox_randn(SEED, base, B * sum(dims))
    start_l = 0
    for l, d in enumerate(dims):
        xi_l = xi[start_l:start_l + B * d].reshape(B, d)
        start_l += B * d
        helpers.assert_close_where(noise[l], xi_l, atol=2e-6, what=f"normals, layer {l + 1}")
        expected = (x[l] - (s[l] * s[l] / 2) * g[l]) + (s[l] * tau) * xi_l
        helpers.assert_close_where(moved[l], expected, atol=2e-6, rtol=1e-6, what=f"moved layer {l + 1}")
    assert torch.equal(uniform, torch_philox_rand(SEED, base + B * sum(dims), B))


# ---------------------------------------------------------------------------------- torch.compile

class ChainThenDecode(nn.Module):
    """A small model: scale a start, run the fused prior chain, then a torch head on z_1."""

    def __init__(self, spec, n_steps):
        super().__init__()
        self.chain = jk.FusedPriorChain(spec, n_steps=n_steps, step_size=[0.3, 0.2], noise_scale=0.9)
        self.scale = nn.Parameter(torch.tensor(0.7))
        self.head = nn.Linear(spec.dims[0], 4)

    def forward(self, z0, philox):
        z = self.chain([t * self.scale for t in z0], philox)
        return z, torch.tanh(self.head(z[0]))


@pytest.mark.slow
def test_compiled_module_equals_eager_and_the_reference():
    torch.manual_seed(0)
    spec = make_prior((3, 17), hidden=(9,), space="eps", joint=True, seed=4)
    model = ChainThenDecode(spec, n_steps=8)
    z0 = start(7, spec.dims)
    philox = ops.philox_tensor(SEED, OFFSET)
    graphs = []

    def inductor_counting_graphs(gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx
        graphs.append(gm)
        return compile_fx(gm, example_inputs)

    with torch.no_grad():
        eager_z, eager_y = model(z0, philox)
        compiled = torch.compile(model, fullgraph=True, backend=inductor_counting_graphs)
        comp_z, comp_y = compiled(z0, philox)
        # a new noise position is a new tensor value, not a new graph: no recompilation
        philox2 = ops.philox_tensor(SEED, OFFSET + 8 * 7 * 20)
        comp_z2, _ = compiled(z0, philox2)
        eager_z2, _ = model(z0, philox2)
    assert len(graphs) == 1
    assert any("jebm.prior_chain" in str(n.target) for n in graphs[0].graph.nodes)
    for a, b in zip(comp_z + [comp_y] + comp_z2, eager_z + [eager_y] + eager_z2):
        assert torch.equal(a, b), "compiled and eager differ"
    ref, _ = reference(jk.PriorEnergy(spec), [t * 0.7 for t in z0], n_steps=8, step_size=[0.3, 0.2],
                       noise_scale=0.9)
    helpers.check_close(comp_z, ref, "compiled FusedPriorChain", atol=ATOL, rtol=RTOL, who="compiled")
    assert not torch.equal(comp_z2[0], comp_z[0])


def test_compiled_function_calling_the_update_op():
    def step(x, g, philox):
        moved, _, _ = torch.ops.jebm.multi_layer_update(x, g, philox, 0, [0.3, 0.2], 1.0, False)
        return [m.clamp(-3, 3) for m in moved]

    x, g = start(5, (3, 17)), start(5, (3, 17), seed=6)
    philox = ops.philox_tensor(SEED, OFFSET)
    eager = step(x, g, philox)
    compiled = torch.compile(step, fullgraph=True)(x, g, philox)
    for a, b in zip(compiled, eager):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------- refusals

def test_ops_refuse_bad_arguments_clearly():
    spec = make_prior((3,), hidden=(5,), seed=7)
    z = start(4, (3,))
    args = list(op_args(spec, z, n_steps=2, step_sizes=[0.3]))
    bad_philox = list(args)
    bad_philox[4] = torch.zeros(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="philox must be an int64 tensor"):
        torch.ops.jebm.prior_chain(*bad_philox)
    f64 = list(args)
    f64[0] = [t.double() for t in z]
    with pytest.raises(ValueError, match="float32"):
        torch.ops.jebm.prior_chain(*f64)
    truncated = list(args)
    truncated[2] = args[2][:-3]
    with pytest.raises(ValueError, match="run out|left over|shape"):
        torch.ops.jebm.prior_chain(*truncated)
    wrong_dims = list(args)
    wrong_dims[0] = [torch.randn(4, 5)]
    with pytest.raises(ValueError, match=r"z has layer dims \(5,\) but the prior has \(3,\)"):
        torch.ops.jebm.prior_chain(*wrong_dims)
    steps = list(args)
    steps[5] = [0.3, 0.3]
    with pytest.raises(ValueError, match="one value per layer"):
        torch.ops.jebm.prior_chain(*steps)
    with pytest.raises(ValueError, match="seed must be"):
        ops.philox_tensor(-1)
    with pytest.raises(TypeError, match="float32"):
        ops.multi_layer_update([z[0].double()], [z[0].double()], ops.philox_tensor(1), step_size=0.1)
    with pytest.raises(ValueError, match="one x, one gradient and one step size per layer"):
        ops.multi_layer_update(z, z + z, ops.philox_tensor(1), step_size=0.1)


def test_encode_decode_round_trip():
    spec = make_prior((17, 1, 3), hidden=(6, 5), space="eps", joint=True, seed=8)
    back = ops.decode_prior(*ops.encode_prior(spec))
    assert back.dims == spec.dims and back.space == spec.space and back.energy_sign == spec.energy_sign
    z = start(3, spec.dims)
    assert torch.equal(jk.PriorEnergy(back)(z), jk.PriorEnergy(spec)(z))


# ------------------------------------------------------------- the ops' Triton implementations

@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs a GPU or TRITON_INTERPRET=1")
def test_triton_implementations_equal_the_reference():
    """The functions the ops run on CUDA, on CPU tensors under the interpreter, with the seed and
    offset read from the philox tensor by the kernels."""
    pytest.importorskip("triton")
    spec = make_prior((3, 1), hidden=(9,), space="z", joint=True, seed=9)
    z = start(5, spec.dims)
    out, stats = ops.run_prior_chain_op(*op_args(spec, z, n_steps=3, step_sizes=[0.3, 0.2]), backend="triton")
    ref, info = reference(jk.PriorEnergy(spec), z, n_steps=3, step_size=[0.3, 0.2])
    helpers.check_close(out, ref, "prior_chain, Triton implementation", atol=ATOL, rtol=RTOL, who="triton")
    assert stats[:, 0].tolist() == pytest.approx(info["energy"], rel=1e-4, abs=1e-3)
    x, g = start(5, (3, 17)), start(5, (3, 17), seed=10)
    philox = ops.philox_tensor(SEED, OFFSET)
    tri = ops.run_update_op(x, g, philox, 77, [0.3, 0.2], 0.9, True, backend="triton")
    cpu = torch.ops.jebm.multi_layer_update(x, g, philox, 77, [0.3, 0.2], 0.9, True)
    for a, b in zip(tri[0] + tri[1] + [tri[2]], cpu[0] + cpu[1] + [cpu[2]]):
        helpers.assert_close_where(a, b, atol=2e-6, rtol=1e-6, what="Triton vs C++ update")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the ops' CUDA implementations need a GPU")
@pytest.mark.parametrize("philox_device", ["cuda", "cpu"])
def test_opcheck_on_cuda(philox_device):
    """The CUDA kernels behind the ops: schema and fake checks, and parity with the reference, with
    (seed, offset) read on the device (graph-safe) or on the host."""
    spec = make_prior((3, 17), hidden=(9,), space="eps", joint=True, seed=11)
    mv = lambda m: None if m is None else jk.MLPSpec(tuple(w.cuda() for w in m.weights),
                                                     tuple(None if b is None else b.cuda() for b in m.biases),
                                                     m.activation, m.act_param, m.out_activation)
    spec = jk.PriorSpec(spec.dims, tuple(mv(t) for t in spec.layer_terms), mv(spec.joint_term),
                        tuple(jk.GaussianSpec(mv(g.mlp), g.sigma_floor) for g in spec.gaussians), spec.space,
                        spec.energy_sign)
    z = [t.cuda() for t in start(7, spec.dims)]
    for mala in (True, False):  # (parity without MALA: a decision may flip at the threshold)
        args = list(op_args(spec, z, n_steps=6, step_sizes=[0.3, 0.2], mala=mala))
        args[4] = args[4].to(philox_device)
        torch.library.opcheck(torch.ops.jebm.prior_chain.default, tuple(args))
    out, _ = torch.ops.jebm.prior_chain(*args)
    ref, _ = reference(jk.PriorEnergy(spec), z, n_steps=6, step_size=[0.3, 0.2])
    helpers.check_close(out, ref, "prior_chain op on CUDA", atol=ATOL, rtol=RTOL, who="op")
    x, g = z, [t.flip(0) for t in z]
    upd = (x, g, args[4], 55, [0.3, 0.2], 0.9, True)
    torch.library.opcheck(torch.ops.jebm.multi_layer_update.default, upd)
    moved, noise, uniform = torch.ops.jebm.multi_layer_update(*upd)
    cpu_moved, cpu_noise, cpu_uniform = torch.ops.jebm.multi_layer_update(
        [t.cpu() for t in x], [t.cpu() for t in g], args[4].cpu(), 55, [0.3, 0.2], 0.9, True)
    for a, b in zip(moved + noise + [uniform], cpu_moved + cpu_noise + [cpu_uniform]):
        helpers.assert_close_where(a.cpu(), b, atol=2e-6, rtol=1e-6, what="CUDA vs C++ update op")


# ------------------------------------------------------------- the Triton ops (torch.library.triton_op)

def _triton_op_args(device):
    """Arguments of jebm::prior_chain_triton and jebm::multi_layer_update_triton for a small prior."""
    from backend_runners import move_spec

    from jebm_kernels.arguments import make_problem
    from jebm_kernels.device_tables import device_table
    from jebm_kernels.prior_chain import triton as prior_chain_triton
    from jebm_kernels.update import triton as update_triton
    spec = move_spec(make_prior((3, 17), hidden=(9,), space="eps", joint=True, seed=12), device)
    z = [t.to(device) for t in start(5, spec.dims)]
    problem, _ = make_problem(jk.PriorEnergy(spec), z, n_steps=3, step_size=[0.3, 0.2], noise_scale=1.0,
                              prior_sigma=None, generator=(SEED, OFFSET), mala=True, return_info=True)
    chain = prior_chain_triton.op_args(problem)
    sizes = [5 * d for d in spec.dims]
    x = torch.cat([t.reshape(-1) for t in z])
    update = update_triton.op_args(
        x, x.flip(0).contiguous(), sizes, SEED, OFFSET, n_uniform=5, write_noise=True,
        h=device_table(problem.h, torch.float32, device), c=device_table(problem.c, torch.float32, device),
        starts=device_table([0, sizes[0]], torch.int64, device), size_t=device_table(sizes, torch.int64, device))
    return chain, update


def test_triton_ops_opcheck():
    """The Triton kernels are torch.library.triton_ops, so torch.compile sees into them on a GPU.
    Under the interpreter (no GPU) a kernel cannot run on fake tensors, so there the checks are the
    schema, the autograd registration and the fake (meta) implementations; on a GPU, all of them."""
    pytest.importorskip("triton")
    gpu = torch.cuda.is_available()
    if not gpu and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    utils = None if gpu else ("test_schema", "test_autograd_registration", "test_faketensor")
    chain, update = _triton_op_args("cuda" if gpu else "cpu")
    for op, args in ((torch.ops.jebm.prior_chain_triton.default, chain),
                     (torch.ops.jebm.multi_layer_update_triton.default, update)):
        if utils is None:
            torch.library.opcheck(op, args)
        else:
            torch.library.opcheck(op, args, test_utils=utils)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="inductor compiles Triton kernels for a GPU")
def test_compile_sees_the_triton_update_kernel():
    """torch.compile of a function that calls the Triton update op equals eager, with the kernel in
    inductor's graph (a triton_op, not an opaque custom op)."""
    _, update = _triton_op_args("cuda")
    fn = lambda *a: [t * 1.0 for t in torch.ops.jebm.multi_layer_update_triton(*a)]  # noqa: E731
    eager = fn(*update)
    compiled = torch.compile(fn, fullgraph=True)(*update)
    for a, b in zip(compiled, eager):
        assert torch.equal(a, b)
