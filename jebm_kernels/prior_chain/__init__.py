"""The whole prior chain of a ``PriorSpec``, one op with its implementations side by side: K
Langevin (or MALA) steps, forward and input-gradient of every MLP, noise and update, per call.

- ``reference.py``: ``chain.run_chain`` with autograd on the spec's torch energy and the torch
  update (the specification);
- ``cpu.py``: csrc's C++ chain (also a posterior with an MLP decoder, and the prior terms of a
  posterior with a conv decoder);
- ``triton.py``: one Triton launch (its tables and the launching op; the kernel itself:
  ``triton_kernel.py``);
- ``cuda.py``: one launch of csrc's CUDA kernel;
- ``packing.py``: the weight buffer both GPU kernels read (W^T, W and bias of every Linear);
- ``encoding.py``: a ``PriorSpec`` as the custom op's flat arguments;
- ``op.py``: the ``jebm::prior_chain`` custom op and ``FusedPriorChain``, which pick an
  implementation by ``dispatch``'s rule.

Each implementation has ``reason(problem)`` (why it cannot run that problem whole, or None) and
``run(problem) -> (final layers, statistics [K, 3] or None)``; all of them number the prior's MLPs
by ``PriorSpec.mlps``.
"""
