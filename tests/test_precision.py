"""``precision``: what each value means, what a call leaves as it found it, and what info says
(jebm_kernels/precision.py). The law of bf16 chains is tested in test_bf16_law.py."""
import pytest
import torch
from torch import nn

import jebm_kernels as jk
from jebm_kernels import precision as prec
from jebm_kernels.extension import cpu_bf16_reason


def lebm_like(d=12, width=24, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))


def closure_of(net):
    return lambda z: net(z).squeeze(-1) + 0.5 * z.pow(2).sum(-1)


def run(energy, z, **kw):
    kw.setdefault("n_steps", 6)
    kw.setdefault("step_size", 0.3)
    kw.setdefault("generator", (5, 0))
    return jk.langevin(energy, z, return_info=True, **kw)


def test_bad_values_are_refused_in_words():
    net, z = lebm_like(), torch.randn(4, 12)
    with pytest.raises(ValueError, match="precision must be one of"):
        run(net, z, precision="half")
    with pytest.raises(ValueError, match="for float32 z; z is torch.float64"):
        run(net.double(), z.double(), precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        jk.LangevinSampler(net, precision="fp16")


def test_auto_outside_autocast_is_the_state_precision_and_changes_nothing():
    net, z = lebm_like(), torch.randn(9, 12)
    a, ia = run(net, z, backend="reference")
    b, ib = run(net, z, backend="reference", precision="fp32")
    assert torch.equal(a, b) and ia["precision"] == ib["precision"] == "fp32"
    assert ia["precision_note"] is None
    _, i64 = run(net.double(), z.double(), backend="reference")
    assert i64["precision"] == "fp64"


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_bf16_changes_the_chain_by_rounding_only(backend):
    net, z = lebm_like(), torch.randn(33, 12)
    a, ia = run(closure_of(net), z, backend=backend, precision="fp32")
    b, ib = run(closure_of(net), z, backend=backend, precision="bf16")
    if prec.bf16_hardware_reason(z.device) is not None:
        assert ib["precision"] == "fp32" and "no bf16" in ib["precision_note"]
        return
    if ib["fused"] and cpu_bf16_reason() is not None:
        assert ib["precision"] == "fp32" and cpu_bf16_reason() in ib["precision_note"]
        return
    assert ib["precision"] == "bf16" and b.dtype == torch.float32
    diff = (a - b).abs()
    # bf16 products move each step's gradient by ~1e-2 of itself; the noise (0.3 per step) dominates
    assert 0 < float(diff.max()) < 0.05 * 0.3


def test_a_call_inside_a_bf16_region_runs_bf16_and_leaves_the_region_as_found():
    net, z = lebm_like(), torch.randn(20, 12)
    ref, _ = run(closure_of(net), z, backend="reference", precision="bf16")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, info = run(closure_of(net), z, backend="reference")
        assert torch.is_autocast_enabled("cpu") and prec.autocast_dtype("cpu") == torch.bfloat16
        ref32, info32 = run(net, z, backend="reference", precision="fp32")
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")
    if prec.bf16_hardware_reason(z.device) is None:
        assert info["precision"] == "bf16" and torch.equal(out, ref)
    assert info32["precision"] == "fp32"
    plain, _ = run(net, z, backend="reference")  # outside any region
    assert torch.equal(ref32, plain)


def test_fp32_inside_a_region_fuses_and_equals_the_fp32_reference():
    net, z = lebm_like(), torch.randn(20, 12)
    ref, _ = run(net, z, backend="reference", precision="fp32")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, info = run(net, z, precision="fp32")
    assert info["precision"] == "fp32"
    if info["backend"] == "cpu":
        assert info["fused"]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_a_float16_region_runs_the_energy_there_unfused():
    net, z = lebm_like(), torch.randn(8, 12)
    with torch.autocast("cpu", dtype=torch.float16):
        ref, _ = run(net, z, backend="reference")
        out, info = run(net, z)
    assert info["precision"] == "fp16" and not info["fused"]
    assert "float16" in info["why_not_fused"] or "fp16" in info["why_not_fused"]
    torch.testing.assert_close(out, ref)  # the cpu backend's C++ update against torch's: fp32 rounding


def test_without_bf16_hardware_bf16_runs_fp32_and_says_so(monkeypatch):
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    net, z = lebm_like(), torch.randn(8, 12)
    ref, _ = run(closure_of(net), z, backend="reference", precision="fp32")
    out, info = run(closure_of(net), z, backend="reference", precision="bf16")
    assert info["precision"] == "fp32" and "no bf16 dot-product instructions" in info["precision_note"]
    assert torch.equal(out, ref)


def test_a_fused_kernel_without_a_bf16_build_runs_fp32_and_says_so(monkeypatch):
    if prec.bf16_hardware_reason(torch.device("cpu")) is not None:
        pytest.skip("this CPU has no bf16 instructions: bf16 resolves to fp32 before any kernel")
    from jebm_kernels import extension
    monkeypatch.setattr(extension, "cpu_bf16_reason", lambda: "no bf16 build (test)")
    net, z = lebm_like(), torch.randn(8, 12)
    out, info = run(net, z, backend="cpu", precision="bf16")
    fp32, _ = run(net, z, backend="cpu", precision="fp32")
    assert info["fused"] and info["precision"] == "fp32" and "no bf16 build (test)" in info["precision_note"]
    assert torch.equal(out, fp32)


def test_the_torch_rng_and_default_dtype_are_left_as_found():
    net, z = lebm_like(), torch.randn(8, 12)
    state = torch.get_rng_state()
    run(closure_of(net), z, precision="bf16", generator=(1, 2))
    assert torch.equal(torch.get_rng_state(), state) and torch.get_default_dtype() == torch.float32


def test_langevin_sampler_and_explain_fusion_take_precision():
    net = lebm_like(d=6)
    s = jk.LangevinSampler(net, step_size=0.01, precision="bf16")
    x = s.sample(dim=(6,), n_steps=4, n_samples=5, generator=(3, 0))
    assert x.shape == (5, 6) and x.dtype == torch.float32
    bf16_here = prec.bf16_hardware_reason(torch.device("cpu")) is None and cpu_bf16_reason() is None
    expected = "bf16" if bf16_here else "fp32"
    assert s.last_info["precision"] == expected
    e = jk.explain_fusion(net, torch.randn(5, 6), precision="bf16")
    assert e["fused"] in (True, False)


def test_the_prior_chain_op_takes_fp32_or_bf16_only():
    from jebm_kernels.ops import FusedPriorChain
    net = lebm_like(d=5, width=7)
    spec = jk.mlp_spec_from_sequential(net)
    prior = jk.PriorSpec(dims=(5,), layer_terms=(spec,), energy_sign=1.0)
    with pytest.raises(ValueError, match="'fp32' or 'bf16'"):
        FusedPriorChain(prior, n_steps=2, step_size=0.1, precision="auto")
    chain = FusedPriorChain(prior, n_steps=3, step_size=0.1, precision="bf16")
    out = chain([torch.randn(4, 5)], jk.philox_tensor(1, 0))
    assert out[0].shape == (4, 5) and torch.isfinite(out[0]).all()


def small_conv_decoder(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Unflatten(1, (6, 1, 1)), nn.ConvTranspose2d(6, 8, 4, 1, 0), nn.LeakyReLU(0.2),
                         nn.ConvTranspose2d(8, 1, 4, 2, 1), nn.Tanh())


def test_a_bf16_conv_chain_holds_weights_channels_last_only_for_the_chain():
    dec = small_conv_decoder()
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    energy = lambda z: ((x - dec(z)) ** 2).flatten(1).sum(-1) / (2 * 0.3 ** 2) + 0.5 * z.pow(2).sum(-1)  # noqa: E731
    weights = [m.weight for m in dec if isinstance(m, nn.ConvTranspose2d)]
    before = [(w.data_ptr(), w.detach().clone()) for w in weights]
    seen = []
    dec[1].register_forward_hook(lambda m, i, o: seen.append(m.weight.is_contiguous(memory_format=torch.channels_last)))
    z = torch.randn(5, 6)
    out, info = run(energy, z, backend="cpu", precision="bf16")
    if info["precision"] == "bf16":
        assert len(seen) >= 6 and all(seen[-6:])  # channels-last at each of the chain's 6 evaluations
    ref, _ = run(energy, z, backend="reference", precision="bf16")  # the plain autocast loop
    for w, (ptr, values) in zip(weights, before):
        assert w.data_ptr() == ptr and w.is_contiguous() and torch.equal(w, values)
    torch.testing.assert_close(out, ref, rtol=0, atol=0.05 * 0.3)  # bf16 rounding in two layouts
    fp32, _ = run(energy, z, backend="cpu", precision="fp32")
    seen.clear()
    run(energy, z, backend="cpu", precision="fp32")
    assert len(seen) >= 6 and not any(seen[-6:])  # fp32 chains run the user's layout


def test_a_write_into_a_conv_weight_during_a_bf16_chain_is_kept():
    dec = small_conv_decoder()
    calls = []

    def energy(z):
        calls.append(1)
        with torch.no_grad():
            dec[1].weight.mul_(1.0)  # an in-place write (same values) bumps the version
            dec[1].weight[0, 0, 0, 0] = float(len(calls))
        return dec(z).flatten(1).pow(2).sum(-1) + 0.5 * z.pow(2).sum(-1)

    z = torch.randn(3, 6)
    run(energy, z, backend="cpu", precision="bf16", n_steps=3)
    assert float(dec[1].weight.detach()[0, 0, 0, 0]) == float(len(calls)) and dec[1].weight.is_contiguous()
