"""Differential fuzzing of ``langevin``'s reading of user energies (tests/fusion_fuzz.py): energies
written the ways EBM code is written (Sequential MLPs, ModuleList loops, closures, globals,
partials, bound methods, hooks, parametrizations, shared weights, posteriors, stopped gradients,
stateful layers, rejected inputs, float64, autocast), with weight changes between calls, each run
by ``backend="auto"`` and by ``backend="reference"`` (the specification):

- auto's chain equals the reference's (fp32 tolerance), fused or declined;
- auto raises exactly what the reference raises (type and message);
- the reference calls the energy exactly K times (K + 1 with MALA);
- the energy's parameters, buffers and torch's RNG are the same after auto's call as after the
  reference's.

Every failure of every case is collected; the test fails once, with a table of failures per
style and a line per failing case (``cd tests && python fusion_fuzz.py SEED 0 INDEX`` replays one).
Run with ``-s`` to see the per-style counts of cases and fused calls.
"""
import os
import time

import fusion_fuzz as ff
import pytest

from jebm_kernels import extension

needs_cpp = pytest.mark.skipif(extension.cpu_error() is not None,
                               reason=f"the C++ extension is not built: {extension.cpu_error()}")

FAST_SEED, FAST_N = 20251206, 200
SLOW_SEED, SLOW_N = 7, 3000


def _fuzz(seed: int, n: int, check_determinism: bool | int = True):
    seed = int(os.environ.get("JEBM_FUZZ_SEED", seed))
    n = int(os.environ.get("JEBM_FUZZ_N", n))
    t0 = time.perf_counter()
    report = ff.run_cases(ff.cases(seed, n), check_determinism=check_determinism)
    text = ff.format_report(report, max_lines=80)
    print(f"\nfusion fuzz, seed {seed}, {n} cases, {time.perf_counter() - t0:.1f} s\n{text}")
    assert not report.failures, f"fusion fuzz seed {seed}: contract violations\n{text}"


@needs_cpp
def test_fusion_fuzz_fast():
    _fuzz(FAST_SEED, FAST_N, check_determinism=3)  # the reference re-run for every third case


@needs_cpp
@pytest.mark.slow
def test_fusion_fuzz_slow():
    _fuzz(SLOW_SEED, SLOW_N)


# ----------------------------------------------------------------- the harness itself

def test_cases_are_deterministic_and_cover_every_style():
    a, b = ff.cases(3, 2 * len(ff._ORDER)), ff.cases(3, 2 * len(ff._ORDER))
    assert [c.desc for c in a] == [c.desc for c in b]
    assert {c.style for c in a} == set(ff.STYLES)
    assert ff.case_at(3, 5).desc == a[5].desc


def test_builds_are_equal():
    """Two builds of a case give equal start points and equal module states (the reference and the
    auto runs start alike)."""
    for case in ff.cases(4, len(ff._ORDER)):
        one, two = case.build(), case.build()
        for s1, s2 in zip(one.steps, two.steps):
            for x, y in zip(ff._layers(s1.z), ff._layers(s2.z)):
                assert x.dtype == y.dtype and x.shape == y.shape and (x == y).all(), case
        assert ff._states_differ(ff._snapshot(one.modules()), ff._snapshot(two.modules())) is None, case


def test_call_counter_counts_each_kind_of_energy():
    import functools

    import torch
    from torch import nn
    net = nn.Sequential(nn.Linear(3, 1))
    inner = nn.Sequential(nn.Linear(3, 1))
    outer = nn.Sequential(inner)  # a nested Sequential's forward is not the outer's call
    holder = ff.PlainEnergyHolder(net, 0.5)
    callables = {
        "sequential": net, "nested": outer, "lambda": lambda z: net(z).sum(-1),
        "partial": functools.partial(ff._partial_energy, net=net, scale=1.0, q=0.0),
        "bound method": holder.energy, "callable object": ff.CallableEnergy(nn.ModuleList([net]), ("relu", 0.0), 0.0),
    }
    z = torch.randn(2, 3)
    for name, energy in callables.items():
        with ff.CallCounter(energy) as c:
            for _ in range(3):
                energy(z)
        assert c.n == 3, (name, c.n)


def test_harness_reports_a_wrong_chain_and_a_wrong_exception(monkeypatch):
    """A planted difference in auto (a shifted chain; a reworded exception) is reported, with the
    style, case and call."""
    import torch
    real = ff.jk.langevin

    def shifted(energy, z, *, backend="auto", **kw):
        out = real(energy, z, backend=backend, **kw)
        if backend == "auto":
            (x, info) = out
            return (x + 1e-3 if torch.is_tensor(x) else [t + 1e-3 for t in x]), info
        return out
    first_k = lambda c: c.build().steps[0].kwargs["n_steps"]  # noqa: E731
    case = next(c for c in ff.cases(5, 100) if c.style == "seq_mlp" and first_k(c) > 0)
    monkeypatch.setattr(ff.jk, "langevin", shifted)
    fails, *_ = ff.run_case(case)
    assert any(f.kind == "chain" and f.call == 0 for f in fails), [f.line() for f in fails]

    def reworded(energy, z, *, backend="auto", **kw):
        try:
            return real(energy, z, backend=backend, **kw)
        except Exception as exc:
            if backend == "auto":
                raise type(exc)(str(exc) + " (reworded)") from None
            raise
    case = next(c for c in ff.cases(5, 400) if c.style == "rejects" and "seq_4d_z" in c.desc and first_k(c) > 0)
    monkeypatch.setattr(ff.jk, "langevin", reworded)
    fails, ref, auto, _ = ff.run_case(case)
    assert ref[0].exc is not None
    if auto[0].exc is not None:  # (on code where auto raises here at all)
        assert any(f.kind == "exception" for f in fails), [f.line() for f in fails]
