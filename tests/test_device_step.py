"""The trainer's GPU path (jebm/train/device_step.py, device_chains.py).

On the CPU: the device-side Philox stream, the capturable reference chain, the chain cache's
capture bookkeeping (capture off, and a fake chain for capture on), the device metrics and their
read points, and whole training runs on the path forced on (``JEBM_DEVICE_PATH=eager``) against
the eager path: bit for bit with the reference backend (metrics.jsonl and checkpoints), rollback
and giving up included. On a GPU (skipped here): no host synchronisation in an iteration after
warm-up (``torch.cuda.set_sync_debug_mode("error")``), the graphed iteration against the eager
one, and a run with a rollback on CUDA.
"""
import json

import pytest
import torch

import jebm
import jebm_kernels as jk
from jebm.model import JEBM
from jebm.train import make_trainer
from jebm.train.device_chains import ChainCache, chain_kernel
from jebm.train.device_step import ENV, DeviceMetrics, DevicePath, must_read
from jebm.train.presets import resolve_config
from jebm.train.trainer import Trainer, first_non_finite
from jebm_kernels.philox import philox_randn_from, philox_tensor

GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="the GPU path's graphs and sync checks need a GPU")

CFG = dict(dims=[4, 2], ebm_hidden=[8], gauss_hidden=[8], dec_hidden=[16], prior_steps=4, post_steps=4,
           batch_size=20, sample_every=0, n_samples=4, seed=4)


def lines(run_dir, *, timing=False):
    out = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return out if timing else [{k: v for k, v in l.items() if k != "sec_per_iter"} for l in out]


def same(a, b) -> bool:
    """Bit-for-bit equality of nested checkpoint contents (NaN equal to NaN)."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(
            a.reshape(-1).view(torch.uint8) if a.is_floating_point() else a,
            b.reshape(-1).view(torch.uint8) if b.is_floating_point() else b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


def both_paths(monkeypatch, tmp_path, name, **kw):
    """The same run on the eager path and on the device path forced on: (lines, checkpoint) each."""
    out = {}
    for mode in ("0", "eager"):
        monkeypatch.setenv(ENV, mode)
        run = tmp_path / f"{name}-{mode}"
        try:
            jebm.train(out_dir=run, progress=False, **kw)
            err = None
        except jebm.TrainingDiverged as exc:
            err = (exc.iteration, exc.metric)
        out[mode] = (lines(run), torch.load(run / "checkpoint.pt", weights_only=False), err)
    return out["0"], out["eager"]


# ---- the device-side noise and the capturable reference chain --------------------------------------

@pytest.mark.parametrize("seed,offset", [(0, 0), (2**63 + 977, 2**32 - 3), (12345, 2**40 + 17), (2**64 - 1, 5)])
def test_device_philox_is_the_stream_bit_for_bit(seed, offset):
    ph = philox_tensor(seed, offset)
    for base, n in ((0, 1), (11, 1000), (2**32, 77)):
        got = philox_randn_from(ph, base, n)
        want = jk.philox_randn(seed, offset + base, n)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def _model(decoder="mlp", **kw):
    torch.manual_seed(0)
    return JEBM((1, 8, 8), dims=(6, 3), ebm_hidden=(16,), gauss_hidden=(16,), dec_hidden=(32,), decoder=decoder,
                ngf=4, **kw)


@pytest.mark.parametrize("what", ["prior-eps", "prior-z", "posterior-mlp", "posterior-conv"])
def test_the_capturable_reference_chain_is_the_reference_bit_for_bit(what):
    """GraphSafeChain(kernel="reference"): the torch loop with its noise read from the device tensor."""
    kind, var = what.split("-")
    model = _model(decoder="conv" if var == "conv" else "mlp")
    z0 = [torch.randn(5, d) for d in model.dims]
    if kind == "prior":
        energy = model.prior_energy_fn(var)
    else:
        energy = model.posterior_energy_fn(torch.rand(5, 1, 8, 8) * 2 - 1, "eps")
    kw = dict(n_steps=3, step_size=[0.3, 0.2], noise_scale=0.7)
    want = jk.langevin(energy, z0, generator=(2**63 + 5, 1234), backend="reference", **kw)
    chain = jk.GraphSafeChain(energy, z0, generator=(2**63 + 5, 1234), kernel="reference", **kw)
    got = chain(z0)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    # the device position advanced by one chain: a second call continues the stream
    again = chain(z0)
    want2 = jk.langevin(energy, z0, generator=(2**63 + 5, 1234 + chain.chunk), backend="reference", **kw)
    assert all(torch.equal(a, b) for a, b in zip(again, want2))


def test_chain_kernel_names():
    cpu = torch.device("cpu")
    assert chain_kernel("reference", cpu) == "reference"
    assert chain_kernel("auto", cpu) == "auto"
    assert chain_kernel("cpu", cpu) == "cpu"


# ---- capture bookkeeping ----------------------------------------------------------------------

class FakeChain:
    """A chain's interface (chunk, philox, set_input, set_position, capture, captured, __call__),
    recording what happens."""

    def __init__(self, generator):
        self.chunk = 10
        self.philox = philox_tensor(*generator)
        self.calls, self.captures, self.inputs = [], 0, None
        self.captured = False

    def set_input(self, z):
        self.inputs = [t.clone() for t in z]

    def set_position(self, seed, offset):
        self.philox.copy_(philox_tensor(seed, offset))

    def capture(self):
        self.captures += 1
        self.captured = True

    def __call__(self):
        self.calls.append(tuple(self.philox.tolist()))
        return [t + 1 for t in self.inputs]


@pytest.mark.parametrize("capture", [False, True])
def test_chain_cache_builds_and_captures_once_per_key(capture):
    cache, built = ChainCache(capture, max_entries=2), []

    def build(generator):
        built.append(generator)
        return FakeChain(generator)

    gen = jk.PhiloxGenerator(7, 100)
    z = [torch.zeros(2, 3)]
    e1 = cache.get(("a",), build, gen)
    out = e1.run(z, gen)
    assert torch.equal(out[0], torch.ones(2, 3)) and gen.offset == 110
    assert e1.chain.calls == [(7, 100)]            # the generator's position, written into the device tensor
    e1b = cache.get(("a",), build, gen)
    e1b.run(z, gen)
    assert e1b is e1 and e1.chain.calls[-1] == (7, 110) and len(built) == 1
    assert e1.chain.captures == (1 if capture else 0) and e1.captured == capture
    cache.get(("b",), build, gen)
    cache.get(("c",), build, gen)                 # past max_entries: the oldest ("a") goes
    assert list(cache.entries) == [("b",), ("c",)] and cache.builds == 3
    # a new seed (a rollback's new generator would have the same one; any other is written too)
    g2 = jk.PhiloxGenerator(2**63 + 1, 5)
    e = cache.get(("c",), build, g2)
    e.run(z, g2)
    assert e.chain.calls[-1] == (2**63 + 1 - 2**64, 5)


def test_a_chain_that_cannot_be_captured_runs_eagerly_with_a_warning():
    class Uncapturable(FakeChain):
        def capture(self):
            raise RuntimeError("operation not permitted when stream is capturing")

    cache, gen = ChainCache(True), jk.PhiloxGenerator(1)
    entry = cache.get(("k",), Uncapturable, gen)
    with pytest.warns(RuntimeWarning, match="runs eagerly"):
        out = entry.run([torch.zeros(1, 2)], gen)
    assert torch.equal(out[0], torch.ones(1, 2)) and not entry.captured
    assert "not permitted" in entry.capture_error
    entry.run([torch.zeros(1, 2)], gen)  # no second attempt, no second warning
    assert entry.runs == 2


# ---- metrics on the device and their read points ------------------------------------------------

def test_device_metrics_read_the_last_values_or_the_first_divergence():
    m = DeviceMetrics()
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    m.add(1, {"a": t(1.5), "b": t(2.0), "c": 0.25})
    m.add(2, {"a": t(0.1), "b": t(3.0), "c": 0.5})
    values, bad, it = m.read(2)
    assert (values, bad, it) == ({"a": float(t(0.1)), "b": 3.0, "c": 0.5}, None, 2)
    m.add(3, {"a": t(1.0), "b": t(float("inf")), "c": 0.0})
    m.add(4, {"a": t(float("nan")), "b": t(float("nan")), "c": 0.0})
    values, bad, it = m.read(5)
    assert bad == "b" and it == 3 and values["a"] == 1.0 and values["b"] == float("inf")
    assert bad == first_non_finite({"a": 1.0, "b": float("inf"), "c": 0.0})
    m.add(6, {"a": t(2.0), "b": t(2.0), "c": 1.0})  # after the report the window is clean again
    assert m.read(6) == ({"a": 2.0, "b": 2.0, "c": 1.0}, None, 6)
    with pytest.raises(ValueError, match="changed"):
        m.add(7, {"a": t(1.0)})
        m.add(8, {"z": t(1.0)})


def test_read_points_are_every_place_the_loop_needs_host_values():
    cfg = dict(log_every=5, ckpt_every=7, sample_every=0)
    assert [i for i in range(1, 23) if must_read(i, cfg, 22)] == [5, 7, 10, 14, 15, 20, 21, 22]
    assert must_read(9, {**cfg, "sample_every": 3}, 22)


def test_device_path_modes(monkeypatch):
    cfg = resolve_config("default", **CFG)
    model = JEBM.from_config(cfg, (1, 8, 8))
    monkeypatch.delenv(ENV, raising=False)
    assert make_trainer(model, cfg).device_path is None            # the CPU: the eager path by default
    monkeypatch.setenv(ENV, "eager")
    dp = make_trainer(model, cfg).device_path
    assert isinstance(dp, DevicePath) and not dp.capture
    monkeypatch.setenv(ENV, "1")
    assert not make_trainer(model, cfg).device_path.capture          # no graphs without CUDA
    monkeypatch.setenv(ENV, "0")
    assert make_trainer(model, cfg).device_path is None
    monkeypatch.setenv(ENV, "eager")
    assert make_trainer(model, {**cfg, "learn_step_size": True, "backend": "reference"}).device_path is None
    monkeypatch.setenv(ENV, "sometimes")
    with pytest.raises(ValueError, match=ENV):
        make_trainer(model, cfg)


def test_step_on_the_device_path_returns_tensors_and_always_updates(monkeypatch):
    monkeypatch.setenv(ENV, "eager")
    cfg = resolve_config("default", **CFG)
    model = JEBM.from_config(cfg, (1, 8, 8))
    trainer = make_trainer(model, cfg)
    before = [p.detach().clone() for p in model.parameters()]
    values, bad = trainer.step(torch.rand(20, 1, 8, 8) * 2 - 1, generator=jk.PhiloxGenerator(1), backend="reference")
    assert bad is None and all(torch.is_tensor(v) and v.dim() == 0 for v in values.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ---- whole runs: the device path against the eager path, on the CPU ------------------------------

@pytest.mark.parametrize("scheme,persistent", [("mle", False), ("mle", True), ("variational", True)])
def test_device_path_trains_bit_for_bit_like_the_eager_path(tmp_path, monkeypatch, scheme, persistent):
    a, b = both_paths(monkeypatch, tmp_path, "run", iters=10, scheme=scheme, backend="reference", log_every=3,
                      checkpoint_every=4, persistent_prior=persistent, **{**CFG, "sample_every": 5})
    assert a[0] == b[0] and [l["iter"] for l in a[0]] == [3, 6, 9, 10]
    assert same(a[1], b[1])


def test_device_path_rollback_logs_and_restores_as_the_eager_path(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = Trainer.sample_posterior

    def poisoned(self, x, **kw):  # iteration 5's posterior chain blows up, once (both paths call this)
        z = real(self, x, **kw)
        calls["n"] += 1
        if calls["n"] in (5, 5 + 100):
            z = [torch.full_like(t, float("nan")) for t in z]
        return z

    monkeypatch.setattr(Trainer, "sample_posterior", poisoned)
    out = {}
    for mode in ("0", "eager"):
        calls["n"] = 0 if mode == "0" else 100
        monkeypatch.setenv(ENV, mode)
        run = tmp_path / mode
        res = jebm.train(iters=9, out_dir=run, progress=False, checkpoint_every=2, rollback_retries=2, log_every=3,
                         rollback_lr_factor=0.5, rollback_step_factor=0.25, backend="reference",
                         **{**CFG, "persistent_prior": True})
        out[mode] = (lines(run), torch.load(run / "checkpoint.pt", weights_only=False), res.rollbacks)
    assert out["0"][2] == out["eager"][2] == 1
    assert out["0"][0] == out["eager"][0]
    event = next(l for l in out["eager"][0] if "rollback" in l)
    assert (event["iter"], event["diverged_at"], event["diverged"]) == (4, 5, "loss_recon")
    assert same(out["0"][1], out["eager"][1])


def test_device_path_gives_up_at_the_same_iteration_with_the_same_checkpoint(tmp_path, monkeypatch):
    a, b = both_paths(monkeypatch, tmp_path, "div", iters=6, rollback_retries=1, log_every=4, backend="reference",
                      **{**CFG, "prior_step_size": 1e4})
    assert a[2] == b[2] and a[2][0] == 1
    assert a[0] == b[0] and same(a[1], b[1]) and b[1]["iteration"] == 0


def test_device_path_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "eager")
    kw = dict(progress=False, checkpoint_every=3, log_every=2, backend="reference", **CFG)
    jebm.train(iters=8, out_dir=tmp_path / "whole", **kw)
    jebm.train(iters=5, out_dir=tmp_path / "cut", **kw)
    jebm.train(iters=8, out_dir=tmp_path / "cut", resume=True, **kw)
    # the cut run also logged its last iteration (5), as on the eager path
    assert lines(tmp_path / "whole") == [l for l in lines(tmp_path / "cut") if l["iter"] != 5]
    assert same(torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)["model"],
                torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["model"])


# ---- on a GPU ----------------------------------------------------------------------------------

def _cuda_trainer(scheme, backend, monkeypatch, mode="auto", decoder="conv"):
    monkeypatch.setenv(ENV, mode)
    cfg = resolve_config("default", scheme=scheme, backend=backend, dims=[16, 8], decoder=decoder, ngf=8,
                         prior_steps=6, post_steps=5, batch_size=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = JEBM.from_config(cfg, (3, 16, 16)).cuda()
        trainer = make_trainer(model, cfg)
    model.train()
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(32, 3, 16, 16, generator=gen) * 2 - 1).cuda()
    return model, trainer, x


def _gpu_backends():
    names = ["reference"]
    if GPU:
        names += [b for b in ("cuda", "triton") if b in jk.available_backends()]
    return names


@needs_gpu
@pytest.mark.parametrize("scheme", ["mle", "variational"])
@pytest.mark.parametrize("backend", ["auto", "triton", "reference"])
def test_no_host_sync_in_an_iteration_after_warm_up(monkeypatch, scheme, backend):
    if backend != "auto" and backend not in _gpu_backends():
        pytest.skip(f"backend {backend!r} not available here")
    model, trainer, x = _cuda_trainer(scheme, backend, monkeypatch)
    assert trainer.device_path is not None and trainer.device_path.capture
    gen, metrics = jk.PhiloxGenerator(3), DeviceMetrics()
    for it in (1, 2):  # warm-up: builds and captures the chains (host syncs allowed here)
        values, _ = trainer.step(x, generator=gen, backend=backend)
        metrics.add(it, values)
    metrics.read(2)
    torch.cuda.synchronize()
    assert all(e.captured for e in trainer.device_path.chains.entries.values())
    torch.cuda.set_sync_debug_mode("error")
    try:
        for it in (3, 4, 5):
            values, bad = trainer.step(x, generator=gen, backend=backend)
            metrics.add(it, values)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    values, bad, _ = metrics.read(5)
    assert bad is None, values


@needs_gpu
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_the_graphed_iteration_computes_the_eager_iteration(monkeypatch, backend):
    """Same starts, same noise, same kernels: each iteration's metrics agree (a misaligned noise
    position would move them by far more than float rounding)."""
    history = {}
    for mode in ("0", "auto"):
        model, trainer, x = _cuda_trainer("mle", backend, monkeypatch, mode=mode, decoder="mlp")
        assert (trainer.device_path is None) == (mode == "0")
        gen, history[mode] = jk.PhiloxGenerator(5), []
        for _ in range(3):
            values, _ = trainer.step(x, generator=gen, backend=backend)
            history[mode].append({k: float(v) for k, v in values.items()})
        history[mode].append(gen.offset)
    assert history["0"][-1] == history["auto"][-1]  # the same counters were taken
    for eager, graphed in zip(history["0"][:-1], history["auto"][:-1]):
        for k in eager:
            assert graphed[k] == pytest.approx(eager[k], rel=1e-4, abs=1e-5), k


@needs_gpu
def test_a_run_on_cuda_rolls_back_on_the_device_path(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    calls = {"n": 0}
    real = Trainer.sample_posterior

    def poisoned(self, x, **kw):
        z = real(self, x, **kw)
        calls["n"] += 1
        if calls["n"] == 5:
            z = [torch.full_like(t, float("nan")) for t in z]
        return z

    monkeypatch.setattr(Trainer, "sample_posterior", poisoned)
    res = jebm.train(iters=9, out_dir=tmp_path / "rb", progress=False, checkpoint_every=2, rollback_retries=2,
                     log_every=3, device="cuda", **CFG)
    got = lines(tmp_path / "rb")
    event = next(l for l in got if "rollback" in l)
    assert res.rollbacks == 1 and event["iter"] == 4 and event["diverged_at"] == 5
    assert [l["iter"] for l in got if "sec_per_iter" in l] == [3, 6, 9]
