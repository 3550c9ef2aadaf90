"""Posterior chains and any other energy on every fused backend against the reference: what runs
when no whole-chain kernel takes the problem, i.e. ``chain.run_chain`` with the backend's gradient
and its multi-layer update (jebm_kernels/update/), and, on the cpu backend, a posterior with an
MLP decoder fused whole.

- a ``PosteriorEnergy`` with an MLP decoder: fused whole on cpu; autograd + the update elsewhere;
- with a conv decoder: on cpu the decoder term by autograd and the prior terms in C++; elsewhere
  autograd for everything; the update kernel moves every layer in one launch;
- a plain closure energy, with MALA (the accept/reject of the shared loop, on the normals and
  uniforms the update kernel drew).
Tolerance and MALA margin: as test_prior_chain.py explains.
"""
import helpers
import pytest
import torch
from backend_runners import check, run_both
from helpers import TinyConvDecoder, make_mlp, make_prior, start

import jebm_kernels as jk


@pytest.mark.parametrize("space", ["z", "eps"])
def test_posterior_mlp_decoder(backend, space):
    spec = make_prior((6, 4), hidden=(20,), space=space, seed=7)
    gen = torch.Generator().manual_seed(8)
    dec = make_mlp([6, 30, 16], "leaky_relu", out_act="tanh", gen=gen)
    x_obs = torch.rand(7, 1, 4, 4, generator=gen) * 2 - 1
    energy = jk.PosteriorEnergy(spec, dec, x_obs, 0.3)
    ref, ref_info, out, info = run_both(backend, energy, start(7, spec.dims), n_steps=40, step_size=0.1)
    check(backend, out, ref, f"posterior, MLP decoder, {space}")
    helpers.check_info(info, ref_info)


@pytest.mark.parametrize("space,mala", [("z", False), ("eps", False), ("eps", True)])
def test_posterior_conv_decoder(backend, space, mala):
    torch.manual_seed(4)
    spec = make_prior((6, 4), hidden=(20,), space=space, seed=9)
    dec = TinyConvDecoder(6)
    x_obs = torch.rand(7, 1, 4, 4) * 2 - 1
    energy = jk.PosteriorEnergy(spec, dec, x_obs, 0.3)
    ref, ref_info, out, info = run_both(backend, energy, start(7, spec.dims), n_steps=30, step_size=0.05, mala=mala)
    check(backend, out, ref, f"posterior, conv decoder, {space}, mala={mala}")
    helpers.check_info(info, ref_info, mala)
    if mala:
        assert info["accept"] == ref_info["accept"]


def test_jebm_model_posterior(backend):
    model_mod = pytest.importorskip("jebm.model")
    torch.manual_seed(0)
    model = model_mod.JEBM((1, 4, 4), dims=(8, 4), joint_hidden=(16,), decoder="mlp", dec_hidden=(32,))
    model = model.to(backend.device)
    x = (torch.rand(7, 1, 4, 4) * 2 - 1).to(backend.device)
    for space in ("z", "eps"):
        ref, _, out, _ = run_both(backend, model.posterior_energy_fn(x, space), start(7, model.dims), n_steps=30,
                                  step_size=0.1)
        check(backend, out, ref, f"jebm posterior, {space}")


def test_closure_energy_with_mala(backend):
    """A non-fusable energy: autograd gradients, the backend's update for every move."""
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))

    def energy(zs):
        a, b = zs
        wd = w.to(a.device)
        return 0.5 * (a ** 2).sum(-1) + torch.cosh(b @ wd[:3, :3]).sum(-1) + (a[:, :3] * b).sum(-1) * 0.1

    ref, ref_info, out, info = run_both(backend, energy, start(6, (4, 3)), n_steps=6, step_size=0.5, mala=True)
    check(backend, out, ref, "closure energy (autograd + the update kernel), MALA")
    assert info["accept"] == ref_info["accept"]
