"""``python -m benchmarks.report .benchmarks/latest.json``: the suite's JSON -> BENCHMARKS.md's
results section, ``benchmarks/prior_chain.png`` and the target check (the code is
``jebm.bench.results``; this entry point gives it the repository's files as defaults)."""
from __future__ import annotations

import sys
from pathlib import Path

from jebm.bench.results import main as _main

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    return _main(argv, default_markdown=ROOT / "BENCHMARKS.md", default_plot=ROOT / "benchmarks" / "prior_chain.png")


if __name__ == "__main__":
    sys.exit(main())
