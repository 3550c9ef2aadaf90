"""Benchmark machinery, shipped with the package so an installed jebm can measure itself.

- ``configs``: the papers' prior shapes (LEBM, CVPR 2023, ICCV 2023) with fixed random weights;
- ``providers``: what is compared per shape (the reference loop, torch.compile of a step, the
  fused backends, torchebm), each a zero-argument callable running a whole K-step chain;
- ``machine``: the machine description, the FMA peak (from a C source, ``benchmarks/fma_peak.c``)
  and torch's matmul rate;
- ``timing``: how many rounds fill a time budget, and timing without pytest-benchmark;
- ``results``: benchmark JSON -> rows, markdown tables, targets, plot (``jebm report`` and
  ``python -m benchmarks.report`` both use it);
- ``quick``: ``jebm bench``, a short prior-chain benchmark writing a JSON in pytest-benchmark's
  layout, which ``jebm report`` shows.

The pytest-benchmark suite in the repository's ``benchmarks/`` folder imports from here.
"""
