"""One test per class of bug in how ``langevin`` reads a user's energy for fusion.

The contract (tests/fusion_fuzz.py checks it on generated energies): for every energy,
``backend="auto"`` gives ``backend="reference"``'s chain with the same ``generator=(seed, offset)``
(fp32 tolerance), whether it fuses or declines; it raises only where the reference raises, with the
same exception type and message; the reference calls the energy exactly K times (K + 1 with MALA)
and nothing else touches the energy's state.
"""
import copy

import pytest
import torch
from fusion_fuzz import CallCounter, expected_calls
from fusion_fuzz import GradScale as HalfGrad  # the identity forward, half the gradient
from helpers import assert_close_where
from torch import nn
from torch.nn.utils import prune

import jebm_kernels as jk
from jebm_kernels import extension

needs_cpp = pytest.mark.skipif(extension.cpu_error() is not None,
                               reason=f"the C++ extension is not built: {extension.cpu_error()}")
pytestmark = needs_cpp

D, H, B = 7, 16, 9
ATOL = RTOL = 5e-5
KW = dict(n_steps=5, step_size=0.2, generator=(11, 3), return_info=True)


def mlp(d=D, h=H, act=nn.LeakyReLU(0.2)):
    return nn.Sequential(nn.Linear(d, h), copy.deepcopy(act), nn.Linear(h, h), copy.deepcopy(act), nn.Linear(h, 1))


def start(b=B, d=D, seed=1):
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed))


def langevin(energy, z, backend, torch_seed=0, **kw):
    """One call with torch's RNG seeded (dropout), returning (out, info) or the exception."""
    torch.manual_seed(torch_seed)
    try:
        return jk.langevin(energy, z, backend=backend, **{**KW, **kw})
    except Exception as exc:  # noqa: BLE001 (compared with the reference's)
        return exc


def assert_auto_is_reference(auto, ref, what, atol=ATOL, rtol=RTOL):
    """auto's (out, info) equals the reference's, or both raised the same."""
    if isinstance(ref, Exception) or isinstance(auto, Exception):
        assert isinstance(ref, Exception), f"{what}: auto raised {type(auto).__name__}: {auto}; the reference ran"
        assert isinstance(auto, Exception), (f"{what}: auto ran (fused={auto[1]['fused']}); the reference raised "
                                             f"{type(ref).__name__}: {ref}")
        assert (type(auto), str(auto)) == (type(ref), str(ref)), f"{what}: auto raised {auto!r}, reference {ref!r}"
        return
    out, info = auto
    expected, _ = ref
    assert info["fused"] or isinstance(info["why_not_fused"], str), info
    assert_close_where(out, expected, atol=atol, rtol=rtol, what=f"{what} (auto fused={info['fused']})")


def make_twice(make):
    """Two equal fresh builds (one for each backend), so stateful energies start alike."""
    torch.manual_seed(1234)
    a = make()
    torch.manual_seed(1234)
    b = make()
    return a, b


def adam_step(net, d=D):
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    net(start(4, d, seed=9)).pow(2).sum().backward()
    opt.step()


# --------------------------------------------------------------------- parametrized layers

OLD_PARAMETRIZATIONS = {
    "spectral_norm": nn.utils.spectral_norm,
    "weight_norm": nn.utils.weight_norm,
    "prune_l1": lambda m: prune.l1_unstructured(m, "weight", amount=0.4),
}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("when", ["fresh", "after_one_adam_step"])
@pytest.mark.parametrize("kind", list(OLD_PARAMETRIZATIONS))
def test_old_style_parametrized_sequential_equals_reference(kind, when, mode):
    """torch.nn.utils.spectral_norm / weight_norm / prune on the Linear layers of a Sequential: the
    weight is recomputed by a forward pre-hook (and spectral_norm's power iteration runs at every
    train-mode call), so ``layer.weight`` read between calls is not the weight the energy uses."""
    def make():
        net = mlp()
        for i in (0, 2, 4):
            OLD_PARAMETRIZATIONS[kind](net[i])
        net.train(mode == "train")
        if when == "after_one_adam_step":
            adam_step(net)
        return net
    ref_net, auto_net = make_twice(make)
    z = start()
    ref = langevin(ref_net, z, "reference")
    auto = langevin(auto_net, z, "auto")
    assert_auto_is_reference(auto, ref, f"{kind} {when} {mode}")
    for (k, a), (_, r) in zip(auto_net.state_dict().items(), ref_net.state_dict().items()):
        assert torch.allclose(a, r), f"{k} after the call differs from the reference run's"


# --------------------------------------------------------------------- hooks

HOOKS = {
    "forward_hook_on_sequential": lambda net: net.register_forward_hook(lambda m, i, o: 2.0 * o),
    "forward_pre_hook_on_sequential": lambda net: net.register_forward_pre_hook(lambda m, a: (0.5 * a[0],)),
    "forward_hook_on_layer": lambda net: net[0].register_forward_hook(lambda m, i, o: 1.5 * o),
    "forward_pre_hook_on_layer": lambda net: net[2].register_forward_pre_hook(lambda m, a: (a[0] + 0.3,)),
    "full_backward_hook_on_layer": lambda net: net[0].register_full_backward_hook(
        lambda m, gi, go: tuple(None if g is None else 0.5 * g for g in gi)),
}


@pytest.mark.parametrize("hook", list(HOOKS))
def test_hooked_sequential_equals_reference(hook):
    torch.manual_seed(0)
    net = mlp()
    HOOKS[hook](net)
    z = start()
    assert_auto_is_reference(langevin(net, z, "auto"), langevin(net, z, "reference"), hook)


# --------------------------------------------------------------------- weights written through .data

def _clamp(net):
    for p in net.parameters():
        p.data.clamp_(-0.01, 0.01)


def _subtract(net):
    for p in net.parameters():
        p.data -= 0.1 * torch.ones_like(p)


@pytest.mark.parametrize("write", [_clamp, _subtract], ids=["data_clamp_", "data_minus_equal"])
def test_weights_written_through_data_between_calls(write):
    """WGAN-style clipping and a hand-written SGD step through ``.data`` (no version counter sees
    them): the second auto call must use the new weights."""
    torch.manual_seed(0)
    net = mlp()
    z = start()
    first = langevin(net, z, "auto")
    assert not isinstance(first, Exception)
    write(net)
    assert_auto_is_reference(langevin(net, z, "auto"), langevin(net, z, "reference"), "after the .data write")


# --------------------------------------------------------------------- stopped gradients

def _no_grad_block(net):
    def energy(z):
        with torch.no_grad():
            score = net(z).squeeze(-1)
        return score + 0.5 * (z ** 2).sum(-1)
    return energy


STOPPED = {
    "net_of_z_detach": lambda net: lambda z: net(z.detach()).squeeze(-1) + 0.5 * (z ** 2).sum(-1),
    "net_of_z_data": lambda net: lambda z: net(z.data).squeeze(-1) + 0.5 * (z ** 2).sum(-1),
    "net_of_z_then_detach": lambda net: lambda z: net(z).detach().squeeze(-1) + 0.5 * (z ** 2).sum(-1),
    "no_grad_block": _no_grad_block,
    "autograd_function_half_gradient":
        lambda net: lambda z: HalfGrad.apply(net(z)).squeeze(-1) + 0.5 * (z ** 2).sum(-1),
    "only_a_detached_term": lambda net: lambda z: net(z.detach()).squeeze(-1),
}


@pytest.mark.parametrize("form", list(STOPPED))
def test_stopped_gradients_equal_reference(form):
    torch.manual_seed(0)
    energy = STOPPED[form](mlp())
    z = start()
    assert_auto_is_reference(langevin(energy, z, "auto"), langevin(energy, z, "reference"), form)


# --------------------------------------------------------------------- globals and namespaces

POSTERIOR_SRC = """
def energy(z):
    recon = ((x - g(z)) ** 2).sum(-1) / (2 * SIGMA ** 2)
    return recon + net(z).squeeze(-1) + 0.5 * (z ** 2).sum(-1)
"""
P = 256  # a 16 x 16 image: U in the hundreds


def _posterior_namespace(net, g, x):
    ns = {"__name__": "user_module", "net": net, "g": g, "x": x, "SIGMA": 1.0}
    exec(POSTERIOR_SRC, ns)  # a module-level function: net, g and x are its globals
    return ns


def _ema(net, factor=1e-3):
    new = copy.deepcopy(net)
    with torch.no_grad():
        for p in new.parameters():
            p.mul_(1 + factor)
    return new


def _posterior_parts(seed=0):
    torch.manual_seed(seed)
    g = nn.Sequential(nn.Linear(D, 32), nn.Tanh(), nn.Linear(32, P))
    net = nn.Sequential(nn.Linear(D, 32), nn.SiLU(), nn.Linear(32, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3)
    return net, g, torch.randn(B, P)


def test_global_module_rebound_to_an_ema_copy():
    """A module-level energy over a global EBM ``net``, rebound to an EMA copy (weights x (1 + 1e-3)),
    with a reconstruction term of hundreds: the second call must use the new global."""
    net, g, x = _posterior_parts()
    ns = _posterior_namespace(net, g, x)
    z = start()
    kw = dict(step_size=0.3, n_steps=6)
    assert not isinstance(langevin(ns["energy"], z, "auto", **kw), Exception)
    ns["net"] = _ema(net)
    assert_auto_is_reference(langevin(ns["energy"], z, "auto", **kw), langevin(ns["energy"], z, "reference", **kw),
                             "after rebinding the global")


def test_equal_code_in_two_namespaces():
    """Two functions compiled from the same source in two module namespaces (two checkpoints loaded
    by the same code): each is its own energy."""
    net, g, x = _posterior_parts()
    f1 = _posterior_namespace(net, g, x)["energy"]
    f2 = _posterior_namespace(_ema(net), g, x)["energy"]
    assert f1.__code__ == f2.__code__ and f1.__globals__ is not f2.__globals__
    z = start()
    kw = dict(step_size=0.3, n_steps=6)
    for name, f in (("first", f1), ("second", f2), ("first again", f1)):
        assert_auto_is_reference(langevin(f, z, "auto", **kw), langevin(f, z, "reference", **kw), name)


# --------------------------------------------------------------------- posteriors at a new batch size

class HeldBatchPosterior(nn.Module):
    def __init__(self, g, x, sigma=0.5):
        super().__init__()
        self.g, self.x, self.sigma = g, x, sigma

    def forward(self, z):
        return ((self.x - self.g(z)) ** 2).sum(-1) / (2 * self.sigma ** 2) + 0.5 * (z ** 2).sum(-1)


GLOBAL_X_SRC = """
def energy(z):
    return ((x - g(z)) ** 2).sum(-1) / (2 * 0.5 ** 2) + 0.5 * (z ** 2).sum(-1)
"""


def _decoder(p=12):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, p))


def test_posterior_of_one_observation_broadcast_to_a_new_batch_size():
    """x.expand(z.shape[0], -1): one observation, as many chains as asked for."""
    g = _decoder()
    x1 = torch.randn(1, 12)
    energy = lambda z: ((x1.expand(z.shape[0], -1) - g(z)) ** 2).sum(-1) * 2.0 + 0.5 * (z ** 2).sum(-1)  # noqa: E731
    kw = dict(step_size=0.1)
    for b in (6, 10, 3):
        z = start(b)
        ref, auto = langevin(energy, z, "reference", **kw), langevin(energy, z, "auto", **kw)
        assert not isinstance(ref, Exception), f"B={b}: the reference raised {ref!r}"
        assert_auto_is_reference(auto, ref, f"B={b}")


def test_posterior_module_given_a_batch_of_another_size():
    g = _decoder()
    post = HeldBatchPosterior(g, torch.randn(6, 12))
    kw = dict(step_size=0.1)
    for b in (6, 10, 3):
        post.x = torch.randn(b, 12)
        z = start(b)
        ref, auto = langevin(post, z, "reference", **kw), langevin(post, z, "auto", **kw)
        assert not isinstance(ref, Exception), f"B={b}: the reference raised {ref!r}"
        assert_auto_is_reference(auto, ref, f"B={b}")


def test_global_observations_rebound_to_a_batch_of_another_size():
    ns = {"__name__": "user_module", "g": _decoder(), "x": torch.randn(6, 12)}
    exec(GLOBAL_X_SRC, ns)
    kw = dict(step_size=0.1)
    for b in (6, 10, 3):
        ns["x"] = torch.randn(b, 12)
        z = start(b)
        ref, auto = langevin(ns["energy"], z, "reference", **kw), langevin(ns["energy"], z, "auto", **kw)
        assert not isinstance(ref, Exception), f"B={b}: the reference raised {ref!r}"
        assert_auto_is_reference(auto, ref, f"B={b}")


# --------------------------------------------------------------------- attributes that change

class TemperedEnergy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.T = 1.0

    def forward(self, z):
        return self.net(z).squeeze(-1) / self.T + 0.5 * (z ** 2).sum(-1)


def test_temperature_attribute_changed_between_calls_stays_fused():
    """An annealed temperature ``self.T``: still an MLP energy at every T, so it must stay fused and
    follow the new T."""
    torch.manual_seed(0)
    energy = TemperedEnergy()
    z = start()
    for T in (1.0, 2.0, 0.5):
        energy.T = T
        auto, ref = langevin(energy, z, "auto"), langevin(energy, z, "reference")
        assert_auto_is_reference(auto, ref, f"T={T}")
        assert auto[1]["fused"], f"T={T}: not fused: {auto[1]['why_not_fused']}"


def test_posterior_module_with_a_new_batch_each_call_stays_fused():
    """The training loop's posterior: the same module, ``self.x`` the next batch (same size)."""
    post = HeldBatchPosterior(_decoder(), None)
    gen = torch.Generator().manual_seed(5)
    for k in range(3):
        post.x = torch.randn(B, 12, generator=gen)
        z = start(seed=k)
        auto, ref = langevin(post, z, "auto", step_size=0.1), langevin(post, z, "reference", step_size=0.1)
        assert_auto_is_reference(auto, ref, f"batch {k}")
        assert auto[1]["fused"], f"batch {k}: not fused: {auto[1]['why_not_fused']}"


# --------------------------------------------------------------------- the reference's calls

@pytest.mark.parametrize("mala", [False, True], ids=["langevin", "mala"])
@pytest.mark.parametrize("K", [0, 1, 5])
def test_reference_calls_the_energy_exactly_k_times(K, mala):
    """The specification: the start and after each step but the last (K), + each proposal with
    MALA (K + 1); no tracing, no checks that call the energy."""
    torch.manual_seed(0)
    net = mlp()
    calls = []

    def energy(z):
        calls.append(1)
        return net(z).squeeze(-1) + 0.5 * (z ** 2).sum(-1)
    out = langevin(energy, start(), "reference", n_steps=K, mala=mala, step_size=0.1)
    assert not isinstance(out, Exception), out
    assert len(calls) == expected_calls(K, mala), f"{len(calls)} calls, expected {expected_calls(K, mala)}"


@pytest.mark.parametrize("form", ["mlp", "with_layernorm"])
def test_reference_calls_a_sequential_exactly_k_times(form):
    """Counted without touching the energy (``sys.setprofile`` on the Sequential's forward)."""
    torch.manual_seed(0)
    net = mlp() if form == "mlp" else nn.Sequential(nn.Linear(D, H), nn.LayerNorm(H), nn.Tanh(), nn.Linear(H, 1))
    with CallCounter(net) as counter:
        out = langevin(net, start(), "reference", n_steps=4)
    assert not isinstance(out, Exception), out
    assert counter.n == 4


# --------------------------------------------------------------------- inputs the energy rejects

def _under_inference_mode(net, z):
    with torch.inference_mode():
        return langevin(net, z, "reference"), langevin(net, z, "auto")


REJECTED = {
    "sequential_given_B_d_1_1": lambda net, z: (langevin(net, z[:, :, None, None], "reference"),
                                                langevin(net, z[:, :, None, None], "auto")),
    "sequential_given_a_list": lambda net, z: (langevin(net, [z], "reference"), langevin(net, [z], "auto")),
    "inference_mode": _under_inference_mode,
}


@pytest.mark.parametrize("form", list(REJECTED))
def test_input_the_energy_rejects_raises_as_the_reference(form):
    torch.manual_seed(0)
    ref, auto = REJECTED[form](mlp(), start())
    assert isinstance(ref, Exception), "the reference is expected to raise here (the energy rejects the input)"
    assert_auto_is_reference(auto, ref, form)


# --------------------------------------------------------------------- autocast

@pytest.mark.parametrize("form", ["sequential", "closure"])
def test_enclosing_autocast_declines_or_equals_reference(form):
    torch.manual_seed(0)
    net = mlp()
    energy = net if form == "sequential" else (lambda z: net(z).squeeze(-1) + 0.5 * (z ** 2).sum(-1))
    z = start()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, auto = langevin(energy, z, "reference"), langevin(energy, z, "auto")
    assert_auto_is_reference(auto, ref, "under autocast(bfloat16)", atol=5e-2, rtol=0.0)


# --------------------------------------------------------------------- stateful energies

def test_batchnorm_in_train_mode():
    """BatchNorm in train mode: the energy couples the chains and updates its running statistics at
    every call; the reference calls it K times, and auto leaves the same statistics."""
    def make():
        return nn.Sequential(nn.Linear(D, H), nn.BatchNorm1d(H), nn.SiLU(), nn.Linear(H, 1)).train()
    ref_net, auto_net = make_twice(make)
    z = start()
    ref, auto = langevin(ref_net, z, "reference"), langevin(auto_net, z, "auto")
    assert_auto_is_reference(auto, ref, "BatchNorm1d (train)")
    bn_ref, bn_auto = ref_net[1], auto_net[1]
    assert int(bn_ref.num_batches_tracked) == KW["n_steps"], "the reference called the energy more than K times"
    assert int(bn_auto.num_batches_tracked) == KW["n_steps"], "auto called the energy more than K times"
    assert torch.allclose(bn_auto.running_mean, bn_ref.running_mean)
    assert torch.allclose(bn_auto.running_var, bn_ref.running_var)


def test_dropout_in_train_mode():
    """Dropout in train mode draws its masks from torch's RNG: the reference draws exactly K (one per
    call), and from the same seed auto's chain and the RNG state after it equal the reference's."""
    def make():
        return nn.Sequential(nn.Linear(D, H), nn.Dropout(0.3), nn.Tanh(), nn.Linear(H, 1)).train()
    ref_net, auto_net = make_twice(make)
    z = start()
    with CallCounter(ref_net) as counter:
        ref = langevin(ref_net, z, "reference", torch_seed=3)
    ref_rng = torch.get_rng_state()
    auto = langevin(auto_net, z, "auto", torch_seed=3)
    auto_rng = torch.get_rng_state()
    assert counter.n == KW["n_steps"], f"the reference called the energy {counter.n} times, expected {KW['n_steps']}"
    assert_auto_is_reference(auto, ref, "Dropout (train)")
    assert torch.equal(auto_rng, ref_rng), "auto drew a different number of dropout masks than the reference"


# ----------------------------------------------------------------- the start check, once per trace

_HELPER_NET = None


def _score(z):  # a helper the energy calls, reading a module-level net
    return _HELPER_NET(z).squeeze(-1)


def _energy_through_helper(z):
    return _score(z) + 0.5 * z.pow(2).sum(-1)


def test_the_start_check_runs_once_per_trace():
    """A traced energy runs twice at its trace's first call (the trace, on fake tensors, and the start
    check by autograd); later calls under the same key run the kernel alone, with the weights read
    anew each call."""
    net = mlp()
    calls = _Count()

    def energy(z):
        calls.n += 1
        return net(z).squeeze(-1) + 0.5 * z.pow(2).sum(-1)

    z = start()
    for i in range(3):
        with torch.no_grad():
            net[0].weight.mul_(1.1)  # read anew at each call, with no new check
        out, info = jk.langevin(energy, z, **KW)
        assert info["fused"], info["why_not_fused"]
        assert calls.n == 2, f"call {i}: the energy ran {calls.n} times"
    ref, _ = jk.langevin(energy, z, backend="reference", **KW)
    assert calls.n == 2 + KW["n_steps"]
    assert_close_where(out, ref, atol=ATOL, rtol=RTOL, what="after weight changes")


class _Count:
    __slots__ = ("n",)  # (no attributes to key on: a counter here does not change the energy's key)

    def __init__(self):
        self.n = 0


def test_an_energy_whose_key_changes_every_call_is_not_traced_every_call():
    """A counter among a module's attributes changes its key at every call: after a few new keys in
    a row it runs unfused, traced again only after 1, 2, 4, ... calls, and always equals the
    reference."""
    from jebm_kernels import traces

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()
            self.calls = 0

        def forward(self, z):
            self.calls += 1
            return self.net(z).squeeze(-1)

    energy = Counting()
    z = start()
    n_traces = []
    real = traces._trace
    traces._trace = lambda *a: n_traces.append(1) or real(*a)
    try:
        for _ in range(40):
            out, info = jk.langevin(energy, z, **KW)
    finally:
        traces._trace = real
    assert len(n_traces) <= traces._CHURN_LIMIT + 6, len(n_traces)
    assert not info["fused"] and "changed at each" in info["why_not_fused"]
    ref, _ = jk.langevin(energy, z, backend="reference", **KW)
    assert_close_where(out, ref, atol=ATOL, rtol=RTOL, what="a counting energy")


def test_a_global_read_by_a_helper_function_is_part_of_the_key():
    """energy -> _score -> a module-level net: rebinding the net (a reloaded checkpoint) changes the
    key, so the new net is traced and checked, never run with the old trace's weights."""
    global _HELPER_NET
    torch.manual_seed(0)
    _HELPER_NET = mlp()
    z = start()
    first, info = jk.langevin(_energy_through_helper, z, **KW)
    assert info["fused"]
    torch.manual_seed(5)
    _HELPER_NET = mlp()
    out, info = jk.langevin(_energy_through_helper, z, **KW)
    ref, _ = jk.langevin(_energy_through_helper, z, backend="reference", **KW)
    assert info["fused"], info["why_not_fused"]
    assert_close_where(out, ref, atol=ATOL, rtol=RTOL, what="after rebinding the helper's global")
    assert not torch.allclose(first, out)


def test_an_unfaithful_trace_stays_declined_and_equal():
    """A custom autograd.Function halving the gradient reads as the identity in the graph: the start
    check declines it at its first call, and every later call (traced again only after 1, 2, 4, ...
    calls) declines too and equals the reference."""
    net = mlp()
    energy = lambda z: net(HalfGrad.apply(z)).squeeze(-1) + 0.5 * z.pow(2).sum(-1)
    z = start()
    for _ in range(5):
        out, info = jk.langevin(energy, z, **KW)
        ref, _ = jk.langevin(energy, z, backend="reference", **KW)
        assert not info["fused"] and "does not reproduce" in info["why_not_fused"]
        assert_close_where(out, ref, atol=ATOL, rtol=RTOL, what="custom Function")
