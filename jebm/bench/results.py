"""Turn a benchmark JSON into BENCHMARKS.md's results section, the plot, and the targets.

    python -m benchmarks.report .benchmarks/latest.json [--stat min|median] [--no-check]
        [--markdown BENCHMARKS.md] [--plot benchmarks/prior_chain.png] [--no-write]

(``main`` here; ``benchmarks/report.py`` in the repository is its entry point, with the repository's
BENCHMARKS.md and plot as the defaults.) ``jebm report`` uses the row, table and target functions
for its benchmark section.

Reads pytest-benchmark's ``--benchmark-json`` output (plus the ``"jebm"`` key that
``benchmarks/conftest.py`` adds: FMA peak, matmul rate, machine, skips), or the JSON of ``jebm
bench`` (``jebm.bench.quick``, the same layout), then
- prints and writes the results (machine, command, prior-chain table, training-iteration table,
  targets, what was not measured) between the ``<!-- results:start -->`` and
  ``<!-- results:end -->`` markers of BENCHMARKS.md (appended if the markers are missing);
- draws time per chain against batch size, one line per provider, one log-log panel per
  configuration, into benchmarks/prior_chain.png;
- checks the targets (against the compiled step and the FMA peak; energies no kernel fuses
  against the plain loop; against the reference) and prints PASS/FAIL for each; exits 1 if any
  fails or could not be measured, unless ``--no-check``.

Every derived number is recomputed here from the JSON's timing statistics (``--stat``, default
``min``: the best round, the most reproducible figure on a machine that other work disturbs), so
the report does not depend on what the benchmarks wrote into ``extra_info``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..atomic import atomic_write

START, END = "<!-- results:start -->", "<!-- results:end -->"

COMMAND = ('pip install -e ".[test,bench]" && python -m pytest benchmarks '
           '--benchmark-json=.benchmarks/latest.json && python -m benchmarks.report .benchmarks/latest.json')

CONFIG_ORDER = ("lebm", "cvpr", "iccv", "posterior", "closure-mlp", "closure-conv", "svhn-conv")
CONFIG_TITLES = {
    "lebm": "LEBM (d=100, MLP 100-200-200-1, GELU)",
    "cvpr": "CVPR 2023 CIFAR-10 prior (L=2, d=(128,100))",
    "iccv": "ICCV 2023 five-layer prior (d=(64,32,16,8,4), eps)",
    "posterior": "jebm default posterior, MLP decoder (eps)",
    "closure-mlp": "closure posterior, MLP decoder",
    "closure-conv": "closure posterior, conv decoder",
    "svhn-conv": "closure posterior, LEBM SVHN generator",
}
PROVIDER_ORDER = ("reference", "plain", "compiled", "torchebm", "cpu", "triton", "cuda", "plain-bf16", "compiled-bf16",
                  "cpu-bf16")
PROVIDER_STYLE = {
    "reference": ("tab:gray", "o"), "plain": ("tab:orange", "x"), "compiled": ("tab:purple", "s"),
    "torchebm": ("tab:brown", "^"), "cpu": ("tab:red", "D"), "triton": ("tab:blue", "v"), "cuda": ("tab:green", "P"),
    "plain-bf16": ("tab:olive", "x"), "compiled-bf16": ("tab:pink", "s"), "cpu-bf16": ("tab:cyan", "D"),
}
# what users would otherwise run, in both precisions: the speed-ups jebm is judged by
PEERS = ("plain", "compiled", "plain-bf16", "compiled-bf16")
FUSED = "cpu"  # the fused kernel the CPU targets are about
GPU_PROVIDERS = ("triton", "cuda")
TARGET_CONFIGS = ("lebm", "cvpr")


# ---- reading -------------------------------------------------------------------------------------

def load(path) -> dict:
    with open(path) as fh:
        data = json.load(fh)
    if "benchmarks" not in data:
        raise SystemExit(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' key)")
    return data


def fma_peak(info: dict) -> float | None:
    """The run's FMA peak: its best measurement (full ones and the per-benchmark samples)."""
    rates = [e["gflops"] for e in info.get("fma_peak", []) if e.get("gflops")] + list(info.get("fma_samples", []))
    return max(rates) if rates else None


def chain_rows(data: dict, stat: str, kind: str = "prior_chain") -> list[dict]:
    """One row per (configuration, batch, provider) of ``kind`` ("prior_chain" or "posterior_chain")
    with the time, rates and speed-ups against the reference and the peers (plain, compiled)."""
    peak = fma_peak(data.get("jebm", {}))
    rows = []
    for b in data["benchmarks"]:
        x = b.get("extra_info", {})
        if x.get("kind") != kind:
            continue
        t = float(b["stats"][stat])
        gflops = x["flops_per_call"] / t / 1e9 if x.get("flops_per_call") else None
        rows.append(dict(config=x["config"], batch=int(x["batch"]), provider=x["provider"], n_steps=x["n_steps"],
                         seconds=t, ms=t * 1e3, steps_per_s=x["chain_steps_per_call"] / t, gflops=gflops,
                         # the FMA peak is the CPU's: no fraction for GPU providers
                         frac_peak=(gflops / peak) if peak and gflops and x["provider"] not in GPU_PROVIDERS else None,
                         rounds=b["stats"].get("rounds"), compiled_mode=x.get("compiled_mode"),
                         precision=x.get("precision", "bf16" if x["provider"].endswith("-bf16") else "fp32"),
                         precision_note=x.get("precision_note"),
                         diff=x.get("max_abs_diff_vs_reference"), rel_diff=x.get("rel_diff_vs_reference")))
    for base in ("reference",) + PEERS:
        times = {(r["config"], r["batch"]): r["seconds"] for r in rows if r["provider"] == base}
        for r in rows:
            t0 = times.get((r["config"], r["batch"]))
            r["speedup" if base == "reference" else f"vs_{base}"] = t0 / r["seconds"] if t0 else None
    key = lambda r: (_index(CONFIG_ORDER, r["config"]), r["batch"], _index(PROVIDER_ORDER, r["provider"]))
    return sorted(rows, key=key)


def prior_rows(data: dict, stat: str) -> list[dict]:
    return chain_rows(data, stat, "prior_chain")


TRAIN_CASE_ORDER = ("default", "conv-mnist5k", "cvpr-cifar10")


def train_rows(data: dict, stat: str) -> list[dict]:
    """One row per training-iteration benchmark: its case ("default": the default preset on the
    digits, per backend and peer; "conv-mnist5k", "cvpr-cifar10": conv decoders per precision),
    scheme, precision, decoder layout ("trainer": the trainer's choice; "contiguous": the conv
    decoder in the default layout, the fp32 iteration as jebm ran it before it chose one) and
    backend, with the speed-ups against the reference and the peers in the same case and precision
    (``vs_<peer>``), against the same iteration in fp32 (``vs_fp32``) and against the fp32 iteration
    in the contiguous layout (``vs_fp32_contiguous``)."""
    rows = []
    for b in data["benchmarks"]:
        x = b.get("extra_info", {})
        if x.get("kind") != "train_iteration":
            continue
        t = float(b["stats"][stat])
        rows.append(dict(case=x.get("case", "default"), precision=x.get("precision", "fp32"), scheme=x["scheme"],
                         backend=x["backend"], seconds=t, ms=t * 1e3, preset=x.get("preset"), dataset=x.get("dataset"),
                         dims=x.get("dims"), batch=x.get("batch"), prior_steps=x.get("prior_steps"),
                         post_steps=x.get("post_steps"), space=x.get("space"), decoder=x.get("decoder"),
                         ngf=x.get("ngf"), image_shape=x.get("image_shape"), rounds=b["stats"].get("rounds"),
                         layout=x.get("layout", "trainer")))
    own = [r for r in rows if r["layout"] == "trainer"]
    for base in ("reference",) + PEERS:
        times = {(r["case"], r["scheme"], r["precision"]): r["seconds"] for r in own if r["backend"] == base}
        for r in rows:
            t0 = times.get((r["case"], r["scheme"], r["precision"]))
            r["speedup" if base == "reference" else f"vs_{base}"] = t0 / r["seconds"] if t0 else None
    for name, layout in (("vs_fp32", "trainer"), ("vs_fp32_contiguous", "contiguous")):
        fp32 = {(r["case"], r["scheme"], r["backend"]): r["seconds"] for r in rows
                if r["precision"] == "fp32" and r["layout"] == layout}
        for r in rows:
            t0 = fp32.get((r["case"], r["scheme"], r["backend"]))
            r[name] = t0 / r["seconds"] if t0 else None
    return sorted(rows, key=lambda r: (_index(TRAIN_CASE_ORDER, r["case"]), r["scheme"], r["precision"] != "fp32",
                                       r["layout"] != "contiguous", _index(PROVIDER_ORDER, r["backend"])))


def _index(order, value) -> int:
    return order.index(value) if value in order else len(order)


# ---- targets -------------------------------------------------------------------------------------

def _find(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def _skip_reason(info: dict, **kw) -> str | None:
    for s in info.get("skipped", []):
        if all(s.get(k) == v for k, v in kw.items()):
            return s["reason"]
    return None


def _ratio_target(info, rows, name, need, where: dict, base: str, kind: str):
    """fused (or jebm's provider) time vs ``base``'s at ``where``: PASS when base / fused >= need. A
    bf16 provider that ran in another precision (a fused kernel without a bf16 build) measured no
    bf16: NOT MEASURED, with its note."""
    who = where.get("provider", FUSED)
    sel = {k: v for k, v in where.items() if k != "provider"}
    fused = _find(rows, provider=who, **sel)
    other = _find(rows, provider=base, **sel)
    if fused is None or other is None:
        missing = who if fused is None else base
        why = _skip_reason(info, kind=kind, provider=missing, **{k: v for k, v in sel.items() if k != "scheme"})
        return dict(name=name, value=None, shown="-", status="NOT MEASURED",
                    note=f"no {missing} measurement" + (f": {why}" if why else " in this run"))
    for r in (fused, other):
        if r["provider"].endswith("-bf16") and r.get("precision") != "bf16":
            return dict(name=name, value=None, shown="-", status="NOT MEASURED",
                        note=f"{r['provider']} ran {r.get('precision')}: {r.get('precision_note') or 'no bf16'}")
    v = other["seconds"] / fused["seconds"]
    return dict(name=name, value=v, shown=f"{v:.1f}x", status="PASS" if v >= need else "FAIL",
                note=f"{base} {other['ms']:.2f} ms, {who} {fused['ms']:.2f} ms")


def _peak_target(info, rows, peak, config, batch, need):
    name = (f"fused prior chain >= {need:.0%} of the same-run FMA peak in executed FLOPs, {config.upper()}, "
            f"batch {batch}")
    fused = _find(rows, config=config, batch=batch, provider=FUSED)
    if fused is None or peak is None or fused.get("gflops") is None:
        why = ("the FMA peak was not measured" if peak is None else
               _skip_reason(info, kind="prior_chain", config=config, batch=batch, provider=FUSED) or
               f"no fused measurement at batch {batch} in this run")
        return dict(name=name, value=None, shown="-", status="NOT MEASURED", note=why)
    v = fused["gflops"] * EXECUTED / peak
    mm = info.get("matmul") or {}
    ctx = f"; torch's {mm['n']}^2 matmul: {mm['gflops'] / peak:.0%}" if mm.get("gflops") else ""
    return dict(name=name, value=v, shown=f"{v:.0%}", status="PASS" if v >= need else "FAIL",
                note=f"{fused['gflops'] * EXECUTED:.1f} executed of {peak:.1f} GFLOP/s{ctx}")


def check_targets(data: dict, prows: list[dict], trows: list[dict], orows: list[dict] | None = None) -> list[dict]:
    """Each target: name, threshold, measured value (or None), status PASS / FAIL / NOT MEASURED.
    ``orows``: posterior-chain rows (``chain_rows(..., "posterior_chain")``)."""
    info = data.get("jebm", {})
    peak = fma_peak(info)
    orows = orows or []
    out = []
    # against the best compiled torch of the same step, and the machine's peak
    for batch, need in ((8, 8.0), (100, 4.0)):
        for config in TARGET_CONFIGS:
            out.append(_ratio_target(info, prows, f"fused prior chain >= {need:g}x compiled, {config.upper()}, "
                                     f"batch {batch}", need, dict(config=config, batch=batch), "compiled",
                                     "prior_chain"))
    for batch, need in ((1000, 0.8), (100, 0.6)):
        for config in TARGET_CONFIGS:
            out.append(_peak_target(info, prows, peak, config, batch, need))
    out.append(_ratio_target(info, orows, "posterior chain through the MLP decoder >= 3x compiled, batch 100", 3.0,
                             dict(config="posterior", batch=100), "compiled", "posterior_chain"))
    out.append(_train_target(info, trows, "mle", "compiled", 3.0))
    # energies no kernel fuses, against the loop users write
    for config in ("closure-mlp", "closure-conv"):
        for batch in (8, 100, 1000):
            out.append(_ratio_target(info, orows, f"{config} closure with the cpu backend >= 1.2x the plain loop, "
                                     f"batch {batch}", 1.2, dict(config=config, batch=batch), "plain",
                                     "posterior_chain"))
    # bf16: the same energies with bf16 products, against the peers in both precisions and jebm's fp32
    bf16 = dict(provider="cpu-bf16")
    out.append(_ratio_target(info, orows, "svhn-conv posterior with cpu-bf16 >= 2x the plain fp32 loop, batch 100",
                             2.0, dict(config="svhn-conv", batch=100, **bf16), "plain", "posterior_chain"))
    out.append(_ratio_target(info, orows, "svhn-conv posterior with cpu-bf16 >= 1.1x the plain bf16 loop, batch 100",
                             1.1, dict(config="svhn-conv", batch=100, **bf16), "plain-bf16", "posterior_chain"))
    out.append(_ratio_target(info, orows, "svhn-conv posterior with cpu-bf16 >= 1.5x the plain fp32 loop, batch 16",
                             1.5, dict(config="svhn-conv", batch=16, **bf16), "plain", "posterior_chain"))
    out.append(_precision_train_target(info, trows, "conv-mnist5k", 2.5))
    for batch, need in ((1000, 1.5), (100, 1.3)):
        out.append(_ratio_target(info, prows, f"fused prior chain in bf16 >= {need:g}x in fp32, LEBM, batch {batch}",
                                 need, dict(config="lebm", batch=batch, **bf16), "cpu", "prior_chain"))
    for batch, need in ((100, 4.0), (1000, 2.0)):
        out.append(_ratio_target(info, prows, f"fused prior chain in bf16 >= {need:g}x compiled-bf16, LEBM, batch "
                                 f"{batch}", need, dict(config="lebm", batch=batch, **bf16), "compiled-bf16",
                                 "prior_chain"))
    # against the reference backend
    for batch, need in ((100, 3.0), (8, 10.0)):
        for config in TARGET_CONFIGS:
            out.append(_ratio_target(info, prows, f"fused prior chain >= {need:g}x reference, {config.upper()}, "
                                     f"batch {batch}", need, dict(config=config, batch=batch), "reference",
                                     "prior_chain"))
    out.append(_train_target(info, trows, "variational", "reference", 2.0))
    return out


def _precision_train_target(info, trows, case, need):
    """bf16 (the trainer's layout) against the fp32 iteration as jebm ran it before it chose a layout
    (contiguous); the note gives the ratio against today's fp32 (channels_last) too."""
    name = (f"{case} MLE training iteration in bf16 >= {need:g}x the fp32 iteration (contiguous layout, "
            "as before the trainer chose one)")
    low = _find(trows, case=case, scheme="mle", precision="bf16", layout="trainer")
    backend = low["backend"] if low else FUSED
    full = _find(trows, case=case, scheme="mle", precision="fp32", layout="contiguous", backend=backend)
    now = _find(trows, case=case, scheme="mle", precision="fp32", layout="trainer", backend=backend)
    if low is None or full is None:
        why = _skip_reason(info, kind="train_iteration", case=case, precision="bf16" if low is None else "fp32")
        return dict(name=name, value=None, shown="-", status="NOT MEASURED", note=why or "no measurement in this run")
    v = full["seconds"] / low["seconds"]
    also = f"; {now['seconds'] / low['seconds']:.2f}x the fp32 channels_last one ({now['ms']:.0f} ms)" if now else ""
    return dict(name=name, value=v, shown=f"{v:.1f}x", status="PASS" if v >= need else "FAIL",
                note=f"fp32 contiguous {full['ms']:.0f} ms, bf16 {low['ms']:.0f} ms per iteration ({backend}){also}")


def _train_target(info, trows, scheme, base, need):
    name = f"{scheme} training iteration >= {need:g}x faster than with {base}"
    fused = _find(trows, case="default", scheme=scheme, backend=FUSED)
    other = _find(trows, case="default", scheme=scheme, backend=base)
    if fused is None or other is None:
        why = _skip_reason(info, kind="train_iteration", scheme=scheme, backend=FUSED if fused is None else base)
        return dict(name=name, value=None, shown="-", status="NOT MEASURED", note=why or "no measurement in this run")
    v = other["seconds"] / fused["seconds"]
    return dict(name=name, value=v, shown=f"{v:.1f}x", status="PASS" if v >= need else "FAIL",
                note=f"{base} {other['ms']:.0f} ms, fused {fused['ms']:.0f} ms per iteration")


# ---- formatting ----------------------------------------------------------------------------------

def _f(v, fmt, none="-"):
    return none if v is None else format(v, fmt)


def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:,.0f}"


def machine_lines(data: dict) -> list[str]:
    info = data.get("jebm", {})
    m = info.get("machine", {})
    peak = fma_peak(info)
    lines = [
        f"- CPU: {m.get('cpu_model', 'unknown')}, {m.get('cpus', '?')} logical CPUs "
        f"({m.get('sockets', '?')} socket x {m.get('cores_per_socket', '?')} cores x "
        f"{m.get('threads_per_core', '?')} threads); SIMD flags: {', '.join(m.get('simd_flags', [])) or 'unknown'}",
        f"- torch {m.get('torch', '?')} ({m.get('torch_threads', '?')} intra-op threads), "
        f"Python {m.get('python', '?')}, "
        f"torchebm {m.get('torchebm') or 'not installed'}; jebm_kernels backends available: "
        f"{', '.join(m.get('jebm_kernels_backends', []))}; GPU: {m.get('cuda') or 'none'}",
    ]
    entries = [e for e in info.get("fma_peak", []) if e.get("gflops")]
    if entries:
        e0 = entries[0]
        each = ", ".join(f"{e['when']} {e['gflops']:.1f}" for e in entries)
        samples = info.get("fma_samples", [])
        if samples:
            each += (f", {len(samples)} short samples before the benchmarks: median "
                     f"{sorted(samples)[len(samples) // 2]:.1f}, best {max(samples):.1f}")
        one = max(e.get("gflops_one_thread") or 0 for e in entries)
        lines.append(f"- FMA peak (this run, `benchmarks/fma_peak.c`, {e0['isa']}, {e0['threads']} threads): "
                     f"**{peak:.1f} GFLOP/s**, the best of its measurements ({each}); one thread: {one:.1f}")
    else:
        reasons = "; ".join(e.get("reason", "") for e in info.get("fma_peak", [])) or "not measured"
        lines.append(f"- FMA peak: not measured ({reasons})")
    mm = info.get("matmul")
    if mm:
        frac = f", {mm['gflops'] / peak:.0%} of the FMA peak" if peak else ""
        lines.append(f"- torch fp32 matmul {mm['n']}x{mm['n']} ({mm.get('threads', '?')} threads): "
                     f"{mm['gflops']:.1f} GFLOP/s{frac} (best of the start and end measurements)")
    if info.get("suite_seconds"):
        lines.append(f"- the suite ran for {info['suite_seconds'] / 60:.1f} minutes")
    la = m.get("load_average_at_start")
    le = info.get("load_average_at_end")
    other = info.get("other_work_cores")
    if other is not None:
        # other processes' CPU time during the run (the load average counts the suite's own threads)
        busy = other > 0.1 * (m.get("cpus") or 1)
        lines.append(f"- other processes used {other:.2f} cores on average during the run (CPU time from "
                     f"/proc/stat minus the suite's own)")
    elif la is not None:
        busy = la[0] > 0.5 * (m.get("cpus") or 1) or (le is not None and le[0] > 0.5 * (m.get("cpus") or 1))
    if la is not None:
        lines.append(f"- load average at start {la[0]:.2f}, at end {le[0]:.2f} (the suite's own threads included)"
                     if le else f"- load average at start {la[0]:.2f}")
        if busy:
            lines.append("- **WARNING: the machine was busy with other work during this run; the figures "
                         "below are disturbed by it** (torch's OpenMP threads slow down badly when cores are shared)")
    return lines


# A sampler executes the forward and the input gradient (one matmul per Linear each): 2x the
# forward's FLOPs, where flops_per_chain_step() counts 3x (training's forward + full backward).
EXECUTED = 2.0 / 3.0


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def prior_table(rows: list[dict], stat: str) -> list[str]:
    """The chain table (prior or posterior rows): time, rates, % of peak in executed FLOPs (against
    the fp32 FMA peak, in either precision), and the speed-ups against the plain loop and its
    compiled step in both precisions and the reference. "precision": what the energy's products
    ran in (a bf16 provider whose fused kernel has no bf16 build ran fp32)."""
    head = (f"| config | batch | provider | precision | ms / chain ({stat}) | chain-steps/s | GFLOP/s "
            "| % of FMA peak, executed FLOPs | vs plain | vs compiled | vs plain-bf16 | vs compiled-bf16 "
            "| vs reference | max abs diff vs reference |")
    lines = [head, "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['batch']} | {r['provider']} | {r.get('precision', 'fp32')} | {_ms(r['ms'])} "
            f"| {r['steps_per_s']:,.0f} | {_f(r['gflops'], '.2f')} "
            f"| {_f(r['frac_peak'] * EXECUTED if r['frac_peak'] is not None else None, '.1%')} "
            f"| {_x(r.get('vs_plain'))} | {_x(r.get('vs_compiled'))} | {_x(r.get('vs_plain-bf16'))} "
            f"| {_x(r.get('vs_compiled-bf16'))} | {_x(r['speedup'])} | {_f(r['diff'], '.1e')} |")
    return lines


def train_table(rows: list[dict], stat: str) -> list[str]:
    lines = [f"| case | scheme | precision | layout | backend | ms / iteration ({stat}) | vs plain | vs compiled "
             "| vs reference | vs fp32 | vs fp32 contiguous |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.get('case', 'default')} | {r['scheme']} | {r.get('precision', 'fp32')} "
                     f"| {r.get('layout', 'trainer')} | {r['backend']} "
                     f"| {_ms(r['ms'])} | {_x(r.get('vs_plain'))} | {_x(r.get('vs_compiled'))} | {_x(r['speedup'])} "
                     f"| {_x(r.get('vs_fp32'))} | {_x(r.get('vs_fp32_contiguous'))} |")
    return lines


def _train_case_line(rows: list[dict]) -> str:
    r0 = rows[0]
    if r0.get("case", "default") == "default":
        return (f"`default`: one iteration of each scheme on jebm's `{r0['preset']}` configuration: dims {r0['dims']}, "
                f"batch {r0['batch']}, {r0['prior_steps']} prior / {r0['post_steps']} posterior Langevin steps, "
                f"{r0['space']}-space, {r0['decoder']} decoder, per backend and peer.")
    shape = "x".join(map(str, r0["image_shape"])) if r0.get("image_shape") else "?"
    return (f"`{r0['case']}`: one MLE iteration of the `{r0['preset']}` preset with the {r0['decoder']} decoder "
            f"(ngf {r0.get('ngf')}) on {r0.get('dataset')} images of {shape}, dims {r0['dims']}, batch {r0['batch']}, "
            f"{r0['prior_steps']} prior / {r0['post_steps']} posterior steps, per precision.")


def skipped_lines(info: dict) -> list[str]:
    groups: dict[str, list[str]] = {}
    for s in info.get("skipped", []):
        if s.get("kind") in ("prior_chain", "posterior_chain"):
            what = f"{s['provider']} ({s['config']}, batch {s['batch']})"
        else:
            what = (f"{s.get('scheme')} iteration on {s.get('backend')}" if s.get("case", "default") == "default"
                    else f"{s['case']} {s.get('scheme')} iteration in {s.get('precision')} on {s.get('backend')}")
        groups.setdefault(s["reason"], []).append(what)
    lines = []
    for reason, whats in groups.items():
        lines.append(f"- {_compact(whats)}: {reason}")
    return lines


def _compact(whats: list[str]) -> str:
    if len(whats) <= 4:
        return "; ".join(whats)
    return "; ".join(whats[:3]) + f"; and {len(whats) - 3} more"


def build_markdown(data: dict, source: str, stat: str, plot_rel: str | None, prows, trows, targets,
                   orows=None) -> str:
    info = data.get("jebm", {})
    k = info.get("n_steps", "?")
    batches = info.get("batches", [])
    when = data.get("datetime", "")
    commit = (data.get("commit_info") or {}).get("id")
    dirty = (data.get("commit_info") or {}).get("dirty")
    out = [START, "", "## Results", ""]
    out.append(f"Generated by `python -m benchmarks.report {source}` from the run of {when[:19].replace('T', ' ')} UTC"
               + (f" at commit `{commit[:10]}`{' (with uncommitted changes)' if dirty else ''}" if commit else "")
               + f". K = {k} Langevin steps per chain, batches {', '.join(map(str, batches))}; times are the "
               f"`{stat}` over each benchmark's rounds. **Measured on this CPU; no GPU provider was measured.**")
    if info.get("quick"):
        out += ["", "**QUICK RUN (`JEBM_BENCH_QUICK=1`): batch 8 and K = 5 only; these are not the benchmark "
                "figures and the targets cannot be checked from them.**"]
    out += ["", "### Machine", ""] + machine_lines(data)
    out += ["", "### Command", "", "```bash", COMMAND, "```", ""]
    out += ["### Prior chain", "",
            "Time of one whole K-step chain for the whole batch; chain-steps/s = B x K / time; GFLOP/s = "
            "`PriorSpec.flops_per_chain_step()` x B x K / time (3 x the forward FLOPs, the count the targets use); "
            "% of FMA peak, executed FLOPs: the FLOPs a sampler executes (forward + input gradient = 2 x the "
            "forward) against this run's FMA peak above, so it cannot exceed 100%; vs plain / vs compiled / vs "
            "reference: the provider's speed-up over the loop users write (autograd.grad + torch.randn), the "
            "best torch.compile of that step, and the reference backend; max abs diff: largest element-wise "
            "difference of the final state from the reference's, for the providers that draw the same Philox "
            "noise.", ""]
    modes = {r["compiled_mode"] for r in list(prows) + list(orows or []) if r.get("compiled_mode")}
    if modes:
        out += ["`compiled`: " + "; ".join(sorted(modes)) + ".", ""]
    out += prior_table(prows, stat) if prows else ["(no prior-chain measurements in this run)"]
    if plot_rel:
        out += ["", f"![time per chain against batch size]({plot_rel})"]
    out += ["", "### Posterior chain", "",
            "`posterior`: jebm's default model's posterior (a PosteriorEnergy with its MLP decoder, fused "
            "whole by the cpu backend); `closure-mlp` / `closure-conv`: posteriors written as Python closures "
            "over an MLP / a small conv decoder, which no kernel fuses (autograd for the gradient, the "
            "backend's fused update for the noise and the move); `svhn-conv`: the same closure over LEBM's SVHN "
            "generator, with its own chain (K = 20 steps of 0.1, batches 16 and 100). Columns as above; the "
            "`-bf16` providers evaluate the energy with bf16 products.", ""]
    out += prior_table(orows, stat) if orows else ["(no posterior-chain measurements in this run)"]
    out += ["", "### Training iteration", ""]
    if trows:
        for case in dict.fromkeys(r.get("case", "default") for r in trows):
            out += ["- " + _train_case_line([r for r in trows if r.get("case", "default") == case])]
        out += [""] + train_table(trows, stat)
    else:
        out += ["(no training-iteration measurements in this run)"]
    out += ["", "### Targets", "", "| target | measured | status | detail |", "|---|---:|---|---|"]
    for t in targets:
        out.append(f"| {t['name']} | {t['shown']} | **{t['status']}** | {t['note']} |")
    sk = skipped_lines(info)
    if sk:
        out += ["", "### Not measured in this run", ""] + sk
    out += ["", END]
    return "\n".join(out) + "\n"


def write_markdown(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in text and END in text:
        pre, rest = text.split(START, 1)
        _, post = rest.split(END, 1)
        text = pre + section.rstrip("\n") + post
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write(path, text)


def plot(prows: list[dict], path: Path, data: dict, stat: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    configs = [c for c in CONFIG_ORDER if any(r["config"] == c for r in prows)]
    configs += sorted({r["config"] for r in prows} - set(configs))
    if not configs:
        return
    fig, axes = plt.subplots(1, len(configs), figsize=(4.6 * len(configs), 4.0), squeeze=False)
    for ax, config in zip(axes[0], configs):
        providers = [p for p in PROVIDER_ORDER if any(r["config"] == config and r["provider"] == p for r in prows)]
        for p in providers:
            pts = sorted((r["batch"], r["ms"]) for r in prows if r["config"] == config and r["provider"] == p)
            color, marker = PROVIDER_STYLE.get(p, (None, "o"))
            ax.plot([b for b, _ in pts], [m for _, m in pts], marker=marker, color=color, label=p, lw=1.4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        batches = sorted({r["batch"] for r in prows if r["config"] == config})
        ax.set_xticks(batches)
        ax.set_xticklabels([str(b) for b in batches])
        ax.minorticks_off() if len(batches) == 1 else None
        ax.set_title(CONFIG_TITLES.get(config, config), fontsize=9)
        ax.set_xlabel("batch size (chains)")
        ax.set_ylabel(f"ms per K-step chain ({stat})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    m = data.get("jebm", {}).get("machine", {})
    k = data.get("jebm", {}).get("n_steps", "?")
    fig.suptitle(f"Prior chain, K={k}: time per chain vs batch, measured on CPU ({m.get('cpu_model', '?')}, "
                 f"{m.get('cpus', '?')} cores, torch {m.get('torch', '?')}); no GPU", fontsize=10)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)


def main(argv=None, *, default_markdown=Path("BENCHMARKS.md"), default_plot=Path("benchmarks/prior_chain.png"),
         prog: str = "python -m benchmarks.report") -> int:
    """The command: print the results, write the markdown section and the plot, check the targets."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("json", help="pytest-benchmark JSON (--benchmark-json) of the benchmarks/ suite, or jebm bench's")
    ap.add_argument("--stat", choices=("min", "median", "mean"), default="min",
                    help="timing statistic over each benchmark's rounds (default: min)")
    ap.add_argument("--markdown", type=Path, default=Path(default_markdown),
                    help="file whose results section is replaced")
    ap.add_argument("--plot", type=Path, default=Path(default_plot), help="PNG of time per chain vs batch")
    ap.add_argument("--no-write", action="store_true", help="print only; write neither the markdown nor the plot")
    ap.add_argument("--no-check", action="store_true", help="exit 0 even if a target fails")
    args = ap.parse_args(argv)

    data = load(args.json)
    prows = prior_rows(data, args.stat)
    orows = chain_rows(data, args.stat, "posterior_chain")
    trows = train_rows(data, args.stat)
    targets = check_targets(data, prows, trows, orows)
    plot_rel = None
    if not args.no_write and prows:
        plot(prows, args.plot, data, args.stat)
        try:
            plot_rel = os.path.relpath(args.plot.resolve(), args.markdown.resolve().parent)
        except ValueError:
            plot_rel = str(args.plot.resolve())
    section = build_markdown(data, args.json, args.stat, plot_rel, prows, trows, targets, orows)
    print(section.replace(START + "\n", "").replace(END + "\n", ""))
    if not args.no_write:
        write_markdown(args.markdown, section)
        print(f"wrote the results section of {args.markdown}" + (f" and {args.plot}" if plot_rel else ""))
    for t in targets:
        print(f"{t['status']:>12}  {t['name']}: {t['shown']} ({t['note']})")
    failed = [t for t in targets if t["status"] != "PASS"]
    if failed and not args.no_check:
        print(f"{len(failed)} of {len(targets)} targets not met (or not measured); exit 1 (--no-check to ignore)")
        return 1
    return 0

