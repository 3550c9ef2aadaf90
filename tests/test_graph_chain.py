"""Graph-safe chains (jebm_kernels.GraphSafeChain): the Philox offset lives in a device tensor that
the kernels read and the chain advances on the device, so a captured CUDA graph draws fresh noise
on every replay: replay k uses the noise of steps k*K .. (k+1)*K - 1.

Without a GPU the same chains run eagerly on CPU tensors, through the ops' C++ kernels and through
the Triton kernels under TRITON_INTERPRET=1; consecutive calls must equal the reference at
consecutive noise positions. The capture/replay tests need a GPU and skip without one.

Tolerance against the reference: 2e-5 + 2e-5 |ref| (test_prior_chain.py explains it). For the
posterior through a conv decoder the gradient is autograd's in both, so only the update's rounding
(and, for a fused prior, the GEMMs') differs.
"""
import os

import helpers
import pytest
import torch
from helpers import TinyConvDecoder, make_prior, start

import jebm_kernels as jk
from jebm_kernels import extension

ATOL = RTOL = 2e-5
SEED, OFFSET = 2**64 - 3, 2**32 - 9
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs a GPU or TRITON_INTERPRET=1")
needs_cpp = pytest.mark.skipif(extension.cpu_error() is not None, reason="the C++ extension is not built")


def conv_posterior(space, device="cpu", B=7, seed=4):
    torch.manual_seed(seed)
    spec = make_prior((6, 4), hidden=(20,), space=space, seed=9)
    spec = helpers_to(spec, device)
    x_obs = (torch.rand(B, 1, 4, 4) * 2 - 1).to(device)
    return jk.PosteriorEnergy(spec, TinyConvDecoder(6).to(device), x_obs, 0.3), spec


def helpers_to(spec, device):
    if device == "cpu":
        return spec
    mv = lambda m: None if m is None else jk.MLPSpec(
        tuple(w.to(device) for w in m.weights), tuple(None if b is None else b.to(device) for b in m.biases),
        m.activation, m.act_param, m.out_activation)
    return jk.PriorSpec(spec.dims, tuple(mv(t) for t in spec.layer_terms), mv(spec.joint_term),
                        tuple(jk.GaussianSpec(mv(g.mlp), g.sigma_floor) for g in spec.gaussians),
                        spec.space, spec.energy_sign, spec.base_sigma)


def check_consecutive_chains(chain, energy, z0, n_calls, **kw):
    """Call k of ``chain`` equals the reference chain at offset OFFSET + k * K * stride."""
    stride = chain.problem.stride
    K = kw["n_steps"]
    for k in range(n_calls):
        out = [t.clone() for t in chain(z0)]
        ref = jk.langevin(energy, z0, generator=(SEED, OFFSET + k * K * stride), backend="reference", **kw)
        helpers.check_close(out, ref, f"graph-safe chain, call {k}", atol=ATOL, rtol=RTOL, who=chain.kernel)
    assert chain.state() == (SEED, OFFSET + n_calls * K * stride)


# ------------------------------------------------------------------------- CPU: eager, no graph

@needs_triton
@pytest.mark.parametrize("space,mala", [("z", False), ("eps", True)])
def test_conv_posterior_chain_with_the_triton_update(space, mala):
    pytest.importorskip("triton")
    energy, spec = conv_posterior(space)
    z0 = start(7, spec.dims)
    kw = dict(n_steps=5, step_size=[0.05, 0.04], noise_scale=0.9 if not mala else 1.0, mala=mala)
    chain = jk.GraphSafeChain(energy, z0, generator=(SEED, OFFSET), kernel="triton", **kw)
    check_consecutive_chains(chain, energy, z0, 2, **kw)


@needs_cpp
def test_conv_posterior_chain_with_the_cpu_update_op():
    energy, spec = conv_posterior("eps")
    z0 = start(7, spec.dims)
    kw = dict(n_steps=8, step_size=0.05, mala=True)
    chain = jk.GraphSafeChain(energy, z0, generator=(SEED, OFFSET), **kw)
    check_consecutive_chains(chain, energy, z0, 2, **kw)


@needs_cpp
def test_fused_prior_chain_through_the_op():
    spec = make_prior((3, 17), hidden=(12,), space="eps", joint=True, seed=2)
    z0 = start(7, spec.dims)
    kw = dict(n_steps=10, step_size=[0.3, 0.2], noise_scale=0.9)
    chain = jk.GraphSafeChain(jk.PriorEnergy(spec), z0, generator=(SEED, OFFSET), **kw)
    check_consecutive_chains(chain, jk.PriorEnergy(spec), z0, 3, **kw)


def test_bad_use_is_refused_clearly():
    energy, spec = conv_posterior("z")
    z0 = start(7, spec.dims)
    chain = jk.GraphSafeChain(energy, z0, n_steps=2, step_size=0.1)
    with pytest.raises(RuntimeError, match="CUDA graphs need CUDA tensors"):
        chain.capture()
    with pytest.raises(ValueError, match=r"z\[1\] must have shape \(7, 4\)"):
        chain([z0[0], torch.zeros(7, 5)])
    with pytest.raises(ValueError, match="this chain was built for 2"):
        chain([z0[0]])
    with pytest.raises(TypeError, match="float32"):
        jk.GraphSafeChain(lambda z: (z[0] ** 2).sum(-1), [t.double() for t in z0], n_steps=2, step_size=0.1)
    with pytest.raises(ValueError, match="kernel must be"):
        jk.GraphSafeChain(energy, z0, n_steps=2, step_size=0.1, kernel="fused")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="kernel 'cuda' is not available here"):
            jk.GraphSafeChain(energy, z0, n_steps=2, step_size=0.1, kernel="cuda")


# --------------------------------------------------------------------------- GPU: capture, replay

@needs_gpu
@pytest.mark.parametrize("space,mala", [("z", False), ("eps", True)])
def test_captured_conv_posterior_chain_replays_with_fresh_noise(space, mala):
    energy, spec = conv_posterior(space, "cuda")
    z0 = [t.cuda() for t in start(7, spec.dims)]
    kw = dict(n_steps=6, step_size=[0.05, 0.04], noise_scale=1.0, mala=mala)
    chain = jk.GraphSafeChain(energy, z0, generator=(SEED, OFFSET), **kw).capture()
    check_consecutive_chains(chain, energy, z0, 2, **kw)
    # a new start and new observations are read at replay time
    z1 = [t.cuda() for t in start(7, spec.dims, seed=3)]
    energy.x_obs.copy_(torch.rand_like(energy.x_obs) * 2 - 1)
    out = [t.clone() for t in chain(z1)]
    ref = jk.langevin(energy, z1, generator=(SEED, OFFSET + 2 * 6 * chain.problem.stride), backend="reference", **kw)
    helpers.check_close(out, ref, "replay with new inputs", atol=ATOL, rtol=RTOL, who="graph")


@needs_gpu
def test_the_step_makes_no_host_sync():
    energy, spec = conv_posterior("eps", "cuda")
    z0 = [t.cuda() for t in start(7, spec.dims)]
    chain = jk.GraphSafeChain(energy, z0, n_steps=3, step_size=0.05, mala=True, generator=(SEED, OFFSET))
    chain.step()  # compiles the kernels
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        chain.step()
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@needs_gpu
def test_captured_fused_prior_chain_replays_with_fresh_noise():
    spec = helpers_to(make_prior((129, 17), hidden=(40,), space="eps", joint=True, seed=5), "cuda")
    z0 = [t.cuda() for t in start(100, spec.dims)]
    kw = dict(n_steps=12, step_size=[0.3, 0.2], noise_scale=0.9)
    chain = jk.GraphSafeChain(jk.PriorEnergy(spec), z0, generator=(SEED, OFFSET), **kw).capture()
    check_consecutive_chains(chain, jk.PriorEnergy(spec), z0, 2, **kw)


@needs_gpu
def test_compiled_fused_prior_module_on_cuda():
    spec = helpers_to(make_prior((3, 17), hidden=(9,), space="z", joint=True, seed=6), "cuda")
    module = jk.FusedPriorChain(spec, n_steps=8, step_size=0.3)
    z0 = [t.cuda() for t in start(7, spec.dims)]
    philox = jk.ops.philox_tensor(SEED, OFFSET, device="cuda")
    eager = module(z0, philox)
    compiled = torch.compile(module, fullgraph=True)(z0, philox)
    for a, b in zip(compiled, eager):
        assert torch.equal(a, b)
    ref = jk.langevin(jk.PriorEnergy(spec), z0, n_steps=8, step_size=0.3, generator=(SEED, OFFSET),
                      backend="reference")
    helpers.check_close(compiled, ref, "compiled module on CUDA", atol=ATOL, rtol=RTOL, who="compiled")


_COMPILE_UPDATE = r"""
import os
os.environ.pop("TRITON_INTERPRET", None)   # compile the real kernel, not the interpreter's function
from triton import compile
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from jebm_kernels.update.triton import _multi_layer_update_kernel as k
sig = dict.fromkeys(k.arg_names, "constexpr")
sig.update({n: "*fp32" for n in ("x_ptr", "g_ptr", "out_ptr", "noise_ptr", "uniform_ptr", "h_ptr", "c_ptr")})
sig.update(start_ptr="*i64", size_ptr="*i64", philox_ptr="*i64", n_layers="i32", n_uniform="i32",
           uniform_base="i64", seed="i64", offset="i64", clamp_lo="fp32", clamp_hi="fp32")
for arch in (80, 90):
    for ptr in (True, False):
        c = compile(ASTSource(fn=k, signature=sig, constexprs=dict(WRITE_NOISE=True, CLAMP=False, BLOCK=1024,
                                                                   PHILOX_FROM_PTR=ptr)),
                    target=GPUTarget("cuda", arch, 32))
        ptx = c.asm["ptx"]
        assert ".target sm_%d" % arch in ptx, ptx[:400]
        # the graph-safe variant loads seed and offset from memory; the other takes them as arguments
        print(arch, ptr, ptx.count("ld.global.b64") + ptx.count("ld.global.u64"))
"""


@pytest.mark.slow
def test_the_graph_safe_update_kernel_compiles_for_sm80_and_sm90():
    """Triton compiles the update kernel (both noise variants) to PTX without a GPU: the real
    compiler, which is stricter than the interpreter the other tests run."""
    pytest.importorskip("triton")
    import subprocess
    import sys
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:
        pytest.skip("this Triton build has no CUDA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    run = subprocess.run([sys.executable, "-c", _COMPILE_UPDATE], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    loads = {tuple(line.split()[:2]): int(line.split()[2]) for line in run.stdout.splitlines()}
    for arch in ("80", "90"):
        assert loads[(arch, "True")] > loads[(arch, "False")], loads
