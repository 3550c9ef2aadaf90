"""The fused kernels as ``torch.library`` custom ops, so ``torch.compile`` can trace a model that
calls them and CUDA graphs can capture them.

Ops (schemas below; every tensor float32 except ``philox``):
- ``jebm::prior_chain(z, params, structure, settings, philox, step_sizes, noise_scale,
  prior_sigma, n_steps, mala, with_stats) -> (final z, stats)``: all K steps of a ``PriorSpec``'s
  chain (the cpu backend's C++ chain on CPU; on CUDA the Triton kernel, or csrc's CUDA kernel
  where built and ``philox`` is a host tensor). ``z``: one [B, d_l] tensor per layer; ``params``:
  every Linear's weight [out, in] and bias, in ``encode_prior``'s order; ``structure`` (ints) and
  ``settings`` (floats) describe the prior (``encode_prior``); ``stats`` is [K, 3] (chain means of
  U and |grad U| at the state each step starts from, accept rate), or [0, 3] without
  ``with_stats``.
- ``jebm::multi_layer_update(x, g, philox, step_offset, step_sizes, noise_scale, mala) ->
  (moved, normals, uniforms)``: one Langevin move of every layer, x_l - s_l^2/2 g_l + s_l tau xi_l
  (normals and the MALA uniforms returned with ``mala``, else [] and [0]).

Noise: ``philox`` is an int64 tensor [seed, offset] (the seed's 64 bits as a signed int64:
``philox_tensor``). Counters start at ``offset`` (+ ``step_offset``) in the ``problem.py`` layout,
so a call draws exactly what ``langevin(generator=(seed, offset))`` draws. On a CUDA device the
kernels read the tensor themselves (no host sync, and a captured CUDA graph sees the value at
replay time); a CPU ``philox`` is read on the host. The ops never advance it: the caller adds
``n_steps * stride`` (``GraphSafeChain`` does, on the device).

``langevin`` does not go through these ops: their implementations are the functions the backends
call (``cpu.run_fused``, ``triton_prior_chain.launch``, ``cuda.run_fused``), and the dispatcher
alone costs 0.1-0.25 ms per call (measured on the 2-core dev machine, 1 thread, LEBM 100-200-200-1
prior: op 1.20 ms against 0.95 ms for the same implementation called directly, B = 1, K = 1;
~55 us for a trivial custom op with list arguments on an idle machine): 10-20% of a one-step CPU
chain, 1-2% at B = 8, K = 60. The ops are the entry points for torch.compile and CUDA graphs
(a captured graph pays the host-side cost once, at capture).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .problem import Problem
from .spec import ACTIVATIONS, GaussianSpec, MLPSpec, PriorSpec

__all__ = ["encode_prior", "decode_prior", "philox_tensor", "FusedPriorChain", "prior_chain",
           "multi_layer_update"]

_MASK64 = (1 << 64) - 1


def philox_tensor(seed: int, offset: int = 0, device=None) -> torch.Tensor:
    """The int64 tensor [seed, offset] the ops read: the 64-bit seed's bits as a signed int64."""
    if not isinstance(seed, int) or not 0 <= seed <= _MASK64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    if not isinstance(offset, int) or not 0 <= offset < 2**63:
        raise ValueError(f"offset must be an int in [0, 2**63), got {offset!r}")
    return torch.tensor([seed - (1 << 64) if seed >= 1 << 63 else seed, offset], dtype=torch.int64,
                        device=device)


def _read_philox(philox: torch.Tensor) -> tuple[int, int]:
    seed, offset = philox.tolist()  # a CPU tensor: no device sync
    return seed & _MASK64, offset


def _check_layers(z) -> None:
    if not isinstance(z, (list, tuple)) or not z or not all(torch.is_tensor(t) for t in z):
        raise ValueError("z must be a non-empty list of [B, d_l] tensors, one per latent layer")


def _check_philox(philox, device) -> None:
    if not torch.is_tensor(philox) or philox.dtype != torch.int64 or tuple(philox.shape) != (2,):
        raise ValueError("philox must be an int64 tensor of shape (2,): [seed, offset] (see philox_tensor)")
    if philox.device.type != "cpu" and philox.device != device:
        raise ValueError(f"philox is on {philox.device} but the state is on {device}: put it on the "
                         "state's device (graph-safe) or on the CPU")


# --------------------------------------------------------------------------- the prior, encoded

def encode_prior(spec: PriorSpec) -> tuple[list[int], list[float], list[torch.Tensor]]:
    """A PriorSpec as (structure ints, settings floats, parameter tensors), the op's arguments.

    structure: L, eps-space, has Gaussians, joint MLP (-1 none), n_mlp, dims[L], term MLP per
    layer (-1 none), Gaussian MLP per layer below the top (with Gaussians); then per MLP:
    n_linear, activation, output activation, and per Linear: in, out, has bias.
    settings: energy_sign, the Gaussians' sigma floors or base_sigma (one per layer, inf allowed),
    each MLP's activation parameter. params: each Linear's weight then bias (when it has one).
    """
    if not isinstance(spec, PriorSpec):
        raise TypeError(f"encode_prior takes a PriorSpec, got {type(spec).__name__}")
    mlps: list[MLPSpec] = []

    def add(m):
        if m is None:
            return -1
        mlps.append(m)
        return len(mlps) - 1

    L = len(spec.dims)
    gauss = spec.base_sigma is None
    terms = [add(t) for t in spec.layer_terms]
    joint = add(spec.joint_term)
    gids = [add(g.mlp) for g in spec.gaussians]
    structure = [L, int(spec.space == "eps"), int(gauss), joint, len(mlps), *spec.dims, *terms, *gids]
    settings = [float(spec.energy_sign)]
    settings += [float(g.sigma_floor) for g in spec.gaussians] if gauss else [float(s) for s in spec.base_sigma]
    params: list[torch.Tensor] = []
    for m in mlps:
        structure += [len(m.weights), ACTIVATIONS.index(m.activation), ACTIVATIONS.index(m.out_activation)]
        settings.append(float(m.act_param))
        for w, b in zip(m.weights, m.biases):
            structure += [int(w.shape[1]), int(w.shape[0]), int(b is not None)]
            params.append(w.detach())
            if b is not None:
                params.append(b.detach())
    return structure, settings, params


def decode_prior(structure: list[int], settings: list[float], params: list[torch.Tensor]) -> PriorSpec:
    """``encode_prior``'s inverse; raises ValueError on a malformed description."""
    ints, floats, tensors = list(structure), list(settings), list(params)

    def take(values: list, n: int, what: str) -> list:
        if len(values) < n:
            raise ValueError(f"the prior's {what} run out ({n} more expected): build structure, settings "
                             "and params with jebm_kernels.ops.encode_prior")
        out = values[:n]
        del values[:n]
        return out

    L, eps, gauss, joint, n_mlp = (int(v) for v in take(ints, 5, "structure ints"))
    if not (1 <= L <= 64 and 0 <= n_mlp <= 256):
        raise ValueError(f"the prior's structure says L = {L} layers and {n_mlp} MLPs: not an encoded prior")
    dims = tuple(int(v) for v in take(ints, L, "structure ints"))
    terms = [int(v) for v in take(ints, L, "structure ints")]
    gids = [int(v) for v in take(ints, L - 1, "structure ints")] if gauss else []
    sign = float(take(floats, 1, "settings")[0])
    per_layer = [float(v) for v in take(floats, L - 1 if gauss else L, "settings")]
    mlps = []
    for _ in range(n_mlp):
        n_lin, act, out_act = (int(v) for v in take(ints, 3, "structure ints"))
        if not (0 <= act < len(ACTIVATIONS) and 0 <= out_act < len(ACTIVATIONS)):
            raise ValueError(f"activation codes {act}, {out_act} are not in 0..{len(ACTIVATIONS) - 1}")
        param = float(take(floats, 1, "settings")[0])
        ws, bs = [], []
        for _ in range(n_lin):
            n_in, n_out, has_b = (int(v) for v in take(ints, 3, "structure ints"))
            (w,) = take(tensors, 1, "params")
            if tuple(w.shape) != (n_out, n_in):
                raise ValueError(f"a weight has shape {tuple(w.shape)}, the structure says ({n_out}, {n_in})")
            ws.append(w)
            bs.append(take(tensors, 1, "params")[0] if has_b else None)
        mlps.append(MLPSpec(tuple(ws), tuple(bs), ACTIVATIONS[act], param, ACTIVATIONS[out_act]))
    if ints or floats or tensors:
        raise ValueError(f"values left over after the last MLP ({len(ints)} ints, {len(floats)} floats, "
                         f"{len(tensors)} tensors): not an encoded prior")
    if any(not -1 <= i < len(mlps) for i in terms + gids + [joint]) or any(i == -1 for i in gids):
        raise ValueError("the prior's structure refers to an MLP that is not there")
    pick = lambda i: None if i == -1 else mlps[i]
    return PriorSpec(dims, tuple(pick(t) for t in terms), pick(joint),
                     tuple(GaussianSpec(mlps[g], f) for g, f in zip(gids, per_layer)),
                     space="eps" if eps else "z", energy_sign=sign,
                     base_sigma=None if gauss else tuple(per_layer))


def _problem(spec, z, philox, step_sizes, noise_scale, prior_sigma, n_steps, mala, want_info) -> Problem:
    """A Problem as ``langevin`` would build it, for the backends' run functions."""
    if len(step_sizes) != len(z):
        raise ValueError(f"step_sizes needs one value per layer: {len(z)} layers, {len(step_sizes)} values")
    if prior_sigma and len(prior_sigma) != len(z):
        raise ValueError(f"prior_sigma needs one value per layer (or none): {len(z)} layers, {len(prior_sigma)}")
    for v in list(step_sizes) + list(prior_sigma):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"step sizes and prior_sigma must be finite and > 0, got {v}")
    if not (math.isfinite(noise_scale) and noise_scale >= 0) or (mala and noise_scale == 0):
        raise ValueError(f"noise_scale must be finite and >= 0 (> 0 with MALA), got {noise_scale}")
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if any(t.dim() != 2 or t.shape[0] != z[0].shape[0] for t in z):
        raise ValueError("z must be one [B, d_l] tensor per layer, all with batch B")
    if tuple(t.shape[1] for t in z) != tuple(spec.dims):
        raise ValueError(f"z has layer dims {tuple(t.shape[1] for t in z)} but the prior has {tuple(spec.dims)}")
    seed, offset = (0, 0) if philox.device.type != "cpu" else _read_philox(philox)
    return Problem(energy=None, z=[t.contiguous() for t in z], shapes=[t.shape for t in z], is_list=True,
                   n_steps=int(n_steps), step_sizes=tuple(float(s) for s in step_sizes),
                   noise_scale=float(noise_scale), prior_sigma=tuple(prior_sigma) if prior_sigma else None,
                   mala=bool(mala), seed=seed, offset=offset, want_info=bool(want_info), spec=spec)


def _stats_tensor(stats: dict, n_steps: int, with_stats: bool, device) -> torch.Tensor:
    if not with_stats or n_steps == 0:
        return torch.zeros(0, 3, device=device)
    accept = stats["accept"] or [torch.zeros((), device=device)] * n_steps
    return torch.stack([torch.stack([e, g, a]) for e, g, a in zip(stats["energy"], stats["grad_norm"], accept)]
                       ).to(device=device, dtype=torch.float32)


@torch.library.custom_op("jebm::prior_chain", mutates_args=(), device_types="cpu")
def _prior_chain_op(z: list[torch.Tensor], params: list[torch.Tensor], structure: list[int],
                    settings: list[float], philox: torch.Tensor, step_sizes: list[float], noise_scale: float,
                    prior_sigma: list[float], n_steps: int, mala: bool,
                    with_stats: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    from . import cpu
    _check_layers(z)
    spec = decode_prior(structure, settings, params)
    _check_philox(philox, z[0].device)
    problem = _problem(spec, z, philox, step_sizes, noise_scale, prior_sigma, n_steps, mala, with_stats)
    if cpu.extension_error() is not None:
        raise RuntimeError(f"jebm::prior_chain on CPU needs the C++ extension: {cpu.extension_error()}")
    why = cpu._reason(problem)
    if why is not None:
        raise ValueError(f"jebm::prior_chain cannot run this prior on the CPU: {why}")
    out, stats = cpu.run_fused(problem)
    return out, _stats_tensor(stats, problem.n_steps, with_stats, "cpu")


def prior_chain_triton(z, params, structure, settings, philox, step_sizes, noise_scale, prior_sigma,
                       n_steps, mala, with_stats):
    """The op's CUDA implementation through the Triton kernel (also runs CPU tensors under
    ``TRITON_INTERPRET=1``, which is how it is tested without a GPU). A ``philox`` on the state's
    device is read by the kernel; a CPU one on the host."""
    from . import triton_prior_chain
    _check_layers(z)
    spec = decode_prior(structure, settings, params)
    _check_philox(philox, z[0].device)
    problem = _problem(spec, z, philox, step_sizes, noise_scale, prior_sigma, n_steps, mala, with_stats)
    by_pointer = philox.device == problem.device  # (the interpreter reads a CPU tensor this way too)
    final, per_step = triton_prior_chain.launch(
        spec, problem.z, n_steps=problem.n_steps, step_sizes=problem.step_sizes, noise_scale=problem.noise_scale,
        seed=problem.seed, offset=0 if by_pointer else problem.offset, prior_sigma=problem.prior_sigma,
        mala=problem.mala, want_stats=with_stats, philox=philox if by_pointer else None)
    final = [t.clone() for t in final]  # separate outputs: custom ops may not return views of one buffer
    stats = per_step if per_step is not None else torch.zeros(0, 3, device=problem.device)
    return final, stats


@_prior_chain_op.register_kernel("cuda")
def _prior_chain_cuda(z, params, structure, settings, philox, step_sizes, noise_scale, prior_sigma, n_steps,
                      mala, with_stats):
    cuda = _cuda_backend()
    if philox.device.type == "cpu" and cuda is not None:
        # host (seed, offset): csrc's CUDA chain (it takes them by value, so not graph-safe)
        spec = decode_prior(structure, settings, params)
        problem = _problem(spec, z, philox, step_sizes, noise_scale, prior_sigma, n_steps, mala, with_stats)
        if cuda._reason(problem) is None and cuda._fused_reason(problem) is None:
            with torch.cuda.device(problem.device):
                out, stats = cuda.run_fused(problem)
            return out, _stats_tensor(stats, problem.n_steps, with_stats, problem.device)
    return prior_chain_triton(z, params, structure, settings, philox, step_sizes, noise_scale, prior_sigma,
                              n_steps, mala, with_stats)


@_prior_chain_op.register_fake
def _prior_chain_fake(z, params, structure, settings, philox, step_sizes, noise_scale, prior_sigma, n_steps,
                      mala, with_stats):
    return [t.new_empty(t.shape) for t in z], z[0].new_empty((n_steps if with_stats else 0, 3))


def _cuda_backend():
    """csrc's CUDA extension module (jebm_kernels.cuda) when it was built, else None."""
    try:
        from . import cuda
    except ImportError:
        return None
    return cuda if cuda.extension_error() is None else None


# ------------------------------------------------------------------------- the multi-layer update

def _check_update(x, g, step_sizes):
    _check_layers(x)
    if len(x) != len(g) or len(step_sizes) != len(x):
        raise ValueError(f"need one x, one gradient and one step size per layer: {len(x)} x, {len(g)} g, "
                         f"{len(step_sizes)} step sizes")
    B = x[0].shape[0]
    for l, (a, b) in enumerate(zip(x, g)):
        if a.dim() != 2 or a.shape != b.shape or a.shape[0] != B:
            raise ValueError(f"layer {l + 1}: x {tuple(a.shape)} and g {tuple(b.shape)} must be one [B, d] shape")
        if a.dtype != torch.float32 or b.dtype != torch.float32:
            raise TypeError(f"layer {l + 1}: the fused update works in float32, got {a.dtype} / {b.dtype}")
        if a.device != x[0].device or b.device != x[0].device:
            raise ValueError(f"layer {l + 1}: every x and g must be on {x[0].device}")
    return B


def _step_constants(step_sizes, noise_scale):
    # s^2/2 and s tau in double, rounded to float32 once, as the reference's float32 ops see them
    return [s * s / 2 for s in step_sizes], [s * noise_scale for s in step_sizes]


@torch.library.custom_op("jebm::multi_layer_update", mutates_args=(), device_types="cpu")
def _update_op(x: list[torch.Tensor], g: list[torch.Tensor], philox: torch.Tensor, step_offset: int,
               step_sizes: list[float], noise_scale: float,
               mala: bool) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    from . import cpu
    if cpu.extension_error() is not None:
        raise RuntimeError(f"jebm::multi_layer_update on CPU needs the C++ extension: {cpu.extension_error()}")
    B = _check_update(x, g, step_sizes)
    _check_philox(philox, x[0].device)
    seed, offset = _read_philox(philox)
    x = [t.contiguous() for t in x]
    g = [t.contiguous() for t in g]
    moved = [torch.empty_like(t) for t in x]
    noise = [torch.empty_like(t) for t in x] if mala else []
    uniform = torch.empty(B if mala else 0)
    h, c = _step_constants(step_sizes, noise_scale)
    cpu._C.multi_layer_update(B, [t.shape[1] for t in x], [t.data_ptr() for t in x], [t.data_ptr() for t in g],
                              [t.data_ptr() for t in moved], [t.data_ptr() for t in noise],
                              uniform.data_ptr() if mala else 0, h, c, seed, offset + step_offset,
                              cpu._threads())
    return moved, noise, uniform


def multi_layer_update_triton(x, g, philox, step_offset, step_sizes, noise_scale, mala):
    """The update op's Triton implementation (CUDA; CPU tensors under ``TRITON_INTERPRET=1``).
    With ``philox`` on the state's device the kernel reads seed and offset from it, and the
    per-layer tables come from a cache: no host-to-device copy, so it can be captured."""
    from . import triton_update
    from .triton_prior_chain import _device_table
    B = _check_update(x, g, step_sizes)
    _check_philox(philox, x[0].device)
    device, dims = x[0].device, [t.shape[1] for t in x]
    sizes = [B * d for d in dims]
    h, c = _step_constants(step_sizes, noise_scale)
    tables = dict(starts=_device_table([sum(sizes[:l]) for l in range(len(sizes))], torch.int64, device),
                  size_t=_device_table(sizes, torch.int64, device),
                  h=_device_table(h, torch.float32, device), c=_device_table(c, torch.float32, device))
    flat_x = torch.cat([t.reshape(-1) for t in x])
    flat_g = torch.cat([t.reshape(-1) for t in g])
    if philox.device == device:
        moved, normals, uniform = triton_update.multi_layer_update(
            flat_x, flat_g, sizes, list(step_sizes), noise_scale, 0, step_offset, n_uniform=B if mala else 0,
            write_noise=mala, philox=philox, **tables)
    else:
        seed, offset = _read_philox(philox)
        moved, normals, uniform = triton_update.multi_layer_update(
            flat_x, flat_g, sizes, list(step_sizes), noise_scale, seed, offset + step_offset,
            n_uniform=B if mala else 0, write_noise=mala, **tables)
    split = lambda t: [p.reshape(B, d).clone() for p, d in zip(t.split(sizes), dims)]
    return (split(moved), split(normals) if mala else [],
            uniform.clone() if mala else torch.empty(0, device=device))


@_update_op.register_kernel("cuda")
def _update_cuda(x, g, philox, step_offset, step_sizes, noise_scale, mala):
    cuda = _cuda_backend()
    if cuda is None:
        return multi_layer_update_triton(x, g, philox, step_offset, step_sizes, noise_scale, mala)
    B = _check_update(x, g, step_sizes)
    _check_philox(philox, x[0].device)
    device = x[0].device
    x = [t.contiguous() for t in x]
    g = [t.contiguous() for t in g]
    moved = [torch.empty_like(t) for t in x]
    noise = [torch.empty_like(t) for t in x] if mala else []
    uniform = torch.empty(B if mala else 0, device=device)
    h, c = _step_constants(step_sizes, noise_scale)
    if philox.device == device:  # the kernel reads [seed, base offset] itself: graph-safe
        seed, offset, ptr = 0, step_offset, philox.data_ptr()
    else:
        seed, offset = _read_philox(philox)
        offset, ptr = offset + step_offset, 0
    with torch.cuda.device(device):
        cuda._cuda.multi_layer_update(B, [t.shape[1] for t in x], [t.data_ptr() for t in x],
                                      [t.data_ptr() for t in g], [t.data_ptr() for t in moved],
                                      [t.data_ptr() for t in noise], uniform.data_ptr() if mala else 0, h, c,
                                      seed, offset, ptr, cuda._stream(device))
    return moved, noise, uniform


@_update_op.register_fake
def _update_fake(x, g, philox, step_offset, step_sizes, noise_scale, mala):
    moved = [t.new_empty(t.shape) for t in x]
    noise = [t.new_empty(t.shape) for t in x] if mala else []
    return moved, noise, x[0].new_empty((x[0].shape[0] if mala else 0,))


# ------------------------------------------------------------------------------ Python entry points

def prior_chain(spec: PriorSpec, z: list[torch.Tensor], philox: torch.Tensor, *, n_steps: int, step_size,
                noise_scale: float = 1.0, prior_sigma=None, mala: bool = False):
    """``torch.ops.jebm.prior_chain`` on a PriorSpec: returns (final z, stats [K, 3])."""
    L = len(spec.dims)
    steps = list(step_size) if isinstance(step_size, (list, tuple)) else [step_size] * L
    ps = [] if prior_sigma is None else (list(prior_sigma) if isinstance(prior_sigma, (list, tuple))
                                         else [prior_sigma] * L)
    structure, settings, params = encode_prior(spec)
    return torch.ops.jebm.prior_chain(list(z), params, structure, settings, philox, [float(s) for s in steps],
                                      float(noise_scale), [float(s) for s in ps], n_steps, mala, True)


def multi_layer_update(x: list[torch.Tensor], g: list[torch.Tensor], philox: torch.Tensor, *, step_size,
                       noise_scale: float = 1.0, step_offset: int = 0, mala: bool = False):
    """``torch.ops.jebm.multi_layer_update``: (moved layers, normals or [], uniforms or [0])."""
    steps = list(step_size) if isinstance(step_size, (list, tuple)) else [step_size] * len(x)
    return torch.ops.jebm.multi_layer_update(list(x), list(g), philox, step_offset, [float(s) for s in steps],
                                             float(noise_scale), mala)


class FusedPriorChain(nn.Module):
    """A prior's whole K-step chain as a module, for models compiled with
    ``torch.compile(fullgraph=True)``: ``forward(z, philox)`` -> final z (list of [B, d_l]).

    The prior's weights are held by reference (buffers sharing the spec's tensors: in-place
    optimizer updates are seen); its structure and the chain settings are fixed at construction.
    The caller owns ``philox`` (``philox_tensor``) and advances it by ``n_steps * stride`` between
    chains that must draw fresh noise (stride = B * D, + B with MALA).
    """

    def __init__(self, spec: PriorSpec, *, n_steps: int, step_size, noise_scale: float = 1.0,
                 prior_sigma=None, mala: bool = False):
        super().__init__()
        L = len(spec.dims)
        self.structure, self.settings, params = encode_prior(spec)
        self.n_params = len(params)
        for i, p in enumerate(params):
            self.register_buffer(f"param_{i}", p, persistent=False)
        steps = list(step_size) if isinstance(step_size, (list, tuple)) else [step_size] * L
        ps = [] if prior_sigma is None else (list(prior_sigma) if isinstance(prior_sigma, (list, tuple))
                                             else [prior_sigma] * L)
        # checked once here (as langevin would), so a bad setting fails at construction
        _problem(spec, [torch.empty(1, d) for d in spec.dims], torch.zeros(2, dtype=torch.int64),
                 [float(s) for s in steps], float(noise_scale), [float(s) for s in ps], int(n_steps), mala, False)
        self.step_sizes = [float(s) for s in steps]
        self.noise_scale = float(noise_scale)
        self.prior_sigma = [float(s) for s in ps]
        self.n_steps, self.mala = int(n_steps), bool(mala)

    def forward(self, z: list[torch.Tensor], philox: torch.Tensor) -> list[torch.Tensor]:
        params = [getattr(self, f"param_{i}") for i in range(self.n_params)]
        out, _ = torch.ops.jebm.prior_chain(list(z), params, self.structure, self.settings, philox,
                                            self.step_sizes, self.noise_scale, self.prior_sigma, self.n_steps,
                                            self.mala, False)
        return out
