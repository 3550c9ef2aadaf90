"""The CPU kernels' instruction sets and threads (csrc/isa_kernels.h): every ISA this CPU has
(``JEBM_ISA`` / ``_C.set_isa``) runs the same chains.

- The narrow kernels (blocks of 4 or 8 chains: avx512-narrow, avx512-narrow8, avx2-narrow) that
  small batches and the last chains of a call run on are bitwise the wide ones. Under the
  automatic choice bindings.cpp splits a call into equal chain ranges per thread, runs whole wide
  blocks, then the rest on narrow blocks (batch 8 on 2 threads: one 4-chain block per thread).
  Each chain does the same float operations in the same order in every build (FMA included;
  the narrow GEMM runs along the features, the wide one along the chains, both summing each
  output over k in order), so all must agree to the last bit.
- Every available ISA (generic without FMA included) agrees with the others to the reference
  tolerance, and a chain does not depend on the thread count.
The parity of the default ISA with the reference is test_prior_chain.py's.
"""
import pytest
import torch
from helpers import assert_close_where, make_prior, start

import jebm_kernels as jk
from jebm_kernels import extension
from jebm_kernels.spec import ACTIVATIONS

pytestmark = pytest.mark.skipif(extension.cpu_error() is not None,
                                reason=f"the C++ extension is not built: {extension.cpu_error()}")


def _isas():
    from jebm_kernels import _C
    return _C, _C.available_isas()


NARROW = ("avx512-narrow", "avx512-narrow8", "avx2-narrow")


def _run(_C, isa, spec, z, threads, **kw):
    before = torch.get_num_threads()
    try:
        _C.set_isa(isa)
        torch.set_num_threads(threads)
        return jk.langevin(jk.PriorEnergy(spec), z, **kw)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("act", [a for a in ACTIVATIONS if a != "identity"])
@pytest.mark.parametrize("space,mala,joint", [("z", False, False), ("eps", True, True)])
def test_narrow_kernels_equal_the_wide_ones_bitwise(act, space, mala, joint):
    """Each narrow build alone (forced), the wide build alone (64 chains on one thread: whole wide
    blocks) and the automatic mix (100 chains on 2 threads: wide and narrow blocks) give the
    same chains, energies and MALA decisions to the last bit. Odd widths (17, 3, 33, 19) leave
    partial vectors in every narrow loop."""
    _C, isas = _isas()
    narrow = [n for n in NARROW if n in isas]
    if not narrow:
        pytest.skip("this CPU has no AVX2: the narrow kernels are not used")
    wide = isas[0]
    dims = (17, 3)
    spec = make_prior(dims, hidden=(33, 19), act=act, space=space, joint=joint, seed=5)
    kw = dict(n_steps=12, step_size=[0.3, 0.2], generator=(77, 5), backend="cpu", mala=mala,
              return_info=True)
    try:
        for B, threads in ((64, 1), (100, 2)):
            z = start(B, dims)
            a, ia = _run(_C, wide, spec, z, threads, **kw)
            for name in narrow:
                b, ib = _run(_C, name, spec, z, threads, **kw)
                for x, y in zip(a, b):
                    assert torch.equal(x, y), (f"{act} {space} B={B}: {name} and {wide} kernels differ by "
                                               f"{(x - y).abs().max()}")
                assert ia["energy"] == ib["energy"] and ia["grad_norm"] == ib["grad_norm"]
                if mala:
                    assert ia["accept"] == ib["accept"]
    finally:
        _C.set_isa(wide)


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


@pytest.mark.parametrize("B", [1, 3, 8, 13, 37, 100])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_plan_gives_the_same_chains(B, threads):
    """However the automatic choice splits a call (threads, wide blocks, 8- and 4-chain blocks,
    partial blocks), each chain is the one the 4-chain build alone computes on one thread."""
    _C, isas = _isas()
    narrow = [n for n in ("avx512-narrow", "avx2-narrow") if n in isas]
    if not narrow:
        pytest.skip("this CPU has no AVX2: one build only")
    wide = isas[0]
    dims = (5, 19)
    spec = make_prior(dims, hidden=(21,), space="z", seed=3)
    z = start(B, dims, seed=4)
    kw = dict(n_steps=5, step_size=0.25, generator=(9, 1), backend="cpu")
    try:
        ref = _run(_C, narrow[0], spec, z, 1, **kw)
        got = _run(_C, wide, spec, z, threads, **kw)
    finally:
        _C.set_isa(wide)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


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
