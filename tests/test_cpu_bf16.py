"""The bf16 CPU kernels (csrc/chain_avx512bf16*.cpp: ``_C.Model(..., bf16=True)``): every Linear of
a chain's energy gradient is a GEMM of bf16-rounded weights and inputs summed in fp32 by AVX512-BF16's
vdpbf16ps; everything else stays fp32.

- One Langevin step without noise (x - h dU/dx) equals a torch emulation of those GEMMs: weights
  and inputs rounded to bf16 as torch's ``.bfloat16()`` does, pairs along k added to the fp32 sum
  in the instruction's order (the odd k's product, then the even k's: each exact in fp32), the
  backward GEMMs rounding the incoming gradient likewise. The same harness without the rounding
  matches the fp32 kernels, so the energy it assembles is the kernels' own.
- The narrow bf16 builds (blocks of 8 and 4 chains) equal the wide one bit for bit, as the fp32
  ones do (tests/test_cpu_isa.py).
- bf16 chains differ from fp32 ones by about bf16 rounding; eval stays fp32.
- Where the CPU (or the forced instruction set) has no AVX512-BF16, ``bf16=True`` is a ValueError.
"""
import math

import pytest
import torch
from binding_reference import TEST_PARAM, HandPrior
from helpers import assert_close_where

from jebm_kernels import activation_table, extension

pytestmark = pytest.mark.skipif(extension.cpu_error() is not None,
                                reason=f"the C++ extension is not built: {extension.cpu_error()}")


@pytest.fixture
def C():
    """_C, where bf16 Models can be made (the test is skipped, with the reason, where not)."""
    from jebm_kernels import _C
    if not _C.bf16_available():
        pytest.skip(f"no bf16 kernels here: the CPU has no AVX512-BF16, or the instruction set is not an "
                    f"avx512 build (runs {_C.isa()!r}, can run {_C.available_isas()})")
    return _C


def bf16(t: torch.Tensor) -> torch.Tensor:
    return t.bfloat16().float()


# ------------------------------------------------------------------------ the GEMM, emulated in torch

def linear_like_kernel(inp, w, init, rounded):
    """init + inp @ w.T as the kernels sum it, float32, per output k = 0, 1, ... in order: bf16 pairs
    (k odd's product, then k even's: exact products added one at a time, as vdpbf16ps does) when
    ``rounded``, one product per k otherwise (the fp32 kernels' FMA, to float32 rounding)."""
    x, W = (bf16(inp), bf16(w)) if rounded else (inp, w)
    acc = init.clone()
    K = x.shape[1]
    for k0 in range(0, K, 2):
        order = [k for k in (k0 + 1, k0) if k < K] if rounded else [k for k in (k0, k0 + 1) if k < K]
        for k in order:
            acc = acc + x[:, k:k + 1] * W[:, k]
    return acc


def act_and_deriv(pre, name, param):
    """The kernels' own activation value and derivative (``_C.activation``, the code every build
    runs; test_cpu_bindings.py checks it against torch): torch's differ from them by an ulp here
    and there, and an ulp across a bf16 rounding boundary changes a whole chain's gradient, which
    would blur the GEMM this test is about."""
    from jebm_kernels import _C
    a = pre.detach().contiguous()
    v, d = torch.empty_like(a), torch.empty_like(a)
    _C.activation(activation_table.CODES[name], param, a.data_ptr(), a.numel(), v.data_ptr(), d.data_ptr())
    return v, d


class Net:
    """One MLP of the test: float32 weights, biases or none, an activation between the layers and
    one after the last."""

    def __init__(self, sizes, act, out_act="identity", bias=True, seed=0, gain=1.0):
        gen = torch.Generator().manual_seed(seed)
        self.sizes, self.act, self.out_act, self.param = list(sizes), act, out_act, TEST_PARAM[act]
        self.ws = [(torch.rand(o, i, generator=gen) * 2 - 1) * gain / math.sqrt(i) for i, o in zip(sizes, sizes[1:])]
        self.bs = [(torch.rand(o, generator=gen) * 2 - 1) * gain / math.sqrt(i) if bias else None
                   for i, o in zip(sizes, sizes[1:])]

    def arg(self):
        codes = activation_table.CODES
        return (self.sizes, [w.data_ptr() for w in self.ws], [0 if b is None else b.data_ptr() for b in self.bs],
                codes[self.act], self.param, codes[self.out_act])

    def forward(self, x, rounded):
        """(output, activation derivatives per layer) as mlp_fwd computes them."""
        derivs, cur = [], x
        for i, (w, b) in enumerate(zip(self.ws, self.bs)):
            init = torch.zeros(x.shape[0], w.shape[0]) if b is None else b.expand(x.shape[0], -1)
            pre = linear_like_kernel(cur, w, init, rounded)
            act = self.act if i + 1 < len(self.ws) else self.out_act
            cur, d = act_and_deriv(pre, act, TEST_PARAM[act])
            derivs.append(d)
        return cur, derivs

    def backward(self, gout, derivs, gin, rounded):
        """gin + d out / d in ^T gout, as mlp_bwd computes it (the gradient rounded to bf16 at each
        backward GEMM's input when ``rounded``)."""
        cur = gout * derivs[-1] if self.out_act != "identity" else gout
        for i in range(len(self.ws) - 1, -1, -1):
            init = gin if i == 0 else torch.zeros(gout.shape[0], self.ws[i].shape[1])
            nxt = linear_like_kernel(cur, self.ws[i].t(), init, rounded)
            cur = nxt * derivs[i - 1] if i > 0 and self.act != "identity" else nxt
        return cur


def grad_like_kernel(x, prior, decoder, xobs, sigma_x, rounded):
    """dU/dx of the test's energy, in eval_block's order: U = -f(x) + |x|^2 / (2 base_sigma^2)
    (+ |xobs - g(x)|^2 / (2 sigma_x^2)) + |x|^2 / (2 prior_sigma^2), base_sigma 3 and prior_sigma 2
    (small against f's gradient, which the test is about)."""
    B = x.shape[0]
    _, derivs = prior.forward(x, rounded)
    g = prior.backward(torch.full((B, 1), -1.0), derivs, torch.zeros_like(x), rounded)
    g = g + x * (torch.tensor(2.0) / torch.tensor(18.0))
    if decoder is not None:
        out, dd = decoder.forward(x, rounded)
        go = (xobs - out) * (torch.tensor(-2.0) / torch.tensor(2 * sigma_x * sigma_x, dtype=torch.float32))
        g = decoder.backward(go, dd, g, rounded)
    return g + x * (torch.tensor(2.0) / torch.tensor(8.0))


def model_args(prior, decoder=None, sigma_x=1.0):
    mlps = [prior.arg()] + ([decoder.arg()] if decoder is not None else [])
    return dict(dims=[prior.sizes[0]], mlps=mlps, terms=[0], joint=-1, gaussians=[], sigma_floors=[], space=0,
                energy_sign=-1.0, base_sigma=[3.0], prior_sigma=[2.0], decoder=1 if decoder is not None else -1,
                sigma_x=sigma_x)


def one_step(model, x, h, xobs=None, nthreads=1):
    """x - h dU/dx: one step of the model's chain without noise."""
    B = x.shape[0]
    out = torch.empty_like(x)
    model.chain(B=B, x=[x.data_ptr()], out=[out.data_ptr()], K=1, h=[h], c=[0.0], mala_den=[1.0], mala=False,
                seed=3, offset=0, xobs=0 if xobs is None else xobs.data_ptr(), energy_out=0, gnorm_out=0,
                accept_out=0, accept_record=0, nthreads=nthreads)
    return out


def check_step(C, prior, decoder=None, sigma_x=1.0, batches=(1, 3, 8, 33, 70), h=0.5):
    fp32 = C.Model(**model_args(prior, decoder, sigma_x))
    m = C.Model(**model_args(prior, decoder, sigma_x), bf16=True)
    assert m.precision == "bf16" and fp32.precision == "fp32"
    gen = torch.Generator().manual_seed(11)
    for B in batches:
        x = torch.randn(B, prior.sizes[0], generator=gen)
        xobs = torch.randn(B, decoder.sizes[-1], generator=gen) * 0.5 if decoder is not None else None
        for nt in (1, 2):
            got = one_step(m, x, h, xobs, nt)
            ref = x - h * grad_like_kernel(x, prior, decoder, xobs, sigma_x, rounded=True)
            # 1e-5 of the largest step, and float32's rounding of x - h g
            tol = 1e-5 * (ref - x).abs().max().item() + 2 * torch.finfo(torch.float32).eps * x.abs().max().item()
            assert_close_where(got, ref, atol=tol, what=f"bf16 B={B} threads={nt}")
        # the harness itself: without the rounding it is the fp32 kernels' step
        ref32 = x - h * grad_like_kernel(x, prior, decoder, xobs, sigma_x, rounded=False)
        assert_close_where(one_step(fp32, x, h, xobs), ref32, atol=tol, what=f"fp32 B={B}")
        # and the rounding is visible at this tolerance
        assert (got - ref32).abs().max().item() > 20 * tol


@pytest.mark.parametrize("act", ["gelu", "leaky_relu", "tanh", "softplus", "silu"])
@pytest.mark.parametrize("bias", [True, False])
def test_one_step_is_the_bf16_gemm_emulated_in_torch(C, act, bias):
    """MLP prior 37-51-51-1: batches 1, 3, 8 (narrow blocks), 33 and 70 (wide and narrow), on 1 and 2
    threads; odd sizes leave a zero-padded pair in every GEMM and partial tiles everywhere."""
    check_step(C, Net([37, 51, 51, 1], act, bias=bias, seed=1, gain=2.0))


@pytest.mark.parametrize("act,out_act", [("silu", "tanh"), ("elu", "identity")])
def test_one_posterior_step_with_an_mlp_decoder(C, act, out_act):
    """A posterior with an MLP decoder 37-51-301: its GEMMs in bf16 too. The decoder's first backward
    GEMM and the prior's (37-301-51-1) second forward one have 301 inputs, more than one chunk of
    pairs: the later chunk accumulates onto the first (onto zeros, and onto the bias)."""
    prior = Net([37, 301, 51, 1], "gelu", seed=2, gain=2.0)
    dec = Net([37, 51, 301], act, out_act=out_act, seed=3, gain=2.0)
    check_step(C, prior, dec, sigma_x=0.7, batches=(1, 8, 33, 70))


# ------------------------------------------------------------------------ narrow = wide, bit for bit

def run_chain(C, model_kw, x, K, nthreads, mala, bf16=True):
    m = C.Model(**model_kw, bf16=bf16)
    B = x[0].shape[0]
    out = [torch.empty_like(t) for t in x]
    e, g, a = torch.zeros(K), torch.zeros(K), torch.zeros(K)
    L = len(x)
    m.chain(B=B, x=[t.data_ptr() for t in x], out=[t.data_ptr() for t in out], K=K, h=[0.02] * L, c=[0.2] * L,
            mala_den=[0.08] * L, mala=mala, seed=5, offset=7, xobs=0, energy_out=e.data_ptr(), gnorm_out=g.data_ptr(),
            accept_out=a.data_ptr() if mala else 0, accept_record=0, nthreads=nthreads)
    return m, out, (e, g, a)


@pytest.mark.parametrize("act,space,mala", [("gelu", "eps", True), ("leaky_relu", "z", False),
                                            ("softplus", "eps", False)])
def test_narrow_bf16_kernels_equal_the_wide_one_bitwise(C, act, space, mala):
    """40 steps with noise: the wide bf16 build (64 chains, 1 thread: whole blocks), each narrow bf16
    build alone (avx512-narrow8 / avx512-narrow forced: bf16 follows them) and the automatic mix
    (100 chains, 2 threads) give the same chains, energies and MALA decisions to the last bit. A
    hidden width of 301 puts two chunks of pairs in a GEMM."""
    before, wide = C.isa(), C.available_isas()[0]  # JEBM_ISA may have forced a narrow build
    C.set_isa(wide)
    hp = HandPrior(act, space, dims=(17, 3), hidden=(301, 9), seed=4)
    kw = hp.cpu_model_args()
    gen = torch.Generator().manual_seed(6)
    x = [torch.randn(100, d, generator=gen) for d in hp.dims]
    narrow = [n for n in ("avx512-narrow8", "avx512-narrow") if n in C.available_isas()]
    try:
        for B, threads in ((64, 1), (100, 2)):
            xs = [t[:B].contiguous() for t in x]
            m, a, sa = run_chain(C, kw, xs, 40, threads, mala)
            assert m.isa == "avx512-bf16"
            for name in narrow:
                C.set_isa(name)
                mn, b, sb = run_chain(C, kw, xs, 40, threads, mala)
                assert mn.isa == name.replace("avx512", "avx512-bf16") and mn.precision == "bf16"
                for u, v in zip(a, b):
                    assert torch.equal(u, v), (f"{act} {space} B={B}: {name} (bf16) and wide bf16 differ by "
                                               f"{(u - v).abs().max()}")
                for u, v in zip(sa, sb):
                    assert torch.equal(u, v)
                C.set_isa(wide)
    finally:
        C.set_isa(before)


# ------------------------------------------------------------------------ bf16 is really used

def test_bf16_differs_from_fp32_by_bf16_rounding_and_eval_stays_fp32(C):
    """One noiseless step: bf16 and fp32 chains differ, by about bf16's rounding of the gradient
    (nonzero, small against the step); eval of a bf16 Model is the fp32 Model's, bit for bit."""
    prior = Net([37, 51, 51, 1], "gelu", seed=7, gain=2.0)
    kw = model_args(prior)
    fp32, bf = C.Model(**kw), C.Model(**kw, bf16=True)
    x = torch.randn(70, 37, generator=torch.Generator().manual_seed(8))
    h = 0.5
    a, b = one_step(fp32, x, h), one_step(bf, x, h)
    step = (x - a).abs().max().item()
    rel = (a - b).abs().max().item() / step
    assert 1e-4 < rel < 3e-2, f"bf16 vs fp32: {rel:.2e} of the step"
    outs = []
    for m in (fp32, bf):
        u, g = torch.empty(70), torch.empty(70, 37)
        m.eval(B=70, x=[x.data_ptr()], ext_u=0, ext_g=0, xobs=0, u=u.data_ptr(), g=[g.data_ptr()], z1=0, nthreads=1)
        outs.append((u, g))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


# ------------------------------------------------------------------------ where bf16 is unavailable

def test_bf16_where_unavailable_is_a_value_error():
    """bf16=True without AVX512-BF16 (or with a forced non-avx512 instruction set) raises ValueError
    saying why; the same arguments without it make an fp32 Model."""
    from jebm_kernels import _C
    kw = model_args(Net([5, 7, 1], "gelu"))
    best = _C.isa()
    forced = None
    if _C.bf16_available():
        forced = next((n for n in ("avx2", "generic") if n in _C.available_isas()), None)
    try:
        if forced:
            _C.set_isa(forced)
            assert not _C.bf16_available()
        elif _C.bf16_available():
            pytest.skip("no instruction set without bf16 to force")
        with pytest.raises(ValueError, match="AVX512-BF16"):
            _C.Model(**kw, bf16=True)
        assert _C.Model(**kw).precision == "fp32"
        with pytest.raises(ValueError, match="Model option"):
            _C.set_isa("avx512-bf16")
    finally:
        _C.set_isa(best)
