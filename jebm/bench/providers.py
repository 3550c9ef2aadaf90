"""The providers compared per configuration; each turns a ``Case`` into a zero-argument callable
that runs the whole K-step chain for the whole batch and returns the final state (flat layers).

- ``reference``: ``langevin(backend="reference")``: the papers' loop (autograd gradient, one
  Python iteration per step), with the Philox noise every backend shares.
- ``compile``: ``torch.compile`` (inductor, full graph) of one reference step (energy, autograd
  gradient, Philox noise, update), called K times from Python. Compilation happens in the
  warm-up and is not timed. Same noise stream as the reference, so its chain is compared with it.
- ``cpu``: ``langevin(backend="cpu")``, the fused C++ kernel (the whole chain in one call).
- ``triton`` / ``cuda``: ``langevin(backend=...)`` on a CUDA device (the case moved there).
- ``torchebm``: ``torchebm.samplers.LangevinDynamics`` with ``step_size = s^2 / 2`` (its eta) on a
  ``torchebm.core.BaseModel`` wrapping the same energy; multi-layer priors are expressed on the
  concatenation of the layers, split inside ``forward``. Its noise is torch.randn, so it is not
  compared element-wise.

``make_runner(provider, case)`` returns ``(runner, None)`` or ``(None, reason)`` when the provider
cannot run here; the reason is what the benchmark reports as the skip.
"""
from __future__ import annotations

import math

import torch

import jebm_kernels as jk
from jebm_kernels import philox as _philox

from .configs import NOISE_SEED, Case

__all__ = ["PROVIDERS", "PHILOX_PROVIDERS", "make_runner", "flat_state", "gpu_reason"]

PROVIDERS = ("reference", "compile", "cpu", "triton", "cuda", "torchebm")
# Providers that draw the reference's Philox stream: their chains are compared element-wise.
PHILOX_PROVIDERS = ("compile", "cpu", "triton", "cuda")


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


def _backend_runner(case: Case, backend: str):
    if backend not in jk.available_backends():
        if backend == "cpu":
            return None, ("the fused 'cpu' backend is not built (jebm_kernels.available_backends() = "
                          f"{jk.available_backends()}); build it with `python setup.py build_ext --inplace` "
                          "or `pip install -e .`")
        return None, f"backend {backend!r} is not available here (available: {jk.available_backends()})"

    def run():
        out = case.langevin(backend)
        _sync(case.device)
        return out

    try:  # a backend that cannot serve this energy says why; report that as the skip
        run()
    except (ValueError, RuntimeError) as exc:
        return None, f"backend {backend!r} cannot run this configuration: {exc}"
    return run, None


# ---- torch.compile of one reference step ---------------------------------------------------------

def _philox_normals(k0: int, k1: int, base_lo: torch.Tensor, base_hi: torch.Tensor, n: int) -> torch.Tensor:
    """``philox_randn(seed, base, n)`` with the 64-bit counter base given as two int64 0-d tensors
    (lo, hi 32-bit words), so a compiled step takes the step's offset as data, not as a constant
    (no recompilation per step). The arithmetic is ``jebm_kernels.philox``'s, line for line."""
    m32 = _philox._MASK32
    idx = torch.arange(n, dtype=torch.int64, device=base_lo.device)
    lo = idx + base_lo
    c0 = lo & m32
    c1 = ((lo >> 32) + base_hi) & m32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(_philox.N_ROUNDS):
        p_b = c2 * _philox._ROUND_B
        p_a = c0 * _philox._ROUND_A
        c0, c2 = ((p_b >> 32) & m32) ^ c1 ^ k0, ((p_a >> 32) & m32) ^ c3 ^ k1
        c1, c3 = p_b & m32, p_a & m32
        k0 = (k0 + _philox._KEY_A) & m32
        k1 = (k1 + _philox._KEY_B) & m32
    return _philox._box_muller(_philox.uint_to_uniform(c0), _philox.uint_to_uniform(c1))


def make_reference_step(case: Case):
    """One reference Langevin step on flat layers: (layers, base_lo, base_hi) -> new layers."""
    dims = list(case.dims)
    B = case.batch
    s = case.step_size
    k0, k1 = NOISE_SEED & _philox._MASK32, (NOISE_SEED >> 32) & _philox._MASK32
    sizes = [B * d for d in dims]
    total = sum(sizes)

    def step(xs: list[torch.Tensor], base_lo: torch.Tensor, base_hi: torch.Tensor) -> list[torch.Tensor]:
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(True) for x in xs]
            u = case.energy_of_layers(leaves)
            grads = torch.autograd.grad(u.sum(), leaves)
        noise = _philox_normals(k0, k1, base_lo, base_hi, total).to(xs[0].dtype)
        chunks = noise.split(sizes)
        return [x.detach() - (s * s / 2) * g + s * c.view(B, d) for x, g, c, d in zip(xs, grads, chunks, dims)]

    return step


def _compile_runner(case: Case):
    try:
        import torch._dynamo as dynamo
    except Exception as exc:  # pragma: no cover - torch without dynamo
        return None, f"torch.compile is not available in this torch build: {exc}"
    stride = case.batch * sum(case.dims)
    bases = [k * stride for k in range(case.n_steps)]  # offset 0, as the other providers
    offsets = [(torch.tensor(b & _philox._MASK32, dtype=torch.int64, device=case.device),
                torch.tensor(b >> 32, dtype=torch.int64, device=case.device)) for b in bases]
    eager_step = make_reference_step(case)
    dynamo.reset()  # a fresh cache per case: no recompile limit reached across the suite
    # torch.autograd.grad inside the compiled region needs trace_autograd_ops (torch >= 2.6);
    # with it the step is one graph. Without it, dynamo would split the step at the gradient.
    patch = {"trace_autograd_ops": True} if hasattr(dynamo.config, "trace_autograd_ops") else {}
    try:
        with dynamo.config.patch(**patch):
            compiled = torch.compile(eager_step, fullgraph=True, dynamic=False)
            x0 = [t.clone() for t in case.layers]
            compiled(x0, *offsets[0])   # compiles
            compiled(x0, *offsets[1 % len(offsets)])
    except Exception as exc:
        return None, f"torch.compile failed on this machine: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"

    def run():
        with dynamo.config.patch(**patch):
            x = [t.clone() for t in case.layers]
            for lo, hi in offsets:
                x = compiled(x, lo, hi)
        _sync(case.device)
        return x

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
    if provider == "reference":
        return _backend_runner(case, "reference")
    if provider == "cpu":
        return _backend_runner(case, "cpu")
    if provider in ("triton", "cuda"):
        why = gpu_reason()
        if why is not None:
            return None, why
        return _backend_runner(case.to("cuda"), provider)
    if provider == "compile":
        return _compile_runner(case)
    if provider == "torchebm":
        return _torchebm_runner(case)
    raise ValueError(f"unknown provider {provider!r}; choose one of {PROVIDERS}")


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def relative_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = math.sqrt(sum(float((x - y).pow(2).sum()) for x, y in zip(a, b)))
    den = math.sqrt(sum(float(y.pow(2).sum()) for y in b))
    return num / max(den, 1e-30)
