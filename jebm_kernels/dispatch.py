"""Backends and the one rule that picks one, in the manner of torch.optim's foreach/fused choice.

A backend is a pair of op implementations: a whole-chain kernel (``prior_chain/<name>.py``, or
None) and a multi-layer update (``update/<name>.py``). Every backend runs a call the same way
(``Backend.run``): the whole-chain kernel when it can take the problem, otherwise the shared
chain loop (``chain.run_chain``) with the backend's gradient (autograd by default) and its update.

The rule (``select``), used by ``langevin``, by the custom ops and by ``GraphSafeChain``:
- a named backend that cannot serve raises, saying why (RuntimeError: not available on this
  machine; ValueError: cannot serve this call);
- ``"auto"`` takes the first backend of ``PRIORITY`` (``JEBM_BACKEND`` moves one to the front)
  that is available, can serve, and has no ``auto_reason`` objection (the Triton interpreter is
  for tests, not speed), and falls back quietly;
- ``op`` narrows the question to one op ("prior_chain" or "update"), for the custom ops.
"""
from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from . import extension, fusion
from .chain import autograd_energy_and_grad, run_chain
from .layout import channels_last_convs
from .precision import Precision
from .prior_chain import cpu as prior_chain_cpu
from .prior_chain import cuda as prior_chain_cuda
from .prior_chain import reference as prior_chain_reference
from .prior_chain import triton as prior_chain_triton
from .problem import Problem
from .spec import MLPSpec
from .update import cpu as update_cpu
from .update import cuda as update_cuda
from .update import reference as update_reference
from .update import triton as update_triton

__all__ = ["Backend", "REGISTRY", "PRIORITY", "OPS", "select", "available_backends", "settle_precision"]

# Fastest first; reference last, since it serves everything langevin is given.
PRIORITY = ("cuda", "triton", "cpu", "reference")
OPS = ("prior_chain", "update")


class Backend:
    """One backend: its two op implementations and what it serves."""
    name: str = ""
    prior_chain = None  # module with reason(problem), run(problem), or None
    update = None       # module with reason(problem), propose(problem, x, g, k), optionally mala_select

    def unavailable_reason(self) -> str | None:
        """Why this machine cannot run the backend at all, or None."""
        return None

    def unsupported_reason(self, problem: Problem) -> str | None:
        """Why the backend cannot serve this ``langevin`` call, or None."""
        return self.update.reason(problem)

    def auto_reason(self, problem: Problem) -> str | None:
        """Why ``auto`` should not pick it although it could serve (served only when named)."""
        return None

    def op_reason(self, op: str, problem: Problem) -> str | None:
        impl = getattr(self, op)
        if impl is None:
            return f"the {self.name} backend has no {op} implementation"
        return impl.reason(problem)

    def energy_and_grad(self, problem: Problem):
        """How the chain loop gets U and dU/dx when no whole-chain kernel runs the problem."""
        return autograd_energy_and_grad(problem)

    def kernel_energy_and_grad(self, problem: Problem):
        """x -> (U, dU/dx) as the whole-chain kernel computes them, for the start check
        (``fusion.confirm``): the kernel's own evaluation where it has one, else autograd on the torch
        specification of the reading (which the GPU kernels read tensor by tensor at each launch)."""
        own = getattr(self.prior_chain, "energy_and_grad", None)
        return own(problem) if own is not None else fusion.spec_energy_and_grad(problem)

    def fuses(self, problem: Problem) -> bool:
        """Whether the whole-chain kernel can take this problem's reading."""
        return self.prior_chain is not None and problem.spec is not None and self.prior_chain.reason(problem) is None

    def will_fuse(self, problem: Problem) -> bool:
        """Whether ``run`` takes the whole-chain kernel: it can, and the reading passed the start
        check (``fusion.confirm``; a refusal there becomes the problem's ``why_not_fused``)."""
        return self.fuses(problem) and fusion.confirm(problem, self)

    def why_not_fused(self, problem: Problem) -> str | None:
        """None when ``run`` fuses the whole chain, else why not (the energy, or this backend)."""
        if problem.spec is None:
            return problem.why_not_fused or "the energy is not a fusable prior"
        if self.prior_chain is None:
            return f"the {self.name} backend has no whole-chain kernel"
        return self.prior_chain.reason(problem)

    def run(self, problem: Problem) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        if self.will_fuse(problem):
            settle_precision(self.prior_chain, problem)
            return self.prior_chain.run(problem)
        # an update implementation may also take MALA's accept step (the cpu one does, in C++); the
        # loop starts from the start check's evaluation when there was one (no call repeated). A
        # bf16 loop runs inside one autocast region, so the weights' bf16 copies are made once
        # per chain, not once per step (autocast's cache lives as long as the region).
        with problem.precision.context(problem.device.type), self.chain_context(problem):
            return run_chain(problem, self.energy_and_grad(problem), self.update.propose,
                             getattr(self.update, "mala_select", None), start=problem.start)

    def chain_context(self, problem: Problem):
        """What else holds for the length of a chain run through autograd (nothing by default)."""
        return nullcontext()


class ReferenceBackend(Backend):
    """The specification: the torch loop, with autograd, whatever the energy. Its ``prior_chain``
    (the same loop) serves the custom op where no kernel can."""
    name = "reference"
    prior_chain = prior_chain_reference
    update = update_reference

    def fuses(self, problem):
        return False

    def why_not_fused(self, problem):
        # (never reads the energy: the reference calls it only as its loop does)
        why = "the reference backend runs the torch loop (the specification)"
        return why if problem.refusals is None else f"{why}; auto passed over {problem.refusals}"


class CpuBackend(Backend):
    """The C++ kernels, for every float32 CPU energy: whole chains of what they can evaluate (a
    fusable prior, a posterior with an MLP decoder); a posterior with a callable decoder on the
    shared loop with the decoder term by autograd and the prior terms in C++; any other energy
    (a closure, a conv net, a prior beyond the kernels' limits) on the shared loop with autograd's
    gradient, the C++ update (noise and step in one call) and MALA's accept step in one call:
    faster than the reference, and close to a hand-written loop where autograd dominates
    (BENCHMARKS.md, closure-conv). Refuses only what lies in the input (``prior_chain_cpu.InputFault``:
    NaN/inf weights or observations, mismatched structure), saying why."""
    name = "cpu"
    prior_chain = prior_chain_cpu
    update = update_cpu

    def unavailable_reason(self):
        if extension.cpu_ext is None:
            extension.warn_cpu_missing_once(stacklevel=6)
            return f"the C++ extension jebm_kernels._C is not built ({extension.cpu_error()})"
        return None

    def unsupported_reason(self, problem):
        why = update_cpu.reason(problem)  # the extension, CPU tensors, float32, step constants
        if why is None and problem.spec is not None:
            terms = prior_chain_cpu.prior_terms_reason(problem)
            if isinstance(terms, prior_chain_cpu.InputFault):
                why = terms
        return why

    def chain_context(self, problem):
        # bf16 convolutions on the CPU run in the channels-last layout (layout.py)
        return channels_last_convs(problem.energy, problem.device) if problem.precision.bf16 else nullcontext()

    def energy_and_grad(self, problem):
        post = problem.posterior
        if (post is not None and not isinstance(post.decoder, MLPSpec)
                and prior_chain_cpu.prior_terms_reason(problem) is None):
            return prior_chain_cpu.posterior_energy_and_grad(problem)
        return autograd_energy_and_grad(problem)


class TritonBackend(Backend):
    """CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (for tests; ``auto`` never
    picks it there)."""
    name = "triton"
    prior_chain = prior_chain_triton
    update = update_triton

    def unavailable_reason(self):
        return update_triton.available()

    def auto_reason(self, problem):
        if problem.device.type != "cuda":
            return "the Triton interpreter is for tests, not speed"
        return None


class CudaBackend(Backend):
    """csrc's CUDA kernels, on the device of the state."""
    name = "cuda"
    prior_chain = prior_chain_cuda
    update = update_cuda

    def unavailable_reason(self):
        return update_cuda.unavailable()

    def unsupported_reason(self, problem):
        why = update_cuda.reason(problem)
        if why is None and problem.is_prior:
            why = prior_chain_cuda.weights_reason(problem)
        return why

    def run(self, problem):
        with torch.cuda.device(problem.device):
            return super().run(problem)


def settle_precision(prior_chain, problem: Problem) -> None:
    """Before a whole-chain kernel runs: a bf16 call on a kernel without a bf16 build runs its fp32
    build and says so (faster than bf16 through autograd, and exact)."""
    why = prior_chain.precision_reason(problem) if problem.precision.bf16 else None
    if why is not None:
        problem.precision = Precision("fp32", note=f"bf16 asked for, but {why}: the fused fp32 kernel ran")


REGISTRY: dict[str, Backend] = {b.name: b for b in (CudaBackend(), TritonBackend(), CpuBackend(), ReferenceBackend())}
assert tuple(n for n in PRIORITY if n in REGISTRY) == PRIORITY


def available_backends() -> list[str]:
    """The backends this machine can run, fastest first."""
    return [n for n in PRIORITY if REGISTRY[n].unavailable_reason() is None]


def _reason(backend: Backend, problem: Problem, op: str | None) -> str | None:
    why = backend.unavailable_reason()
    if why is None:
        why = backend.unsupported_reason(problem) if op is None else backend.op_reason(op, problem)
    return why


def select(name: str, problem: Problem, *, op: str | None = None) -> Backend:
    """The backend that runs ``problem`` (the whole call, or one ``op``), by the rule above."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    if op is not None and op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if name != "auto":
        if name not in PRIORITY:
            raise ValueError(f"unknown backend {name!r}; choose 'auto' or one of {list(PRIORITY)}")
        backend = REGISTRY[name]
        why = backend.unavailable_reason()
        if why is not None:
            raise RuntimeError(f"backend {name!r} is not available here: {why}")
        why = _reason(backend, problem, op)
        if why is not None:
            raise ValueError(f"backend {name!r} cannot serve this call: {why}")
        return backend
    order = list(PRIORITY)
    preferred = os.environ.get("JEBM_BACKEND", "").strip()
    if preferred:
        if preferred not in PRIORITY:
            raise ValueError(f"JEBM_BACKEND={preferred!r} is not a backend; choose one of {list(PRIORITY)}")
        order.remove(preferred)
        order.insert(0, preferred)
    refusals = []
    for n in order:
        b = REGISTRY[n]
        why = _reason(b, problem, op) or b.auto_reason(problem)
        if why is None:
            if refusals:
                problem.refusals = "; ".join(refusals)
            return b
        refusals.append(f"{n}: {why}")
    if op is None:
        problem.refusals = "; ".join(refusals)
        return REGISTRY["reference"]
    raise ValueError(f"no backend can run this {op} call: " + "; ".join(refusals))
