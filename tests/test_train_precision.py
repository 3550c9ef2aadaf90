"""The run config's ``precision`` (``jebm.train.trainer``): the key is checked; "bf16" is refused
where the CPU has no bf16 products; a bf16 run trains with bf16 chains and losses and float32
parameters, optimiser state and checkpoints, logs its precision and resumes (in fp32 too); at
"fp32" the trainer enters no autocast region, so the default run is the one it was."""
import contextlib
import json

import pytest
import torch

import jebm
import jebm_kernels as jk
from jebm.model import JEBM, SamplingSettings
from jebm.train import make_trainer
from jebm.train import trainer as trainer_mod
from jebm.train.checkpoint import load_checkpoint
from jebm.train.presets import resolve_config, upgrade_config
from jebm_kernels.precision import bf16_hardware_reason

TINY = dict(dims=[8, 4], ebm_hidden=[32], gauss_hidden=[32], dec_hidden=[64], infer_hidden=[64],
            infer_head_hidden=[32], prior_steps=4, post_steps=4, batch_size=20, sample_every=0, n_samples=4)
NO_BF16 = bf16_hardware_reason(torch.device("cpu"))
needs_bf16 = pytest.mark.skipif(NO_BF16 is not None, reason=f"no bf16 products on this CPU: {NO_BF16}")


def read_metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]


def tiny_trainer(scheme="mle", **overrides):
    cfg = resolve_config(scheme=scheme, **{**TINY, **overrides})
    shape = (1, 28, 28) if cfg["decoder"] == "conv" else (1, 8, 8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = JEBM.from_config(cfg, shape)
        return model, make_trainer(model, cfg), shape


def test_the_precision_key_is_checked_and_defaults_to_fp32():
    assert resolve_config()["precision"] == "fp32"
    assert resolve_config(precision="bf16")["precision"] == "bf16"
    for bad in ("fp16", "bfloat16", "auto", None, 16):
        with pytest.raises(ValueError, match="precision must be one of"):
            resolve_config(precision=bad)
    saved = {k: v for k, v in resolve_config().items() if k != "precision"}  # a run saved before the key
    assert upgrade_config(saved)["precision"] == "fp32"


def test_bf16_is_refused_where_the_cpu_has_no_bf16_products(monkeypatch):
    monkeypatch.setattr(trainer_mod, "bf16_hardware_reason", lambda device: "this CPU has no bf16 dot-product "
                                                                            "instructions (AVX512-BF16 or AMX)")
    with pytest.raises(ValueError, match=r"precision='bf16' asked for, but this CPU has no bf16.*precision='fp32'"):
        tiny_trainer(precision="bf16")
    tiny_trainer(precision="fp32")  # fp32 asks nothing of the hardware


def test_the_trainer_samples_with_its_precision(monkeypatch):
    seen = []
    real = jk.langevin

    def spy(*args, **kwargs):
        seen.append(kwargs.get("precision"))
        return real(*args, **kwargs)

    monkeypatch.setattr(jk, "langevin", spy)
    for precision in ("fp32",) + (() if NO_BF16 else ("bf16",)):
        seen.clear()
        model, tr, shape = tiny_trainer(precision=precision)
        assert tr.sampling.precision == precision and tr.sampling.prior()["precision"] == precision
        tr.step(torch.rand(6, *shape) * 2 - 1, generator=jk.PhiloxGenerator(0), backend="reference")
        assert seen == [precision, precision]  # the posterior chain, then the prior chain


def test_at_fp32_no_autocast_region_is_entered(monkeypatch):
    model, tr, shape = tiny_trainer(precision="fp32")

    def refuse(*args, **kwargs):
        raise AssertionError("an fp32 run entered an autocast region")

    monkeypatch.setattr(torch, "autocast", refuse)
    assert isinstance(tr.autocast(), contextlib.nullcontext)
    x = torch.rand(6, *shape) * 2 - 1
    values, total = tr.loss(x, generator=jk.PhiloxGenerator(3), backend="reference")
    values2, total2 = tr.scheme_loss(x, generator=jk.PhiloxGenerator(3), backend="reference")
    assert values == values2 and torch.equal(total, total2) and total.dtype == torch.float32


@needs_bf16
@pytest.mark.parametrize("scheme", ["mle", "variational"])
def test_a_bf16_loss_runs_bf16_products_into_float32_losses_and_gradients(scheme):
    model, tr, shape = tiny_trainer(scheme, precision="bf16")
    dtypes = set()
    hooks = [m.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype)) for m in model.modules()
             if isinstance(m, torch.nn.Linear)]
    values, total = tr.loss(torch.rand(6, *shape) * 2 - 1, generator=jk.PhiloxGenerator(1), backend="reference")
    for h in hooks:
        h.remove()
    assert dtypes == {torch.bfloat16}  # every network product under autocast
    assert total.dtype == torch.float32 and all(v == v and abs(v) < float("inf") for v in values.values())
    tr.apply(total)
    params = [p for opt in tr.optimizers().values() for g in opt.param_groups for p in g["params"]]
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32) for p in params)


def test_a_conv_decoder_is_kept_channels_last_on_the_cpu():
    model, tr, shape = tiny_trainer(decoder="conv", ngf=2)
    weights = [p for p in model.decoder.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    values, bad = tr.step(torch.rand(4, *shape) * 2 - 1, generator=jk.PhiloxGenerator(0), backend="cpu")
    assert bad is None


def test_a_model_config_leaves_the_precision_to_the_caller():
    model, _, _ = tiny_trainer()
    assert SamplingSettings.from_config(model.config).precision == "auto"


@needs_bf16
@pytest.mark.slow
def test_a_bf16_run_trains_records_its_precision_keeps_fp32_checkpoints_and_resumes(tmp_path):
    run_dir = tmp_path / "bf16"
    res = jebm.train(iters=3, out_dir=run_dir, progress=False, precision="bf16", checkpoint_every=3, **TINY)
    lines = read_metrics(run_dir)
    assert [l["iter"] for l in lines] == [1, 2, 3] and all(l["precision"] == "bf16" for l in lines)
    assert all(v == v and abs(v) < float("inf") for l in lines for v in l.values() if isinstance(v, float))
    ck = load_checkpoint(res.checkpoint)
    assert ck["config"]["precision"] == "bf16"
    assert {t.dtype for t in ck["model"].values()} == {torch.float32}
    states = [t for o in ck["optimizers"].values() for s in o["state"].values() for t in s.values()
              if torch.is_tensor(t) and t.is_floating_point()]
    assert states and {t.dtype for t in states} == {torch.float32}
    run = jebm.load_run(run_dir)
    assert run.sampling.precision == "bf16"  # evaluation samples as training did

    res = jebm.train(iters=5, out_dir=run_dir, progress=False, resume=True)
    lines = read_metrics(run_dir)
    assert [l["iter"] for l in lines] == [1, 2, 3, 4, 5] and lines[-1]["precision"] == "bf16"
    # a bf16 run goes on in fp32 where asked (e.g. on a machine without bf16 products)
    res = jebm.train(iters=6, out_dir=run_dir, progress=False, resume=True, precision="fp32")
    lines = read_metrics(run_dir)
    assert lines[-1]["iter"] == 6 and lines[-1]["precision"] == "fp32"
    assert load_checkpoint(res.checkpoint)["config"]["precision"] == "fp32"


def test_the_report_states_the_runs_precision_and_its_chains_notes(tmp_path):
    from jebm.evaluate import report
    cfg = resolve_config(precision="bf16")
    lines = [{"iter": 1, "precision": "bf16", "precision_note": "prior chain: ran fp32 (no bf16 kernels)"},
             {"iter": 2, "precision": "bf16"}, {"iter": 3, "precision": "fp32"}]
    html = report._section_run(tmp_path, cfg, lines)
    assert "bf16 (logged iterations: bf16 then fp32); prior chain: ran fp32 (no bf16 kernels)" in html
    old = {k: v for k, v in cfg.items() if k != "precision"}  # a run from before the key
    assert "<td>precision</td><td>fp32</td>" in report._section_run(tmp_path, old, [])
