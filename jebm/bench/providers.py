"""The providers compared per configuration; each turns a ``Case`` into a zero-argument callable
that runs the whole K-step chain for the whole batch and returns the final state (flat layers).

- ``reference``: ``langevin(backend="reference")``: autograd gradient, one Python iteration per
  step, with the Philox noise every backend shares computed in torch (the specification).
- ``plain``: the loop users write (``autograd.grad`` + ``torch.randn``, eager): ``peers.plain_langevin``.
- ``compiled``: the best compiled torch of that loop's step: ``peers.CompiledLangevin``
  (``torch.compile(fullgraph=True)`` of one step with ``torch.func.grad``, noise drawn eagerly by
  ``torch.randn`` and passed in); compiled in the warm-up, which is not timed.
- ``cpu``: ``langevin(backend="cpu")``, the fused C++ kernel (the whole chain in one call).
- ``triton`` / ``cuda``: ``langevin(backend=...)`` on a CUDA device (the case moved there).
- ``torchebm``: ``torchebm.samplers.LangevinDynamics`` with ``step_size = s^2 / 2`` (its eta) on a
  ``torchebm.core.BaseModel`` wrapping the same energy; multi-layer priors are expressed on the
  concatenation of the layers, split inside ``forward``. Its noise is torch.randn, so it is not
  compared element-wise.
- ``plain-bf16`` / ``compiled-bf16``: the same loop and compiled step with the energy under
  ``torch.autocast(device, dtype=torch.bfloat16)``, as a user writes it (``peers``, ``precision``).
- ``cpu-bf16``: ``langevin(backend="cpu", precision="bf16")``.

``run_precision(provider, case)`` says what a provider's energy products ran in ("fp32" / "bf16")
and why a bf16 provider ran otherwise (a fused kernel without a bf16 build runs fp32).

``make_runner(provider, case)`` returns ``(runner, None)`` or ``(None, reason)`` when the provider
cannot run here; the reason is what the benchmark reports as the skip.
"""
from __future__ import annotations

import math

import torch

import jebm_kernels as jk
from jebm_kernels.precision import bf16_hardware_reason

from .configs import NOISE_SEED, Case
from .peers import CompiledLangevin, plain_langevin

__all__ = ["PROVIDERS", "PHILOX_PROVIDERS", "PEERS", "BF16_PROVIDERS", "make_runner", "flat_state", "gpu_reason",
           "compiled_mode", "run_precision", "provider_precision"]

PROVIDERS = ("reference", "plain", "compiled", "torchebm", "cpu", "triton", "cuda", "plain-bf16", "compiled-bf16",
             "cpu-bf16")
# What users would otherwise run (their noise is torch.randn): the speed-ups jebm is judged by.
PEERS = ("plain", "compiled", "plain-bf16", "compiled-bf16")
# Providers that draw the reference's Philox stream: their chains are compared element-wise.
PHILOX_PROVIDERS = ("cpu", "triton", "cuda", "cpu-bf16")
# The providers whose energy asks for bf16 products.
BF16_PROVIDERS = ("plain-bf16", "compiled-bf16", "cpu-bf16")


def provider_precision(provider: str) -> str:
    """The precision a provider asks for ("bf16" or "fp32")."""
    return "bf16" if provider in BF16_PROVIDERS else "fp32"


def flat_state(out) -> list[torch.Tensor]:
    layers = list(out) if isinstance(out, (list, tuple)) else [out]
    return [t.detach().reshape(t.shape[0], -1).cpu() for t in layers]


def gpu_reason() -> str | None:
    if not torch.cuda.is_available():
        return ("no CUDA GPU on this machine (torch.cuda.is_available() is False); run the suite on a "
                "GPU machine to measure it")
    return None


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _bf16_reason(case: Case) -> str | None:
    why = bf16_hardware_reason(torch.device(case.device))
    return None if why is None else f"no bf16 products here: {why}"


def _backend_runner(case: Case, backend: str, precision: str = "fp32"):
    if backend not in jk.available_backends():
        if backend == "cpu":
            return None, ("the fused 'cpu' backend is not built (jebm_kernels.available_backends() = "
                          f"{jk.available_backends()}); build it with `python setup.py build_ext --inplace` "
                          "or `pip install -e .`")
        return None, f"backend {backend!r} is not available here (available: {jk.available_backends()})"

    def run():
        out = case.langevin(backend, precision=precision)
        _sync(case.device)
        return out

    try:  # a backend that cannot serve this energy says why; report that as the skip
        run()
    except (ValueError, RuntimeError) as exc:
        return None, f"backend {backend!r} cannot run this configuration: {exc}"
    return run, None


# ---- what users would otherwise run ----------------------------------------------------------------

_COMPILED = CompiledLangevin()  # one cache of compiled steps for the whole session


def _peer_runner(case: Case, peer, precision: str = "fp32"):
    """``plain`` / ``compiled`` (jebm.bench.peers) on the case's energy; a first call compiles."""
    kw = dict(n_steps=case.n_steps, step_size=case.step_size, prior_sigma=case.prior_sigma,
              generator=jk.PhiloxGenerator(NOISE_SEED), precision=precision)

    def run():
        out = peer(case.energy_of_layers, [t.clone() for t in case.layers], **kw)
        _sync(case.device)
        return out

    try:
        run()
    except Exception as exc:
        what = "torch.compile" if peer is _COMPILED else "the plain loop"
        return None, f"{what} failed on this configuration: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return run, None


# ---- torchebm ------------------------------------------------------------------------------------

def _torchebm_runner(case: Case):
    try:
        from torchebm.core import BaseModel
        from torchebm.samplers import LangevinDynamics
    except Exception as exc:
        return None, f"torchebm is not installed ({type(exc).__name__}: {exc}); pip install -e \".[bench]\""
    dims = list(case.dims)

    class ConcatEnergy(BaseModel):
        """The case's energy on the concatenated layers [B, sum d_l] (torchebm samples one tensor)."""

        def __init__(self):
            super().__init__(dtype=torch.float32, device=case.device)
            self.net = case.net  # registered, so .to()/device handling sees it (None for priors)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return case.energy_of_layers(list(x.split(dims, dim=1)))

    steps = {case.step_size}
    if len(steps) != 1:
        return None, "torchebm's LangevinDynamics has one step size; this configuration has one per layer"
    eta = case.step_size ** 2 / 2  # x - eta grad U + sqrt(2 eta) xi  ==  ours with s = sqrt(2 eta)
    try:
        sampler = LangevinDynamics(ConcatEnergy(), step_size=eta, noise_scale=1.0, device=case.device)
    except Exception as exc:
        return None, f"torchebm cannot express this energy: {type(exc).__name__}: {exc}"
    x0 = torch.cat([t.reshape(case.batch, -1) for t in case.layers], dim=1)
    gen = torch.Generator(device=case.device)

    def run():
        gen.manual_seed(NOISE_SEED)
        out = sampler.sample(x=x0, n_steps=case.n_steps, generator=gen)
        _sync(case.device)
        return list(out.split(dims, dim=1))

    return run, None


def make_runner(provider: str, case: Case):
    """(runner, None) or (None, why it cannot run here)."""
    if provider in BF16_PROVIDERS:
        why = _bf16_reason(case)
        if why is not None:
            return None, why
        if provider == "cpu-bf16":
            return _backend_runner(case, "cpu", "bf16")
        return _peer_runner(case, plain_langevin if provider == "plain-bf16" else _COMPILED, "bf16")
    if provider == "reference":
        return _backend_runner(case, "reference")
    if provider == "cpu":
        return _backend_runner(case, "cpu")
    if provider in ("triton", "cuda"):
        why = gpu_reason()
        if why is not None:
            return None, why
        return _backend_runner(case.to("cuda"), provider)
    if provider == "plain":
        return _peer_runner(case, plain_langevin)
    if provider == "compiled":
        return _peer_runner(case, _COMPILED)
    if provider == "torchebm":
        return _torchebm_runner(case)
    raise ValueError(f"unknown provider {provider!r}; choose one of {PROVIDERS}")


def run_precision(provider: str, case: Case) -> tuple[str, str | None]:
    """(what the provider's energy products ran in, why a bf16 provider ran otherwise or None). A
    jebm backend says it in its info (a fused kernel without a bf16 build runs fp32); a peer runs
    what it asks for."""
    asked = provider_precision(provider)
    backend = {"cpu-bf16": "cpu"}.get(provider, provider)
    if backend not in ("reference", "cpu", "triton", "cuda"):
        return asked, None
    c = case.to("cuda") if backend in ("triton", "cuda") else case
    _, info = jk.langevin(c.energy, c.z0, n_steps=1, step_size=c.step_size, prior_sigma=c.prior_sigma,
                          generator=(NOISE_SEED, 0), backend=backend, precision=asked, return_info=True)
    return info["precision"], info["precision_note"]


def compiled_mode() -> str:
    """How the ``compiled`` provider differentiates (recorded with the results)."""
    return (f"torch.compile(fullgraph=True, dynamic=False), inductor default mode, gradient by {_COMPILED.mode}, "
            "noise torch.randn passed in")


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def relative_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = math.sqrt(sum(float((x - y).pow(2).sum()) for x, y in zip(a, b)))
    den = math.sqrt(sum(float(y.pow(2).sum()) for y in b))
    return num / max(den, 1e-30)
