"""jebm's benchmark suite (pytest-benchmark): the sampler's backends against the pure-torch
reference at the papers' shapes. Run it as BENCHMARKS.md says; ``python -m benchmarks.report``
turns its JSON into the results section of BENCHMARKS.md."""
