"""The ``triton`` backend: CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``, for tests).

A fusable prior (``problem.spec`` set, no posterior: a ``PriorEnergy`` or an ``nn.Sequential`` of
the MLP family) runs as one launch of the whole chain (``triton_prior_chain.py``). Any other
energy: autograd gives the gradient, and the multi-layer fused update (``triton_update.py``)
draws the noise and moves every layer in one launch per step; MALA's accept/reject is the shared
loop's (``reference.run_chain``), on the normals and uniforms the kernel drew. ``auto`` never
picks this backend for CPU tensors: the interpreter is for checking, not for speed.
"""
from __future__ import annotations

import os

import torch

from .problem import Problem
from .reference import run_chain
from . import triton_prior_chain, triton_update

__all__ = ["TritonBackend"]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class TritonBackend:
    name = "triton"

    def unavailable_reason(self):
        if triton_update.triton is None:
            return "triton is not installed (pip install triton)"
        if not torch.cuda.is_available() and not _interpreting():
            return "no CUDA device (TRITON_INTERPRET=1 runs Triton on the CPU, slowly, for tests)"
        return None

    def unsupported_reason(self, problem: Problem):
        if problem.dtype != torch.float32:
            return f"Triton kernels work in float32, got {problem.dtype}"
        if problem.device.type == "cuda":
            return None
        if problem.device.type == "cpu" and _interpreting():
            return None
        return f"tensors on {problem.device} (Triton needs CUDA, or CPU with TRITON_INTERPRET=1)"

    def auto_reason(self, problem: Problem):
        if problem.device.type != "cuda":
            return "the Triton interpreter is for tests, not speed"
        return None

    def run(self, problem: Problem):
        if problem.spec is not None and problem.posterior is None:
            # a fusable prior (PriorEnergy, or an nn.Sequential of the MLP family): all K steps,
            # energy, gradient, noise and update in one launch (triton_prior_chain.py)
            return triton_prior_chain.run_problem(problem)
        sizes = [problem.batch * d for d in problem.dims]
        # the per-layer tables once per chain, not once per step: building them is a blocking
        # host-to-device copy on a GPU, i.e. a host sync inside the loop
        starts, size_t, h, c = triton_update.layer_tables(sizes, list(problem.step_sizes), problem.noise_scale,
                                                          problem.device)

        def propose(problem, x, g, k):
            flat_x = torch.cat([t.reshape(-1) for t in x])
            flat_g = torch.cat([t.reshape(-1) for t in g])
            moved, noise, uniform = triton_update.multi_layer_update(
                flat_x, flat_g, sizes, list(problem.step_sizes), problem.noise_scale, problem.seed,
                problem.offset + k * problem.stride, n_uniform=problem.batch if problem.mala else 0,
                write_noise=problem.mala, starts=starts, size_t=size_t, h=h, c=c)
            split = lambda t: [c.view(problem.batch, d) for c, d in zip(t.split(sizes), problem.dims)]
            return split(moved), (split(noise) if noise is not None else None), uniform

        return run_chain(problem, propose)
