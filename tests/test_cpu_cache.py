"""The cpu backend's per-call caches (jebm_kernels/prior_chain/cpu.py): a weight set's checks and
the packed C++ model are reused while the weights are the same tensors holding the same values,
and never once they are not -- an optimizer step, an in-place write under no_grad, a write
through ``.data``, load_state_dict, a new tensor, another instruction set. A stale pack would run
the old weights: every test here compares with the reference on the weights as they are now."""
import pytest
import torch
from helpers import assert_close_where, make_prior, start
from torch import nn

import jebm_kernels as jk
from jebm_kernels import extension
from jebm_kernels.prior_chain import cpu

pytestmark = pytest.mark.skipif(extension.cpu_error() is not None,
                                reason=f"the C++ extension is not built: {extension.cpu_error()}")

KW = dict(n_steps=6, step_size=0.3, generator=(11, 3))


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.GELU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 1))


def _close_to_reference(energy, z, **extra):
    out = jk.langevin(energy, z, backend="cpu", **KW, **extra)
    ref = jk.langevin(energy, z, backend="reference", **KW, **extra)
    for a, b in zip(out if isinstance(out, list) else [out], ref if isinstance(ref, list) else [ref]):
        assert_close_where(a, b, atol=2e-5, rtol=2e-5, what="cpu vs reference")
    return out


def _packs():
    return [v[1][0] for v in cpu._MODELS.values()]


@pytest.fixture(autouse=True)
def fresh_caches():
    cpu.clear_caches()
    yield
    cpu.clear_caches()


def test_unchanged_weights_reuse_the_packed_model():
    net = _net()
    z = torch.randn(8, 5)
    a = jk.langevin(net, z, backend="cpu", prior_sigma=1.0, **KW)
    (first,) = _packs()
    b = jk.langevin(net, z, backend="cpu", prior_sigma=1.0, **KW)
    assert _packs() == [first]  # the same _C.Model object: nothing repacked
    assert torch.equal(a, b)


def test_an_optimizer_step_repacks():
    net = _net()
    z = torch.randn(8, 5)
    _close_to_reference(net, z, prior_sigma=1.0)
    before = _packs()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net(z).sum().backward()
    opt.step()  # in place: bumps every parameter's _version
    _close_to_reference(net, z, prior_sigma=1.0)
    assert all(p not in before for p in _packs())


@pytest.mark.parametrize("how", ["no_grad add_", "load_state_dict", "copy_ from another net"])
def test_in_place_writes_are_seen(how):
    net = _net()
    z = torch.randn(8, 5)
    _close_to_reference(net, z, prior_sigma=1.0)
    other = _net(seed=7)
    if how == "no_grad add_":
        with torch.no_grad():
            net[2].weight.add_(0.25)
    elif how == "load_state_dict":
        net.load_state_dict(other.state_dict())
    else:
        with torch.no_grad():
            for p, q in zip(net.parameters(), other.parameters()):
                p.copy_(q)
    _close_to_reference(net, z, prior_sigma=1.0)


@pytest.mark.parametrize("how", ["data.mul_", "data -= ", "data.clamp_", "data = same shape"])
def test_writes_through_data_are_seen(how):
    """``.data`` bypasses the version counter; the values are compared, so the next call repacks."""
    net = _net()
    z = torch.randn(8, 5)
    _close_to_reference(net, z, prior_sigma=1.0)
    (first,) = _packs()
    w = net[0].weight
    if how == "data.mul_":
        w.data.mul_(1.5)
    elif how == "data -= ":
        w.data -= 0.1 * torch.ones_like(w)
    elif how == "data.clamp_":
        w.data.clamp_(-0.05, 0.05)
    else:
        w.data = torch.randn_like(w)
    _close_to_reference(net, z, prior_sigma=1.0)
    assert first not in _packs()


def test_nan_written_after_a_clean_check_is_reported():
    net = _net()
    z = torch.randn(8, 5)
    jk.langevin(net, z, backend="cpu", prior_sigma=1.0, **KW)
    with torch.no_grad():
        net[2].bias[3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        jk.langevin(net, z, backend="cpu", prior_sigma=1.0, **KW)


def test_new_tensors_and_dead_ones():
    """A PriorEnergy built again from new weight tensors gets its own pack; packs go with their
    weights."""
    spec = make_prior((6, 4), hidden=(12,), seed=1)
    z = start(8, (6, 4))
    _close_to_reference(jk.PriorEnergy(spec), z)
    assert len(_packs()) == 1
    spec2 = make_prior((6, 4), hidden=(12,), seed=2)  # same shapes, other tensors and values
    _close_to_reference(jk.PriorEnergy(spec2), z)
    assert len(_packs()) == 2
    del spec2
    import gc
    gc.collect()
    assert len(_packs()) == 1


def test_another_instruction_set_gets_another_pack():
    _C = extension.cpu_ext
    isas = _C.available_isas()
    if len(isas) < 2:
        pytest.skip("one instruction set only")
    spec = make_prior((6, 4), hidden=(12,), seed=1)
    z = start(8, (6, 4))
    best = _C.isa()
    try:
        outs = []
        for name in (isas[0], isas[-1]):
            _C.set_isa(name)
            outs.append(jk.langevin(jk.PriorEnergy(spec), z, backend="cpu", **KW))
            assert _packs()[-1].isa == name
    finally:
        _C.set_isa(best)
    for a, b in zip(*outs):
        assert_close_where(a, b, atol=2e-5, rtol=2e-5, what="isa")


def test_inference_mode_raises_what_the_reference_raises():
    """Under torch.inference_mode() the reference cannot take dU/dz and raises; so does every backend
    (a fused kernel there would accept what the user's loop rejects). Weights made under inference
    mode cannot be saved for backward: the reference raises, and so does auto."""
    net = _net()
    z = torch.randn(8, 5)
    errors = []
    for backend in ("reference", "auto", "cpu"):
        with torch.inference_mode(), pytest.raises(TypeError) as exc:
            jk.langevin(net, z, backend=backend, prior_sigma=1.0, **KW)
        errors.append(str(exc.value))
    assert len(set(errors)) == 1 and "autograd" in errors[0]
    with torch.inference_mode():
        inference_net = _net()
    errors = []
    for backend in ("reference", "auto"):
        with pytest.raises(RuntimeError) as exc:
            jk.langevin(inference_net, z, backend=backend, prior_sigma=1.0, **KW)
        errors.append(str(exc.value))
    assert errors[0] == errors[1] and "nference tensors" in errors[0]


class _Gelu(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.gelu(x)


def test_a_traced_energy_is_packed_once_while_its_weights_stay(monkeypatch):
    """A module the tracer reads (its own activation class) gives the same weight tensors call after
    call, so its model is packed once; an in-place update repacks it, and so does a ``.data`` write."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), _Gelu(), torch.nn.Linear(16, 1))
    z = torch.randn(8, 5)
    packs = []
    real = cpu._mlp_arg
    monkeypatch.setattr(cpu, "_mlp_arg", lambda *a: packs.append(1) or real(*a))
    for _ in range(4):
        _close_to_reference(net, z, prior_sigma=1.0)
    assert len(packs) == 1
    with torch.no_grad():
        net[0].weight.mul_(1.5)
    _close_to_reference(net, z, prior_sigma=1.0)
    assert len(packs) == 2
    net[2].weight.data.mul_(-2.0)
    _close_to_reference(net, z, prior_sigma=1.0)
    assert len(packs) == 3
