"""The fused kernels as ``torch.library`` custom ops, in one public module:

- ``torch.ops.jebm.prior_chain`` (``prior_chain/op.py``): all K steps of a ``PriorSpec``'s chain;
  ``prior_chain(spec, z, philox, ...)`` calls it on a spec, ``FusedPriorChain`` wraps it as a
  module for ``torch.compile(fullgraph=True)``; ``encode_prior`` / ``decode_prior`` turn a spec
  into the op's flat arguments and back;
- ``torch.ops.jebm.multi_layer_update`` (``update/op.py``): one Langevin move of every layer;
- ``philox_tensor(seed, offset, device)``: the int64 [seed, offset] both ops read.

Importing this module registers the ops.
"""
from __future__ import annotations

from .philox import philox_tensor
from .prior_chain.encoding import decode_prior, encode_prior
from .prior_chain.op import FusedPriorChain, prior_chain, run_prior_chain_op
from .update.op import multi_layer_update, run_update_op

__all__ = ["encode_prior", "decode_prior", "philox_tensor", "FusedPriorChain", "prior_chain",
           "multi_layer_update", "run_prior_chain_op", "run_update_op"]
