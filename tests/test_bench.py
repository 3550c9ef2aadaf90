"""``jebm bench`` (``jebm.bench.quick``): a short prior-chain benchmark from the installed package,
without pytest-benchmark, whose JSON ``jebm report`` shows in its benchmark section with no file of
the repository's ``benchmarks/`` folder; and ``jebm.bench.results`` (what ``python -m
benchmarks.report`` runs) reads it like the suite's JSON."""
import json

import pytest
import torch

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


# ---- precision: the bf16 peers and providers, svhn-conv, the bf16 targets -------------------------

def test_the_plain_peer_runs_its_energy_in_the_precision_asked_for():
    from jebm.bench.peers import plain_langevin
    seen = []

    def energy(z):
        h = torch.nn.functional.linear(z, torch.ones(3, 4))
        seen.append(h.dtype)
        return h.pow(2).sum(-1)

    z0 = torch.randn(5, 4)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        seen.clear()
        out = plain_langevin(energy, z0, n_steps=2, step_size=0.1, precision=precision)
        assert seen == [dtype, dtype] and out.dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        plain_langevin(energy, z0, n_steps=1, step_size=0.1, precision="fp16")


def test_svhn_conv_is_lebms_svhn_posterior_chain():
    from jebm.bench.configs import batches_for, make_case, steps_for
    case = make_case("svhn-conv", 2)
    assert case.n_steps == steps_for("svhn-conv") and case.kind == "posterior_chain" and case.step_size == 0.1
    assert set(batches_for("svhn-conv")) <= {16, 100} and case.dims == (100,)
    assert case.flops_per_chain_step == 3 * 2 * (100 * 512 * 16 + 512 * 256 * 16 * 16 + 256 * 128 * 16 * 64
                                                 + 128 * 3 * 16 * 256)
    assert case.energy(case.z0).shape == (2,)


@pytest.mark.skipif("cpu" not in jk.available_backends(), reason="the cpu backend is not built")
def test_the_bf16_providers_run_and_record_what_they_ran_in():
    from jebm.bench.configs import make_case
    from jebm.bench.providers import make_runner, run_precision
    from jebm_kernels.precision import bf16_hardware_reason
    case = make_case("closure-conv", 2, n_steps=2)
    for provider in ("plain-bf16", "cpu-bf16"):
        run, why = make_runner(provider, case)
        if bf16_hardware_reason(torch.device("cpu")) is not None:
            assert run is None and "bf16" in why
            continue
        out = run()
        assert all(bool(torch.isfinite(t).all()) for t in ([out] if torch.is_tensor(out) else out))
        assert run_precision(provider, case) == ("bf16", None)  # no kernel fuses a conv closure
    precision, note = run_precision("cpu-bf16", make_case("lebm", 2, n_steps=1))  # a fused kernel
    assert (precision, note is None) in (("bf16", True), ("fp32", False))
    assert run_precision("cpu", case) == ("fp32", None)


def _row(config, batch, provider, seconds, precision=None, kind="prior_chain"):
    x = dict(kind=kind, config=config, batch=batch, provider=provider, n_steps=5, chain_steps_per_call=batch * 5)
    if precision is not None:
        x.update(precision=precision, precision_note=None if precision == "bf16" else "no bf16 kernels here")
    return {"stats": {"min": seconds, "median": seconds}, "extra_info": x}


def test_a_bf16_target_is_not_measured_where_the_kernel_ran_fp32_and_checked_where_it_ran_bf16():
    from jebm.bench.results import chain_rows, check_targets, prior_rows, train_rows
    for ran, status in (("fp32", "NOT MEASURED"), ("bf16", "PASS")):
        data = {"benchmarks": [_row("lebm", 1000, "cpu", 2.0, "fp32"), _row("lebm", 1000, "cpu-bf16", 1.0, ran)],
                "jebm": {}}
        rows = prior_rows(data, "min"), [], chain_rows(data, "min", "posterior_chain")
        t = {x["name"]: x for x in check_targets(data, *rows)}
        target = t["fused prior chain in bf16 >= 1.5x in fp32, LEBM, batch 1000"]
        assert target["status"] == status
        if ran == "fp32":
            assert "no bf16 kernels here" in target["note"]
    # the conv iteration's target: bf16 against fp32 in the contiguous layout (jebm's fp32 before
    # the trainer chose channels_last); vs_fp32 against the trainer's own fp32
    it = [{"stats": {"min": s}, "extra_info": dict(kind="train_iteration", case="conv-mnist5k", scheme="mle",
                                                   backend="cpu", precision=p, layout=lay)}
          for p, lay, s in (("fp32", "contiguous", 3.0), ("fp32", "trainer", 2.0), ("bf16", "trainer", 1.0))]
    rows = train_rows({"benchmarks": it}, "min")
    assert [(r["precision"], r["layout"], r["vs_fp32"], r["vs_fp32_contiguous"]) for r in rows] == [
        ("fp32", "contiguous", 2 / 3, 1.0), ("fp32", "trainer", 1.0, 1.5), ("bf16", "trainer", 2.0, 3.0)]
    name = ("conv-mnist5k MLE training iteration in bf16 >= 2.5x the fp32 iteration (contiguous layout, as before "
            "the trainer chose one)")
    t = {x["name"]: x for x in check_targets({"benchmarks": it, "jebm": {}}, [], rows, [])}
    assert t[name]["status"] == "PASS" and "2.00x the fp32 channels_last one" in t[name]["note"]
    slower = [dict(b, stats={"min": 1.5}) if b["extra_info"]["precision"] == "bf16" else b for b in it]
    t = {x["name"]: x for x in check_targets({"benchmarks": slower, "jebm": {}}, [], train_rows(
        {"benchmarks": slower}, "min"), [])}
    assert t[name]["status"] == "FAIL"  # 2.0x the contiguous fp32
