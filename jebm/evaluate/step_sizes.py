"""Learned against fixed posterior step sizes of a trained run (Nijkamp et al., ECCV 2020): the
short-run objective J of ``jebm.train.short_run`` evaluated, without a graph, for given step sizes.

    python -m jebm.evaluate.step_sizes RUN_DIR [--n-test N] [--seed S] [--estimator E] [--fixed S]
"""
from __future__ import annotations

import torch

import jebm_kernels as jk

from ..data import load_dataset
from ..model import JEBM, SamplingSettings, randn_layers
from ..train.checkpoint import load_checkpoint
from ..train.run import checkpoint_step_sizes, load_run
from ..train.short_run import ESTIMATORS, short_run_chain

__all__ = ["posterior_objective", "learned_step_sizes", "compare_step_sizes"]


def posterior_objective(model: JEBM, x: torch.Tensor, step_sizes, *, n_steps: int | None = None, seed: int = 0,
                        estimator: str = "exact", n_terms: int = 2, n_probes: int = 1,
                        sampling: SamplingSettings | None = None) -> torch.Tensor:
    """J per image [B] for fixed ``step_sizes`` (a float or one per layer): the chain from N(0, I)
    noise drawn, with its Langevin noise, from ``PhiloxGenerator(seed)`` (so two step sizes
    compared with one seed see the same start and the same noise). No graph is kept.

    ``sampling``: the space, noise scale and (unless ``n_steps``) posterior steps of the chain; a
    loaded run's ``Run.sampling``, by default the model's own defaults."""
    sampling = SamplingSettings.from_config(model.config) if sampling is None else sampling
    vals = list(step_sizes) if isinstance(step_sizes, (list, tuple)) else [step_sizes] * model.n_layers
    p = next(model.parameters())
    s = torch.tensor([float(v) for v in vals], dtype=p.dtype, device=p.device)
    g = jk.PhiloxGenerator(seed)
    v0 = randn_layers(x.shape[0], model.dims, g, device=p.device, dtype=p.dtype)
    res = short_run_chain(model.posterior_energy_fn(x.detach(), sampling.space), v0, s,
                          n_steps=sampling.post_steps if n_steps is None else n_steps,
                          noise_scale=sampling.noise_scale, generator=g, estimator=estimator,
                          n_terms=n_terms, n_probes=n_probes, differentiable=False)
    return res.objective.detach()


def learned_step_sizes(path) -> list[float] | None:
    """The learned posterior step sizes saved in a run's checkpoint (None when it learned none)."""
    return checkpoint_step_sizes(load_checkpoint(path))


def compare_step_sizes(path, *, fixed=None, n_test: int = 200, seed: int = 0, estimator: str = "exact") -> dict:
    """The posterior objective J of a trained run's learned step sizes against ``fixed`` (default:
    the run's ``post_step_size``) on held-out test images, both chains from the same fresh noise.
    Returns the values per layer, each objective's mean and standard error, and the paired
    difference (learned - fixed; negative: the learned step sizes are better)."""
    run = load_run(path)
    learned = learned_step_sizes(run.checkpoint)
    if learned is None:
        raise ValueError(f"the run in {path} did not learn step sizes (train with learn_step_size=True)")
    fixed = run.config["post_step_size"] if fixed is None else fixed
    cfg = run.config
    test = load_dataset(cfg["dataset"], cfg["data_root"], split="test").images[:n_test]
    test = test.to(next(run.model.parameters()).device)
    j_learned = posterior_objective(run.model, test, learned, seed=seed, estimator=estimator, sampling=run.sampling)
    j_fixed = posterior_objective(run.model, test, fixed, seed=seed, estimator=estimator, sampling=run.sampling)
    diff = j_learned - j_fixed
    n = diff.shape[0]

    def stats(t):
        return {"mean": float(t.mean()), "stderr": float(t.std() / n ** 0.5)}

    return {"run": str(path), "n_test": n, "post_steps": cfg["post_steps"], "estimator": estimator, "seed": seed,
            "learned": learned, "fixed": fixed if isinstance(fixed, list) else [float(fixed)] * run.model.n_layers,
            "objective_learned": stats(j_learned), "objective_fixed": stats(j_fixed),
            "difference": stats(diff)}


if __name__ == "__main__":  # python -m jebm.evaluate.step_sizes RUN_DIR [--n-test N] [--seed S] [--estimator E]
    import argparse
    import json
    ap = argparse.ArgumentParser(description="learned vs fixed posterior step sizes of a trained run")
    ap.add_argument("run")
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--estimator", choices=ESTIMATORS, default="exact")
    ap.add_argument("--fixed", type=float, default=None, help="the fixed step size (default: the run's post_step_size)")
    a = ap.parse_args()
    print(json.dumps(compare_step_sizes(a.run, fixed=a.fixed, n_test=a.n_test, seed=a.seed, estimator=a.estimator),
                     indent=2))
