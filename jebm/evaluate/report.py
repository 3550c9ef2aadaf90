"""``jebm report RUN_DIR``: one self-contained HTML page (``RUN_DIR/report.html``) about a run.

Every image is embedded as a ``data:image/png;base64`` URI and the styles are inline, so the page
can be mailed or archived alone. Sections, in order, each read from the files the other commands
leave in the run folder; a part that is missing is said so in the page, with the command that
makes it, never dropped silently:

1. the run: data set, scheme, preset, iterations, precision, wall time, the whole config;
2. training curves (drawn here from ``metrics.jsonl`` as PNG);
3. samples, reconstructions and the hierarchical sampling grid (``samples.png``,
   ``reconstructions.png`` from ``jebm train``; ``eval_*.png``, ``hierarchical.png`` and the
   metrics of ``eval.json`` from ``jebm eval``), and the training-time snapshots;
4. the outlier AUPRC table of the joint EBM prior against its baselines (Gaussian prior, LEBM),
   with AUROC, the AUPRC of -F alone and the papers' figures, from the ``outlier.json`` of
   ``jebm eval --outlier``, looked for at ``outlier=`` (``--outlier``), then
   ``RUN_DIR/outlier.json``, then ``RUN_DIR/../outlier/outlier.json`` (where the default
   ``jebm eval --outlier --out runs/outlier`` puts it beside ``runs/<run>``);
5. the learned posterior step sizes: ``metrics.jsonl`` keys ``step_size_post_l1``,
   ``step_size_post_l2``, ... (one per latent layer), their curve and final values;
6. the benchmark tables of ``jebm.bench.results`` (machine, prior chain, training iteration,
   targets, plot) from a JSON of the pytest-benchmark suite in ``benchmarks/`` or of ``jebm bench``
   (the same layout), given as ``benchmarks=`` (``--benchmarks``) or else the newest readable
   ``.benchmarks/*.json`` in the current folder or the repository jebm is installed from;
7. whether TensorBoard events were written.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import re
import tempfile
from pathlib import Path

from ..atomic import atomic_write
from ..bench import results as br
from ..train.metrics_log import read_metrics
from .json_io import read_json as _read_json

__all__ = ["write_report", "find_outlier_json", "find_benchmark_json", "STEP_SIZE_PREFIX"]

STEP_SIZE_PREFIX = "step_size_post_l"
_OUTLIER_NAMES = {"ebm": "joint EBM prior", "gauss": "Gaussian prior (baseline)", "lebm": "LEBM (baseline)"}
REPORT_NAME = "report.html"
# Keys of metrics.jsonl that are bookkeeping, not curves.
_NOT_CURVES = ("iter", "philox_offset")
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:24px auto;
padding:0 16px;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{margin-bottom:.3em} table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top} th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums} .missing{background:#fff4e5;border-left:4px solid #f0a020;
padding:6px 10px} .note{color:#555;font-size:.9em} figure{display:inline-block;margin:6px 14px 12px 0;
vertical-align:top} figcaption{font-size:.85em;color:#444} img{max-width:100%;image-rendering:pixelated;
border:1px solid #eee} code{background:#f4f4f4;padding:0 3px} nav a{margin-right:10px}
"""


# ---- small helpers --------------------------------------------------------------------------------

def _e(x) -> str:
    return html.escape(str(x))


def _missing(text: str) -> str:
    return f'<p class="missing">{text}</p>'


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(path: Path, caption: str, width: int | None = None) -> str:
    style = f' style="width:{width}px"' if width else ""
    return (f'<figure><img src="{_png_uri(Path(path).read_bytes())}" alt="{_e(caption)}"{style}>'
            f"<figcaption>{caption}</figcaption></figure>")


def _fmt(v) -> str:
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return _e(v)


def _read_metrics(path: Path) -> list[dict]:
    """The metrics.jsonl lines that are objects with an int ``iter`` (what the sections plot)."""
    if not path.is_file():
        return []
    return [l for l in read_metrics(path) if isinstance(l, dict) and isinstance(l.get("iter"), int)]


def _plot_png(series: dict[str, list[tuple[float, float]]], *, cols: int = 4, title: str | None = None,
              one_axis: bool = False) -> bytes:
    """PNG bytes: one small panel per series (or all on one axis), against the iteration."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(series)
    if one_axis:
        fig, ax = plt.subplots(figsize=(6.4, 3.2))
        for k in names:
            ax.plot([p[0] for p in series[k]], [p[1] for p in series[k]], lw=1.2, label=k)
        ax.set_xlabel("iteration", fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    else:
        cols = min(cols, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.4 * rows), squeeze=False)
        for ax in axes.flat[len(names):]:
            ax.axis("off")
        for ax, k in zip(axes.flat, names):
            ax.plot([p[0] for p in series[k]], [p[1] for p in series[k]], lw=0.8)
            ax.set_title(k, fontsize=9)
            ax.set_xlabel("iteration", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _numeric_series(lines: list[dict], keys) -> dict[str, list[tuple[float, float]]]:
    out = {}
    for k in keys:
        pts = [(l["iter"], float(l[k])) for l in lines
               if isinstance(l.get(k), (int, float)) and not isinstance(l.get(k), bool) and math.isfinite(l[k])]
        if pts:
            out[k] = pts
    return out


def _table(head: list[str] | None, rows: list[list[str]], num_cols=()) -> str:
    h = "<tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in num_cols else ""}>{c}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{h}{body}</table>"


# ---- sections -------------------------------------------------------------------------------------

def _section_run(run_dir: Path, cfg: dict | None, lines: list[dict]) -> str:
    out = ["<h2 id=run>Run</h2>"]
    if cfg is None:
        out.append(_missing(f"No readable <code>config.json</code> in {_e(run_dir)}: this does not look like a folder "
                            "written by <code>jebm train</code>."))
        return "".join(out)
    last = lines[-1] if lines else {}
    iters = last.get("iter")
    secs = [l["sec_per_iter"] for l in lines if isinstance(l.get("sec_per_iter"), (int, float))]
    facts = [("data set", cfg.get("dataset")), ("scheme", cfg.get("scheme")), ("preset", cfg.get("preset")),
             ("iterations logged", f"{iters} of {cfg.get('iters')}" if iters is not None else "none"),
             ("latent dims", cfg.get("dims")), ("EBM prior", cfg.get("ebm")),
             ("held-out class", cfg.get("exclude_class")), ("Langevin space", cfg.get("space")),
             ("prior chain", f"{cfg.get('prior_steps')} steps of s = {cfg.get('prior_step_size')}"),
             ("posterior chain", f"{cfg.get('post_steps')} steps of s = {cfg.get('post_step_size')}"),
             ("backend / device", f"{cfg.get('backend')} / {cfg.get('device')}"),
             ("precision", _precision_fact(cfg, lines)), ("seed", cfg.get("seed"))]
    if secs:
        facts.append(("training time (sum of logged s/iter x interval)",
                      f"{_training_seconds(lines):.1f} s; last {secs[-1]:.3g} s/iter"))
    out.append(_table(None, [[_e(k), _e(v)] for k, v in facts]))
    rows = [[_e(k), _e(json.dumps(v))] for k, v in sorted(cfg.items())]
    out.append("<details><summary>full config.json</summary>" + _table(["key", "value"], rows) + "</details>")
    return "".join(out)


def _precision_fact(cfg: dict, lines: list[dict]) -> str:
    """The run's precision (a run from before the key trained in fp32), the precisions its logged
    iterations ran in when a resume changed it, and the chains' notes (a chain that ran otherwise)."""
    logged = list(dict.fromkeys(l["precision"] for l in lines if isinstance(l.get("precision"), str)))
    text = cfg.get("precision", "fp32")
    if len(logged) > 1:
        text += f" (logged iterations: {' then '.join(logged)})"
    notes = list(dict.fromkeys(l["precision_note"] for l in lines if isinstance(l.get("precision_note"), str)))
    return text + "".join(f"; {n}" for n in notes)


def _training_seconds(lines: list[dict]) -> float:
    total, prev = 0.0, 0
    for l in lines:
        if isinstance(l.get("sec_per_iter"), (int, float)):
            total += l["sec_per_iter"] * (l["iter"] - prev)
        prev = l["iter"]
    return total


def _section_curves(run_dir: Path, lines: list[dict]) -> str:
    out = ["<h2 id=curves>Training curves</h2>"]
    if not lines:
        out.append(_missing(f"No <code>metrics.jsonl</code> lines in {_e(run_dir)}: train first "
                            "(<code>jebm train --out RUN_DIR</code>)."))
        return "".join(out)
    keys = []
    for l in lines:
        for k in l:
            if k not in keys and k not in _NOT_CURVES and not k.startswith(STEP_SIZE_PREFIX):
                keys.append(k)
    series = _numeric_series(lines, keys)
    if not series:
        out.append(_missing("metrics.jsonl holds no numeric metrics to plot."))
        return "".join(out)
    out.append(f'<img src="{_png_uri(_plot_png(series))}" alt="training curves">')
    out.append(f'<p class=note>{len(lines)} logged iterations from <code>metrics.jsonl</code>; each panel is one key '
               "against the iteration (losses and energies as the trainers define them; sec_per_iter is wall "
               "time).</p>")
    events = [l for l in lines if "diverged" in l or "rollback" in l]
    if events:
        out.append("<p class=note>Events: " + "; ".join(_e(json.dumps(l)) for l in events[:10]) + "</p>")
    return "".join(out)


def _section_images(run_dir: Path, ev: dict | None) -> str:
    out = ["<h2 id=images>Samples, reconstructions, hierarchical sampling</h2>"]
    train_pngs = [("samples.png", "samples at the end of training (prior Langevin, then g(z<sub>1</sub>))"),
                  ("reconstructions.png", "reconstructions at the end of training: data (top row), "
                                          "g(z<sub>1</sub>) at a posterior sample (bottom row)")]
    have = [(f, c) for f, c in train_pngs if (run_dir / f).is_file()]
    out.append("<h3>From training</h3>")
    out += [_figure(run_dir / f, c) for f, c in have]
    for f, _ in train_pngs:
        if not (run_dir / f).is_file():
            out.append(_missing(f"No <code>{f}</code>: training writes it at the end of a run (a run whose samples "
                                "were not finite writes none)."))
    out.append("<h3>From evaluation</h3>")
    ev_pngs = [("eval_samples.png", "samples (eval seed)"),
               ("eval_reconstructions.png", "test images (top), reconstructions (bottom)"),
               ("hierarchical.png", "hierarchical sampling: one row per layer, top layer first; each row resamples "
                                    "that layer with the others fixed")]
    if ev is not None and ev.get("hierarchical_rows"):
        ev_pngs[2] = ("hierarchical.png", ev_pngs[2][1] + " (rows: " + ", ".join(ev["hierarchical_rows"]) + ")")
    for f, c in ev_pngs:
        if (run_dir / f).is_file():
            out.append(_figure(run_dir / f, c))
    lacking = [f for f, _ in ev_pngs if not (run_dir / f).is_file()]
    if lacking:
        out.append(_missing(f"No {', '.join(f'<code>{f}</code>' for f in lacking)}: run "
                            f"<code>jebm eval {_e(run_dir)}</code> to make them."))
    snaps = sorted(run_dir.glob("samples_[0-9]*.png"))
    if snaps:
        pick = snaps if len(snaps) <= 6 else [snaps[round(i * (len(snaps) - 1) / 5)] for i in range(6)]
        out.append("<details><summary>sample snapshots during training (" + str(len(snaps)) + " files, "
                   f"{len(pick)} shown; the same noise each time)</summary>")
        out += [_figure(p, f"iteration {int(p.stem.split('_')[-1])}", width=220) for p in pick]
        out.append("</details>")
    return "".join(out)


def _section_eval(run_dir: Path, ev: dict | None) -> str:
    out = ["<h2 id=eval>Evaluation metrics</h2>"]
    if ev is None:
        out.append(_missing(f"No readable <code>eval.json</code> in {_e(run_dir)}: run <code>jebm eval "
                            f"{_e(run_dir)}</code> (add <code>--classifier-fd</code> for the classifier Frechet "
                            "distance, <code>--fid-weights PATH</code> for FID)."))
        return "".join(out)
    rows = []
    rec = ev.get("reconstruction") or {}
    if rec:
        rows.append(["reconstruction MSE per pixel ([-1, 1] scale)", _fmt(rec.get("mse_per_pixel")),
                     f"{_e(ev.get('n_test'))} test images, posterior: {_e(ev.get('posterior'))}"])
        rows.append(["reconstruction energy ||x - g(z<sub>1</sub>)||<sup>2</sup>/(2 sigma<sub>x</sub><sup>2</sup>)",
                     _fmt(rec.get("recon_energy")), "per image, mean"])
    f = ev.get("fid")
    if f:
        rows.append(["FID", _fmt(f["fid"]), f"{_e(f['inception'])}; {f['n_samples']} samples vs {f['n_train']} "
                                            f"training images; weights {_e(Path(f['weights']).name)} "
                                            f"(sha256 {_e(f['weights_sha256'][:12])})"])
    c = ev.get("classifier_fd")
    if c:
        acc = c.get("classifier", {}).get("test_accuracy")
        rows.append(["classifier Frechet distance", _fmt(c["fd"]),
                     f"{c['n_samples']} samples vs {c['n_train']} training images in the {c['feature_dim']} features "
                     f"of the run's classifier (test accuracy {_fmt(acc) if acc is not None else 'n/a'})"])
        if c.get("test_split_fd") is not None:
            rows.append(["classifier Frechet distance of the test split", _fmt(c["test_split_fd"]),
                         f"the {c['n_test_split']} held-out test images against the same training statistics: what "
                         "the data itself scores (biased upwards by its smaller N)"])
    o = ev.get("outlier")
    if o:
        rows.append([f"outlier AUPRC, held-out class {_e(o['held_out_class'])}", _fmt(o["auprc"]),
                     f"chance = positive fraction {_fmt(o['positive_fraction'])}"])
    out.append(_table(["metric", "value", "how"], rows, num_cols=(1,)))
    notes = []
    if not f:
        notes.append("FID: not computed (<code>jebm eval RUN_DIR --fid-weights PATH</code> with a local Inception-v3 "
                     "weights file; nothing is downloaded).")
    if not c:
        notes.append("Classifier Frechet distance: not computed (<code>jebm eval RUN_DIR --classifier-fd</code>).")
    out += [_missing(n) for n in notes]
    out.append(f"<p class=note>From <code>{_e(run_dir / 'eval.json')}</code>: checkpoint of iteration "
               f"{_e(ev.get('iteration'))}, seed {_e(ev.get('seed'))}, backend {_e(ev.get('backend'))}.</p>")
    return "".join(out)


def find_outlier_json(run_dir: Path, outlier=None) -> tuple[Path | None, list[Path]]:
    """(the outlier.json used or None, the places looked at in order)."""
    places = [Path(outlier)] if outlier is not None else [run_dir / "outlier.json",
                                                          run_dir.parent / "outlier" / "outlier.json"]
    for p in places:
        if p.is_file():
            return p, places
    return None, places


def _section_outlier(run_dir: Path, outlier) -> str:
    out = ["<h2 id=outlier>Outlier detection (held-out class)</h2>"]
    path, places = find_outlier_json(run_dir, outlier)
    summary = _read_json(path) if path is not None else None
    if summary is None or not isinstance(summary, dict) or "per_class" not in summary:
        where = ", ".join(f"<code>{_e(p)}</code>" for p in places)
        why = "not readable as the outlier.json of <code>jebm eval --outlier</code>" if path else "not found"
        out.append(_missing(f"Outlier table {why} (looked at {where}). Make it with <code>jebm eval --outlier --out "
                            f"{_e(run_dir.parent / 'outlier')}</code> (or pass <code>--outlier PATH</code>)."))
        return "".join(out)

    def ms(d):
        if not isinstance(d, dict) or d.get("mean") is None:
            return "diverged" if isinstance(d, dict) else "&ndash;"
        return f"{d['mean']:.3f} &plusmn; {d['std']:.3f}"
    models = [k for k in summary.get("models", ["ebm", "gauss"]) if k in _OUTLIER_NAMES]
    rows = []
    for c, v in summary["per_class"].items():
        means = {k: v[k].get("mean") for k in models}
        best = max((m for m in means.values() if m is not None), default=None)
        cells = []
        for k in models:
            txt = ms(v[k]) + (f" ({v[k]['diverged']} diverged)" if v[k].get("diverged") else "")
            cells.append(f"<b>{txt}</b>" if best is not None and means[k] == best else txt)
        frac = v.get("positive_fraction")
        rows.append([f"held-out {_e(c)}", *cells, "" if frac is None else f"{frac:.3f}",
                     str(max(v[k].get("n", 0) for k in models))])
    cm = summary.get("mean_of_class_means") or {}
    if cm:
        rows.append(["<b>mean over classes</b>", *[("&ndash;" if cm[k].get("mean") is None else f"{cm[k]['mean']:.3f}")
                                                    for k in models], "", ""])
    out.append(_table(["class", *[f"AUPRC, {_OUTLIER_NAMES[k]}" for k in models], "chance (positive fraction)",
                       "runs"], rows, num_cols=tuple(range(1, len(models) + 3))))
    extra = []
    for c, v in summary["per_class"].items():
        row = [f"held-out {_e(c)}"] + [ms(v[k].get("auroc")) if "auroc" in v[k] else "&ndash;" for k in models]
        row += [ms(v[k].get("negF_auprc")) if "negF_auprc" in v[k] else "&ndash;" for k in models if k != "gauss"]
        extra.append(row)
    if any("auroc" in v[k] for v in summary["per_class"].values() for k in models):
        out.append(_table(["class", *[f"AUROC, {_OUTLIER_NAMES[k]}" for k in models],
                           *[f"AUPRC of -F alone, {_OUTLIER_NAMES[k]}" for k in models if k != "gauss"]],
                          extra, num_cols=tuple(range(1, 2 * len(models)))))
    score = summary.get("score")
    part_keys = [("score", ""), ("exact -log p(x, z)", "joint_"), ("||x - g(z_1)||^2 alone", "recon_"),
                 ("U(z) alone", "U_"), ("-F(z) alone", "negF_")]
    if any("joint_auprc" in v[k] for v in summary["per_class"].values() for k in models):
        def pair(d, p):
            a, r = (d if not p else d.get(p + "auprc")), d.get(p + "auroc")
            if not isinstance(a, dict) or a.get("mean") is None:
                return "&ndash;"
            return f"{a['mean']:.3f} / {r['mean']:.3f}" if isinstance(r, dict) and r.get("mean") is not None \
                else f"{a['mean']:.3f}"
        prow = [[f"held-out {_e(c)}", _e(_OUTLIER_NAMES[k]), *[pair(v[k], p) for _, p in part_keys]]
                for c, v in summary["per_class"].items() for k in models]
        out.append(_table(["class", "model", *[f"AUPRC / AUROC, {_e(n)}" for n, _ in part_keys]], prow,
                          num_cols=tuple(range(2, 2 + len(part_keys)))))
    if isinstance(score, dict):
        out.append(f"<p class=note>Score: {_e(score.get('formula'))}; {_e(score.get('note', ''))}. The parts table "
                   "shows which term carries the result: the same chains, each term ranked alone.</p>")
    ck_models = [k for k in models if any("ckpt_auprc" in v[k] for v in summary["per_class"].values())]
    if ck_models:
        crow = [[f"held-out {_e(c)}", *[(f"{v[k]['ckpt_auprc']['mean']:.3f} &plusmn; {v[k]['ckpt_within_std']:.3f}"
                                         if v[k].get("ckpt_auprc", {}).get("mean") is not None else "&ndash;")
                                        for k in ck_models]] for c, v in summary["per_class"].items()]
        out.append(_table(["class", *[f"AUPRC over the last {_e(summary.get('checkpoint_average'))} checkpoints, "
                                      f"{_OUTLIER_NAMES[k]}" for k in ck_models]], crow,
                          num_cols=tuple(range(1, 1 + len(ck_models)))))
        out.append("<p class=note>Each run scored at its last checkpoints: mean over seeds of the per-run means "
                   "&plusmn; the mean over runs of the spread over checkpoints (the papers' &plusmn;).</p>")
    paper = summary.get("paper_auprc")
    if paper and summary.get("dataset") in ("mnist", "mnist5k"):
        cls = list(summary["per_class"])
        out.append(_table(["the papers (full MNIST, 60,000 images)", *[f"held-out {_e(c)}" for c in cls]],
                          [[_e(name), *[f"{vals[c]:.3f}" if c in vals else "&ndash;" for c in cls]]
                           for name, vals in paper.items()], num_cols=tuple(range(1, len(cls) + 1))))
    what = "validation protocol (inside the train split)" if summary.get("validation") else "test split"
    out.append(f"<p class=note>From <code>{_e(path)}</code>: {_e(summary.get('dataset'))} ({what}), scheme "
               f"{_e(summary.get('scheme'))}, preset {_e(summary.get('preset'))}, {_e(summary.get('iters'))} "
               f"iterations per run, seeds {_e(summary.get('seeds'))}, {_e(summary.get('n_chains', 1))} posterior "
               f"chains per test image, wall time {_e(round(summary.get('seconds', 0)))} s; mean &plusmn; sample std "
               f"over seeds; the best model of each row in bold. Protocol: {_e(summary.get('protocol', ''))}.</p>")
    png = path.parent / "outlier.png"
    if png.is_file():
        out.append(_figure(png, "AUPRC per held-out class (outlier.png)"))
    return "".join(out)


def _section_step_sizes(lines: list[dict], cfg: dict | None) -> str:
    out = ["<h2 id=steps>Learned posterior step sizes</h2>"]
    keys = sorted({k for l in lines for k in l if k.startswith(STEP_SIZE_PREFIX)},
                  key=lambda k: int(k[len(STEP_SIZE_PREFIX):]) if k[len(STEP_SIZE_PREFIX):].isdigit() else 1 << 30)
    series = _numeric_series(lines, keys)
    if not series:
        fixed = cfg.get("post_step_size") if cfg else None
        out.append(_missing("This run did not learn its posterior step sizes: <code>metrics.jsonl</code> has no "
                            f"<code>{STEP_SIZE_PREFIX}1</code>, <code>{STEP_SIZE_PREFIX}2</code>, ... keys (they are "
                            "logged by runs that learn one step size per layer by short-run inference, Nijkamp et al. "
                            "2020)." + (f" Its fixed posterior step size: <code>{_e(fixed)}</code>." if cfg else "")))
        return "".join(out)
    out.append(f'<img src="{_png_uri(_plot_png(series, one_axis=True))}" alt="learned step sizes">')
    rows = []
    for k in series:
        pts = series[k]
        rows.append([f"z<sub>{_e(k[len(STEP_SIZE_PREFIX):])}</sub>", _fmt(pts[0][1]), _fmt(pts[-1][1]),
                     str(pts[-1][0])])
    out.append(_table(["layer", "first logged", "final", "at iteration"], rows, num_cols=(1, 2, 3)))
    return "".join(out)


def find_benchmark_json(benchmarks=None) -> tuple[Path | None, list[str]]:
    """(the benchmark JSON to use or None, notes on what was looked at): the pytest-benchmark
    JSON of ``benchmarks/`` or the output of ``jebm bench`` (both have a ``benchmarks`` list)."""
    if benchmarks is not None:
        p = Path(benchmarks)
        data = _read_json(p) if p.is_file() else None
        if not isinstance(data, dict) or "benchmarks" not in data:
            return None, [f"{p}: " + ("no such file" if not p.is_file() else "not a pytest-benchmark JSON file")]
        return p, []
    notes, found = [], []
    for folder in dict.fromkeys([Path.cwd() / ".benchmarks", _repo_root() / ".benchmarks"]):
        for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            data = _read_json(p)
            if isinstance(data, dict) and "benchmarks" in data:
                found.append(p)
            else:
                notes.append(f"{p}: empty or not a pytest-benchmark JSON file, skipped")
        if not folder.is_dir():
            notes.append(f"{folder}: no such folder")
    if not found:
        return None, notes
    return max(found, key=lambda p: p.stat().st_mtime), notes


def _repo_root() -> Path:
    """The folder holding the jebm package (a clone's root, or site-packages when installed)."""
    return Path(__file__).resolve().parents[2]


_MD_TABLE_SEP = re.compile(r"^\|[\s|:-]+\|$")


def _md_inline(text: str) -> str:
    t = _e(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _md_table(lines: list[str]) -> str:
    """A markdown table (header, separator, rows) as HTML."""
    cells = [[c.strip() for c in l.strip().strip("|").split("|")] for l in lines if not _MD_TABLE_SEP.match(l.strip())]
    if not cells:
        return ""
    head, rows = cells[0], cells[1:]
    return _table([_md_inline(c) for c in head], [[_md_inline(c) for c in r] for r in rows],
                  num_cols=tuple(range(1, len(head))))


def _section_benchmarks(benchmarks) -> str:
    out = ["<h2 id=bench>Benchmarks</h2>"]
    path, notes = find_benchmark_json(benchmarks)
    if path is None:
        out.append(_missing("No benchmark data: " + "; ".join(_e(n) for n in notes) + ". Run <code>jebm bench"
                            "</code> (a short benchmark from the installed package; it writes "
                            "<code>.benchmarks/jebm-bench.json</code>) or the full suite "
                            "(<code>python -m pytest benchmarks --benchmark-json=.benchmarks/latest.json</code>, see "
                            "BENCHMARKS.md), then pass <code>--benchmarks PATH</code> or run <code>jebm report</code> "
                            "from the folder holding <code>.benchmarks/</code>."))
        return "".join(out)
    data = _read_json(path)
    stat = "min"
    prows, trows = br.prior_rows(data, stat), br.train_rows(data, stat)
    orows = br.chain_rows(data, stat, "posterior_chain")
    info = data.get("jebm", {})
    when = str(data.get("datetime", ""))[:19].replace("T", " ")
    source = "<code>jebm bench</code>" if info.get("source") == "jebm bench" else "the benchmarks/ suite"
    out.append(f"<p class=note>From <code>{_e(path)}</code> ({source}, run of {_e(when)} UTC), tables by "
               f"<code>jebm.bench.results</code>; times are the <code>{stat}</code> over each benchmark's rounds, "
               f"K = {_e(info.get('n_steps', '?'))} Langevin steps per chain.</p>")
    if info.get("quick"):
        out.append(_missing("QUICK RUN (JEBM_BENCH_QUICK=1): batch 8 and K = 5 only; not the benchmark figures."))
    if info.get("source") == "jebm bench":
        out.append(_missing(f"A short <code>jebm bench</code> run (batches {_e(info.get('batches'))}, about "
                            f"{_e(info.get('budget_s'))} s of timed calls per case, no FMA-peak measurement): a quick "
                            "look at this machine, not the figures of BENCHMARKS.md."))
    out.append("<h3>Machine</h3><ul>" + "".join(f"<li>{_md_inline(l[2:])}</li>" for l in br.machine_lines(data))
               + "</ul>")
    out.append("<h3>Prior chain</h3>")
    out.append(_md_table(br.prior_table(prows, stat)) if prows else _missing("no prior-chain measurements"))
    if prows:
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "prior_chain.png"
            br.plot(prows, png, data, stat)
            if png.is_file():
                out.append(_figure(png, "time per chain against batch size"))
    if orows:
        out.append("<h3>Posterior chain</h3>")
        out.append(_md_table(br.prior_table(orows, stat)))
    out.append("<h3>Training iteration</h3>")
    out.append(_md_table(br.train_table(trows, stat)) if trows else _missing("no training-iteration measurements"))
    targets = br.check_targets(data, prows, trows, orows)
    out.append("<h3>Targets</h3>")
    out.append(_table(["target", "measured", "status", "detail"],
                      [[_e(t["name"]), _e(t["shown"]), f"<b>{_e(t['status'])}</b>", _e(t["note"])] for t in targets]))
    skipped = br.skipped_lines(info)
    if skipped:
        out.append("<h3>Not measured</h3><ul>" + "".join(f"<li>{_md_inline(l[2:])}</li>" for l in skipped) + "</ul>")
    if notes:
        out.append("<p class=note>" + "; ".join(_e(n) for n in notes) + "</p>")
    return "".join(out)


def _section_tensorboard(run_dir: Path) -> str:
    out = ["<h2 id=tb>TensorBoard</h2>"]
    events = sorted(run_dir.glob("events.out.tfevents.*"))
    if events:
        out.append(f"<p>{len(events)} event file(s) in the run folder: <code>tensorboard --logdir "
                   f"{_e(run_dir)}</code>.</p>")
    else:
        out.append(_missing("No TensorBoard events in the run folder: training writes them when the "
                            "<code>tensorboard</code> package is installed (<code>pip install -e "
                            "\".[tensorboard]\"</code>)."))
    return "".join(out)


# ---- the page -------------------------------------------------------------------------------------

def write_report(run_dir, out=None, *, outlier=None, benchmarks=None) -> Path:
    """Write the HTML report of the run in ``run_dir`` (default ``RUN_DIR/report.html``); returns its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: no such run folder (expected a folder written by `jebm train`)")
    cfg = _read_json(run_dir / "config.json")
    cfg = cfg if isinstance(cfg, dict) else None
    lines = _read_metrics(run_dir / "metrics.jsonl")
    if cfg is None and not lines:
        raise ValueError(f"{run_dir}: neither config.json nor metrics.jsonl; not a run folder written by `jebm train`")
    if outlier is not None:
        summary = _read_json(outlier) if Path(outlier).is_file() else None
        if not isinstance(summary, dict) or "per_class" not in summary:
            raise ValueError(f"--outlier {outlier}: " + ("no such file" if not Path(outlier).is_file() else
                             "not the outlier.json written by `jebm eval --outlier`"))
    if benchmarks is not None and find_benchmark_json(benchmarks)[0] is None:
        raise ValueError(f"--benchmarks {benchmarks}: " + find_benchmark_json(benchmarks)[1][0].split(": ", 1)[1]
                         + " (expected the --benchmark-json output of the benchmarks/ suite)")
    ev = _read_json(run_dir / "eval.json")
    ev = ev if isinstance(ev, dict) else None
    title = f"jebm report: {run_dir.resolve().name}"
    sections = [
        _section_run(run_dir, cfg, lines),
        _section_curves(run_dir, lines),
        _section_images(run_dir, ev),
        _section_eval(run_dir, ev),
        _section_outlier(run_dir, outlier),
        _section_step_sizes(lines, cfg),
        _section_benchmarks(benchmarks),
        _section_tensorboard(run_dir),
    ]
    nav = ("<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("run", "run"), ("curves", "curves"), ("images", "images"), ("eval", "metrics"), ("outlier", "outliers"),
        ("steps", "step sizes"), ("bench", "benchmarks"), ("tb", "TensorBoard"))) + "</nav>")
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>"
            f"<p class=note>{_e(run_dir.resolve())} &middot; written by <code>jebm report</code> at {now}; "
            "self-contained (images embedded).</p>" + nav + "".join(sections) + "</body></html>\n")
    return atomic_write(Path(out) if out is not None else run_dir / REPORT_NAME, page)
