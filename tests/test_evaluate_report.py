"""``jebm report`` (``jebm.evaluate.report``): one self-contained HTML page with every section,
missing parts stated, bad input refused. (The TensorBoard events: test_train_tensorboard.py; the
report of a ``jebm bench`` JSON: test_bench.py.)"""
import base64
import io
import json
import warnings
from html.parser import HTMLParser

import pytest
from PIL import Image

import jebm
from jebm.cli import main
from jebm.evaluate import report
from jebm.evaluate.outlier import outlier_experiment
from jebm.evaluate.report import write_report
from jebm.evaluate.run_eval import evaluate_run

TINY = dict(dims=[6, 3], ebm_hidden=[16], gauss_hidden=[16], dec_hidden=[32], prior_steps=3, post_steps=3,
            batch_size=50, n_samples=4)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """A run with learned step sizes, its eval files, and an outlier experiment beside it (where
    the report looks by default)."""
    root = tmp_path_factory.mktemp("report")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # learned step sizes: "runs on the reference backend"
        res = jebm.train(iters=6, out_dir=root / "run", progress=False, sample_every=3, learn_step_size=True, **TINY)
    evaluate_run(res.run_dir, n_test=8, n_hier=3)
    outlier_experiment(classes=[1], seeds=[0], iters=2, out_dir=root / "outlier", progress=False,
                          **{**TINY, "sample_every": 0})
    return res


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.text, self.h2, self.tables = [], [], [], [], 0
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("link", "script", "iframe"):
            self.links.append(tag)
        if tag == "a" and not a.get("href", "").startswith("#"):
            self.links.append(a.get("href"))
        if tag == "table":
            self.tables += 1
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_h2:
            self.h2.append(data)


def _parse(path) -> _Page:
    p = _Page()
    p.feed(path.read_text())
    return p


def _decode_png(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    im.load()
    return im


def _bench_json(path):
    """A pytest-benchmark JSON shaped like the benchmarks/ suite's (two providers, one iteration row)."""
    def rec(name, seconds, **extra):
        return {"name": name, "stats": {"min": seconds, "median": seconds, "mean": seconds, "rounds": 3},
                "extra_info": extra}
    chain = dict(kind="prior_chain", config="cvpr", batch=100, n_steps=60, flops_per_call=1.903e6 * 100 * 60,
                 chain_steps_per_call=100 * 60)
    data = {"datetime": "2026-11-25T09:00:00", "benchmarks": [
        rec("test_prior_chain[reference-cvpr-100]", 0.4, provider="reference", **chain),
        rec("test_prior_chain[cpu-cvpr-100]", 0.05, provider="cpu", max_abs_diff_vs_reference=1e-6, **chain),
        rec("test_train_iteration[mle-reference]", 0.2, kind="train_iteration", scheme="mle", backend="reference",
            preset="default", dims=[16, 8], batch=100, prior_steps=30, post_steps=30, space="eps", decoder="mlp")],
        "jebm": {"n_steps": 60, "batches": [100], "machine": {"cpu_model": "test CPU", "cpus": 2}}}
    path.write_text(json.dumps(data))
    return path


def test_report_has_every_section_with_real_content(full_run, tmp_path):
    bench = _bench_json(tmp_path / "bench.json")
    assert main(["report", str(full_run.run_dir), "--benchmarks", str(bench)]) == 0
    page_path = full_run.run_dir / "report.html"
    page = _parse(page_path)
    text = " ".join(" ".join(page.text).split())
    assert [h.strip() for h in page.h2] == ["Run", "Training curves", "Samples, reconstructions, hierarchical sampling",
                                            "Evaluation metrics", "Outlier detection (held-out class)",
                                            "Learned posterior step sizes", "Benchmarks", "TensorBoard"]
    # self-contained: every image embedded as a PNG data URI, nothing fetched
    assert page.links == []
    ims = [_decode_png(s) for s in page.imgs]
    # curves, 2 training grids, 3 eval grids, 1 snapshot, outlier bars, step sizes, benchmark plot
    assert len(ims) == 10 and all(im.width > 20 and im.height > 20 for im in ims)
    hier = Image.open(full_run.run_dir / "hierarchical.png")
    assert any(im.size == hier.size for im in ims)
    # outlier table: the AUPRCs of outlier.json, both priors
    summary = json.loads((full_run.run_dir.parent / "outlier" / "outlier.json").read_text())
    for kind in ("ebm", "gauss"):
        assert f"{summary['per_class']['1'][kind]['mean']:.3f}" in text
    # learned step sizes: the final logged values of both layers
    last = json.loads((full_run.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    for l in (1, 2):
        assert f"{last[f'step_size_post_l{l}']:.4g}" in text
    # benchmark table through jebm.bench.results: the cpu row's 8x speed-up over the reference
    assert "8.00x" in text and "test CPU" in text
    # eval metrics: the reconstruction error of eval.json
    e = json.loads((full_run.run_dir / "eval.json").read_text())
    assert f"{e['reconstruction']['mse_per_pixel']:.4g}" in text
    # what is not there is said: this run has no FID
    assert "FID: not computed" in text


def test_missing_parts_are_stated_not_dropped(tmp_path, monkeypatch):
    run = jebm.train(iters=2, out_dir=tmp_path / "bare", progress=False, sample_every=0, **TINY)
    monkeypatch.chdir(tmp_path)   # no .benchmarks here
    monkeypatch.setattr(report, "_repo_root", lambda: tmp_path)
    page = _parse(write_report(run.run_dir))
    text = " ".join(" ".join(page.text).split())
    assert len(page.h2) == 8
    assert f"run jebm eval {run.run_dir} to make them" in text and "No readable eval.json" in text
    assert "Outlier table not found" in text and str(run.run_dir / "outlier.json") in text
    assert "did not learn its posterior step sizes" in text
    assert "No benchmark data" in text


def test_report_rejects_bad_input(tmp_path, full_run, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["report", str(full_run.run_dir), "--outlier", str(tmp_path / "x.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "b.json").write_text("{}")
    assert main(["report", str(full_run.run_dir), "--benchmarks", str(tmp_path / "b.json")]) == 2
    assert "not a pytest-benchmark JSON" in capsys.readouterr().err


