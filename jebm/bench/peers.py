"""What a user would otherwise run, as ``langevin``-shaped callables the benchmarks time beside jebm.

- ``plain_langevin``: the loop the papers' code and most EBM code write: per step, the energy,
  ``torch.autograd.grad`` for dU/dz, ``torch.randn`` for the noise, the update, eagerly.
- ``CompiledLangevin``: the best compiled torch found for the same step on this CPU:
  ``torch.compile(step, fullgraph=True, dynamic=False)`` (inductor, default mode) of one step
  whose gradient is ``torch.func.grad`` of the summed energy, with the noise drawn eagerly by
  ``torch.randn`` and passed in (inductor's in-graph randn is several times slower on these
  CPUs; ``mode="max-autotune"`` compiles for minutes and runs no faster on a CPU). The energy is an
  argument of the compiled step, so dynamo guards on its tensors' shapes, not their identity: a
  training loop that rebuilds its energy objects every iteration reuses one compilation. Where
  ``torch.func.grad`` cannot be compiled, the step falls back to ``torch.autograd.grad`` under
  dynamo's ``trace_autograd_ops``.

Both take ``langevin``'s arguments (energy, z, n_steps, step_size, noise_scale, ...) and return
what it returns, so ``patched_langevin`` can put either under jebm's own model and trainer. Their
noise is torch's, not the Philox stream, so their chains are not compared element-wise.

``precision`` is ``langevin``'s, done as a user does it: at "bf16" each step evaluates the energy
inside ``with torch.autocast(device, dtype=torch.bfloat16):`` (in the compiled step too, where
dynamo traces the region), the state, gradient and update staying float32; "fp32" switches a
caller's region off for the energy; "auto" leaves the caller's region as it is.
"""
from __future__ import annotations

import contextlib
from contextlib import contextmanager

import torch

import jebm_kernels as jk
from jebm_kernels.precision import PRECISIONS, autocast_enabled

__all__ = ["plain_langevin", "CompiledLangevin", "patched_langevin"]


def _layers(z):
    return (list(z), True) if isinstance(z, (list, tuple)) else ([z], False)


def _constants(step_size, noise_scale, n):
    steps = list(step_size) if isinstance(step_size, (list, tuple)) else [step_size] * n
    return [s * s / 2 for s in steps], [s * noise_scale for s in steps]


def _call(energy, xs, is_list):
    u = energy(xs if is_list else xs[0])
    return u.squeeze(-1) if u.dim() == 2 and u.shape[-1] == 1 else u


def _check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _energy_region(precision: str, device_type: str):
    """The region a step's energy runs in (a user's ``torch.autocast`` around the call)."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if precision == "fp32" and autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _noise_gen(generator, device):
    gen = torch.Generator(device=device)
    seed = generator.seed if isinstance(generator, jk.PhiloxGenerator) else 0
    gen.manual_seed(seed & ((1 << 63) - 1))
    return gen


def plain_langevin(energy, z, *, n_steps, step_size, noise_scale=1.0, prior_sigma=None, generator=None,
                   return_info=False, precision="auto", **_ignored):
    """The plain eager loop (autograd.grad + torch.randn); the energy in ``precision``."""
    _check_precision(precision)
    xs, is_list = _layers(z)
    h, c = _constants(step_size, noise_scale, len(xs))
    gen = _noise_gen(generator, xs[0].device)
    xs = [t.detach() for t in xs]
    device_type = xs[0].device.type
    for _ in range(n_steps):
        with torch.enable_grad():
            leaves = [t.requires_grad_(True) for t in xs]
            with _energy_region(precision, device_type):
                u = _call(energy, leaves, is_list)
            u = u.float()  # a bf16 energy's value joins the float32 sum (its gradient is float32: the leaves are)
            if prior_sigma is not None:
                u = u + sum(t.pow(2).sum(-1) for t in leaves) / (2 * prior_sigma * prior_sigma)
            grads = torch.autograd.grad(u.sum(), leaves)
        xs = [t.detach() - hl * g + cl * torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype)
              for t, g, hl, cl in zip(xs, grads, h, c)]
    out = xs if is_list else xs[0]
    return (out, {"backend": "plain", "precision": precision}) if return_info else out


class CompiledLangevin:
    """``torch.compile`` of one Langevin step, called K times; one compilation per energy type,
    layer shapes and step constants (kept across calls)."""

    def __init__(self):
        self._steps: dict = {}
        self.mode = "torch.func.grad"

    def _step_fn(self, is_list, prior_sigma, h, c, use_func, precision="auto", device_type="cpu"):
        def total(xs, energy):
            with _energy_region(precision, device_type):
                u = _call(energy, list(xs), is_list)
            u = u.float()
            if prior_sigma is not None:
                u = u + sum(t.pow(2).sum(-1) for t in xs) / (2 * prior_sigma * prior_sigma)
            return u.sum()

        if use_func:
            grad = torch.func.grad(total)

            def step(energy, xs, noise):
                g = grad(tuple(xs), energy)
                return tuple(x - hl * gl + cl * n for x, gl, n, hl, cl in zip(xs, g, noise, h, c))
        else:
            def step(energy, xs, noise):
                with torch.enable_grad():
                    leaves = tuple(x.detach().requires_grad_(True) for x in xs)
                    g = torch.autograd.grad(total(leaves, energy), leaves)
                return tuple(x.detach() - hl * gl + cl * n for x, gl, n, hl, cl in zip(xs, g, noise, h, c))
        return step

    def _compiled(self, energy, xs, is_list, prior_sigma, h, c, precision="auto"):
        device_type = xs[0].device.type
        region = ("bf16" if precision == "bf16" else "fp32" if precision == "fp32"
                  else ("bf16" if autocast_enabled(device_type) else "off"))  # "auto": the caller's region, traced
        key = (type(energy), getattr(energy, "__code__", None), tuple(t.shape for t in xs), is_list, prior_sigma,
               tuple(h), tuple(c), region)
        if key in self._steps:
            return self._steps[key]
        import torch._dynamo as dynamo
        # Every step function shares one code object, so dynamo counts each configuration's graph as a
        # recompilation of it; its default limit (8) stops a whole benchmark session (18 configurations
        # and batches, plus the trainers) with FailOnRecompileLimitHit. A user compiling their own
        # energy compiles once; raising the limit only lets the session hold one graph per case.
        dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 64)
        dynamo.config.accumulated_recompile_limit = max(dynamo.config.accumulated_recompile_limit, 1024)
        noise = tuple(torch.zeros_like(t) for t in xs)
        try:
            fn = torch.compile(self._step_fn(is_list, prior_sigma, h, c, True, precision, device_type),
                               fullgraph=True, dynamic=False)
            fn(energy, tuple(xs), noise)
            run = fn
        except Exception:  # torch.func.grad not compilable here: autograd.grad traced by dynamo
            self.mode = "torch.autograd.grad with trace_autograd_ops"
            inner = torch.compile(self._step_fn(is_list, prior_sigma, h, c, False, precision, device_type),
                                  fullgraph=True, dynamic=False)

            def run(*args):
                with dynamo.config.patch(trace_autograd_ops=True):
                    return inner(*args)
            run(energy, tuple(xs), noise)
        self._steps[key] = run
        return run

    def __call__(self, energy, z, *, n_steps, step_size, noise_scale=1.0, prior_sigma=None, generator=None,
                 return_info=False, precision="auto", **_ignored):
        _check_precision(precision)
        xs, is_list = _layers(z)
        xs = [t.detach() for t in xs]
        h, c = _constants(step_size, noise_scale, len(xs))
        gen = _noise_gen(generator, xs[0].device)
        step = self._compiled(energy, xs, is_list, prior_sigma, h, c, precision)
        state = tuple(xs)
        for _ in range(n_steps):
            noise = tuple(torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype) for t in state)
            state = step(energy, state, noise)
        out = list(state) if is_list else state[0]
        return (out, {"backend": "compiled", "precision": precision}) if return_info else out


@contextmanager
def patched_langevin(fn):
    """Run jebm's model and trainer with ``fn`` in place of ``jebm_kernels.langevin``."""
    saved = jk.langevin
    jk.langevin = fn
    try:
        yield
    finally:
        jk.langevin = saved
