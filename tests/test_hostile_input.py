"""Property test: whatever langevin is given, on every backend this machine has, it either raises a
clear ValueError/TypeError or returns what the reference returns. It never crashes the interpreter."""

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import jebm_kernels as jk

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64]
SPECIAL = [0.0, -0.0, 1e-30, 1e30, float("nan"), float("inf"), float("-inf")]


def make_energy(kind: str, d: int):
    torch.manual_seed(0)
    if kind == "sequential":
        return nn.Sequential(nn.Linear(d, 5), nn.Tanh(), nn.Linear(5, 1))
    if kind == "quadratic":
        return lambda z: 0.5 * (z.reshape(z.shape[0], -1) ** 2).sum(-1)
    return lambda z: z.reshape(z.shape[0], -1).sum(-1, keepdim=True)  # wrong shape: [B, 1]


@st.composite
def calls(draw):
    batch = draw(st.integers(0, 6))
    d = draw(st.integers(1, 7))
    dtype = draw(st.sampled_from(DTYPES))
    if dtype != torch.int64:
        z = torch.randn(batch, d * 2, dtype=torch.float64).to(dtype)
    else:
        z = torch.ones(batch, d * 2, dtype=dtype)
    if draw(st.booleans()):
        z = z[:, ::2]  # a non-contiguous view [B, d]
    else:
        z = z[:, :d]
    if batch and dtype.is_floating_point and draw(st.booleans()):
        z = z.clone()
        z.view(-1)[draw(st.integers(0, z.numel() - 1))] = draw(st.sampled_from(SPECIAL))
    step = draw(st.one_of(st.floats(1e-3, 1.0), st.sampled_from(SPECIAL + [-0.1])))
    return dict(
        energy_kind=draw(st.sampled_from(["sequential", "quadratic", "wrong_shape"])),
        d=d, z=z, n_steps=draw(st.integers(0, 3)), step_size=step,
        noise_scale=draw(st.sampled_from([0.0, 0.5, 1.0, -1.0, float("nan")])),
        prior_sigma=draw(st.sampled_from([None, 1.0, 0.0])),
        mala=draw(st.booleans()),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls())
def test_langevin_raises_clearly_or_matches_reference(call):
    energy = make_energy(call.pop("energy_kind"), call.pop("d"))
    z = call.pop("z")
    results = {}
    for backend in jk.available_backends():
        try:
            results[backend] = jk.langevin(energy, z, generator=(11, 0), backend=backend, **call)
        except (ValueError, TypeError) as exc:
            assert str(exc), "an error must say what was wrong"
            results[backend] = exc
    ref = results["reference"]
    for backend, out in results.items():
        if isinstance(ref, Exception):
            # Bad input is bad on every backend; a fused backend may refuse earlier, never accept.
            assert isinstance(out, Exception), f"{backend} accepted what the reference rejects: {ref}"
        elif not isinstance(out, Exception):
            tol = 1e-4 if ref.dtype == torch.float32 else 1e-10
            assert out.dtype == ref.dtype and out.shape == ref.shape
            assert torch.allclose(out, ref, atol=tol, rtol=tol, equal_nan=True), backend
        else:
            # A fused backend may decline an input the reference serves only by naming why.
            assert backend != "reference" and "cannot serve" in str(out), out


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_weights_are_reported_not_sampled(value):
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        net[0].weight[0, 0] = value
    z = torch.randn(2, 3)
    for backend in jk.available_backends():
        if backend == "cpu":  # reads the weights itself: it must check them
            with pytest.raises(ValueError, match="NaN|inf"):
                jk.langevin(net, z, n_steps=1, step_size=0.1, backend=backend)
        else:  # autograd through the module: the non-finite result shows the problem
            out = jk.langevin(net, z, n_steps=1, step_size=0.1, backend=backend)
            assert not torch.isfinite(out).all()


# ---- multi-layer calls: fusable priors and posteriors, odd layouts, devices, dtypes ------------
from functools import lru_cache  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + ["meta"]
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
CLEAR = (ValueError, TypeError)


@lru_cache(maxsize=None)
def tiny_model(dims: tuple, device: str, dtype: torch.dtype):
    from jebm.model import JEBM
    torch.manual_seed(sum(dims))
    return JEBM((1, 2, 2), list(dims), ebm_hidden=[4], gauss_hidden=[4], dec_hidden=[4]).to(device, dtype)


def layer_tensor(draw, batch: int, feat: tuple, dtype, device: str) -> torch.Tensor:
    """A [batch, *feat] tensor in one of several memory layouts (all views of other storage)."""
    layout = draw(st.sampled_from(["contiguous", "strided", "transposed", "expanded", "offset"]))
    make = lambda *shape: torch.randn(*shape, dtype=torch.float64).to(device="cpu")
    if layout == "strided":        # every other element of a wider tensor
        t = make(batch, *feat[:-1], 2 * feat[-1])[..., ::2]
    elif layout == "transposed" and len(feat) == 1:   # column-major [B, d]
        t = make(feat[0], batch).t()
    elif layout == "expanded":     # stride 0 over the batch: every chain starts at one point
        t = make(1, *feat).expand(batch, *feat)
    elif layout == "offset":       # a view that starts inside its storage
        t = make(batch + 1, *feat)[1:]
    else:
        t = make(batch, *feat)
    if device == "meta":
        return torch.empty(t.shape, dtype=dtype, device="meta")
    return t.to(dtype=dtype, device=device) if (dtype != torch.float64 or device != "cpu") else t


def mostly(draw, common, rare, one_in: int = 5):
    """A draw from ``common`` except about one time in ``one_in``, from ``rare`` (hostile values
    are the point, but most calls must get far enough to be compared with the reference)."""
    return draw(rare if draw(st.integers(0, one_in - 1)) == 0 else common)


@st.composite
def multi_layer_calls(draw):
    kind = draw(st.sampled_from(["prior_z", "prior_eps", "posterior", "quadratic"]))
    n_layers = draw(st.integers(1, 3))
    dims = tuple(draw(st.integers(1, 5)) for _ in range(n_layers))
    batch = mostly(draw, st.sampled_from([1, 2, 3, 5]), st.just(0), 12)
    dtype = mostly(draw, st.just(torch.float32), st.sampled_from(FLOATS), 3)
    device = mostly(draw, st.sampled_from(DEVICES[:-1]), st.sampled_from(DEVICES), 8)
    # quadratic energies accept any layer shape; fused energies want [B, d_l]
    feats = [(d,) if kind != "quadratic" or not draw(st.booleans()) else (d, draw(st.integers(1, 3))) for d in dims]
    z = [layer_tensor(draw, batch, f, dtype, device) for f in feats]
    if batch and device != "meta" and draw(st.integers(0, 7)) == 0:
        layer = draw(st.integers(0, n_layers - 1))
        z[layer] = z[layer].clone()
        where = torch.unravel_index(torch.tensor(draw(st.integers(0, z[layer].numel() - 1))), z[layer].shape)
        z[layer][where] = draw(st.sampled_from(SPECIAL))
    if n_layers > 1 and draw(st.integers(0, 11)) == 0:   # a layer in another dtype
        z[-1] = z[-1].to(draw(st.sampled_from(FLOATS)))
    one_step = mostly(draw, st.floats(1e-3, 0.6), st.sampled_from(SPECIAL + [-0.1]), 8)
    step = mostly(draw, st.one_of(st.just(one_step), st.lists(st.floats(1e-3, 0.6), min_size=n_layers,
                                                              max_size=n_layers)),
                  st.one_of(st.lists(st.floats(1e-3, 0.6), min_size=n_layers + 1, max_size=n_layers + 2),
                            st.builds(torch.tensor, st.floats(1e-3, 0.6)), st.just("0.1")), 8)
    model_dtype = mostly(draw, st.just(dtype if dtype in (torch.float32, torch.float64) else torch.float32),
                         st.sampled_from([torch.float32, torch.float64]), 8)
    return dict(kind=kind, dims=dims, z=z, model_dtype=model_dtype, model_device="cpu" if device == "meta" else device,
                call=dict(n_steps=draw(st.integers(0, 3)), step_size=step,
                          noise_scale=mostly(draw, st.sampled_from([0.0, 0.5, 1.0]),
                                             st.sampled_from([-1.0, float("inf")]), 10),
                          prior_sigma=mostly(draw, st.sampled_from([None, 1.0, [1.5] * n_layers]),
                                             st.sampled_from([[2.0] * (n_layers + 1), 0.0, 1e-30]), 8),
                          mala=draw(st.booleans())))


def build_energy(kind: str, dims, model_dtype, device, batch: int):
    if kind == "quadratic":
        return lambda zs: sum(0.5 * t.reshape(t.shape[0], -1).pow(2).sum(-1) for t in zs)
    model = tiny_model(dims, device, model_dtype)
    if kind == "posterior":
        x = torch.rand(batch, 1, 2, 2, dtype=model_dtype, device=device) * 2 - 1
        return jk.PosteriorEnergy(model.prior_spec("eps"), model.decoder_spec(), x, 0.3)
    return model.prior_energy_fn("z" if kind == "prior_z" else "eps")


def close(out, ref, dtype) -> bool:
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    return out.dtype == ref.dtype and out.shape == ref.shape and torch.allclose(out, ref, atol=tol, rtol=tol,
                                                                               equal_nan=True)


@pytest.mark.slow
# 120 examples: about 40 are sampled and compared on every backend (the rest are refused, as they
# must be); the Triton backend runs under its interpreter here, about 0.3 s a call.
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(multi_layer_calls())
def test_multi_layer_langevin_raises_clearly_or_matches_reference(case):
    """Fused priors and posteriors (z- and eps-space), 1-3 layers, batches 0-5, non-contiguous,
    transposed, stride-0 and offset views, float16/bfloat16/float64/mixed dtypes, the meta device
    (and CUDA where present), NaN/inf, bad step sizes: every backend raises ValueError/TypeError
    with a message, or returns what the reference returns; z is never modified."""
    z = case["z"]
    energy = build_energy(case["kind"], case["dims"], case["model_dtype"], case["model_device"], z[0].shape[0])
    before = [t.clone() if t.device.type != "meta" else None for t in z]
    results = {}
    for backend in jk.available_backends():
        try:
            results[backend] = jk.langevin(energy, z, generator=(5, 7), backend=backend, **case["call"])
        except CLEAR as exc:
            assert str(exc), "an error must say what was wrong"
            results[backend] = exc
    for t, b in zip(z, before):
        assert b is None or torch.equal(t, b) or (t.isnan().any() and torch.equal(t.nan_to_num(), b.nan_to_num()))
    ref = results["reference"]
    event(f"{case['kind']}: reference {'raised ' + type(ref).__name__ if isinstance(ref, Exception) else 'sampled'}")
    for backend, out in results.items():
        if isinstance(ref, Exception):
            assert isinstance(out, Exception), f"{backend} accepted what the reference rejects: {ref}"
        elif isinstance(out, Exception):
            assert "cannot serve" in str(out), f"{backend} refused what the reference serves: {out}"
        else:
            assert all(close(o, r, r.dtype) for o, r in zip(out, ref)), (backend, case["kind"])
