"""The host Philox stream drawn through the C++ extension against its torch specification.

``philox_randn`` / ``philox_rand`` take their uniforms from ``_C`` on the CPU when it is built; the
values must be ``torch_philox_randn`` / ``torch_philox_rand``'s bit for bit, on every instruction
set this machine has, so the reference backend's chains do not change with the extension.
"""
import pytest
import torch
from helpers import make_prior, start

import jebm_kernels as jk
from jebm_kernels import extension
from jebm_kernels.philox import torch_philox_rand, torch_philox_randn

needs_ext = pytest.mark.skipif(extension.cpu_error() is not None,
                               reason=f"the C++ extension is not built: {extension.cpu_error()}")

CASES = [
    (0, 0, 1),
    (12345, 7, 15),                    # shorter than one vector
    (2**32 + 5, 3, 4097),              # one element past a chunk of the OpenMP split
    (2**40 + 17, 2**32 - 100, 10_007),  # the counter's low word wraps inside the call
    (2**63 + 99, 2**33 + 1, 129),
    (2**64 - 1, 2**63 + 11, 64),
]


@needs_ext
@pytest.mark.parametrize("seed,offset,n", CASES)
def test_host_stream_is_the_torch_specification_bit_for_bit(seed, offset, n):
    ext = extension.cpu_ext
    best = ext.isa()
    want_n, want_u = torch_philox_randn(seed, offset, n), torch_philox_rand(seed, offset, n)
    try:
        for isa in ext.available_isas():
            ext.set_isa(isa)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                assert torch.equal(jk.philox_randn(seed, offset, n), want_n), f"normals, {isa}, {threads} threads"
                assert torch.equal(jk.philox_rand(seed, offset, n), want_u), f"uniforms, {isa}, {threads} threads"
    finally:
        ext.set_isa(best)
        torch.set_num_threads(2)


def test_without_the_extension_the_torch_stream_serves(monkeypatch):
    monkeypatch.setattr(extension, "cpu_ext", None)
    assert torch.equal(jk.philox_randn(5, 9, 333), torch_philox_randn(5, 9, 333))
    assert torch.equal(jk.philox_rand(5, 9, 333), torch_philox_rand(5, 9, 333))


@pytest.mark.parametrize("bad", [dict(seed=-1, offset=0, n=3), dict(seed=2**64, offset=0, n=3),
                                 dict(seed=1, offset=-1, n=3), dict(seed=1, offset=2**64 - 2, n=5),
                                 dict(seed=1, offset=0, n=-1)])
def test_bad_counters_are_refused_before_the_extension(bad):
    with pytest.raises(ValueError):
        jk.philox_randn(**bad)
    with pytest.raises(ValueError):
        jk.philox_rand(**bad)


@needs_ext
@pytest.mark.parametrize("mala", [False, True])
def test_reference_chains_do_not_change_with_the_extension(monkeypatch, mala):
    energy = jk.PriorEnergy(make_prior((5, 3), act="gelu"))
    z = start(13, (5, 3))
    kw = dict(n_steps=7, step_size=0.2, generator=jk.PhiloxGenerator(2**40 + 3, 2**32 - 50), backend="reference",
              mala=mala)
    fast, info_fast = jk.langevin(energy, z, return_info=True, **kw)
    monkeypatch.setattr(extension, "cpu_ext", None)
    kw["generator"] = jk.PhiloxGenerator(2**40 + 3, 2**32 - 50)
    slow, info_slow = jk.langevin(energy, z, return_info=True, **kw)
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)
    assert torch.equal(info_fast["stats"], info_slow["stats"])
