"""The one backend rule (jebm_kernels/dispatch.py): what ``auto`` picks, what a named backend that
cannot serve says, ``JEBM_BACKEND``, and the same rule behind the custom ops."""
from types import SimpleNamespace

import pytest
import torch
from helpers import make_mlp, make_prior, start
from torch import nn

import jebm_kernels as jk
from jebm_kernels import dispatch, extension, ops
from jebm_kernels.spec import MLPSpec, PriorSpec

needs_cpp = pytest.mark.skipif(extension.cpu_error() is not None,
                               reason=f"the C++ extension is not built: {extension.cpu_error()}")


def test_registry_and_priority(monkeypatch):
    assert jk.BACKENDS == dispatch.PRIORITY and set(dispatch.REGISTRY) == set(dispatch.PRIORITY)
    assert "reference" in jk.available_backends()
    for name, b in dispatch.REGISTRY.items():
        assert b.name == name and b.update is not None and b.prior_chain is not None
    # auto takes the first backend that can serve, in priority order, and falls back to the
    # reference, which serves everything, when every other one refuses
    monkeypatch.delenv("JEBM_BACKEND", raising=False)
    refusing: set = set()
    for name, b in dispatch.REGISTRY.items():
        monkeypatch.setattr(b, "unavailable_reason", lambda name=name: "off" if name in refusing else None)
        monkeypatch.setattr(b, "unsupported_reason", lambda problem: None)
        monkeypatch.setattr(b, "auto_reason", lambda problem: None)
    picked = []
    while not picked or picked[-1] != "reference":
        assert jk.available_backends() == [n for n in dispatch.PRIORITY if n not in refusing]
        problem = SimpleNamespace()
        picked.append(dispatch.select("auto", problem).name)
        assert getattr(problem, "refusals", "") == "; ".join(f"{n}: off" for n in dispatch.PRIORITY if n in refusing)
        refusing.add(picked[-1])
    assert picked == list(dispatch.PRIORITY) and picked.index("reference") == len(picked) - 1


@needs_cpp
def test_auto_picks_cpu_for_every_float32_cpu_energy_and_falls_back_quietly():
    assert "cpu" in jk.available_backends()
    assert extension.isa() in ("avx512", "avx2", "avx2-narrow", "generic")
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    _, info = jk.langevin(net, torch.randn(4, 3), n_steps=2, step_size=0.1, prior_sigma=1.0, return_info=True)
    assert info["backend"] == "cpu" and info["fused"]
    # nothing to fuse: autograd's gradient and the C++ update, and info says why it was not fused
    _, info = jk.langevin(lambda z: (z ** 2).sum(-1), torch.randn(4, 3), n_steps=2, step_size=0.1, return_info=True)
    assert info["backend"] == "cpu" and not info["fused"] and info["why_not_fused"]
    _, info = jk.langevin(net.double(), torch.randn(4, 3, dtype=torch.float64), n_steps=2, step_size=0.1,
                          prior_sigma=1.0, return_info=True)
    assert info["backend"] == "reference"  # the kernels work in float32


def test_auto_does_not_pick_the_triton_interpreter_for_cpu_tensors():
    _, info = jk.langevin(lambda zs: (zs[0] ** 2).sum(-1), [torch.randn(2, 2)], n_steps=1, step_size=0.1,
                          return_info=True)
    assert info["backend"] != "triton"


def test_jebm_backend_moves_one_backend_first(monkeypatch):
    monkeypatch.setenv("JEBM_BACKEND", "reference")
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    _, info = jk.langevin(net, torch.randn(4, 3), n_steps=1, step_size=0.1, prior_sigma=1.0, return_info=True)
    assert info["backend"] == "reference"
    monkeypatch.setenv("JEBM_BACKEND", "fastest")
    with pytest.raises(ValueError, match="JEBM_BACKEND='fastest' is not a backend"):
        jk.langevin(net, torch.randn(4, 3), n_steps=1, step_size=0.1, prior_sigma=1.0)


def test_named_backends_that_cannot_serve_say_why():
    z = torch.randn(4, 3)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend 'cuda' is not available here"):
            jk.langevin(lambda t: (t ** 2).sum(-1), z, n_steps=1, step_size=0.1, backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        jk.langevin(lambda t: (t ** 2).sum(-1), z, n_steps=1, step_size=0.1, backend="fused")
    with pytest.raises(TypeError, match="backend must be a string"):
        jk.langevin(lambda t: (t ** 2).sum(-1), z, n_steps=1, step_size=0.1, backend=3)


def test_triton_rejects_float64_clearly():
    pytest.importorskip("triton")
    if dispatch.REGISTRY["triton"].unavailable_reason() is not None:
        pytest.skip(dispatch.REGISTRY["triton"].unavailable_reason())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with pytest.raises(ValueError, match="float32"):
        jk.langevin(lambda zs: sum((t ** 2).sum(-1) for t in zs),
                    [torch.randn(2, 2, dtype=torch.float64, device=device)], n_steps=1, step_size=0.1,
                    backend="triton")


@needs_cpp
def test_explicit_cpu_serves_what_it_cannot_fuse_and_refuses_bad_input():
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    z = torch.randn(4, 3)
    kw = dict(n_steps=1, step_size=0.1, backend="cpu")
    with pytest.raises(ValueError, match="float32"):
        jk.langevin(net.double(), z.double(), **kw)
    with pytest.raises(ValueError, match="beyond float32"):
        jk.langevin(lambda t: (t ** 2).sum(-1), z, n_steps=1, step_size=1e30, backend="cpu")
    for energy, why in [(lambda t: torch.cosh(t).sum(-1), "aten.cosh"),
                        (nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 1)), "layer_norm"),
                        (nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)), "")]:
        if why == "":  # two outputs: summed by the caller, no longer a chain of Linear layers
            energy = (lambda net: lambda t: net(t).pow(2).sum(-1))(energy)
        out, info = jk.langevin(energy, z, return_info=True, **kw)
        assert info["backend"] == "cpu" and not info["fused"], why
        assert why in info["why_not_fused"]
        ref = jk.langevin(energy, z, n_steps=1, step_size=0.1, backend="reference",
                          generator=(info["seed"], info["offset"]))
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
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
    with pytest.raises(ValueError, match="takes z as a list"):
        jk.langevin(jk.PriorEnergy(make_prior((3,), hidden=(8,))), z, **kw)


@needs_cpp
def test_the_custom_ops_follow_the_same_rule():
    """The op picks its implementation with dispatch.select(op=...): C++ on the CPU where the
    kernels take the prior, the torch reference where they do not (a named backend raises)."""
    spec = make_prior((3, 5), hidden=(7,), seed=3)
    z = start(4, spec.dims)
    structure, settings, params = ops.encode_prior(spec)
    philox = ops.philox_tensor(5, 6)
    args = (z, params, structure, settings, philox, [0.2, 0.1], 1.0, [], 3, False, True)
    fused, _ = ops.run_prior_chain_op(*args)
    ref, _ = ops.run_prior_chain_op(*args, backend="reference")
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
    beyond = list(args)
    beyond[5] = [1e30, 1e30]  # s^2/2 beyond float32: the C++ kernels decline, the reference serves
    out, _ = ops.run_prior_chain_op(*beyond)
    expected, _ = ops.run_prior_chain_op(*beyond, backend="reference")
    for a, b in zip(out, expected):  # (a step that size overflows: the same NaNs)
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match=r"backend 'cpu' cannot serve this call: s\^2/2"):
        ops.run_prior_chain_op(*beyond, backend="cpu")
    with pytest.raises(ValueError, match="op must be one of"):
        dispatch.select("auto", None, op="everything")


@pytest.mark.skipif(not torch.cuda.is_available() or extension.cuda_error() is not None,
                    reason="needs a CUDA GPU and the built jebm_kernels._cuda")
def test_auto_picks_cuda_on_a_gpu():
    spec = make_prior((3, 17), hidden=(9,), seed=2)
    from backend_runners import move_spec
    z = [t.cuda() for t in start(5, spec.dims)]
    _, info = jk.langevin(jk.PriorEnergy(move_spec(spec, "cuda")), z, n_steps=2, step_size=0.4, return_info=True)
    assert info["backend"] == "cuda"


@needs_cpp
@pytest.mark.parametrize("u_dtype", [torch.float32, torch.float64])
def test_cpu_mala_on_an_unfused_energy_equals_the_reference(u_dtype):
    """The cpu backend's MALA accept step (one C++ call; the torch formulas when the energy returns
    float64) decides as the reference does, step by step."""
    w = torch.randn(5, 7, generator=torch.Generator().manual_seed(2))

    def energy(z):
        return (0.5 * z.pow(2).sum(-1) + torch.cos(z @ w).sum(-1)).to(u_dtype)

    z = torch.randn(33, 5, generator=torch.Generator().manual_seed(4))
    kw = dict(n_steps=15, step_size=0.6, mala=True, generator=(8, 3), return_info=True)
    out, info = jk.langevin(energy, z, backend="cpu", **kw)
    ref, ref_info = jk.langevin(energy, z, backend="reference", **kw)
    assert info["backend"] == "cpu" and 0 < info["accept_rate"] < 1
    assert info["accept"] == ref_info["accept"]
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


@needs_cpp
def test_cpu_mala_with_a_step_float32_cannot_square_serves_as_the_reference():
    """2 (s tau)^2 = 5e-61 rounds to 0 in float32: the C++ accept step declines it and the torch
    formulas decide, as in the reference (found by hypothesis in test_hostile_input)."""
    z = [torch.zeros(1, 1), torch.full((1, 1), -0.4623)]
    kw = dict(n_steps=1, step_size=1e-30, noise_scale=0.5, mala=True, generator=(5, 7))
    energy = lambda zs: sum(0.5 * (t ** 2).sum(-1) for t in zs)  # noqa: E731
    out = jk.langevin(energy, z, backend="cpu", **kw)
    ref = jk.langevin(energy, z, backend="reference", **kw)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
