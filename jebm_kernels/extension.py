"""The compiled extensions, loaded once: ``_C`` (csrc's CPU kernels) and ``_cuda`` (csrc's CUDA
kernels). Either may be missing (no compiler or no nvcc at install time, ``JEBM_CUDA=0``, a build
for another Python); this module says why, and the backends that need it report themselves
unavailable with that reason.

An extension built from another version of the activation table (``activation_table.py``) would
run the wrong activation silently, so its ``act_codes()`` is checked against the table here: a
code that differs counts as not built; an activation the build does not know (an older build) is
one its kernels decline (``ext_activations``).
"""
from __future__ import annotations

import warnings

from .activation_table import CODES

__all__ = ["cpu_ext", "cuda_ext", "cpu_error", "cuda_error", "cpu_limits", "cuda_limits", "isa",
           "warn_cpu_missing_once", "threads", "ext_activations", "cpu_bf16_reason"]


def _check_codes(ext, name: str) -> frozenset:
    codes = dict(ext.act_codes())
    wrong = {n: c for n, c in codes.items() if CODES.get(n) != c}
    if wrong:
        raise ImportError(f"{name} was built from another activation table ({wrong}; this package's is {CODES}): "
                          "rebuild it (pip install . or python setup.py build_ext --inplace)")
    return frozenset(codes)


try:
    from . import _C as cpu_ext
    _CPU_ACTS = _check_codes(cpu_ext, "jebm_kernels._C")
    _CPU_ERROR: Exception | None = None
except ImportError as exc:
    cpu_ext = None
    _CPU_ERROR = exc
    _CPU_ACTS = frozenset()

try:
    from . import _cuda as cuda_ext
    _CUDA_ACTS = _check_codes(cuda_ext, "jebm_kernels._cuda")
    _CUDA_LIMITS: dict = dict(cuda_ext.limits())
    _CUDA_ERROR: Exception | None = None
except (ImportError, AttributeError) as exc:  # AttributeError: a stale build without limits()
    cuda_ext = None
    _CUDA_ERROR = exc
    _CUDA_LIMITS = {}
    _CUDA_ACTS = frozenset()

# The C++ kernels' limits (inclusive maxima): from the extension where it reports them
# (``_C.limits()``, csrc/binding_tables.h), else the values csrc has always enforced (an older build).
_CPU_DEFAULT_LIMITS = {"max_latent": 16, "max_linear_per_mlp": 16, "max_mlps": 64, "max_width": 1 << 20,
                       "max_batch": (1 << 31) - 1}
_CPU_LIMITS = dict(_CPU_DEFAULT_LIMITS)
if cpu_ext is not None and hasattr(cpu_ext, "limits"):
    _CPU_LIMITS.update(dict(cpu_ext.limits()))

_WARNED = False


def cpu_error() -> str | None:
    """Why ``_C`` could not be loaded, or None when it is there."""
    return None if cpu_ext is not None else f"{type(_CPU_ERROR).__name__}: {_CPU_ERROR}"


def cuda_error() -> str | None:
    """Why ``_cuda`` could not be loaded, or None when it is there."""
    return None if cuda_ext is not None else f"{type(_CUDA_ERROR).__name__}: {_CUDA_ERROR}"


def cpu_limits() -> dict:
    return dict(_CPU_LIMITS)


def cuda_limits() -> dict:
    return dict(_CUDA_LIMITS)


def ext_activations(which: str) -> frozenset:
    """The activation names the ``"cpu"`` or ``"cuda"`` extension's kernels implement."""
    return _CPU_ACTS if which == "cpu" else _CUDA_ACTS


def isa() -> str | None:
    """The instruction set the CPU kernels run with ('avx512', 'avx2', ...), None without them."""
    return cpu_ext.isa() if cpu_ext is not None else None


def cpu_bf16_reason() -> str | None:
    """Why the C++ kernels cannot run a chain with bf16 GEMMs here (None: they can)."""
    if cpu_ext is None:
        return f"the C++ extension is not built ({cpu_error()})"
    if not hasattr(cpu_ext, "bf16_available"):
        return "this build of jebm_kernels._C has no bf16 kernels (rebuild it)"
    if not cpu_ext.bf16_available():
        return (f"the bf16 kernels need AVX512-BF16 and the AVX-512 build; the kernels run '{cpu_ext.isa()}' "
                "(JEBM_ISA, or this CPU)")
    return None


def threads() -> int:
    """OpenMP threads for a C++ call: as many as torch uses, so every backend gets the same cores."""
    import torch
    return max(1, torch.get_num_threads())


def warn_cpu_missing_once(stacklevel: int = 4) -> None:
    global _WARNED
    if not _WARNED and cpu_ext is None:
        _WARNED = True
        warnings.warn(
            f"jebm_kernels: the C++ extension jebm_kernels._C is not available ({cpu_error()}); "
            "the cpu backend is off and 'auto' uses the reference backend. Build it with "
            "`pip install .` or `python setup.py build_ext --inplace` (needs a C++17 compiler).",
            RuntimeWarning, stacklevel=stacklevel)
