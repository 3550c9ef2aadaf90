"""One training iteration of each scheme (mle, variational) on jebm's "default" configuration,
with each sampler backend, and with the Langevin loops users would otherwise run in their place
(``plain``: autograd.grad + torch.randn, eager; ``compiled``: torch.compile of that step;
``jebm.bench.peers``, put under the same model and trainer by ``patched_langevin``).

Interface used: ``jebm.train.presets.resolve_config("default", scheme=..., backend=...)``,
``jebm.model.JEBM.from_config(cfg, data.shape)``, ``jebm.train.make_trainer(model, cfg)`` and
``trainer.step(x, generator=jebm_kernels.PhiloxGenerator(seed), backend=...)``: exactly what
``jebm.train`` runs once per iteration (data loading, logging and checkpoints excluded). The batch
is the first ``batch_size`` (100) images of the bundled digits training split. Each timed round is
one iteration (Langevin chains, losses, backward, Adam steps); the parameters move between rounds,
as in training.

The default configuration: d = (16, 8), MLP energies and Gaussians of width 64, MLP decoder,
60 prior and 40 posterior Langevin steps (z-space for mle, eps-space for variational), batch 100
(``jebm/train/presets.py``).

``test_conv_train_iteration``: one MLE iteration with a conv decoder per run precision
(``precision`` "fp32" / "bf16", the trainer's own: chains and losses), on the ``cpu`` backend:
``conv-mnist5k``, the default preset with ``decoder="conv"``, ``ngf=16`` on the first 100 mnist5k
training images (1x28x28); ``cvpr-cifar10``, that preset as it is (its ngf 64 decoder onto 3x32x32,
batch 100) on fixed random images of that shape (timing does not depend on the data).
The decoder's memory layout (``layout``): "trainer" is the trainer's own choice (a conv decoder on the
CPU in ``channels_last``, in both precisions); "contiguous" puts the decoder back in the default
layout after the trainer is made, which is the fp32 iteration as jebm ran it before the trainer chose
a layout: the baseline of the bf16 target ("bf16 >= 2.5x today's fp32 iteration, memory layout
included"). ``JEBM_BENCH_QUICK=1`` runs both at batch 8 with 5-step chains.
"""
from __future__ import annotations

import itertools

import pytest
import torch

import jebm_kernels as jk
from jebm.bench.configs import QUICK
from jebm.bench.peers import CompiledLangevin, patched_langevin, plain_langevin
from jebm.bench.providers import gpu_reason

from . import harness

SCHEMES = ("mle", "variational")
BACKENDS = ("reference", "plain", "compiled", "cpu", "triton", "cuda")
PEERS = {"plain": plain_langevin, "compiled": CompiledLangevin()}
CASES = list(itertools.product(SCHEMES, BACKENDS))
PRESET = "default"


def _jebm():
    try:
        from jebm.data import load_dataset
        from jebm.model import JEBM
        from jebm.train import make_trainer
        from jebm.train.presets import resolve_config
    except Exception as exc:
        return None, f"jebm is not importable ({type(exc).__name__}: {exc})"
    return (load_dataset, JEBM, resolve_config, make_trainer), None


@pytest.mark.parametrize("scheme,backend", CASES, ids=[f"{s}-{b}" for s, b in CASES])
def test_train_iteration(benchmark, peak, scheme, backend):
    benchmark.group = f"training iteration: {PRESET} configuration, {scheme}"
    where = dict(kind="train_iteration", scheme=scheme, backend=backend)
    api, why = _jebm()
    if api is None:
        harness.skip_with(why, **where)
    load_dataset, JEBM, resolve_config, make_trainer = api
    device = "cpu"
    if backend in ("triton", "cuda"):
        why = gpu_reason()
        if why is not None:
            harness.skip_with(why, **where)
        device = "cuda"
    if backend not in PEERS and backend not in jk.available_backends():
        harness.skip_with(f"backend {backend!r} is not available here (jebm_kernels.available_backends() = "
                          f"{jk.available_backends()})", **where)

    peer = PEERS.get(backend)
    cfg = resolve_config(PRESET, scheme=scheme, backend="reference" if peer else backend)
    data = load_dataset(cfg["dataset"], cfg["data_root"], split="train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model = JEBM.from_config(cfg, data.shape).to(device)
        trainer = make_trainer(model, cfg)
    model.train()
    x = data.images[: cfg["batch_size"]].to(device)
    gen = jk.PhiloxGenerator(cfg["seed"])

    def iteration():
        if peer is not None:
            with patched_langevin(peer):
                values, bad = trainer.step(x, generator=gen, backend="reference")
        else:
            values, bad = trainer.step(x, generator=gen, backend=backend)
        if device == "cuda":
            torch.cuda.synchronize()
        if bad is not None:
            raise FloatingPointError(f"{scheme} iteration on {backend}: {bad} = {values[bad]}")
        return values

    try:
        iteration()  # first iteration: also checks that the backend serves every chain of the scheme
    except (ValueError, RuntimeError) as exc:
        harness.skip_with(f"backend {backend!r} cannot run a {scheme} iteration: {exc}", **where)

    harness.run_timed(benchmark, iteration)
    seconds = harness.stat(benchmark, "min")
    benchmark.extra_info.update(
        **where, case="default", precision=cfg["precision"], preset=PRESET, dims=cfg["dims"], batch=cfg["batch_size"],
        prior_steps=cfg["prior_steps"],
        post_steps=cfg["post_steps"], space=cfg["space"], decoder=cfg["decoder"], device=device,
        torch_threads=torch.get_num_threads(),
        **({} if seconds is None else {"stat": "min", "ms_per_iteration": seconds * 1e3}),
        interface="jebm.train.make_trainer(JEBM.from_config(resolve_config('default', scheme, backend)), cfg)"
                  ".step(x, generator=PhiloxGenerator(seed), backend=backend)",
    )


CONV_CASES = {
    "conv-mnist5k": dict(preset="default", overrides=dict(decoder="conv", ngf=16, dataset="mnist5k")),
    "cvpr-cifar10": dict(preset="cvpr-cifar10", overrides={}, image_shape=(3, 32, 32)),
}
CONV_RUNS = (("fp32", "contiguous"), ("fp32", "trainer"), ("bf16", "trainer"))
CONV_PARAMS = [(c, p, lay) for c in CONV_CASES for p, lay in CONV_RUNS]


@pytest.mark.parametrize("case,precision,layout", CONV_PARAMS,
                         ids=[f"{c}-{p}" + ("-contiguous" if lay == "contiguous" else "") for c, p, lay in CONV_PARAMS])
def test_conv_train_iteration(benchmark, peak, case, precision, layout):
    benchmark.group = f"training iteration: {case}, mle"
    where = dict(kind="train_iteration", case=case, scheme="mle", backend="cpu", precision=precision, layout=layout)
    api, why = _jebm()
    if api is None:
        harness.skip_with(why, **where)
    load_dataset, JEBM, resolve_config, make_trainer = api
    if "cpu" not in jk.available_backends():
        harness.skip_with(f"the cpu backend is not available here (jebm_kernels.available_backends() = "
                          f"{jk.available_backends()})", **where)
    spec = CONV_CASES[case]
    overrides = dict(spec["overrides"], scheme="mle", backend="cpu", precision=precision)
    if QUICK:
        overrides.update(batch_size=8, prior_steps=5, post_steps=5)
    cfg = resolve_config(spec["preset"], **overrides)
    B = cfg["batch_size"]
    if "image_shape" in spec:  # random images of the preset's shape
        shape = spec["image_shape"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["seed"] + 1)
            x = torch.rand(B, *shape) * 2 - 1
        dataset = "random"
    else:
        data = load_dataset(cfg["dataset"], cfg["data_root"], split="train")
        shape, x, dataset = data.shape, data.images[:B], cfg["dataset"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model = JEBM.from_config(cfg, shape)
        try:
            trainer = make_trainer(model, cfg)  # refuses bf16 where the CPU has no bf16 products
        except ValueError as exc:
            harness.skip_with(str(exc), **where)
    if layout == "contiguous":  # before the optimisers' first step, so their state follows
        model.decoder.to(memory_format=torch.contiguous_format)
    model.train()
    gen = jk.PhiloxGenerator(cfg["seed"])

    def iteration():
        values, bad = trainer.step(x, generator=gen, backend="cpu")
        if bad is not None:
            raise FloatingPointError(f"{case} iteration in {precision}: {bad} = {values[bad]}")
        return values

    iteration()
    harness.run_timed(benchmark, iteration)
    seconds = harness.stat(benchmark, "min")
    benchmark.extra_info.update(
        **where, preset=spec["preset"], dataset=dataset, image_shape=list(shape), dims=cfg["dims"], batch=B,
        prior_steps=cfg["prior_steps"], post_steps=cfg["post_steps"], space=cfg["space"], decoder=cfg["decoder"],
        ngf=cfg["ngf"], device="cpu", torch_threads=torch.get_num_threads(),
        decoder_memory_format="channels_last" if model.decoder.net[0].weight.is_contiguous(
            memory_format=torch.channels_last) else "contiguous",
        **({} if seconds is None else {"stat": "min", "ms_per_iteration": seconds * 1e3}),
        interface=f"jebm.train.make_trainer(JEBM.from_config(resolve_config({spec['preset']!r}, precision=...)), cfg)"
                  ".step(x, generator=PhiloxGenerator(seed), backend='cpu')",
    )
