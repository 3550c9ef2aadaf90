"""The multi-layer Langevin update, one op with its implementations side by side:

    moved_l = x_l - (s_l^2 / 2) g_l + s_l * tau * xi_l     (every layer in one call)

drawing step k's Philox normals (and MALA's uniforms) in ``problem.py``'s layout.

- ``reference.py``: torch (the specification: ``Problem.step_noise``);
- ``cpu.py``: csrc's C++ update (``_C.multi_layer_update``);
- ``triton.py``: one Triton launch (CUDA, or the CPU under ``TRITON_INTERPRET=1``);
- ``cuda.py``: csrc's CUDA kernel (``_cuda.multi_layer_update``);
- ``op.py``: the ``jebm::multi_layer_update`` custom op, which picks one by ``dispatch``'s rule.

Each implementation module has ``reason(problem)`` (why it cannot serve, or None) and
``propose(problem, x, g, k) -> (moved, normals, uniforms or None)``, the ``propose`` step of
``chain.run_chain``.
"""
