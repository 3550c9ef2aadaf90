"""jebm_kernels._C called directly: garbage to every binding raises a Python exception and never
crashes the interpreter; the small kernels match their Python definitions and every activation of
jebm_kernels/activation_table.py matches torch's, alone and in a whole chain on every instruction
set; act_codes() and limits() report the table and the limits the bindings enforce; without the
extension jebm_kernels still imports, warns once and samples with the reference.

The garbage cases run in a child interpreter (belt and braces: a segfault there fails the one
case that caused it, reported by name, instead of killing the test run), then each case is
checked here by name.
"""
import json
import math
import os
import subprocess
import sys
import textwrap

import helpers
import pytest
import torch
from binding_reference import ACTIVATIONS, TEST_PARAM, HandPrior, torch_activation
from helpers import assert_close_where

import jebm_kernels as jk
from jebm_kernels import activation_table, extension
from jebm_kernels.philox import torch_philox_rand, torch_philox_randn

needs_ext = pytest.mark.skipif(extension.cpu_error() is not None,
                               reason=f"the C++ extension is not built: {extension.cpu_error()}")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ------------------------------------------------------------------------------- garbage, by name

def _garbage_cases():
    """name -> zero-argument callable that must raise; built in the child interpreter."""
    from jebm_kernels import _C

    keep = []

    def buf(n, dtype=torch.float32):
        t = torch.zeros(max(n, 1), dtype=dtype)
        keep.append(t)
        return t.data_ptr()

    dims, B = [3, 2], 4
    # a valid model: f_1 3-5-1, f_2 2-5-1, Gaussian 2-5-6, decoder 3-4
    def mlp(sizes, act=1, param=0.2, out_act=0):
        ws = [buf(sizes[i] * sizes[i + 1]) for i in range(len(sizes) - 1)]
        bs = [buf(sizes[i + 1]) for i in range(len(sizes) - 1)]
        return (list(sizes), ws, bs, act, param, out_act)

    base = dict(dims=dims, mlps=[mlp([3, 5, 1]), mlp([2, 5, 1]), mlp([2, 5, 6]), mlp([3, 4])], terms=[0, 1],
                joint=-1, gaussians=[2], sigma_floors=[0.01], space=0, energy_sign=-1.0, base_sigma=[],
                prior_sigma=[], decoder=3, sigma_x=0.3)

    def model(**over):
        kw = dict(base)
        kw.update(over)
        return _C.Model(**kw)

    def bad_mlp(i, **over):
        sizes, ws, bs, act, param, out_act = base["mlps"][i]
        d = dict(sizes=sizes, ws=ws, bs=bs, act=act, param=param, out_act=out_act)
        d.update(over)
        mlps = list(base["mlps"])
        mlps[i] = (d["sizes"], d["ws"], d["bs"], d["act"], d["param"], d["out_act"])
        return lambda: model(mlps=mlps)

    m = model()
    x = [buf(B * d) for d in dims]
    out = [buf(B * d) for d in dims]
    xobs = buf(B * 4)
    chain = dict(B=B, x=x, out=out, K=3, h=[0.01, 0.01], c=[0.1, 0.1], mala_den=[0.02, 0.02], mala=False,
                 seed=1, offset=0, xobs=xobs, energy_out=0, gnorm_out=0, accept_out=0, accept_record=0, nthreads=1)

    def run_chain(**over):
        kw = dict(chain)
        kw.update(over)
        return lambda: m.chain(**kw)

    ev = dict(B=B, x=x, ext_u=0, ext_g=0, xobs=xobs, u=buf(B), g=out, z1=0, nthreads=1)

    def run_eval(**over):
        kw = dict(ev)
        kw.update(over)
        return lambda: m.eval(**kw)

    upd = dict(B=B, dims=dims, x=x, g=x, out=out, noise=[], uniform=0, h=[0.1, 0.1], c=[0.1, 0.1], seed=1,
               offset=0, nthreads=1)

    def run_update(**over):
        kw = dict(upd)
        kw.update(over)
        return lambda: _C.multi_layer_update(**kw)

    sel = dict(B=B, dims=dims, x=x, prop=x, g=out, g_prop=out, noise=x, u=buf(B), u_prop=buf(B), uniform=buf(B),
               h=[0.1, 0.1], den=[0.02, 0.02], accepted=buf(B), nthreads=1)

    def run_select(**over):
        kw = dict(sel)
        kw.update(over)
        return lambda: _C.mala_select(**kw)

    f = buf(16)
    cases = {
        # Model(...)
        "model: no layers": lambda: model(dims=[], terms=[]),
        "model: zero dim": lambda: model(dims=[0, 2]),
        "model: negative dim": lambda: model(dims=[-3, 2]),
        "model: 17 layers": lambda: model(dims=[1] * 17, terms=[-1] * 17, gaussians=[], sigma_floors=[]),
        "model: huge dim": lambda: model(dims=[2 ** 40, 2]),
        "model: one weight too few": bad_mlp(0, ws=base["mlps"][0][1][:1]),
        "model: one bias too many": bad_mlp(0, bs=base["mlps"][0][2] + [0]),
        "model: zero width": bad_mlp(0, sizes=[3, 0, 1]),
        "model: negative width": bad_mlp(0, sizes=[3, -5, 1]),
        "model: null weight": bad_mlp(0, ws=[0, base["mlps"][0][1][1]]),
        "model: misaligned weight": bad_mlp(0, ws=[base["mlps"][0][1][0] + 1, base["mlps"][0][1][1]]),
        "model: negative address": bad_mlp(0, ws=[-64, base["mlps"][0][1][1]]),
        "model: address not an int": bad_mlp(0, ws=[1.5, base["mlps"][0][1][1]]),
        "model: activation code 99": bad_mlp(0, act=99),
        "model: activation code -1": bad_mlp(0, act=-1),
        "model: output activation code past the table": bad_mlp(0, out_act=len(activation_table.CODES)),
        "model: NaN activation parameter": bad_mlp(0, param=float("nan")),
        "model: softplus beta 0": bad_mlp(0, act=5, param=0.0),
        "model: no Linear layer": bad_mlp(0, sizes=[3], ws=[], bs=[]),
        "model: 17 Linear layers": bad_mlp(0, sizes=[3] * 17 + [1], ws=[f] * 17, bs=[0] * 17),
        "model: terms count": lambda: model(terms=[0]),
        "model: term index out of range": lambda: model(terms=[0, 7]),
        "model: term on the wrong layer": lambda: model(terms=[1, 0]),
        "model: term output not 1": lambda: model(terms=[-1, 2]),
        "model: joint on the wrong dims": lambda: model(joint=0),
        "model: gaussians count": lambda: model(gaussians=[2, 2], sigma_floors=[0.01, 0.01]),
        "model: gaussian of the wrong shape": lambda: model(gaussians=[1]),
        "model: floors count": lambda: model(sigma_floors=[]),
        "model: NaN floor": lambda: model(sigma_floors=[float("nan")]),
        "model: no base at all": lambda: model(gaussians=[], sigma_floors=[]),
        "model: space 2": lambda: model(space=2),
        "model: infinite energy sign": lambda: model(energy_sign=float("inf")),
        "model: base_sigma count": lambda: model(gaussians=[], sigma_floors=[], base_sigma=[1.0]),
        "model: base_sigma with gaussians": lambda: model(base_sigma=[1.0, 1.0]),
        "model: negative base_sigma": lambda: model(gaussians=[], sigma_floors=[], base_sigma=[-1.0, 1.0]),
        "model: base_sigma in eps-space": lambda: model(gaussians=[], sigma_floors=[], base_sigma=[1.0, 1.0], space=1),
        "model: prior_sigma 0": lambda: model(prior_sigma=[0.0, 1.0]),
        "model: prior_sigma inf": lambda: model(prior_sigma=[math.inf, 1.0]),
        "model: decoder index out of range": lambda: model(decoder=9),
        "model: decoder on the wrong dim": lambda: model(decoder=1),
        "model: sigma_x 0": lambda: model(sigma_x=0.0),
        "model: mlps not a list": lambda: model(mlps=5),
        "model: bf16 not a bool": lambda: model(bf16="yes"),
        # Model.chain
        "chain: B 0": run_chain(B=0),
        "chain: B negative": run_chain(B=-4),
        "chain: x count": run_chain(x=x[:1]),
        "chain: null x": run_chain(x=[x[0], 0]),
        "chain: null out": run_chain(out=[0, out[1]]),
        "chain: out count": run_chain(out=out + out),
        "chain: K negative": run_chain(K=-1),
        "chain: h count": run_chain(h=[0.1]),
        "chain: NaN h": run_chain(h=[float("nan"), 0.1]),
        "chain: infinite c": run_chain(c=[math.inf, 0.1]),
        "chain: MALA with den 0": run_chain(mala=True, mala_den=[0.0, 0.02]),
        "chain: MALA den count": run_chain(mala=True, mala_den=[0.02]),
        "chain: null xobs with a decoder": run_chain(xobs=0),
        "chain: counter overflow": run_chain(offset=2 ** 64 - 5),
        "chain: offset negative": run_chain(offset=-1),
        "chain: seed too large": run_chain(seed=2 ** 64),
        "chain: energy without gnorm": run_chain(energy_out=buf(3)),
        "chain: accept without MALA": run_chain(accept_out=buf(3)),
        "chain: zero threads": run_chain(nthreads=0),
        # Model.eval / Model.z1
        "eval: B 0": run_eval(B=0),
        "eval: x count": run_eval(x=x + x),
        "eval: ext_u without ext_g": run_eval(ext_u=buf(B)),
        "eval: null u": run_eval(u=0),
        "eval: g count": run_eval(g=out[:1]),
        "eval: null xobs": run_eval(xobs=0),
        "eval: negative threads": run_eval(nthreads=-1),
        "z1: null z1": lambda: m.z1(B, x, 0, 1),
        "z1: B negative": lambda: m.z1(-1, x, buf(B * 3), 1),
        "z1: x count": lambda: m.z1(B, x[:1], buf(B * 3), 1),
        # philox
        "randn: n negative": lambda: _C.philox_randn(1, 0, -5, f, 1),
        "randn: null out": lambda: _C.philox_randn(1, 0, 5, 0, 1),
        "randn: counter overflow": lambda: _C.philox_randn(1, 2 ** 64 - 2, 5, f, 1),
        "randn: seed negative": lambda: _C.philox_randn(-1, 0, 5, f, 1),
        "randn: zero threads": lambda: _C.philox_randn(1, 0, 5, f, 0),
        "rand: null out": lambda: _C.philox_rand(1, 0, 5, 0, 1),
        "rand: misaligned out": lambda: _C.philox_rand(1, 0, 5, f + 2, 1),
        "rand: n too large": lambda: _C.philox_rand(1, 0, 2 ** 62, f, 1),
        "pairs: null u2": lambda: _C.philox_uniform_pairs(1, 0, 5, f, 0, 1),
        "pairs: counter overflow": lambda: _C.philox_uniform_pairs(1, 2 ** 64 - 2, 5, f, f, 1),
        "pairs: n negative": lambda: _C.philox_uniform_pairs(1, 0, -1, f, f, 1),
        # mala_select
        "select: no layers": run_select(dims=[], x=[], prop=[], g=[], g_prop=[], noise=[], h=[], den=[]),
        "select: B 0": run_select(B=0),
        "select: prop count": run_select(prop=x[:1]),
        "select: null noise": run_select(noise=[x[0], 0]),
        "select: null accepted": run_select(accepted=0),
        "select: den 0": run_select(den=[0.02, 0.0]),
        "select: NaN h": run_select(h=[float("nan"), 0.1]),
        "select: zero threads": run_select(nthreads=0),
        # multi_layer_update
        "update: no layers": run_update(dims=[], x=[], g=[], out=[], h=[], c=[]),
        "update: zero dim": run_update(dims=[3, 0]),
        "update: B 0": run_update(B=0),
        "update: x count": run_update(x=x[:1]),
        "update: g count": run_update(g=x + x),
        "update: out count": run_update(out=out[:1]),
        "update: noise count": run_update(noise=[out[0]]),
        "update: h count": run_update(h=[0.1]),
        "update: null g": run_update(g=[x[0], 0]),
        "update: null noise": run_update(noise=[out[0], 0]),
        "update: NaN c": run_update(c=[0.1, float("nan")]),
        "update: counter overflow": run_update(offset=2 ** 64 - 10, uniform=buf(B)),
        # activation
        "activation: code 99": lambda: _C.activation(99, 0.0, f, 4, f, f),
        "activation: n negative": lambda: _C.activation(1, 0.2, f, -4, f, f),
        "activation: null input": lambda: _C.activation(1, 0.2, 0, 4, f, f),
        "activation: null derivative": lambda: _C.activation(1, 0.2, f, 4, f, 0),
        "activation: softplus beta 0": lambda: _C.activation(5, 0.0, f, 4, f, f),
        "activation: NaN parameter": lambda: _C.activation(1, float("nan"), f, 4, f, f),
        # same_bytes
        "same_bytes: lengths differ": lambda: _C.same_bytes([f], [f, f], [4]),
        "same_bytes: null address": lambda: _C.same_bytes([0], [f], [4]),
        "same_bytes: negative size": lambda: _C.same_bytes([f], [f], [-4]),
        # instruction sets
        "set_isa: unknown": lambda: _C.set_isa("sse9"),
        "set_isa: not a string": lambda: _C.set_isa(3),
        "set_isa: a bf16 build (a Model option)": lambda: _C.set_isa("avx512-bf16"),
    }
    if "avx512" not in _C.available_isas():
        cases["set_isa: avx512 on a CPU without it"] = lambda: _C.set_isa("avx512")
    if not _C.bf16_available():
        cases["model: bf16 where unavailable"] = lambda: model(bf16=True)
    return cases, keep


def _child_main():
    cases, _keep = _garbage_cases()
    results = {}
    for name, fn in cases.items():
        try:
            fn()
            results[name] = "returned without an exception"
        except (ValueError, TypeError, OverflowError, MemoryError) as exc:
            results[name] = f"ok {type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - reported by name
            results[name] = f"unexpected {type(exc).__name__}: {exc}"
    print("RESULTS" + json.dumps(results))


GARBAGE_NAMES = []
if extension.cpu_error() is None:
    GARBAGE_NAMES = list(_garbage_cases()[0])


@pytest.fixture(scope="module")
def garbage_results():
    code = f"import sys; sys.path.insert(0, {HERE!r}); sys.path.insert(0, {ROOT!r}); " \
           "import test_cpu_bindings as t; t._child_main()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS")), None)
    assert proc.returncode == 0 and line, (
        f"the child interpreter died (exit {proc.returncode}) while passing garbage to the bindings:\n"
        f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(line[len("RESULTS"):])


@needs_ext
@pytest.mark.parametrize("name", GARBAGE_NAMES)
def test_garbage_raises_a_python_exception(name, garbage_results):
    result = garbage_results[name]
    assert result.startswith("ok "), f"{name}: {result}"
    assert len(result) > len("ok ValueError: ") + 5, f"{name}: the error should say what was wrong"


@needs_ext
def test_garbage_covers_every_binding():
    from jebm_kernels import _C
    names = " ".join(GARBAGE_NAMES)
    for fn in ("Model", "chain", "eval", "z1", "randn", "rand", "pairs", "select", "update", "activation", "set_isa",
               "same_bytes"):
        assert fn.lower() in names.lower(), f"no garbage case for {fn}"
    public = {n for n in dir(_C) if not n.startswith("_")}
    assert public == {"Model", "activation", "act_codes", "available_isas", "bf16_available", "block_chains", "isa",
                      "limits",
                      "mala_select", "multi_layer_update", "philox_rand", "philox_randn", "philox_uniform_pairs",
                      "same_bytes", "set_isa", "vector_width"}, \
        "a new binding needs garbage cases here"


# ------------------------------------------------------------------------- the small kernels' math

@needs_ext
@pytest.mark.parametrize("seed,offset,n", [(0, 0, 1000), (2 ** 33 + 1, 2 ** 32 - 5, 10_007), (2 ** 64 - 1, 7, 33)])
def test_philox_matches_philox_randn(seed, offset, n):
    from jebm_kernels import _C
    for isa in _C.available_isas():
        best = _C.isa()
        try:
            _C.set_isa(isa)
            normal, uniform = torch.empty(n), torch.empty(n)
            _C.philox_randn(seed, offset, n, normal.data_ptr(), 2)
            _C.philox_rand(seed, offset, n, uniform.data_ptr(), 2)
        finally:
            _C.set_isa(best)
        # uniforms: bit for bit; normals: to the last ulp or two of log/cos (ours are correctly
        # rounded; torch's vectorised log/cos are off by one ulp for ~5-8% of arguments)
        assert torch.equal(uniform, torch_philox_rand(seed, offset, n)), isa
        ref = torch_philox_randn(seed, offset, n)
        assert_close_where(normal, ref, atol=1e-6, rtol=1e-6, what=f"normals ({isa})")
        assert float((normal == ref).float().mean()) > 0.7


@needs_ext
def test_multi_layer_update_matches_the_formula():
    from jebm_kernels import _C
    B, dims, s, tau = 7, [1, 3, 17], [0.3, 0.2, 0.05], 0.8
    seed, offset = 2 ** 33 + 1, 2 ** 32 - 5  # the counter's low word wraps inside the call
    x = [torch.randn(B, d) for d in dims]
    g = [torch.randn(B, d) for d in dims]
    out = [torch.empty(B, d) for d in dims]
    noise = [torch.empty(B, d) for d in dims]
    uniform = torch.empty(B)
    h = [v * v / 2 for v in s]
    c = [v * tau for v in s]
    _C.multi_layer_update(B, dims, [t.data_ptr() for t in x], [t.data_ptr() for t in g],
                          [t.data_ptr() for t in out], [t.data_ptr() for t in noise], uniform.data_ptr(),
                          h, c, seed, offset, 2)
    D = sum(dims)
    xi = torch_philox_randn(seed, offset, B * D)
    assert_close_where(torch.cat([t.reshape(-1) for t in noise]), xi, atol=1e-6, rtol=1e-6, what="normals")
    assert torch.equal(uniform, torch_philox_rand(seed, offset + B * D, B))
    for l in range(len(dims)):
        # the reference's float32 ops on the same normals, bit for bit
        expected = x[l] - (s[l] * s[l] / 2) * g[l] + (s[l] * tau) * noise[l]
        assert torch.equal(out[l], expected), f"layer {l}"


class forced_isa:
    """Runs the block on one instruction set's kernels, then restores the one before."""

    def __init__(self, _C, isa):
        self._C, self.isa, self.before = _C, isa, _C.isa()

    def __enter__(self):
        self._C.set_isa(self.isa)

    def __exit__(self, *exc):
        self._C.set_isa(self.before)


@needs_ext
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_value_and_derivative(name):
    from jebm_kernels import _C
    param = TEST_PARAM[name]
    x = torch.cat([torch.linspace(-25, 25, 20_001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 1e4])])
    xd = x.double().requires_grad_(True)
    ref = torch_activation(xd, name, param)
    (dref,) = torch.autograd.grad(ref.sum(), xd)
    for isa in _C.available_isas():
        value, deriv = torch.empty_like(x), torch.empty_like(x)
        with forced_isa(_C, isa):
            _C.activation(_C.act_codes()[name], param, x.data_ptr(), x.numel(), value.data_ptr(), deriv.data_ptr())
        # float32 results of ~1-2 ulp, like torch's own float32 kernels
        assert_close_where(value.double(), ref.detach(), atol=2e-6, rtol=4e-7, what=f"{name} value ({isa})")
        assert_close_where(deriv.double(), dref, atol=2e-6, rtol=4e-7, what=f"{name} derivative ({isa})")


@needs_ext
def test_gelu_vectors_of_small_inputs_equal_mixed_vectors_bit_for_bit():
    """GELU skips erfc's fit for a vector whose lanes all lie below |a| < sqrt 2
    (activations_simd.h): the same inputs in vectors that also hold a large value take the full
    path, and every value and derivative must be the same bits."""
    from jebm_kernels import _C
    gelu = _C.act_codes()["gelu"]
    small = torch.linspace(-1.414, 1.414, 16 * 64)
    mixed = small.reshape(-1, 16).clone()
    mixed[:, ::4] = 3.0  # every vector (16, 8 or 4 lanes) holds a large value
    mixed = mixed.reshape(-1)
    keep = mixed != 3.0
    for isa in _C.available_isas():
        out = {}
        for name, x in (("small", small), ("mixed", mixed)):
            value, deriv = torch.empty_like(x), torch.empty_like(x)
            with forced_isa(_C, isa):
                _C.activation(gelu, 0.0, x.data_ptr(), x.numel(), value.data_ptr(), deriv.data_ptr())
            out[name] = (value, deriv)
        for i, what in enumerate(("value", "derivative")):
            assert torch.equal(out["small"][i][keep], out["mixed"][i][keep]), f"GELU {what} ({isa})"


@pytest.mark.slow
@needs_ext
def test_elu_within_one_ulp_of_torch_float32_and_its_signed_zeros():
    """ELU's expm1 is ours (vector_math.h): within an ulp of torch's float32 F.elu and of the correctly
    rounded value, over every 97th float in [-20, 0] (alpha 1: the ulps are expm1's own); torch's
    branches: -0 stays -0, the derivative at 0 is alpha, at NaN 1."""
    from jebm_kernels import _C
    bits = torch.arange(0, (torch.tensor([-20.0]).view(torch.int32).item() & 0x7FFFFFFF) + 1, 97)
    x = torch.cat([(bits - 2 ** 31).to(torch.int32).view(torch.float32),  # sign bit set: -0 .. -20
                   torch.tensor([0.0, float("nan"), 3.0, 1e-30, 1e4, -1e4])])

    def ordered(t):  # float32 -> integers in the order of the floats: ulp distances are differences
        i = t.view(torch.int32).long()
        return torch.where(i < 0, -(i & 0x7FFFFFFF), i)

    elu = activation_table.CODES["elu"]
    for isa in _C.available_isas():
        value, deriv = torch.empty_like(x), torch.empty_like(x)
        with forced_isa(_C, isa):
            _C.activation(elu, 1.0, x.data_ptr(), x.numel(), value.data_ptr(), deriv.data_ptr())
        fin = ~x.isnan()
        for what, ref in (("torch float32", torch.nn.functional.elu(x, 1.0)),
                          ("correctly rounded", torch.nn.functional.elu(x.double(), 1.0).float())):
            ulps = (ordered(value[fin]) - ordered(ref[fin])).abs()
            assert int(ulps.max()) <= 1, f"ELU ({isa}) is {int(ulps.max())} ulp from {what}"
        dref = torch.where(x <= 0, torch.exp(x.double()), torch.ones_like(x.double())).float()
        dulps = (ordered(deriv[fin]) - ordered(dref[fin])).abs()
        assert int(dulps.max()) <= 1, f"ELU derivative ({isa}) is {int(dulps.max())} ulp from exp(x)"
        assert str(float(value[0])) == "-0.0" and float(deriv[0]) == 1.0  # x = -0: a >= 0 branch; deriv alpha
        assert value[-5].isnan() and float(deriv[-5]) == 1.0


@needs_ext
def test_act_codes_are_the_activation_table():
    """The extension was built from the current jebm_kernels/activation_table.py (setup.py
    generates csrc/generated/activation_codes.h from it)."""
    from jebm_kernels import _C
    assert _C.act_codes() == activation_table.CODES


@needs_ext
def test_limits_are_the_ones_the_bindings_enforce():
    """Every limit cpu.py needs, each the largest value a binding accepts: one more is refused."""
    from jebm_kernels import _C
    lim = _C.limits()
    assert {"max_latent", "max_linear_per_mlp", "max_mlps", "max_width", "max_batch", "max_steps", "max_matrix",
            "max_elements", "max_threads"} <= set(lim)
    keep = []

    def buf(n):
        keep.append(torch.zeros(max(n, 1)))
        return keep[-1].data_ptr()

    def mlp(sizes):
        return (sizes, [buf(i * o) for i, o in zip(sizes, sizes[1:])], [0] * (len(sizes) - 1), 0, 0.0, 0)

    def model(L=1, n_linear=1, n_mlps=1, width=1):
        mlps = [mlp([width] + [1] * n_linear)] + [mlp([1, 1])] * (n_mlps - 1)
        return _C.Model(dims=[width] + [1] * (L - 1), mlps=mlps, terms=[0] + [-1] * (L - 1), joint=-1, gaussians=[],
                        sigma_floors=[], space=0, energy_sign=-1.0, base_sigma=[1.0] * L, prior_sigma=[],
                        decoder=-1, sigma_x=1.0)

    for key, make in (("max_latent", lambda n: model(L=n)), ("max_linear_per_mlp", lambda n: model(n_linear=n)),
                      ("max_mlps", lambda n: model(n_mlps=n)), ("max_width", lambda n: model(width=n))):
        make(lim[key])
        with pytest.raises(ValueError):
            make(lim[key] + 1)
    with pytest.raises(ValueError, match="weight matrix too large"):  # refused before its address is read
        _C.Model(dims=[16384], mlps=[([16384, lim["max_matrix"] // 16384 + 1], [buf(1)], [0], 0, 0.0, 0)],
                 terms=[-1], joint=-1, gaussians=[], sigma_floors=[], space=0, energy_sign=-1.0, base_sigma=[1.0],
                 prior_sigma=[], decoder=-1, sigma_x=1.0)
    m = model(width=1024)
    x = [buf(1024)]
    chain = dict(B=1, x=x, out=x, K=1, h=[0.1], c=[0.1], mala_den=[], mala=False, seed=1, offset=0, xobs=0,
                 energy_out=0, gnorm_out=0, accept_out=0, accept_record=0, nthreads=1)
    m.chain(**chain)
    for key, over in (("max_batch", "B"), ("max_steps", "K"), ("max_threads", "nthreads")):
        with pytest.raises(ValueError):
            m.chain(**(chain | {over: lim[key] + 1}))
    # refused before any address is read: B = max_batch is allowed, B * 1024 floats are not
    with pytest.raises(ValueError, match="B \\* D too large"):
        m.chain(**(chain | {"B": lim["max_batch"]}))
    assert lim["max_batch"] * 1024 > lim["max_elements"]


@needs_ext
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("space", ["z", "eps"])
def test_whole_chain_through_the_binding_every_activation(act, space):
    """_C.Model.chain on a prior written out in torch (tests/binding_reference.py: odd widths, the
    joint term, the Gaussian in eps-space, every MLP with `act`) against the reference backend on
    the same energy, on every instruction set; tolerance as test_prior_chain.py. The FMA kernels
    (avx512, avx2, avx2-narrow) agree bit for bit, as test_cpu_isa.py requires."""
    from jebm_kernels import _C
    prior = HandPrior(act, space, seed=activation_table.CODES[act])
    B, K, s, tau = 7, 25, (0.3, 0.2), 0.9
    z = [torch.randn(B, d, generator=torch.Generator().manual_seed(1)) for d in prior.dims]
    ref, info = jk.langevin(prior.energy, z, n_steps=K, step_size=list(s), noise_scale=tau,
                            generator=(2 ** 63 + 5, 2 ** 32 - 9), backend="reference", return_info=True)
    fma_results = {}
    for isa in _C.available_isas():
        with forced_isa(_C, isa):
            model = _C.Model(**prior.cpu_model_args())
            out = [torch.empty_like(t) for t in z]
            energy, gnorm = torch.empty(K), torch.empty(K)
            model.chain(B, [t.data_ptr() for t in z], [t.data_ptr() for t in out], K, [v * v / 2 for v in s],
                        [v * tau for v in s], [], False, info["seed"], info["offset"], 0, energy.data_ptr(),
                        gnorm.data_ptr(), 0, 0, 2)
        helpers.check_close(out, ref, f"{act}, {space}-space, {isa}", atol=2e-5, rtol=2e-5, who=f"_C ({isa})")
        assert_close_where(energy, torch.tensor(info["energy"]), atol=2e-5, rtol=2e-5, what=f"mean energy ({isa})")
        assert_close_where(gnorm, torch.tensor(info["grad_norm"]), atol=2e-5, rtol=2e-5, what=f"|grad U| ({isa})")
        if isa != "generic":
            fma_results[isa] = out
    for isa, out in fma_results.items():
        first = next(iter(fma_results))
        assert all(torch.equal(a, b) for a, b in zip(out, fma_results[first])), f"{isa} and {first} differ"


# ------------------------------------------------------------------------------ without the build

def test_without_the_extension_jebm_kernels_warns_once_and_uses_the_reference():
    code = textwrap.dedent("""
        import sys, warnings
        sys.modules["jebm_kernels._C"] = None   # as if the build had failed
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            import torch, jebm_kernels as jk
            from torch import nn
            net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
            assert "cpu" not in jk.available_backends() and "reference" in jk.available_backends()
            _, info = jk.langevin(net, torch.randn(2, 3), n_steps=2, step_size=0.1, return_info=True)
            assert info["backend"] == "reference"
            jk.langevin(net, torch.randn(2, 3), n_steps=2, step_size=0.1)
            try:
                jk.langevin(net, torch.randn(2, 3), n_steps=1, step_size=0.1, backend="cpu")
                raise SystemExit("backend='cpu' did not raise")
            except RuntimeError as exc:
                assert "not built" in str(exc), exc
        ours = [w for w in caught if "jebm_kernels._C" in str(w.message)]
        assert len(ours) == 1, [str(w.message) for w in caught]
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr


@needs_ext
def test_mala_select_equals_the_formula():
    """_C.mala_select against MALA's accept step written in torch (float64), chain by chain."""
    from jebm_kernels import _C
    gen = torch.Generator().manual_seed(3)
    B, dims, h, den = 257, [3, 17], [0.045, 0.02], [0.072, 0.032]
    x = [torch.randn(B, d, generator=gen) for d in dims]
    noise = [torch.randn(B, d, generator=gen) for d in dims]
    g = [torch.randn(B, d, generator=gen) for d in dims]
    g_p = [torch.randn(B, d, generator=gen) for d in dims]
    prop = [xl - hl * gl + (2 * dl) ** 0.5 / 2 * nl for xl, gl, nl, hl, dl in zip(x, g, noise, h, den)]
    u, u_p = torch.randn(B, generator=gen) * 3, torch.randn(B, generator=gen) * 3
    uniform = torch.rand(B, generator=gen)
    log_alpha = (u.double() - u_p.double() + 0.5 * sum(n.double().pow(2).sum(-1) for n in noise)
                 - sum((xl.double() - pl.double() + hl * gpl.double()).pow(2).sum(-1) / dl
                       for xl, pl, gpl, hl, dl in zip(x, prop, g_p, h, den)))
    want = uniform.double().log() < log_alpha
    xs, gs, us = [t.clone() for t in x], [t.clone() for t in g], u.clone()
    accepted = torch.empty(B)
    _C.mala_select(B, dims, [t.data_ptr() for t in xs], [t.data_ptr() for t in prop], [t.data_ptr() for t in gs],
                   [t.data_ptr() for t in g_p], [t.data_ptr() for t in noise], us.data_ptr(), u_p.data_ptr(),
                   uniform.data_ptr(), h, den, accepted.data_ptr(), 2)
    assert 0 < int(want.sum()) < B  # both outcomes occur
    assert torch.equal(accepted.bool(), want)
    acc = want.unsqueeze(1)
    for l in range(len(dims)):
        assert torch.equal(xs[l], torch.where(acc, prop[l], x[l]))
        assert torch.equal(gs[l], torch.where(acc, g_p[l], g[l]))
    assert torch.equal(us, torch.where(want, u_p, u))
