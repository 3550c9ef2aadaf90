"""When a whole-chain kernel may run a user's energy: the contract, and how it is kept.

The contract of ``langevin(..., backend="auto")``: its chain equals the reference's (the plain
autograd loop, same Philox noise) to float32 rounding, or the energy is not fused and
``info["why_not_fused"]`` says why; and it raises only where the reference raises, with the same
error. How each energy is read (``read``):

- ``PriorEnergy`` / ``PosteriorEnergy``: their spec is their definition; fused as they are.
- An ``nn.Sequential`` of ``nn.Linear`` layers and one activation (exactly those classes) on a
  single [B, d] tensor, with no hooks (its own, its layers', or global), no instance ``forward``,
  float32 weights on z's device: read directly from its layers, nothing to confirm.
- Any other energy: traced (``traces.py``) and read as an MLP energy or an MLP-decoder posterior
  (``recognize.py``). Such a reading is *confirmed* at the chain's start (``confirm``): the energy's
  value and gradient by autograd on the user's own code (the reference's first evaluation, exactly)
  against the value and gradient the kernel computes from the weights it will run. If they
  disagree, a trace found again from an earlier call is taken anew once; if that does not agree
  either, the call runs the shared loop from that first evaluation (no call is repeated) and says
  why. The check catches what no reading of a graph can see: a stopped gradient inside
  ``torch.no_grad()``, a custom ``autograd.Function``, a backward hook, a changed global.
- Never fused, whatever the energy: under ``torch.inference_mode`` (the reference takes gradients,
  which it forbids), while a ``TorchFunctionMode`` / ``TorchDispatchMode`` is active (it would see
  no op), with inference-tensor weights (autograd refuses to save them), or inside the caller's
  autocast region of a dtype no kernel computes (float16: ``precision.py``).

Precision (``precision.py``): an energy is read and checked at z's precision (autocast off), whatever
the call's precision; a bf16 call then runs the kernel's bf16 build of what was read, whose law,
not each value, the tests compare with the reference's.

The tolerance of the check is ``VALUE_RTOL`` / ``GRAD_RTOL``: float32 evaluations of one MLP in two
orders agree to about 1e-6 of the values involved; a reading that computes another function
differs by far more (BENCHMARKS.md records the margins seen over the differential fuzz).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import traces
from .chain import autograd_energy_and_grad
from .energies import PosteriorEnergy, PriorEnergy
from .problem import Reading
from .spec import PriorSpec, mlp_spec_from_sequential, posterior_energy, prior_energy

__all__ = ["read", "confirm", "environment_reason", "read_sequential", "VALUE_RTOL", "GRAD_RTOL"]

# |U_kernel - U| <= VALUE_RTOL (|U| + mean |U| + 1) per chain, and
# |dU_kernel - dU| <= GRAD_RTOL (|dU| + mean |dU|) per chain (2-norms over its coordinates)
VALUE_RTOL = 2e-5
GRAD_RTOL = 2e-5


def environment_reason(z: torch.Tensor) -> str | None:
    """What about the calling context keeps every energy from a fused kernel, or None."""
    if torch.is_inference_mode_enabled():
        return "inside torch.inference_mode(), where the reference cannot take dU/dz either"
    if torch._C._is_torch_function_mode_enabled():
        return "a TorchFunctionMode is active: it would see none of the kernels' operations"
    from torch.utils._python_dispatch import _get_current_dispatch_mode
    if _get_current_dispatch_mode() is not None:
        return "a TorchDispatchMode is active: it would see none of the kernels' operations"
    return None


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooked(m: nn.Module) -> bool:
    own = m.__dict__
    return any(own.get(d) for d in _HOOK_DICTS) or "forward" in own


def _global_hooks() -> bool:
    g = nn.modules.module
    return any(getattr(g, "_global" + d, None) for d in _HOOK_DICTS)


def read_sequential(seq: nn.Sequential, shape, z: torch.Tensor, is_list: bool) -> tuple[PriorSpec | None, str]:
    """(spec, "") of an ``nn.Sequential`` given z (``shape`` as the caller gave it, ``z`` flattened to
    [B, d]) read directly from its layers, or (None, why it cannot be)."""
    if is_list or len(shape) != 2:
        return None, "it is given z in another structure than one [B, d] tensor"
    if _hooked(seq) or _global_hooks() or any(_hooked(m) for m in seq._modules.values()):
        return None, "it or one of its layers has hooks (or an instance forward)"
    mlp = mlp_spec_from_sequential(seq)  # exactly Linear and activation classes: no submodules below them
    if mlp is None or mlp.in_dim != z.shape[1] or mlp.out_dim != 1:
        return None, "it is not Linear layers with one activation between them ending in Linear(h, 1) on z's width"
    dtype, device = z.dtype, z.device
    for t in (*mlp.weights, *mlp.biases):
        if t is not None and (type(t) not in _PLAIN or t.dtype != dtype or t.device != device or t.is_inference()):
            return None, "its weights are not plain tensors of z's dtype and device"
    return PriorSpec(dims=(mlp.in_dim,), layer_terms=(mlp,), energy_sign=1.0, base_sigma=(math.inf,)), ""


_PLAIN = (torch.Tensor, nn.Parameter)


def read(problem) -> Reading:
    """The problem's reading (asked only by a backend that could fuse: the reference never reads)."""
    energy, flat = problem.energy, problem.z
    why = environment_reason(flat[0])
    if why is None and problem.precision.caller_region:
        why = (f"inside the caller's torch.autocast region of {problem.precision.name}: the energy runs there as "
               "it is (no fused kernel computes in that precision)")
    if why is not None:
        return Reading(why=why)
    if isinstance(energy, PriorEnergy):
        return Reading(energy.spec)
    if isinstance(energy, PosteriorEnergy):
        return Reading(energy.spec, energy)
    if type(energy) is nn.Sequential:
        spec, _ = read_sequential(energy, problem.shapes[0], flat[0], problem.is_list)
        if spec is not None:
            return Reading(spec, tensor_spec=True)
    if problem.n_steps == 0:
        return Reading(why="n_steps = 0: no step to run")
    if len(flat) != 1:
        return Reading(why=f"the energy takes {len(flat)} layers; only energies of one tensor are traced")
    if flat[0].dtype != torch.float32:
        return Reading(why="only energies of one [B, d] float32 tensor are traced for fusion (the kernels' type)")
    with problem.precision.fp32_context(flat[0].device.type):  # traced at z's precision, whatever the call's
        rec = traces.recognize(energy, flat[0], shape=problem.shapes[0], as_list=problem.is_list,
                               squeeze=problem.squeeze_output)
    return _from_recognition(rec)


def _from_recognition(rec: traces.Recognition) -> Reading:
    if rec.spec is None:
        return Reading(why=rec.why, recognition=rec)
    if any(t.is_inference() for t in _tensors(rec.spec, rec.posterior)):
        return Reading(why="its weights are inference tensors, which autograd cannot save (the reference raises)")
    return Reading(rec.spec, rec.posterior, tensor_spec=True, recognition=rec)


def _tensors(spec: PriorSpec, posterior):
    if posterior is not None:
        yield posterior.x_obs
    for e in spec.mlps(posterior.decoder if posterior is not None else None):
        yield from (t for t in (*e.mlp.weights, *e.mlp.biases) if t is not None)


def confirm(problem, backend) -> bool:
    """Whether ``backend``'s whole-chain kernel may run the problem's reading. A traced reading is
    checked at the chain's start (the module docstring); on a disagreement the problem's reading
    becomes a refusal saying why, and the energy's start evaluation is kept for the loop
    (``problem.start``)."""
    reading = problem.reading
    rec = reading.recognition
    if rec is None or reading.spec is None:
        return reading.spec is not None
    if rec.entry.confirmed:
        return True
    if problem.precision.lowered:
        # checked at z's precision; the loop evaluates its own start in the call's precision
        u, g = autograd_energy_and_grad(problem, own_precision=True)(problem.z)
    else:
        if problem.start is None:
            problem.start = autograd_energy_and_grad(problem)(problem.z)  # the reference's first evaluation
        u, g = problem.start
    why = _disagreement(backend.kernel_energy_and_grad(problem)(problem.z), u, g)
    if why is not None and not rec.fresh and rec.retrace is not None:
        # a trace found again from an earlier call: something its key does not hold has changed
        problem.set_reading(_from_recognition(rec.retrace()))
        if problem.reading.spec is None:
            return False
        if backend.prior_chain.reason(problem) is not None:
            return False
        rec = problem.reading.recognition
        why = _disagreement(backend.kernel_energy_and_grad(problem)(problem.z), u, g)
    if why is None:
        rec.entry.confirmed = True
        return True
    why = f"the traced MLP does not reproduce the energy at the chain's start ({why})"
    rec.entry.fail(why)
    problem.set_reading(Reading(why=why))
    return False


def _disagreement(kernel, u: torch.Tensor, g: list[torch.Tensor]) -> str | None:
    """How the kernel's (U, dU) at the start differ from autograd's beyond float32 rounding, or None."""
    value, grad = discrepancy(kernel, u, g)
    if value is None:
        return "the energy or its gradient is not finite there"
    if value > 1.0:
        return f"value off by {value * VALUE_RTOL:.3g} of its scale"
    if grad > 1.0:
        return f"gradient off by {grad * GRAD_RTOL:.3g} of its norm"
    return None


def discrepancy(kernel, u: torch.Tensor, g: list[torch.Tensor]) -> tuple[float | None, float]:
    """(value, gradient) differences between the kernel's evaluation and autograd's, each as a
    fraction of what the check allows (> 1: the check fails); (None, inf) where autograd's values
    are not finite (such a start is left to the loop)."""
    uk, gk = kernel
    u, uk = u.detach().double(), uk.detach().double().reshape(u.shape)
    ga = torch.cat([t.detach().reshape(t.shape[0], -1).double() for t in g], dim=1)
    gb = torch.cat([t.detach().reshape(t.shape[0], -1).double() for t in gk], dim=1)
    if not (bool(torch.isfinite(u).all()) and bool(torch.isfinite(ga).all())):
        return None, math.inf
    if not (bool(torch.isfinite(uk).all()) and bool(torch.isfinite(gb).all())):
        return math.inf, math.inf
    value = float(((uk - u).abs() / (VALUE_RTOL * (u.abs() + u.abs().mean() + 1.0))).max())
    norm = ga.norm(dim=1)
    scale = GRAD_RTOL * (norm + norm.mean())
    dg = (gb - ga).norm(dim=1)
    if bool((scale > 0).all()):
        grad = float((dg / scale.clamp_min(1e-300)).max())
    else:
        grad = 0.0 if bool((dg == 0).all()) else math.inf
    return value, grad


def spec_energy_and_grad(problem):
    """x -> (U, dU/dx) of the problem's reading by autograd on its torch specification (what a
    GPU kernel's check compares with; the kernels read these very tensors at each launch)."""
    reading = problem.reading

    def energy(x):
        if reading.posterior is None:
            u = prior_energy(reading.spec, x)
        else:
            post = reading.posterior
            u = posterior_energy(reading.spec, post.decoder, post.x_obs, post.sigma_x, x)
        if problem.prior_sigma is not None:
            for t, s in zip(x, problem.prior_sigma):
                u = u + t.pow(2).sum(-1) / (2 * s * s)
        return u

    def energy_and_grad(x):
        with torch.enable_grad(), problem.precision.fp32_context(problem.device.type):
            leaves = [t.detach().requires_grad_(True) for t in x]
            u = energy(leaves)
            grads = torch.autograd.grad(u.sum(), leaves)
        return u.detach(), list(grads)

    return energy_and_grad
