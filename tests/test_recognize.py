"""Energies fused however they are written (jebm_kernels/recognize.py): an MLP energy written with
custom activation modules, ``F.*`` calls, ``ModuleList`` loops, spectral-normalised Linear layers,
a final sum / squeeze / view / select / mean and a hand-written Gaussian term is traced, read as
a ``PriorSpec`` and run by the fused kernel; its chain equals the reference's (autograd on the
user's own code) to the fused backends' tolerance (test_prior_chain.py). Energies of another form
are not fused, and ``info["why_not_fused"]`` / ``explain_fusion`` say why."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_where
from torch import nn

import jebm_kernels as jk
from jebm_kernels import extension

needs_cpp = pytest.mark.skipif(extension.cpu_error() is not None,
                               reason=f"the C++ extension is not built: {extension.cpu_error()}")
D = 12


class GELU(nn.Module):
    """The official LEBM code's own activation class."""

    def forward(self, x):
        return F.gelu(x)


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)  # not an aten.silu: read as two ops, so not fused


class LoopEnergy(nn.Module):
    """A ModuleList loop with F.silu, a bias-free output, a negated MLP and a Gaussian term by hand."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(D, 20), nn.Linear(20, 20), nn.Linear(20, 1, bias=False)])

    def forward(self, z):
        h = z
        for layer in self.layers[:-1]:
            h = F.silu(layer(h))
        return -self.layers[-1](h).view(-1) + (z * z).sum(dim=1) / 2


class LebmE(nn.Module):
    """As LEBM's E network: Sequential with its GELU class, the energy -E(z) squeezed, + ||z||^2/2."""

    def __init__(self):
        super().__init__()
        self.ebm = nn.Sequential(nn.Linear(D, 24), GELU(), nn.Linear(24, 24), GELU(), nn.Linear(24, 1))

    def forward(self, z):
        return -self.ebm(z).squeeze(1) + 0.5 * z.pow(2).sum(-1)


def _seeded(fn):
    torch.manual_seed(0)
    return fn()


def spectral_energy():
    a = nn.utils.parametrizations.spectral_norm(nn.Linear(D, 16))
    b = nn.utils.parametrizations.spectral_norm(nn.Linear(16, 1))
    a.eval(), b.eval()  # read at their current weights: no power iteration between calls
    return lambda z: b(F.leaky_relu(a(z), 0.2))[:, 0] + z.pow(2).sum(-1) * 0.25


MUST_FUSE = {
    "lebm_custom_gelu_class": lambda: LebmE(),
    "sequential_custom_gelu": lambda: nn.Sequential(nn.Linear(D, 16), GELU(), nn.Linear(16, 1)),
    "modulelist_loop_silu": lambda: LoopEnergy(),
    "closure_f_calls_tanh_gelu": lambda: (lambda l1, l2: (lambda z: l2(torch.tanh(l1(z))).squeeze(-1)))(
        nn.Linear(D, 16), nn.Linear(16, 1)),
    "spectral_norm_select": spectral_energy,
    "softplus_mean_over_features": lambda: (lambda l: (lambda z: F.softplus(l(z), beta=2.0).mean(-1)))(nn.Linear(D, 8)),
    "elu_sum_over_features": lambda: (lambda l: (lambda z: F.elu(l(z), alpha=0.5).sum(-1) + 0.5 * (z ** 2).sum(-1)))(
        nn.Linear(D, 10)),
    "relu_two_linears_no_activation_between": lambda: (lambda a, b, c: (lambda z: c(F.relu(b(a(z)))).flatten()))(
        nn.Linear(D, 9), nn.Linear(9, 7), nn.Linear(7, 1)),
}

MUST_NOT_FUSE = {
    "sin_of_z": (lambda: (lambda z: torch.sin(z).sum(-1)), "aten.sin"),
    "swish_written_out": (lambda: nn.Sequential(nn.Linear(D, 8), Swish(), nn.Linear(8, 1)), "sigmoid"),
    "two_mlp_terms": (lambda: (lambda a, b: (lambda z: a(z).squeeze(-1) + b(z).squeeze(-1)))(
        nn.Linear(D, 1), nn.Linear(D, 1)), "two MLP terms"),
    "layer_norm": (lambda: nn.Sequential(nn.Linear(D, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 1)),
                   "native_layer_norm"),
    "data_dependent_branch": (lambda: (lambda l: (
        lambda z: l(z).squeeze(-1) if bool(z.sum() > 0) else -l(z).squeeze(-1)))(nn.Linear(D, 1)), ""),
    "negative_quadratic": (lambda: (lambda l: (lambda z: l(z).squeeze(-1) - z.pow(2).sum(-1)))(nn.Linear(D, 1)),
                           "q >= 0"),
}


@needs_cpp
@pytest.mark.parametrize("name", list(MUST_FUSE))
def test_differently_written_mlp_energies_are_fused(name):
    energy = _seeded(MUST_FUSE[name])
    z = torch.randn(9, D, generator=torch.Generator().manual_seed(1))
    kw = dict(n_steps=30, step_size=0.2, generator=(5, 6), return_info=True)
    out, info = jk.langevin(energy, z, **kw)
    assert info["backend"] == "cpu" and info["fused"], info["why_not_fused"]
    assert info["why_not_fused"] is None
    ref, ref_info = jk.langevin(energy, z, backend="reference", **kw)
    assert_close_where(out, ref, atol=2e-5, rtol=2e-5, what=name)
    for e, r in zip(info["energy"], ref_info["energy"]):
        assert e == pytest.approx(r, rel=1e-4, abs=1e-3)
    assert jk.explain_fusion(energy, z)["fused"]


class LebmNetE(nn.Module):
    """The official LEBM code's _netE as written: z [B, nz, 1, 1] squeezed, the score viewed back."""

    def __init__(self, nz=D, ndf=20):
        super().__init__()
        self.ebm = nn.Sequential(nn.Linear(nz, ndf), GELU(), nn.Linear(ndf, ndf), GELU(), nn.Linear(ndf, 1))

    def forward(self, z):
        return self.ebm(z.squeeze()).view(-1, 1, 1, 1)


@needs_cpp
def test_the_official_lebm_prior_on_four_dimensional_z_is_fused():
    """LEBM's sample_langevin_prior_z energy, en = netE(z).squeeze() with the N(0, sigma^2) term as
    prior_sigma, on its [B, nz, 1, 1] latents: traced, fused, the caller's shape returned."""
    net_e = _seeded(LebmNetE)
    energy = lambda z: net_e(z).squeeze()  # noqa: E731  (LEBM's energy(score) with 'identity' form)
    z = torch.randn(9, D, 1, 1, generator=torch.Generator().manual_seed(4))
    kw = dict(n_steps=30, step_size=0.4, prior_sigma=1.0, generator=(3, 4), return_info=True)
    out, info = jk.langevin(energy, z, **kw)
    assert info["fused"] and out.shape == z.shape
    ref, _ = jk.langevin(energy, z, backend="reference", **kw)
    assert_close_where(out, ref, atol=2e-5, rtol=2e-5, what="LEBM prior")


@pytest.mark.parametrize("name", list(MUST_NOT_FUSE))
def test_other_energies_are_not_fused_and_say_why(name):
    make, why = MUST_NOT_FUSE[name]
    energy = _seeded(make)
    z = torch.randn(9, D, generator=torch.Generator().manual_seed(1))
    explained = jk.explain_fusion(energy, z)
    assert not explained["fused"] and explained["spec"] is None
    assert why in explained["why_not_fused"], explained["why_not_fused"]
    out, info = jk.langevin(energy, z, n_steps=5, step_size=0.2, generator=(5, 6), return_info=True)
    assert not info["fused"] and info["why_not_fused"] == explained["why_not_fused"]
    ref = jk.langevin(energy, z, n_steps=5, step_size=0.2, generator=(5, 6), backend="reference")
    assert_close_where(out, ref, atol=2e-5, rtol=2e-5, what=name)


@needs_cpp
def test_weights_are_read_at_each_call():
    """An optimizer step between calls changes the weights in place: the next chain uses them."""
    energy = _seeded(LoopEnergy)
    z = torch.randn(5, D, generator=torch.Generator().manual_seed(2))
    kw = dict(n_steps=10, step_size=0.2, generator=(1, 1))
    before = jk.langevin(energy, z, **kw)
    with torch.no_grad():
        for p in energy.parameters():
            p.mul_(1.5)
    after, info = jk.langevin(energy, z, return_info=True, **kw)
    assert info["fused"]
    ref = jk.langevin(energy, z, backend="reference", **kw)
    assert_close_where(after, ref, atol=2e-5, rtol=2e-5, what="after an in-place weight change")
    assert not torch.allclose(before, after)


@needs_cpp
def test_a_rebound_closure_is_not_run_with_stale_weights():
    """A lambda over a global that is rebound: the global is part of the trace's key, so the new
    module is traced and fused with its own weights."""
    global _NET
    _NET = _seeded(lambda: nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 1)))
    energy = lambda z: _NET(z).squeeze(-1)  # noqa: E731
    z = torch.randn(5, D, generator=torch.Generator().manual_seed(3))
    kw = dict(n_steps=10, step_size=0.2, generator=(1, 1))
    jk.langevin(energy, z, **kw)
    torch.manual_seed(9)
    _NET = nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 1))
    out, info = jk.langevin(energy, z, return_info=True, **kw)
    ref = jk.langevin(energy, z, backend="reference", **kw)
    assert_close_where(out, ref, atol=2e-5, rtol=2e-5, what="after rebinding the global")
    assert info["fused"], info["why_not_fused"]


def test_fusion_facts_of_known_energies():
    z = torch.randn(3, 4)
    seq = nn.Sequential(nn.Linear(4, 5), nn.ELU(), nn.Linear(5, 1))
    assert jk.explain_fusion(seq, z, backend="reference")["why_not_fused"].startswith("the reference backend")
    seq64 = nn.Sequential(nn.Linear(4, 5), nn.ELU(), nn.Linear(5, 1)).double()
    why = jk.explain_fusion(lambda t: seq64(t).squeeze(-1), z.double())["why_not_fused"]
    assert "float32" in why  # the kernels' type: float64 energies are not traced
    with pytest.raises(TypeError, match="unexpected arguments"):
        jk.explain_fusion(seq, z, color="red")


@needs_cpp
def test_a_closure_rebuilt_over_new_observations_is_traced_once(monkeypatch):
    """A posterior closure built per batch (new x, same decoder), as LEBM writes its posterior:
    traced once, then read with each call's x; fused whole as an MLP-decoder posterior and equal
    to the reference. One that cannot be fused is traced again only after 1, 2, 4, ... more calls."""
    from jebm_kernels import traces as trace_cache
    dec = nn.Sequential(nn.Linear(D, 16), nn.LeakyReLU(0.2), nn.Linear(16, 20), nn.Tanh())
    traces = []
    real = trace_cache._trace
    monkeypatch.setattr(trace_cache, "_trace", lambda *a: traces.append(1) or real(*a))

    def posterior(x):  # sigma_x = 0.3; the images as [B, 4, 5], the decoder's rows viewed so
        return lambda z: (x - dec(z).view(-1, 4, 5)).pow(2).sum(dim=(1, 2)) / 0.18 + 0.5 * z.pow(2).sum(-1)

    def not_fusable(x):
        return lambda z: (x - torch.sin(dec(z))).pow(2).sum(-1)

    z = torch.randn(5, D)
    kw = dict(n_steps=5, step_size=0.1, generator=(3, 0), return_info=True)
    for seed in range(3):
        x = torch.rand(5, 4, 5, generator=torch.Generator().manual_seed(seed))
        out, info = jk.langevin(posterior(x), z, **kw)
        assert info["fused"], info["why_not_fused"]
        ref, _ = jk.langevin(posterior(x), z, backend="reference", **kw)
        assert_close_where(out, ref, atol=2e-5, rtol=2e-5, what=f"posterior closure, batch {seed}")
    assert len(traces) == 1
    for seed in range(15):
        info = jk.explain_fusion(not_fusable(torch.rand(5, 20)), z)
        assert not info["fused"] and "sin" in info["why_not_fused"]
    assert len(traces) == 1 + 4  # at the 1st, 3rd, 7th and 15th call
    gen = torch.Generator().manual_seed(7)
    for _ in range(2):  # a fusable prior over new weights: read at those weights
        w = torch.randn(D, 9, generator=gen)
        energy = (lambda w: lambda t: torch.tanh(t @ w).sum(-1) + 0.5 * t.pow(2).sum(-1))(w)
        out, info = jk.langevin(energy, z, **kw)
        ref, _ = jk.langevin(energy, z, backend="reference", **kw)
        assert info["fused"]
        assert_close_where(out, ref, atol=2e-5, rtol=2e-5, what="a closure over new weights")
    assert len(traces) == 1 + 4 + 1


@needs_cpp
@pytest.mark.parametrize("form", ["sum_div", "mean_mul", "g_minus_x", "with_ebm_term"])
def test_mlp_decoder_posteriors_written_as_closures_are_fused(form):
    """||x - g(z)||^2 terms however written, with a Gaussian and optionally an MLP energy term."""
    torch.manual_seed(0)
    dec = nn.Sequential(nn.Linear(D, 24), nn.GELU(), nn.Linear(24, 30))
    ebm = nn.Sequential(nn.Linear(D, 10), nn.GELU(), nn.Linear(10, 1))
    x = torch.rand(6, 30)
    energy = {
        "sum_div": lambda z: ((x - dec(z)) ** 2).sum(-1) / (2 * 0.3 ** 2) + (z * z).sum(-1) / 2,
        "mean_mul": lambda z: 4.0 * F.mse_loss(dec(z), x, reduction="none").mean(-1) + 0.5 * z.pow(2).sum(-1),
        "g_minus_x": lambda z: 0.5 * (dec(z) - x).pow(2).flatten(1).sum(1),
        "with_ebm_term": lambda z: ((x - dec(z)) ** 2).sum(-1) / 0.18 + ebm(z).squeeze(-1) + 0.5 * z.pow(2).sum(-1),
    }[form]
    z = torch.randn(6, D)
    kw = dict(n_steps=8, step_size=0.05, generator=(9, 1), return_info=True)
    out, info = jk.langevin(energy, z, **kw)
    assert info["fused"], info["why_not_fused"]
    ref, _ = jk.langevin(energy, z, backend="reference", **kw)
    assert_close_where(out, ref, atol=3e-5, rtol=3e-5, what=form)
