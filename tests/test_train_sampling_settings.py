"""The trainer and a loaded run own the chains' settings (``jebm.model.sampling.SamplingSettings``)
and pass them to every sampling call; a model's config is read-only after construction: nothing
writes into it during training with rollback or in ``load_run`` of a learn_step_size run, and
evaluation samples a loaded run with the run's settings (learned step sizes included)."""
import copy
import pickle
import warnings

import pytest
import torch

import jebm
import jebm_kernels as jk
from jebm.data import load_dataset
from jebm.evaluate.run_eval import evaluate_run
from jebm.model import JEBM, SamplingSettings
from jebm.model.config import ReadOnlyConfig
from jebm.train import build_model
from jebm.train.checkpoint import load_checkpoint
from jebm.train.presets import resolve_config

CFG = dict(dims=[4, 2], ebm_hidden=[8], gauss_hidden=[8], dec_hidden=[16], prior_steps=4, post_steps=4,
           batch_size=20, sample_every=0, n_samples=4, seed=4, prior_step_size=0.4, post_step_size=0.1)


def small_model() -> JEBM:
    return JEBM((1, 8, 8), [4, 2], ebm_hidden=[8], gauss_hidden=[8], dec_hidden=[16], prior_step_size=[0.4, 0.3])


def test_model_config_is_read_only_and_still_a_dict():
    m = small_model()
    assert isinstance(m.config, ReadOnlyConfig) and isinstance(m.config, dict)
    before = copy.deepcopy(dict(m.config))
    for change in (lambda c: c.__setitem__("post_step_size", 0.2), lambda c: c.update(space="z"),
                   lambda c: c.pop("space"), lambda c: c.setdefault("new", 1), lambda c: c.__delitem__("space"),
                   lambda c: c.clear(), lambda c: c.popitem()):
        with pytest.raises(TypeError, match="read-only after construction"):
            change(m.config)
    assert dict(m.config) == before
    mutable = m.config.copy()
    mutable["space"] = "z"
    assert type(mutable) is dict and m.config["space"] == "eps"
    # it round-trips through deepcopy, pickle and from_config like the dict it was
    assert copy.deepcopy(m).config == m.config and pickle.loads(pickle.dumps(m.config)) == m.config
    assert JEBM.from_config(m.config, m.image_shape).config == m.config


def test_sampling_settings_give_each_chain_its_keywords():
    # prior_steps and space named: this test is about the passing-on, not the defaults
    s = SamplingSettings.from_config(resolve_config(prior_step_size=[0.4, 0.2], post_steps=7, prior_steps=30,
                                                    space="eps", precision="bf16"))
    assert s.prior() == dict(n_steps=30, step_size=[0.4, 0.2], noise_scale=1.0, space="eps", precision="bf16")
    assert s.posterior() == dict(n_steps=7, step_size=0.1, noise_scale=1.0, space="eps", precision="bf16")
    assert s.with_precision("fp32").prior()["precision"] == "fp32"
    half = s.with_step_scale(0.5)
    assert half.prior_step_size == [0.2, 0.1] and half.post_step_size == 0.05 and s.prior_step_size == [0.4, 0.2]
    assert s.with_post_step_size([0.3, 0.2]).posterior()["step_size"] == [0.3, 0.2]


@pytest.mark.parametrize("scheme", ["mle", "variational"])
def test_the_trainer_passes_its_step_sizes_to_every_chain(monkeypatch, scheme):
    cfg = resolve_config(scheme=scheme, backend="reference", **{k: v for k, v in CFG.items() if k != "seed"})
    data = load_dataset("digits", split="train")
    model, trainer = build_model(cfg, data.shape, torch.device("cpu"))
    before = copy.deepcopy(dict(model.config))
    seen = []
    real = jk.langevin

    def spy(energy, z, **kw):
        seen.append((type(energy).__name__, kw["step_size"], kw["n_steps"]))
        return real(energy, z, **kw)

    monkeypatch.setattr(jk, "langevin", spy)
    trainer.scale_step_sizes(0.5)
    values, bad = trainer.step(data.images[:20], generator=jk.PhiloxGenerator(0), backend="reference")
    assert bad is None, values
    want = {("PriorEnergy", 0.2, 4)} | ({("PosteriorEnergy", 0.05, 4)} if scheme == "mle" else set())
    assert set(seen) == want
    assert dict(model.config) == before and model.config["prior_step_size"] == 0.4


def test_rollback_scales_the_trainers_step_sizes_and_never_writes_the_model_config(tmp_path, monkeypatch):
    calls = []
    real_post, real_prior = JEBM.sample_posterior, JEBM.sample_prior

    def posterior(self, x, **kw):
        calls.append(("post", copy.deepcopy(dict(self.config)), kw.get("step_size")))
        z = real_post(self, x, **kw)
        if sum(c[0] == "post" for c in calls) == 5:  # iteration 5's posterior chain blows up, once
            z = [torch.full_like(t, float("nan")) for t in z]
        return z

    def prior(self, n, **kw):
        calls.append(("prior", copy.deepcopy(dict(self.config)), kw.get("step_size")))
        return real_prior(self, n, **kw)

    monkeypatch.setattr(JEBM, "sample_posterior", posterior)
    monkeypatch.setattr(JEBM, "sample_prior", prior)
    res = jebm.train(iters=8, out_dir=tmp_path / "rb", progress=False, checkpoint_every=2, rollback_retries=2,
                     rollback_lr_factor=0.5, rollback_step_factor=0.25, **CFG)
    assert res.rollbacks == 1
    configs = [c[1] for c in calls]
    assert all(c == configs[0] for c in configs), "model.config changed during training"
    assert configs[0]["prior_step_size"] == 0.4 and configs[0]["post_step_size"] == 0.1
    post = [c[2] for c in calls if c[0] == "post"]
    prior_steps = [c[2] for c in calls if c[0] == "prior"]
    # every chain got its step size explicitly: the configured ones up to the divergence, a quarter after
    assert post[:5] == [0.1] * 5 and set(post[5:]) == {0.025} and len(post) == 5 + 4 + 1  # 5..8 redone, snapshot
    assert prior_steps[:5] == [0.4] * 5 and set(prior_steps[5:]) == {0.1}


def test_load_run_builds_the_model_with_the_learned_step_sizes_and_evaluation_uses_them(tmp_path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # learned step sizes: "runs on the reference backend"
        res = jebm.train(iters=3, out_dir=tmp_path / "lss", progress=False, backend="reference",
                         learn_step_size=True, **CFG)
    learned = [float(v) for v in load_checkpoint(res.checkpoint)["modules"]["step_sizes"]["log_step"].exp()]
    assert learned != pytest.approx([0.1, 0.1])  # three steps of Adam moved them
    built = []
    real_init = JEBM.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append(copy.deepcopy(dict(self.config)))

    monkeypatch.setattr(JEBM, "__init__", init)
    run = jebm.load_run(res.run_dir)
    assert len(built) == 1 and dict(run.model.config) == built[0]  # the config as built, untouched since
    assert run.model.config["post_step_size"] == pytest.approx(learned)
    assert run.sampling.post_step_size == pytest.approx(learned) and run.sampling.prior_step_size == 0.4
    assert run.config["post_step_size"] == 0.1  # the run config keeps the starting value
    monkeypatch.undo()

    seen = []
    real_post = JEBM.sample_posterior

    def posterior(self, x, **kw):
        seen.append(kw.get("step_size"))
        return real_post(self, x, **kw)

    monkeypatch.setattr(JEBM, "sample_posterior", posterior)
    evaluate_run(run, tmp_path / "eval", n_test=10, n_hier=2)
    assert seen and all(s == pytest.approx(learned) for s in seen)
