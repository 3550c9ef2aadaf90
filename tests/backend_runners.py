"""The fused backends the op tests are parametrised over, behind one interface.

``Runner.langevin(energy, z, **kw)`` runs a chain on the backend and returns (final state, info)
like ``jebm_kernels.langevin``; ``Runner.to_device`` moves a spec, energy or tensors where the
backend runs. "cpu" is the C++ extension; "triton" runs on a GPU or under Triton's interpreter on
the CPU; "cuda" runs csrc's CUDA kernels on a GPU, or, without one, the same sources emulated on
the host (``cuda_emulation``), driven through ``jebm_kernels``' own cuda implementations exactly
as the real module is. The interpreter and the emulation execute every tile in Python or in
fibers, so their chains are short (``Runner.steps``).
"""
import functools
import os

import helpers
import pytest
import torch
from torch import nn

import jebm_kernels as jk
from jebm_kernels import dispatch, extension
from jebm_kernels.arguments import make_problem
from jebm_kernels.chain import autograd_energy_and_grad, run_chain
from jebm_kernels.prior_chain import cpu as prior_chain_cpu
from jebm_kernels.prior_chain import cuda as prior_chain_cuda
from jebm_kernels.problem import info_from_stats
from jebm_kernels.spec import GaussianSpec, MLPSpec, PriorSpec
from jebm_kernels.update import cuda as update_cuda

GPU = torch.cuda.is_available()
# |backend - reference| <= ATOL + RTOL |reference| after a whole chain: test_prior_chain.py says why
ATOL = RTOL = 2e-5
GENERATOR = (2**63 + 977, 2**32 - 3)  # a seed past 2^63 (negative as int64), a wrapping counter


def move_mlp(m: MLPSpec | None, device) -> MLPSpec | None:
    return None if m is None else MLPSpec(tuple(w.to(device) for w in m.weights),
                                          tuple(None if b is None else b.to(device) for b in m.biases),
                                          m.activation, m.act_param, m.out_activation)


def move_spec(spec: PriorSpec, device) -> PriorSpec:
    mv = functools.partial(move_mlp, device=device)
    return PriorSpec(spec.dims, tuple(mv(t) for t in spec.layer_terms), mv(spec.joint_term),
                     tuple(GaussianSpec(mv(g.mlp), g.sigma_floor) for g in spec.gaussians),
                     spec.space, spec.energy_sign, spec.base_sigma)


class Runner:
    name = ""
    device = "cpu"
    slow = False  # an interpreter or an emulation: a few steps per chain

    def steps(self, k: int) -> int:
        return min(k, 4) if self.slow else k

    def to_device(self, obj):
        """A spec, energy, module, tensor or list of them, where this backend runs."""
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.to_device(o) for o in obj)
        if torch.is_tensor(obj) or isinstance(obj, nn.Module):
            return obj.to(self.device)
        if isinstance(obj, PriorSpec):
            return move_spec(obj, self.device)
        if isinstance(obj, MLPSpec):
            return move_mlp(obj, self.device)
        if isinstance(obj, jk.PriorEnergy):
            return jk.PriorEnergy(move_spec(obj.spec, self.device))
        if isinstance(obj, jk.PosteriorEnergy):
            return jk.PosteriorEnergy(move_spec(obj.spec, self.device), self.to_device(obj.decoder),
                                      obj.x_obs.to(self.device), obj.sigma_x)
        return obj

    def langevin(self, energy, z, **kw):
        kw["return_info"] = True
        out, info = jk.langevin(energy, z, backend=self.name, **kw)
        assert info["backend"] == self.name
        return out, info

    def run_with_record(self, problem, record):
        """The whole-chain kernel on ``problem``, recording MALA decisions (uint8 [K, B])."""
        raise NotImplementedError

    def propose(self, problem, x, g, k):
        """This backend's multi-layer update (jebm_kernels/update/<name>.py) of step k."""
        return dispatch.REGISTRY[self.name].update.propose(problem, x, g, k)


class CpuRunner(Runner):
    name = "cpu"

    def run_with_record(self, problem, record):
        return prior_chain_cpu.run(problem, accept_record=record)


class TritonRunner(Runner):
    name = "triton"

    def __init__(self):
        self.device = "cuda" if GPU else "cpu"
        self.slow = not GPU


class CudaRunner(Runner):
    """The real CUDA kernels on a GPU."""
    name = "cuda"
    device = "cuda"

    def run_with_record(self, problem, record):
        with torch.cuda.device(problem.device):
            return prior_chain_cuda.run(problem, accept_record=record)


class EmulatedCudaRunner(Runner):
    """csrc's CUDA kernels emulated on the host: what CudaBackend.run does, with the emulated module."""
    name = "cuda"
    slow = True

    def __init__(self, emu):
        self.emu = emu

    def langevin(self, energy, z, **kw):
        kw["return_info"] = True
        kw.setdefault("noise_scale", 1.0)
        kw.setdefault("prior_sigma", None)
        kw.setdefault("mala", False)
        kw.setdefault("generator", None)
        problem, _ = make_problem(energy, z, **kw)
        if problem.is_prior and prior_chain_cuda.kernel_reason(problem) is None:
            out, stats = prior_chain_cuda.run(problem, ext=self.emu)
        else:
            propose = functools.partial(update_cuda.propose, ext=self.emu)
            out, stats = run_chain(problem, autograd_energy_and_grad(problem), propose)
        return problem.restructure(out), info_from_stats(problem, stats)

    def run_with_record(self, problem, record):
        return prior_chain_cuda.run(problem, accept_record=record, ext=self.emu)

    def propose(self, problem, x, g, k):
        return update_cuda.propose(problem, x, g, k, ext=self.emu)


def runner(name: str, request) -> Runner:
    if name == "cpu":
        if extension.cpu_error() is not None:
            pytest.skip(f"the C++ extension is not built: {extension.cpu_error()}")
        return CpuRunner()
    if name == "triton":
        pytest.importorskip("triton")
        if not GPU and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
        return TritonRunner()
    if name == "cuda":
        if GPU and extension.cuda_error() is None:
            return CudaRunner()
        return EmulatedCudaRunner(request.getfixturevalue("cuda_emu"))
    raise ValueError(name)


def run_both(backend: Runner, energy, z, *, n_steps, **kw):
    """(reference, its info, backend's state, its info) from the same start and noise, on the
    backend's device, for ``backend.steps(n_steps)`` steps."""
    energy, z = backend.to_device(energy), backend.to_device(z)
    kw.setdefault("generator", GENERATOR)
    K = backend.steps(n_steps)
    ref, ref_info = jk.langevin(energy, z, n_steps=K, backend="reference", return_info=True, **kw)
    out, info = backend.langevin(energy, z, n_steps=K, **kw)
    return ref, ref_info, out, info


def check(backend: Runner, out, ref, what):
    helpers.check_close(out, ref, what, atol=ATOL, rtol=RTOL, who=backend.name)
