"""A ``PriorSpec`` as flat lists, the form the ``jebm::prior_chain`` custom op takes (op schemas
hold lists of ints, floats and tensors, not Python objects), and back."""
from __future__ import annotations

import torch

from ..activation_table import ACTIVATIONS, CODES
from ..spec import GaussianSpec, MLPSpec, PriorSpec

__all__ = ["encode_prior", "decode_prior"]


def encode_prior(spec: PriorSpec) -> tuple[list[int], list[float], list[torch.Tensor]]:
    """A PriorSpec as (structure ints, settings floats, parameter tensors), the op's arguments.

    structure: L, eps-space, has Gaussians, joint MLP (-1 none), n_mlp, dims[L], term MLP per
    layer (-1 none), Gaussian MLP per layer below the top (with Gaussians), the MLPs numbered by
    ``PriorSpec.mlps``; then per MLP:
    n_linear, activation, output activation, and per Linear: in, out, has bias.
    settings: energy_sign, the Gaussians' sigma floors or base_sigma (one per layer, inf allowed),
    each MLP's activation parameter. params: each Linear's weight then bias (when it has one).
    """
    if not isinstance(spec, PriorSpec):
        raise TypeError(f"encode_prior takes a PriorSpec, got {type(spec).__name__}")
    numbering = spec.mlps()
    L = len(spec.dims)
    gauss = spec.base_sigma is None
    structure = [L, int(spec.space == "eps"), int(gauss), numbering.joint, len(numbering), *spec.dims,
                 *numbering.terms, *numbering.gaussians]
    settings = [float(spec.energy_sign)]
    settings += [float(g.sigma_floor) for g in spec.gaussians] if gauss else [float(s) for s in spec.base_sigma]
    params: list[torch.Tensor] = []
    for m in (e.mlp for e in numbering):
        structure += [len(m.weights), CODES[m.activation], CODES[m.out_activation]]
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
