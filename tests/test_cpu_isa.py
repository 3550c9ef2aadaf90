"""The CPU kernels' instruction sets and threads (csrc/isa_kernels.h): every ISA this CPU has
(``JEBM_ISA`` / ``_C.set_isa``) runs the same chains.

- The narrow (4-float AVX2) kernels that small batches run on are bitwise the wide ones.
  bindings.cpp runs a call on the narrow kernels when a small batch would leave threads idle on
  the wide ones (batch 8 on 2 threads). Each chain lane does the same float operations in the same
  order at any vector width (FMA included), so the two must agree to the last bit.
- Every available ISA (generic without FMA included) agrees with the others to the reference
  tolerance, and a chain does not depend on the thread count.
The parity of the default ISA with the reference is test_prior_chain.py's.
"""
import pytest
import torch

import jebm_kernels as jk
from jebm_kernels import extension

from helpers import assert_close_where, make_prior, start
from jebm_kernels.spec import ACTIVATIONS

pytestmark = pytest.mark.skipif(extension.cpu_error() is not None,
                                reason=f"the C++ extension is not built: {extension.cpu_error()}")


def _isas():
    from jebm_kernels import _C
    return _C, _C.available_isas()


@pytest.mark.parametrize("act", [a for a in ACTIVATIONS if a != "identity"])
@pytest.mark.parametrize("space,mala,joint", [("z", False, False), ("eps", True, True)])
def test_narrow_kernels_equal_the_wide_ones_bitwise(act, space, mala, joint):
    _C, isas = _isas()
    if "avx2-narrow" not in isas:
        pytest.skip("this CPU has no AVX2: the narrow kernels are not used")
    wide = isas[0]
    dims = (17, 3)
    spec = make_prior(dims, hidden=(33, 19), act=act, space=space, joint=joint, seed=5)
    z = start(100, dims)  # 100 chains: the wide kernels serve it under the automatic choice
    kw = dict(n_steps=12, step_size=[0.3, 0.2], generator=(77, 5), backend="cpu", mala=mala,
              return_info=True)
    try:
        _C.set_isa(wide)
        a, ia = jk.langevin(jk.PriorEnergy(spec), z, **kw)
        _C.set_isa("avx2-narrow")
        b, ib = jk.langevin(jk.PriorEnergy(spec), z, **kw)
    finally:
        _C.set_isa(wide)
    for x, y in zip(a, b):
        assert torch.equal(x, y), f"{act} {space}: narrow and {wide} kernels differ by {(x - y).abs().max()}"
    assert ia["energy"] == ib["energy"]
    if mala:
        assert ia["accept"] == ib["accept"]


def test_small_batches_give_the_same_chains_under_the_automatic_choice():
    """Batch 7 (narrow under the automatic choice) equals the same call forced onto the wide
    kernels, and the reference to its tolerance."""
    _C, isas = _isas()
    if "avx2-narrow" not in isas:
        pytest.skip("this CPU has no AVX2: the narrow kernels are not used")
    wide = isas[0]
    spec = make_prior((3, 129), hidden=(17,), space="z", seed=2)
    z = start(7, (3, 129))
    kw = dict(n_steps=9, step_size=0.25, generator=(3, 2**33 + 1))
    auto = jk.langevin(jk.PriorEnergy(spec), z, backend="cpu", **kw)
    # forcing another instruction set and then the best one again keeps the automatic choice on
    try:
        _C.set_isa("generic")
    finally:
        _C.set_isa(wide)
    again = jk.langevin(jk.PriorEnergy(spec), z, backend="cpu", **kw)
    ref = jk.langevin(jk.PriorEnergy(spec), z, backend="reference", **kw)
    for x, y, r in zip(auto, again, ref):
        assert torch.equal(x, y)
        torch.testing.assert_close(x, r, atol=2e-5, rtol=2e-5)


def test_threads_and_instruction_sets_do_not_change_a_chain():
    """Each chain's arithmetic is the same whatever the thread count; the generic build (no FMA)
    differs from the SIMD ones only by rounding."""
    spec = make_prior((17, 3), hidden=(33,), space="eps", joint=True)
    z = start(50, spec.dims)
    kw = dict(n_steps=20, step_size=0.3, generator=(5, 0), backend="cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = jk.langevin(jk.PriorEnergy(spec), z, **kw)
        torch.set_num_threads(max(2, threads))
        two = jk.langevin(jk.PriorEnergy(spec), z, **kw)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)
    _C, isas = _isas()
    best = _C.isa()
    try:
        for name in isas:
            _C.set_isa(name)
            other = jk.langevin(jk.PriorEnergy(spec), z, **kw)
            for a, b in zip(other, one):
                assert_close_where(a, b, atol=2e-5, rtol=2e-5, what=f"isa {name}")
    finally:
        _C.set_isa(best)
