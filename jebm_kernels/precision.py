"""The precision a chain's energy runs in: ``langevin(..., precision="auto" | "fp32" | "bf16")``.

What bf16 changes (docs/sampler.md, "Precision"): the energy and its gradient are evaluated with
bfloat16 matrix products (autocast for energies run through autograd, whatever they are; bf16
GEMMs with float32 accumulation in the fused CPU kernel), while the chain state, the update, the
noise, MALA's terms and every sum stay float32 -- low-precision gradients with a full-precision
accumulator, which Langevin tolerates (Zhang, Wilson & De Sa, ICML 2022); the tests check the law.

- ``"fp32"``: the energy at z's precision (float32), with any ``torch.autocast`` region of the
  caller switched off for it.
- ``"bf16"``: bf16 products; float32 z only. Where the device has no bf16 dot-product instructions
  (a CPU without AVX512-BF16 or AMX, a GPU before Ampere) the chain runs in float32 and says so
  (``info["precision_note"]``): emulated bf16 would be slower than float32.
- ``"auto"`` (the default): what the caller's autocast region asks. Outside one, z's precision
  (float32 stays float32: the default does not change a chain); inside a bf16 region, bf16 (as
  the plain loop in that region would run); inside a region of another dtype, the energy runs in
  that region as it is (autograd only: no fused kernel computes float16).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

__all__ = ["Precision", "PRECISIONS", "resolve", "autocast_enabled", "autocast_dtype", "bf16_hardware_reason",
           "cpu_flags", "FP32"]

PRECISIONS = ("auto", "fp32", "bf16")
_NAMES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}


def autocast_enabled(device_type: str) -> bool:
    """Whether a torch.autocast region for ``device_type`` is active (torch < 2.4 has one query per
    device kind)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def autocast_dtype(device_type: str) -> torch.dtype:
    """The dtype of the active autocast region for ``device_type``."""
    try:
        return torch.get_autocast_dtype(device_type)
    except (AttributeError, TypeError):
        return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_hardware_reason(device: torch.device) -> str | None:
    """Why ``device`` has no bf16 dot-product instructions (None: it has them)."""
    if device.type == "cpu":
        flags = cpu_flags()
        if "avx512_bf16" in flags or "amx_bf16" in flags:
            return None
        return "this CPU has no bf16 dot-product instructions (AVX512-BF16 or AMX)"
    if device.type == "cuda":
        try:
            ok = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            ok = torch.cuda.is_bf16_supported()
        return None if ok else f"{torch.cuda.get_device_name(device)} has no bf16 tensor cores"
    return f"bf16 is not supported on {device.type} tensors here"


@dataclass(frozen=True)
class Precision:
    """How one call evaluates its energy.

    ``name``: what the energy's products ran in ("fp32", "fp64", "bf16", "fp16"); ``autocast``: the
    autocast dtype the energy runs under (None: autocast switched off for it); ``caller_region``:
    the caller's own autocast region is left exactly as it is (auto in a region of another dtype);
    ``note``: why a bf16 request ran in another precision, or None."""
    name: str
    autocast: torch.dtype | None = None
    caller_region: bool = False
    note: str | None = None

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    @property
    def lowered(self) -> bool:
        """Whether the energy runs below z's precision (bf16 or fp16 products)."""
        return self.name in ("bf16", "fp16")

    def context(self, device_type: str):
        """The context the energy is called in."""
        if self.caller_region:
            return contextlib.nullcontext()
        if self.autocast is not None:
            return torch.autocast(device_type, dtype=self.autocast)
        if autocast_enabled(device_type):
            return torch.autocast(device_type, enabled=False)
        return contextlib.nullcontext()

    def fp32_context(self, device_type: str):
        """The context of an evaluation at z's own precision (readings and the start check)."""
        if autocast_enabled(device_type):
            return torch.autocast(device_type, enabled=False)
        return contextlib.nullcontext()


FP32 = Precision("fp32")


def resolve(precision: str, z0: torch.Tensor) -> Precision:
    """``langevin``'s ``precision`` argument for a state like ``z0`` (the module docstring)."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device_type = z0.device.type
    own = _NAMES.get(z0.dtype, str(z0.dtype))
    if precision == "auto":
        if not autocast_enabled(device_type) or z0.dtype != torch.float32:
            # autocast leaves float64 alone, and so does auto
            return Precision(own)
        region = autocast_dtype(device_type)
        if region == torch.bfloat16:
            return Precision("bf16", torch.bfloat16)
        return Precision(_NAMES.get(region, str(region)), caller_region=True)
    if z0.dtype != torch.float32:
        raise ValueError(f"precision={precision!r} is for float32 z; z is {z0.dtype}: leave precision='auto' (the "
                         "energy then runs at z's precision)")
    if precision == "fp32":
        return FP32
    why = bf16_hardware_reason(z0.device)
    if why is not None:
        return Precision("fp32", note=f"bf16 asked for, but {why}: ran in fp32 (emulated bf16 is slower)")
    return Precision("bf16", torch.bfloat16)
