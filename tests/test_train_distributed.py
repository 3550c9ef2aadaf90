"""Data-parallel training: 2 CPU processes under torchrun (gloo, DistributedDataParallel) with
global batch B reach the parameters that one process reaches with batch B fed the same noise.

"The same noise": rank r draws its chains from its own Philox stream (key rank_seed(seed, r)),
for rows [r*B/2, (r+1)*B/2) of each global batch. The one-process run below draws the chains of
those rows from the same stream (``ShardedNoise``); every chain depends only on its own row and
its own noise, so both runs sample the same z+ and z-, and differ only in how the batch means and
gradient sums are rounded (DDP averages two half-batch gradients).

Tolerance (float32 parameters, after 3 iterations): every parameter element agrees to 2e-5
absolute (the differences are rounding, orders of magnitude below that), except elements whose
gradient was zero up to rounding (|g| < 1e-5) at some iteration. Adam divides such a gradient by
its own magnitude plus eps = 1e-8, so rounding that differs in the last bit can move that element
by up to one step (lr, 1e-3 here); those elements may differ by 2 * lr * iterations and must be
under 1% of all (e.g. EBM biases whose positive and negative phases cancel).
"""
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import child_env

import jebm_kernels as jk
from jebm.data import load_dataset
from jebm.model import JEBM
from jebm.train import batch_indices, build_model
from jebm.train import variational as trainer_variational
from jebm.train.checkpoint import load_checkpoint
from jebm.train.distributed import rank_seed
from jebm.train.presets import resolve_config

pytestmark = pytest.mark.slow  # worker processes: torchrun and gloo

WORLD = 2
ITERS = 3
TINY = dict(dims=[4, 2], ebm_hidden=[8], gauss_hidden=[8], dec_hidden=[16], infer_hidden=[16],
            infer_head_hidden=[8], prior_steps=3, post_steps=3, batch_size=20, sample_every=0, n_samples=4,
            lr_gen=1e-3, lr_infer=1e-3)  # large enough that a few iterations move the parameters
ATOL = 2e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train(out: Path, iters: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "jebm", "train", "--out", str(out), "--iters", str(iters), "--no-progress", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=child_env(OMP_NUM_THREADS="1"),
                          cwd=out.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


class ShardedNoise:
    """For one process: the chains of rows [r*b, (r+1)*b) draw from rank r's Philox stream."""

    def __init__(self, seed: int, world: int):
        self.gens = [jk.PhiloxGenerator(rank_seed(seed, r)) for r in range(world)]


@pytest.fixture
def fed_rank_noise(monkeypatch):
    """Make the model's chain calls (and q's noise) split the batch and use each rank's stream
    when given a ShardedNoise; other calls are untouched."""
    real_post, real_prior, real_randn = JEBM.sample_posterior, JEBM.sample_prior, trainer_variational.randn_layers

    def cat_layers(parts):
        return [torch.cat(layer) for layer in zip(*parts)]

    def posterior(self, x, *, generator=None, **kw):
        if not isinstance(generator, ShardedNoise):
            return real_post(self, x, generator=generator, **kw)
        return cat_layers([real_post(self, xs, generator=g, **kw)
                           for xs, g in zip(x.chunk(WORLD), generator.gens)])

    def prior(self, n, *, generator=None, return_info=False, init=None, **kw):
        if not isinstance(generator, ShardedNoise):
            return real_prior(self, n, generator=generator, return_info=return_info, init=init, **kw)
        inits = [None] * WORLD if init is None else list(zip(*[t.chunk(WORLD) for t in init]))  # persistent chains
        outs = [real_prior(self, n // WORLD, generator=g, return_info=True, init=None if i is None else list(i), **kw)
                for g, i in zip(generator.gens, inits)]
        z = cat_layers([o[0] for o in outs])
        return (z, {"state": cat_layers([o[1]["state"] for o in outs]), "sampler": None}) if return_info else z

    def randn_layers(n, dims, generator=None, **kw):
        if not isinstance(generator, ShardedNoise):
            return real_randn(n, dims, generator, **kw)
        return cat_layers([real_randn(n // WORLD, dims, g, **kw) for g in generator.gens])

    monkeypatch.setattr(JEBM, "sample_posterior", posterior)
    monkeypatch.setattr(JEBM, "sample_prior", prior)
    monkeypatch.setattr(trainer_variational, "randn_layers", randn_layers)


def one_process_reference(scheme: str, persistent: bool):
    cfg = resolve_config("default", scheme=scheme, iters=ITERS, backend="reference", persistent_prior=persistent,
                         **TINY)
    data = load_dataset("digits", None, split="train")
    model, trainer = build_model(cfg, data.shape, torch.device("cpu"))
    noise = ShardedNoise(cfg["seed"], WORLD)
    named = {**{f"model.{k}": p for k, p in model.named_parameters()},
             **{f"{m}.{k}": p for m, mod in trainer.modules().items() for k, p in mod.named_parameters()}}
    min_grad = {k: torch.full_like(p, float("inf")) for k, p in named.items()}
    for it in range(ITERS):
        x = data.images[batch_indices(data.images.shape[0], cfg["batch_size"], cfg["seed"], it)]
        values, bad = trainer.step(x, generator=noise, backend="reference")
        assert bad is None, values
        for k, p in named.items():  # this iteration's gradient is still in .grad after the step
            min_grad[k] = torch.minimum(min_grad[k], p.grad.abs())
    max_lr = max(cfg["lr_gen"], cfg["lr_ebm"], cfg["lr_infer"])
    return {k: p.detach() for k, p in named.items()}, min_grad, noise, max_lr


@pytest.mark.parametrize("scheme,persistent,resume_at", [("mle", True, 2), ("variational", False, None)])
def test_two_processes_match_one_process_fed_the_same_noise(tmp_path, scheme, persistent, resume_at, fed_rank_noise):
    """mle: persistent prior chains (per-rank state gathered into the checkpoint) and a resumed
    data-parallel run; variational: one uninterrupted run."""
    out = tmp_path / "ddp"
    sets = [a for k, v in {**TINY, "persistent_prior": persistent}.items() for a in ("--set", f"{k}={v!r}")]
    t0 = time.perf_counter()
    if resume_at is not None:
        torchrun_train(out, resume_at, "--scheme", scheme, "--backend", "reference", *sets)
        assert load_checkpoint(out)["iteration"] == resume_at
        proc = torchrun_train(out, ITERS, "--resume")
    else:
        proc = torchrun_train(out, ITERS, "--scheme", scheme, "--backend", "reference", *sets)
    elapsed = time.perf_counter() - t0
    # rank 0 alone reported and wrote: one metrics line per iteration, one checkpoint
    assert proc.stdout.count("run folder:") == 1, proc.stdout
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["iter"] for l in lines] == list(range(1, ITERS + 1))
    ck = load_checkpoint(out)
    assert ck["iteration"] == ITERS and ck["world_size"] == WORLD

    ref, min_grad, noise, max_lr = one_process_reference(scheme, persistent)
    # distinct, reproducible noise per rank: (rank_seed(seed, r), the same offset the emulation reached)
    assert [r["philox"] for r in ck["ranks"]] == [[g.seed, g.offset] for g in noise.gens]
    assert len({r["philox"][0] for r in ck["ranks"]}) == WORLD
    if persistent:  # each rank's persistent chains are its slice of the global batch's
        shards = [r["buffers"]["prior_chains"]["state"] for r in ck["ranks"]]
        assert [tuple(t.shape) for t in shards[0]] == [(TINY["batch_size"] // WORLD, d) for d in TINY["dims"]]
        assert not torch.equal(shards[0][0], shards[1][0])

    got = {**{f"model.{k}": v for k, v in ck["model"].items()},
           **{f"{m}.{k}": v for m, sd in ck["modules"].items() for k, v in sd.items()}}
    assert ref.keys() <= got.keys()
    worst, worst_sensitive, n_sensitive, n_all = 0.0, 0.0, 0, 0
    for k in ref:
        diff = (ref[k] - got[k]).abs()
        sensitive = min_grad[k] < 1e-5
        n_sensitive, n_all = n_sensitive + int(sensitive.sum()), n_all + diff.numel()
        if (~sensitive).any():
            worst = max(worst, diff[~sensitive].max().item())
        if sensitive.any():
            worst_sensitive = max(worst_sensitive, diff[sensitive].max().item())
        bad = (diff > ATOL) & ~sensitive
        assert not bad.any(), (f"{k}: 2-process and 1-process parameters differ by {diff[bad].max().item():.3g} "
                               f"(> {ATOL}) at {bad.nonzero()[0].tolist()}")
    assert worst_sensitive <= 2 * max_lr * ITERS
    assert n_sensitive < 0.01 * n_all, f"{n_sensitive} of {n_all} elements had a gradient zero up to rounding"
    # Training moved the parameters: the comparison is not of two untouched initialisations.
    init = build_model(resolve_config("default", scheme=scheme, **TINY), (1, 8, 8), "cpu")[0].state_dict()
    assert max((ref[f"model.{k}"] - v).abs().max().item() for k, v in init.items()) > 100 * ATOL
    print(f"\n{scheme}: torchrun 2 x CPU, {ITERS} iterations{' (resumed)' if resume_at else ''}, {elapsed:.1f} s; "
          f"max |param diff| {worst:.2e}, "
          f"{n_sensitive}/{n_all} rounding-sensitive elements (max diff {worst_sensitive:.2e})")


def test_rank_seeds_are_distinct_and_rank_zero_keeps_the_seed():
    seeds = [rank_seed(7, r) for r in range(64)]
    assert seeds[0] == 7 and len(set(seeds)) == 64 and all(0 <= s < 2**64 for s in seeds)
    assert rank_seed(7, 1) == rank_seed(7, 1) != rank_seed(8, 1)
