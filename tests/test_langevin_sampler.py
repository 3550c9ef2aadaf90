"""LangevinSampler: torchebm 0.8.9's LangevinDynamics contract on jebm's dynamics and noise.

Written from the contract (constructor, .to(), clamp, schedules, sample()'s arguments, shapes,
diagnostics layout and error texts), not copied from torchebm's tests. torchebm itself is used
only where it is installed, to check that its scheduler objects are driven as torchebm drives them.
"""
import inspect
import math

import pytest
import torch
from torch import nn

import jebm_kernels as jk
from jebm_kernels.schedules import ConstantSchedule

LangevinSampler = jk.LangevinSampler


def quadratic(z):
    return 0.5 * (z ** 2).flatten(1).sum(-1)


class Quadratic(nn.Module):
    """A module energy with a parameter (so .to() has something to move) that records its calls."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, x, y=None):
        self.seen.append(None if y is None else y.dtype)
        return 0.5 * self.scale * (x ** 2).sum(-1)


class Linear:
    """A schedule of our own, duck-typed (get_value / step / reset), as torchebm's are used."""

    def __init__(self, start, end, n):
        self.start, self.end, self.n, self.step_count = start, end, n, 0

    def get_value(self):
        t = min(self.step_count, self.n) / self.n
        return self.start + t * (self.end - self.start)

    def step(self):
        self.step_count += 1
        return self.get_value()

    def reset(self):
        self.step_count = 0


def manual_chain(energy, x0, etas, taus, seed, clamp=None, mala=False):
    """The chain as one langevin call per step with s = sqrt(2 eta), on one Philox stream."""
    stream, z, states = jk.PhiloxGenerator(seed), x0, []
    for eta, tau in zip(etas, taus):
        z = jk.langevin(energy, z, n_steps=1, step_size=math.sqrt(2 * eta), noise_scale=tau, generator=stream,
                        mala=mala)
        if clamp is not None:
            z = z.clamp(*clamp)
        states.append(z)
    return torch.stack(states, 1)


# ---- constructor ------------------------------------------------------------------------------

def test_constructor_forms_and_defaults():
    for sampler in (LangevinSampler(quadratic), LangevinSampler(model=quadratic),
                    LangevinSampler(energy_function=quadratic)):
        assert sampler.model is quadratic and sampler.energy_function is quadratic
        assert sampler.get_scheduled_value("step_size") == 1e-3
        assert sampler.get_scheduled_value("noise_scale") == 1.0
        assert sampler.device == torch.device("cpu") and sampler.dtype == torch.float32
        assert sampler.clamp is None and sampler.integrator == "euler_maruyama"
    s = LangevinSampler(quadratic, 0.02, 0.5, 0.0, (-1, 1), torch.float64, "cpu")  # torchebm's positional order
    assert (s.step_size, s.noise_scale, s.clamp, s.dtype) == (0.02, 0.5, (-1.0, 1.0), torch.float64)
    assert "LangevinSampler(model=quadratic" in repr(s)


def test_constructor_signature_is_torchebms():
    params = inspect.signature(LangevinSampler.__init__).parameters
    names = list(params)
    assert names[:8] == ["self", "model", "step_size", "noise_scale", "decay", "clamp", "dtype", "device"]
    assert names[-1] == "integrator"
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values())


def test_sample_signature_is_torchebms():
    params = inspect.signature(LangevinSampler.sample).parameters
    assert list(params)[1:9] == ["x", "dim", "n_steps", "n_samples", "thin", "return_trajectory",
                                 "return_diagnostics", "reset_schedulers"]
    defaults = {k: p.default for k, p in params.items()}
    assert defaults == {**defaults, "x": None, "dim": None, "n_steps": 100, "n_samples": 1, "thin": 1,
                        "return_trajectory": False, "return_diagnostics": False, "reset_schedulers": True,
                        "model_kwargs": None, "y": None, "generator": None, "progress": False}
    for name in ("model_kwargs", "y", "generator", "progress"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values())


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(step_size=-0.1), ValueError, "step_size must be positive"),
    (dict(step_size=0.0), ValueError, "step_size must be positive"),
    (dict(step_size=float("nan")), ValueError, "step_size must be finite"),
    (dict(step_size="big"), TypeError, "step_size must be a number or a schedule"),
    (dict(noise_scale=-0.1), ValueError, "noise_scale must be positive"),
    (dict(noise_scale=float("inf")), ValueError, "noise_scale must be finite"),
    (dict(decay=0.5), ValueError, "decay"),
    (dict(clamp=(1.0, -1.0)), ValueError, "clamp min must be < max"),
    (dict(clamp=(None, None)), ValueError, "clamp"),
    (dict(clamp=1.0), TypeError, "clamp"),
    (dict(clamp=("a", 1.0)), TypeError, "clamp"),
    (dict(dtype=torch.float16), TypeError, "dtype"),
    (dict(dtype="float32"), TypeError, "dtype"),
    (dict(integrator="heun"), ValueError, "euler_maruyama"),
    (dict(integrator=object()), TypeError, "integrator"),
    (dict(backend="fast"), ValueError, "backend"),
    (dict(mala="yes"), TypeError, "mala"),
])
def test_constructor_refuses_bad_input(kwargs, err, match):
    with pytest.raises(err, match=match):
        LangevinSampler(quadratic, **kwargs)


def test_constructor_needs_one_callable_model():
    with pytest.raises(TypeError, match="needs model="):
        LangevinSampler()
    with pytest.raises(TypeError, match="not both"):
        LangevinSampler(quadratic, energy_function=quadratic)
    with pytest.raises(TypeError, match="callable"):
        LangevinSampler(3.0)


def test_zero_noise_is_a_deterministic_chain():
    s = LangevinSampler(quadratic, step_size=0.1, noise_scale=0.0)
    x = torch.randn(4, 3)
    a, b = s.sample(x=x, n_steps=5, generator=(1, 0)), s.sample(x=x, n_steps=5, generator=(2, 0))
    torch.testing.assert_close(a, x * 0.9 ** 5)  # x - eta * x per step
    assert torch.equal(a, b)


# ---- .to(), device, dtype -----------------------------------------------------------------------

def test_to_moves_dtype_and_model_and_returns_self():
    model = Quadratic()
    s = LangevinSampler(model, step_size=0.01)
    assert s.to(torch.float64) is s
    assert s.dtype == torch.float64 and model.scale.dtype == torch.float64
    out = s.sample(x=torch.randn(3, 2), n_steps=3)
    assert out.dtype == torch.float64 and out.device == s.device
    s.to("cpu")
    assert s.device == torch.device("cpu")


def test_device_defaults_to_the_models():
    assert LangevinSampler(Quadratic()).device == torch.device("cpu")
    assert LangevinSampler(quadratic, device="cpu").device == torch.device("cpu")


def test_x_is_cast_to_the_sampler_and_left_alone():
    x = torch.randn(4, 2)
    kept = x.clone()
    out = LangevinSampler(quadratic, dtype=torch.float64).sample(x=x, n_steps=4)
    assert out.dtype == torch.float64 and torch.equal(x, kept)


# ---- clamp --------------------------------------------------------------------------------------

def test_clamp_bounds_every_step_and_equals_clamped_steps():
    x0 = torch.linspace(-3, 3, 12).unsqueeze(-1).repeat(1, 2)
    s = LangevinSampler(quadratic, step_size=0.1, noise_scale=5.0, clamp=(-0.5, 0.5))
    traj = s.sample(x=x0, n_steps=6, return_trajectory=True, generator=(4, 0))
    assert traj.min() >= -0.5 and traj.max() <= 0.5
    assert torch.equal(traj, manual_chain(quadratic, x0, [0.1] * 6, [5.0] * 6, 4, clamp=(-0.5, 0.5)))
    one_sided = LangevinSampler(quadratic, step_size=0.1, noise_scale=5.0, clamp=(None, 0.25))
    out = one_sided.sample(x=x0, n_steps=6)
    assert out.max() <= 0.25 and out.min() < -0.5


# ---- schedules ----------------------------------------------------------------------------------

def test_duck_typed_schedule_drives_each_step():
    sched = Linear(0.2, 0.02, 10)
    s = LangevinSampler(quadratic, step_size=sched, noise_scale=0.7)
    x0 = torch.randn(5, 3)
    traj = s.sample(x=x0, n_steps=8, return_trajectory=True, generator=(11, 0))
    etas = [0.2 + min(i, 10) / 10 * (0.02 - 0.2) for i in range(8)]
    torch.testing.assert_close(traj, manual_chain(quadratic, x0, etas, [0.7] * 8, 11), rtol=0, atol=0)
    assert sched.step_count == 8


def test_piecewise_constant_schedule_runs_in_blocks_with_the_same_result():
    class Steps(Linear):
        def get_value(self):
            return 0.05 if self.step_count < 4 else 0.01
    s = LangevinSampler(quadratic, step_size=0.05, noise_scale=Steps(0, 0, 1))
    x0 = torch.randn(6, 2)
    out = s.sample(x=x0, n_steps=9, generator=(2, 0))
    expect = manual_chain(quadratic, x0, [0.05] * 9, [0.05] * 4 + [0.01] * 5, 2)[:, -1]
    assert torch.equal(out, expect)


def test_reset_schedulers_true_restarts_and_false_continues():
    sched = Linear(0.1, 0.01, 100)
    s = LangevinSampler(quadratic, step_size=sched)
    s.sample(dim=2, n_steps=5)
    s.sample(dim=2, n_steps=5)
    assert sched.step_count == 5
    s.sample(dim=2, n_steps=5, reset_schedulers=False)
    assert sched.step_count == 10
    assert s.get_scheduled_value("step_size") == pytest.approx(0.1 + 0.1 * (0.01 - 0.1))
    s.reset_schedulers()
    assert s.step_size == pytest.approx(0.1)


def test_schedule_registry_and_setters():
    s = LangevinSampler(quadratic)
    with pytest.raises(KeyError, match="No scheduler registered for parameter 'alpha'"):
        s.get_scheduled_value("alpha")
    s.register_scheduler("alpha", ConstantSchedule(3.0))
    assert s.get_scheduled_value("alpha") == 3.0 and set(s.get_schedulers()) == {"step_size", "noise_scale", "alpha"}
    with pytest.raises(TypeError, match="get_value"):
        s.register_scheduler("beta", 3.0)
    s.step_size = Linear(1.0, 0.0, 4)
    s.step_schedulers()
    assert s.step_size == pytest.approx(0.75)
    with pytest.raises(ValueError, match="noise_scale must be positive"):
        s.noise_scale = -1.0


def test_a_schedule_reaching_zero_step_size_is_named():
    s = LangevinSampler(quadratic, step_size=Linear(0.1, 0.0, 3))
    with pytest.raises(ValueError, match=r"step_size must be positive \(its schedule's value at step 3\)"):
        s.sample(dim=2, n_steps=5)


def test_schedules_held_by_the_model_step_between_steps():
    class Tilted(nn.Module):
        """An energy whose shift follows its own schedule (as torchebm's InteractionModel's strength)."""

        def __init__(self):
            super().__init__()
            self.schedulers = {"shift": Linear(0.0, 1.0, 4)}

        def forward(self, x):
            return 0.5 * ((x - self.schedulers["shift"].get_value()) ** 2).sum(-1)

    model = Tilted()
    x0 = torch.randn(4, 2)
    got = LangevinSampler(model, step_size=0.1).sample(x=x0, n_steps=6, generator=(5, 0))
    stream, z = jk.PhiloxGenerator(5), x0
    expect_model = Tilted()
    for _ in range(6):
        z = jk.langevin(expect_model, z, n_steps=1, step_size=math.sqrt(0.2), generator=stream)
        expect_model.schedulers["shift"].step()
    assert torch.equal(got, z) and model.schedulers["shift"].step_count == 6


def test_torchebm_schedulers_are_accepted_without_importing_torchebm():
    torchebm_core = pytest.importorskip("torchebm.core")
    x0 = torch.randn(5, 2)
    theirs = LangevinSampler(quadratic, step_size=torchebm_core.LinearScheduler(start_value=0.1, end_value=0.01,
                                                                                  n_steps=6))
    ours = LangevinSampler(quadratic, step_size=Linear(0.1, 0.01, 6))
    a = theirs.sample(x=x0, n_steps=8, generator=(8, 0))
    b = ours.sample(x=x0, n_steps=8, generator=(8, 0))
    torch.testing.assert_close(a, b)
    # TemperatureScheduler is 0 below tau*: those steps have no noise, whatever the seed
    temp = lambda: torchebm_core.TemperatureScheduler(epsilon_max=0.5, tau_star=0.5, n_steps=10)
    s = LangevinSampler(quadratic, step_size=0.1, noise_scale=temp())
    assert torch.equal(s.sample(x=x0, n_steps=5, generator=(1, 0)), s.sample(x=x0, n_steps=5, generator=(2, 0)))
    assert not torch.equal(s.sample(x=x0, n_steps=10, generator=(1, 0)), s.sample(x=x0, n_steps=10, generator=(2, 0)))


# ---- sample(): arguments, shapes --------------------------------------------------------------

def test_dim_int_and_tuple_and_n_samples():
    s = LangevinSampler(quadratic, step_size=0.01)
    assert s.sample(dim=3, n_steps=2).shape == (1, 3)
    assert s.sample(dim=(2, 3), n_samples=4, n_steps=2).shape == (4, 2, 3)
    assert s.sample(dim=(2, 3), n_samples=4, n_steps=6, thin=2, return_trajectory=True).shape == (4, 3, 2, 3)
    assert s.sample(x=torch.zeros(5, 2), n_samples=99, n_steps=2).shape == (5, 2)  # x wins over n_samples


def test_n_steps_zero_returns_the_start():
    s = LangevinSampler(quadratic)
    x = torch.randn(3, 2)
    assert torch.equal(s.sample(x=x, n_steps=0), x)
    traj, diag = s.sample(x=x, n_steps=0, return_trajectory=True, return_diagnostics=True)
    assert traj.shape == (3, 0, 2) and diag["mean"].shape == (0, 2) and diag["energy"].shape == (0,)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(), ValueError, "dim must be provided when x is None"),
    (dict(dim=0), ValueError, "dim must be an int > 0"),
    (dict(dim=(2, -1)), ValueError, "dim must be"),
    (dict(dim="2"), ValueError, "dim must be"),
    (dict(dim=2, n_samples=0), ValueError, "n_samples must be >= 1"),
    (dict(dim=2, thin=0), ValueError, "thin must be >= 1"),
    (dict(dim=2, thin=1.5), TypeError, "thin must be an int"),
    (dict(dim=2, n_steps=-1), ValueError, "n_steps must be >= 0"),
    (dict(dim=2, n_steps=2.0), TypeError, "n_steps must be an int"),
    (dict(x=[[0.0, 1.0]]), TypeError, "x must be a torch.Tensor"),
    (dict(x=torch.zeros(3)), ValueError, "batch first"),
    (dict(dim=2, model_kwargs=[1]), TypeError, "model_kwargs must be a dict"),
    (dict(dim=2, y=torch.zeros(1), model_kwargs={"y": torch.zeros(1)}), ValueError, "model_kwargs"),
    (dict(dim=2, generator=7), TypeError, "generator must be"),
    (dict(dim=2, progress="yes"), TypeError, "progress"),
])
def test_sample_refuses_bad_input(kwargs, err, match):
    with pytest.raises(err, match=match):
        LangevinSampler(quadratic).sample(n_steps=kwargs.pop("n_steps", 3), **kwargs)


def test_conditioning_reaches_every_model_call_uncast():
    model = Quadratic()
    labels = torch.tensor([0, 1, 2, 1])
    s = LangevinSampler(model, step_size=0.01)
    x = torch.randn(4, 2)
    a = s.sample(x=x, n_steps=3, y=labels, return_diagnostics=True, generator=(3, 0))[0]
    assert model.seen and all(dtype == torch.int64 for dtype in model.seen)
    b = s.sample(x=x, n_steps=3, model_kwargs={"y": labels}, generator=(3, 0))
    assert torch.equal(a, b)
    model.seen.clear()
    s.sample(x=x, n_steps=3)
    assert model.seen and all(dtype is None for dtype in model.seen)


# ---- trajectories, diagnostics ------------------------------------------------------------------

def test_diagnostics_are_torchebms_layout():
    model = Quadratic()
    s = LangevinSampler(model, step_size=0.05)
    traj, diag = s.sample(dim=3, n_samples=6, n_steps=10, thin=3, return_trajectory=True, return_diagnostics=True)
    assert traj.shape == (6, 3, 3)
    assert set(diag) == {"mean", "var", "energy"}
    assert diag["mean"].shape == (3, 3) and diag["var"].shape == (3, 3) and diag["energy"].shape == (3,)
    assert all(v.dtype == s.dtype and v.device == s.device for v in diag.values())
    torch.testing.assert_close(diag["mean"], traj.mean(0))
    torch.testing.assert_close(diag["var"], traj.var(0, unbiased=False))
    with torch.no_grad():
        torch.testing.assert_close(diag["energy"], torch.stack([model(traj[:, j]).mean() for j in range(3)]))
    _, single = s.sample(dim=2, n_steps=4, return_diagnostics=True)
    assert bool((single["var"] == 0).all())


def test_mala_adds_acceptance_rate_per_kept_state():
    s = LangevinSampler(quadratic, step_size=0.5, mala=True)
    _, diag = s.sample(dim=2, n_samples=32, n_steps=12, thin=4, return_diagnostics=True, generator=(1, 0))
    assert set(diag) == {"mean", "var", "energy", "acceptance_rate"} and diag["acceptance_rate"].shape == (3,)
    steps = torch.tensor(s.last_info["accept"], dtype=torch.float32)
    torch.testing.assert_close(diag["acceptance_rate"], steps.reshape(3, 4).mean(1))
    assert 0 < s.last_info["accept_rate"] < 1


@pytest.mark.parametrize("energy", ["closure", "mlp"])
def test_thinned_trajectory_is_the_unthinned_chain_at_those_steps(energy):
    torch.manual_seed(0)
    model = quadratic if energy == "closure" else nn.Sequential(nn.Linear(3, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    s = LangevinSampler(model, step_size=0.02)
    x0 = torch.randn(5, 3)
    full = s.sample(x=x0, n_steps=14, return_trajectory=True, generator=jk.PhiloxGenerator(21))
    thinned = s.sample(x=x0, n_steps=14, thin=4, return_trajectory=True, generator=jk.PhiloxGenerator(21))
    assert thinned.shape == (5, 3, 3)
    assert torch.equal(thinned, full[:, 3::4][:, :3])


@pytest.mark.parametrize("mala", [False, True])
def test_equals_langevin_with_s_sqrt_2_eta(mala):
    x0 = torch.randn(6, 4)
    s = LangevinSampler(quadratic, step_size=0.03, noise_scale=0.8, mala=mala)
    out = s.sample(x=x0, n_steps=9, generator=(17, 5))
    direct = jk.langevin(quadratic, x0, n_steps=9, step_size=math.sqrt(0.06), noise_scale=0.8, generator=(17, 5),
                         mala=mala)
    assert torch.equal(out, direct)
    info = s.last_info
    assert (info["seed"], info["offset"], info["n_steps"]) == (17, 5, 9) and len(info["energy"]) == 9
    # the recorded (seed, offset) replays a call that drew its own seed
    again = s.sample(x=x0, n_steps=9)
    replay = jk.langevin(quadratic, x0, n_steps=9, step_size=math.sqrt(0.06), noise_scale=0.8, mala=mala,
                         generator=(s.last_info["seed"], s.last_info["offset"]))
    assert torch.equal(again, replay)


# ---- generators ---------------------------------------------------------------------------------

def test_generators():
    s = LangevinSampler(quadratic, step_size=0.01)
    kw = dict(dim=2, n_samples=8, n_steps=5)
    gen = lambda seed: torch.Generator().manual_seed(seed)
    assert torch.equal(s.sample(**kw, generator=gen(0)), s.sample(**kw, generator=gen(0)))
    assert not torch.equal(s.sample(**kw, generator=gen(0)), s.sample(**kw, generator=gen(1)))
    torch.manual_seed(7)
    a = s.sample(**kw)
    torch.manual_seed(7)
    assert torch.equal(a, s.sample(**kw))  # generator=None: torch's global generator
    torch.manual_seed(3)
    expected_next = torch.randn(4)
    torch.manual_seed(3)
    s.sample(**kw, generator=gen(0))
    assert torch.equal(torch.randn(4), expected_next)  # an explicit generator leaves the global one alone
    # a Philox stream gives the start too, and advances past start and chain
    stream = jk.PhiloxGenerator(9)
    out = s.sample(**kw, generator=stream)
    x0 = jk.philox_randn(9, 0, 16).reshape(8, 2)
    assert torch.equal(out, jk.langevin(quadratic, x0, n_steps=5, step_size=math.sqrt(0.02), generator=(9, 16)))
    assert stream.offset == 16 + 5 * 16


# ---- progress bar -------------------------------------------------------------------------------

def test_progress_bar_gives_the_same_chain(capsys):
    s = LangevinSampler(quadratic, step_size=0.02, mala=True)
    x0 = torch.randn(4, 3)
    kw = dict(x=x0, n_steps=250, thin=10, return_trajectory=True, return_diagnostics=True)
    plain, d_plain = s.sample(**kw, generator=(6, 0))
    shown, d_shown = s.sample(**kw, generator=(6, 0), progress=True)
    assert torch.equal(plain, shown)
    assert all(torch.equal(d_plain[k], d_shown[k]) for k in d_plain)
    assert "250/250" in capsys.readouterr().err


def test_jebm_kernels_never_imports_torchebm():
    import subprocess
    import sys
    code = ("import sys, torch, jebm_kernels as jk\n"
            "class S:\n"
            "    def get_value(self): return 0.01\n"
            "    def step(self): pass\n"
            "    def reset(self): pass\n"
            "jk.LangevinSampler(lambda z: (z ** 2).sum(-1), step_size=S()).sample(dim=2, n_steps=2)\n"
            "assert 'torchebm' not in sys.modules, 'torchebm was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
