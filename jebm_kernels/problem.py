"""One validated sampling request, as every backend receives it.

``langevin`` checks its arguments once, here, and turns them into a ``Problem``: latent layers
flattened to [B, d_l], per-layer step sizes, the Philox (seed, offset) and the noise layout. A
backend reads only this, so argument checking is written once and every backend agrees on it.

Noise layout (shared by every backend; docs/design.md, section 4): step k of a call whose stream
starts at ``offset`` uses counters ``offset + k * stride`` onwards; layer l's element (b, j) is
counter ``B * (d_1 + ... + d_{l-1}) + b * d_l + j`` within the step; with MALA the uniform of chain
b is counter ``B * D + b`` (D = sum of d_l), so ``stride = B * D (+ B with MALA)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .energies import PosteriorEnergy
from .philox import philox_rand, philox_rand_from, philox_randn, philox_randn_from, read_philox
from .precision import FP32, Precision
from .spec import PriorSpec

__all__ = ["Problem", "Reading", "step_constants", "STATS_COLUMNS", "info_from_stats"]


def step_constants(s, tau):
    """The update's constants for step size(s) ``s`` and noise scale ``tau``: (h, c) with
    h = s^2 / 2 (multiplies dU/dz) and c = s * tau (multiplies the normals). ``s`` may be a float
    or a tensor (a differentiable step size, ``jebm.short_run``); this is the only place the
    update's convention is written (docs/design.md, section 3)."""
    return s * s / 2, s * tau


# The per-step statistics every backend returns: a float64 tensor [K, 3] (float32 and float64
# values are exact in it) on the state's device, row k at the state step k starts from: the chain
# mean of U, the chain mean of |grad U| (over all layers) and, with MALA, the fraction of chains
# that accepted step k's proposal (0 without MALA). ``info_from_stats`` reads it as lists.
STATS_COLUMNS = ("energy", "grad_norm", "accept")


@dataclass
class Reading:
    """What a fused kernel would run for a call: a spec (with a posterior's observations), or why
    there is none (``fusion.read`` makes it; ``recognition`` is set for a traced energy, which
    ``fusion.confirm`` checks at the chain's start)."""
    spec: PriorSpec | None = None
    posterior: PosteriorEnergy | None = None
    tensor_spec: bool = False           # the spec reads the single tensor z (not a list of layers)
    why: str | None = None
    recognition: object = field(default=None, repr=False)


@dataclass
class Problem:
    energy: object                      # the user's callable, as given
    z: list[torch.Tensor]               # layers flattened to [B, d_l], detached
    shapes: list[torch.Size]            # each layer's shape as given
    is_list: bool                       # the structure the energy takes and the caller gets back
    n_steps: int
    step_sizes: tuple[float, ...]
    noise_scale: float
    prior_sigma: tuple[float, ...] | None
    mala: bool
    seed: int
    offset: int
    want_info: bool
    squeeze_output: bool = False        # an nn.Sequential energy returns [B, 1]
    precision: Precision = FP32         # how the energy is evaluated (precision.py)
    # how the energy is read for a fused kernel: made on first use by ``reader`` (``fusion.read``),
    # so a call no fused backend looks at (the reference's) never traces or calls the energy
    reader: Callable | None = field(default=None, repr=False)
    _reading: Reading | None = field(default=None, repr=False)
    # (U, dU/dz) at the start, by autograd, when the start check made them: the loop starts from them
    start: tuple | None = field(default=None, repr=False)
    refusals: str | None = None         # why each faster backend passed, when auto fell back to the reference
    # The custom ops' noise position: an int64 tensor [seed, base offset]. When it is set,
    # ``offset`` counts from its base and ``seed`` is unused; kernels on the state's device read it
    # there (graph-safe), a CPU one is read on the host (``noise_position``).
    philox: torch.Tensor | None = None
    # answers computed once per call (a backend's reasons: dispatch asks them more than once)
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def reading(self) -> Reading:
        if self._reading is None:
            self._reading = self.reader(self) if self.reader is not None else Reading(why="no energy to read")
        return self._reading

    def set_reading(self, reading: Reading) -> None:
        """Replace the reading (a retrace, a refusal at the start check): every answer derived from
        the old one is forgotten."""
        self._reading = reading
        self.memo.clear()

    @property
    def spec(self) -> PriorSpec | None:
        """The fusable prior read from the energy, or None (``why_not_fused`` says why)."""
        return self.reading.spec

    @property
    def posterior(self) -> PosteriorEnergy | None:
        return self.reading.posterior

    @property
    def tensor_spec(self) -> bool:
        return self.reading.tensor_spec

    @property
    def why_not_fused(self) -> str | None:
        return self.reading.why

    def remember(self, key, compute):
        """``compute()``, once per problem and key."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    @property
    def batch(self) -> int:
        return self.z[0].shape[0]

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(t.shape[1] for t in self.z)

    @property
    def stride(self) -> int:
        """Philox counters one step uses: B * D normals, + B uniforms with MALA."""
        return self.batch * sum(self.dims) + (self.batch if self.mala else 0)

    @property
    def is_prior(self) -> bool:
        """A fusable prior (PriorEnergy or an MLP nn.Sequential), no observations."""
        return self.spec is not None and self.posterior is None

    @property
    def h(self) -> tuple[float, ...]:
        """s_l^2 / 2 per layer (``step_constants``)."""
        return self._constants()[0]

    @property
    def c(self) -> tuple[float, ...]:
        """s_l * tau per layer (``step_constants``)."""
        return self._constants()[1]

    @property
    def mala_denominators(self) -> tuple[float, ...]:
        """2 (s_l tau)^2 per layer: MALA's log q(z | z') = -|z - z' + h g'|^2 / (2 (s tau)^2)."""
        return self._constants()[2]

    def _constants(self) -> tuple[tuple[float, ...], ...]:
        # read every step by the chain loop and the update: computed once per step sizes
        def compute():
            pairs = [step_constants(s, self.noise_scale) for s in self.step_sizes]
            return (tuple(p[0] for p in pairs), tuple(p[1] for p in pairs),
                    tuple(2 * (s * self.noise_scale) ** 2 for s in self.step_sizes))
        return self.remember(("step constants", tuple(self.step_sizes), self.noise_scale), compute)

    def quadratic_coefficients(self) -> list[float]:
        """q_l: every pure quadratic term of the prior's U (top N(0, I), base_sigma, eps's |eps|^2/2,
        prior_sigma) folded into q_l |x_l|^2 / 2, for kernels that add them in one place."""
        spec, L = self.spec, len(self.dims)
        if spec.space == "eps":
            q = [1.0] * L
        elif spec.base_sigma is None:
            q = [0.0] * (L - 1) + [1.0]
        else:
            q = [0.0 if s == math.inf else 1.0 / (s * s) for s in spec.base_sigma]
        if self.prior_sigma is not None:
            q = [ql + 1.0 / (s * s) for ql, s in zip(q, self.prior_sigma)]
        return q

    def host_stream(self) -> tuple[int, int]:
        """(seed, absolute offset) of the call's noise, read on the host (a ``philox`` tensor on
        the CPU is read; one on a GPU cannot be without a sync, and kernels read it there)."""
        if self.philox is None:
            return self.seed, self.offset
        if self.philox.device.type != "cpu":
            raise RuntimeError("this call's noise position lives on the GPU (graph-safe); only a kernel reads it")
        seed, base = read_philox(self.philox)
        return seed, base + self.offset

    def noise_position(self, k: int = 0, *, by_pointer: bool = False):
        """(seed, offset of step k, philox tensor or None) as a kernel takes them: with
        ``by_pointer`` and a ``philox`` tensor on the state's device, the kernel reads seed and base
        offset from that tensor and adds the offset given (graph-safe); otherwise host values."""
        if by_pointer and self.philox is not None and self.philox.device == self.device:
            return 0, self.offset + k * self.stride, self.philox
        seed, offset = self.host_stream()
        return seed, offset + k * self.stride, None

    def step_noise(self, k: int) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Step k's per-layer Philox normals [B, d_l] and, with MALA, the chains' uniforms [B],
        in this module's noise layout (the torch specification of the stream). With ``philox`` on
        the state's GPU they are computed from it there (no host read: capturable)."""
        B, dims = self.batch, self.dims
        n = B * sum(dims)
        if self.philox is not None and self.philox.device.type != "cpu":
            base = self.offset + k * self.stride
            flat = philox_randn_from(self.philox, base, n)
            uniform = philox_rand_from(self.philox, base + n, B) if self.mala else None
        else:
            seed, base, _ = self.noise_position(k)
            flat = philox_randn(seed, base, n, device=self.device)
            uniform = philox_rand(seed, base + n, B, device=self.device) if self.mala else None
        noise = [c.reshape(B, d) for c, d in zip(flat.to(self.dtype).split([B * d for d in dims]), dims)]
        return noise, uniform

    def new_stats(self) -> torch.Tensor | None:
        """The [K, 3] statistics tensor (``STATS_COLUMNS``) a backend fills, or None without info."""
        if not self.want_info:
            return None
        return torch.zeros(self.n_steps, len(STATS_COLUMNS), dtype=torch.float64, device=self.device)

    @property
    def device(self) -> torch.device:
        return self.z[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.z[0].dtype

    def restructure(self, flat: list[torch.Tensor]):
        """Flattened layers back to the caller's shapes and structure (a layer already in its
        shape passes as it is: a reshape would add a view to autograd's graph at every step)."""
        out = [t if t.shape == s else t.reshape(s) for t, s in zip(flat, self.shapes)]
        return out if self.is_list else out[0]

    def call_energy(self, flat: list[torch.Tensor], *, own_precision: bool = False) -> torch.Tensor:
        """The user's energy plus the prior_sigma term, on flattened layers; shape [B], z's dtype.
        The energy runs in the call's precision (``own_precision``: at z's own, for the start check
        of a reading, which the kernels make in float32)."""
        ctx = self.precision.fp32_context if own_precision else self.precision.context
        with ctx(self.device.type):
            u = self.energy(self.restructure(flat))
        if not torch.is_tensor(u):
            raise TypeError(f"energy must return a tensor, got {type(u).__name__}")
        if not u.dtype.is_floating_point:
            raise TypeError(f"energy must return floating-point energies, got dtype {u.dtype}")
        if self.squeeze_output and u.dim() == 2 and u.shape[1] == 1:
            u = u.squeeze(1)
        if tuple(u.shape) != (self.batch,):
            raise ValueError(f"energy must return one value per chain, shape ({self.batch},); "
                             f"got shape {tuple(u.shape)}")
        if self.precision.lowered and u.dtype != self.dtype:
            u = u.to(self.dtype)  # a bf16/fp16 energy's value joins the chain's sums at z's precision
        if self.prior_sigma is not None:
            for t, s in zip(flat, self.prior_sigma):
                u = u + t.pow(2).sum(-1) / (2 * s * s)
        return u


def info_from_stats(problem: Problem, stats: torch.Tensor | None) -> dict:
    """The per-step lists ``langevin``'s info holds, from a [K, 3] statistics tensor."""
    if stats is None or stats.shape[0] == 0:
        return {"energy": [], "grad_norm": [], "accept": []}
    rows = stats.tolist()  # one host read for the whole chain
    return {"energy": [r[0] for r in rows], "grad_norm": [r[1] for r in rows],
            "accept": [r[2] for r in rows] if problem.mala else []}
