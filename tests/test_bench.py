"""``jebm bench`` (``jebm.bench.quick``): a short prior-chain benchmark from the installed package,
without pytest-benchmark, whose JSON ``jebm report`` shows in its benchmark section with no file of
the repository's ``benchmarks/`` folder; and ``jebm.bench.results`` (what ``python -m
benchmarks.report`` runs) reads it like the suite's JSON."""
import json

import pytest

import jebm
import jebm_kernels as jk
from jebm.bench.quick import default_providers, run_bench
from jebm.bench.results import main as results_main
from jebm.cli import main
from jebm.evaluate import report

TINY = dict(dims=[6, 3], ebm_hidden=[16], gauss_hidden=[16], dec_hidden=[32], prior_steps=3, post_steps=3,
            batch_size=50, n_samples=4, sample_every=0)
QUICK = ["--budget", "0.01", "--batches", "4", "--steps", "3", "--configs", "lebm", "cvpr"]


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    """A folder holding .benchmarks/jebm-bench.json from `jebm bench` (run there, its default path)."""
    root = tmp_path_factory.mktemp("bench")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    try:
        assert main(["bench", *QUICK]) == 0
    finally:
        mp.undo()
    return root


def test_jebm_bench_writes_a_benchmark_json_for_every_available_backend(bench_dir, capsys):
    data = json.loads((bench_dir / ".benchmarks" / "jebm-bench.json").read_text())
    info = data["jebm"]
    assert info["source"] == "jebm bench" and info["n_steps"] == 3 and info["batches"] == [4]
    assert info["machine"]["jebm_kernels_backends"] == jk.available_backends()
    providers = default_providers()
    assert providers[0] == "reference" and "plain" in providers
    assert set(providers) - {"plain"} <= set(jk.available_backends())
    rows = {(b["extra_info"]["config"], b["extra_info"]["provider"]): b for b in data["benchmarks"]}
    assert set(rows) == {(c, p) for c in ("lebm", "cvpr") for p in providers}
    for b in data["benchmarks"]:
        assert b["stats"]["rounds"] >= 2 and 0 < b["stats"]["min"] <= b["stats"]["median"] <= b["stats"]["max"]
        assert b["extra_info"]["kind"] == "prior_chain" and b["extra_info"]["batch"] == 4
    if "cpu" in providers:  # same Philox noise as the reference: compared element-wise
        assert rows[("cvpr", "cpu")]["extra_info"]["max_abs_diff_vs_reference"] < 1e-3


def test_jebm_report_shows_the_bench_json_without_the_benchmarks_folder(bench_dir, tmp_path, monkeypatch):
    run = jebm.train(iters=2, out_dir=tmp_path / "run", progress=False, **TINY)
    monkeypatch.setattr(report, "_repo_root", lambda: tmp_path)  # no benchmarks/ (and no .benchmarks) there
    monkeypatch.chdir(bench_dir)                                  # found as ./.benchmarks/jebm-bench.json
    assert main(["report", str(run.run_dir)]) == 0
    text = " ".join((run.run_dir / "report.html").read_text().split())
    assert "No benchmark data" not in text
    assert "jebm-bench.json" in text and "A short <code>jebm bench</code> run" in text
    assert "<h3>Prior chain</h3>" in text and "lebm" in text and "cvpr" in text
    assert "1.00x" in text  # the reference row's speed-up over itself: the table code ran
    assert "FMA peak: not measured (jebm bench does not measure it" in text


def test_the_bench_json_reads_like_the_suites(bench_dir, capsys):
    path = bench_dir / ".benchmarks" / "jebm-bench.json"
    assert results_main([str(path), "--no-write", "--no-check"]) == 0
    out = capsys.readouterr().out
    assert "| lebm | 4 | reference |" in out and "NOT MEASURED" in out  # no batch 1000: those targets are open


def test_jebm_bench_rejects_bad_arguments(tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path / "b.json"), "--budget", "0"]) == 2
    assert "budget_s must be > 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown configuration"):
        run_bench(tmp_path / "b.json", providers=["nope"], log=None)
    assert not (tmp_path / "b.json").exists()
