"""Memory layout of the convolutions a bf16 chain runs through autograd on the CPU.

oneDNN's bf16 convolutions work in the channels-last layout: given contiguous (NCHW) weights, every
call reorders them and the activations they produce, which costs as much as the convolution itself
on an LEBM generator (BENCHMARKS.md, "bf16"). For the length of one bf16 chain, the 4-D weights of
the convolutions the energy can reach are held channels-last (the same values, another layout), so
the activations follow; each weight's own tensor is put back when the chain ends (with whatever the
chain wrote into it). Float32 chains are left exactly as the user's loop runs them.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import traces

__all__ = ["channels_last_convs"]

_PLAIN = (torch.Tensor, nn.Parameter)


def _conv_weights(energy) -> list[torch.Tensor]:
    out = []
    for m in traces.reachable_modules(energy):
        if not isinstance(m, nn.modules.conv._ConvNd) or parametrize.is_parametrized(m) or m._forward_pre_hooks:
            continue  # a parametrized or hooked weight is computed per call: nothing to hold
        w = m._parameters.get("weight")
        if (w is not None and type(w) in _PLAIN and w.dim() == 4 and not w.is_inference()
                and not w.is_contiguous(memory_format=torch.channels_last)):
            out.append(w)
    return out


@contextlib.contextmanager
def channels_last_convs(energy, device: torch.device):
    """Within it, the energy's CPU convolution weights are channels-last (see the module docstring)."""
    if device.type != "cpu":
        yield
        return
    held = []
    try:
        with torch.no_grad():
            for w in _conv_weights(energy):
                own = w.data
                w.data = own.contiguous(memory_format=torch.channels_last)
                held.append((w, own, w._version))
        yield
    finally:
        with torch.no_grad():
            for w, own, version in reversed(held):
                if w._version != version:
                    own.copy_(w.data)  # written during the chain: the user's tensor keeps the write
                w.data = own
