"""Scores at posterior samples (``jebm.evaluate.scores``): AUPRC is average precision, the outlier
score is the negative log joint at a posterior sample, a trained model scores inverted digits as
anomalous."""
import pytest
import torch

import jebm
from jebm.data import load_dataset
from jebm.evaluate.scores import (
    SCORE_PRIORS,
    auprc,
    auroc,
    eval_generator,
    outlier_score_parts,
    outlier_scores,
    weighted_score,
)

TINY = dict(dims=[6, 3], ebm_hidden=[16], gauss_hidden=[16], dec_hidden=[32], infer_hidden=[32],
            infer_head_hidden=[16], prior_steps=5, post_steps=5, batch_size=50, sample_every=0, n_samples=9)


@pytest.fixture(scope="module")
def mle_run(tmp_path_factory):
    return jebm.train(iters=60, out_dir=tmp_path_factory.mktemp("ev") / "mle", progress=False, exclude_class=1,
                      **{**TINY, "post_steps": 10})


def test_auprc_is_average_precision():
    # ranked: pos (P=1/1), neg, pos (P=2/3), neg  ->  AP = (1 + 2/3) / 2
    ap = auprc(torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.tensor([1, 0, 1, 0]))
    assert ap == pytest.approx(5 / 6)
    assert auprc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([True, False, False])) == 1.0
    with pytest.raises(ValueError, match="both positives"):
        auprc(torch.tensor([1.0, 2.0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="NaN or inf"):
        auprc(torch.tensor([float("nan"), 2.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="1-D of one length"):
        auprc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1]))


def test_outlier_score_is_the_negative_log_joint_at_a_posterior_sample(mle_run):
    run = jebm.load_run(mle_run.run_dir)
    x = load_dataset("digits", split="test").images[:20]
    s = outlier_scores(run.model, x, seed=4)
    assert s.shape == (20,) and torch.equal(s, outlier_scores(run.model, x, seed=4))
    z = run.model.sample_posterior(x, generator=eval_generator(4))
    torch.testing.assert_close(s, run.model.neg_log_joint(x, z).detach())


def test_trained_model_scores_inverted_digits_as_anomalous(mle_run):
    # Inverted digits (white background) are far from anything the model was trained on: even a
    # briefly trained model must separate them almost perfectly.
    run = jebm.load_run(mle_run.run_dir)
    digits = load_dataset("digits", split="test").images[:100]
    s_digits = outlier_scores(run.model, digits)
    s_inverted = outlier_scores(run.model, -digits)
    assert float(s_inverted.mean()) > float(s_digits.mean())
    labels = torch.cat([torch.zeros(100), torch.ones(100)])
    assert auprc(torch.cat([s_digits, s_inverted]), labels) > 0.95




def test_score_parts_average_chains_and_add_up(mle_run):
    run = jebm.load_run(mle_run.run_dir)
    x = load_dataset("digits", split="test").images[:12]
    one = outlier_score_parts(run.model, x, seed=4, n_chains=1)
    # one chain: the score of outlier_scores, and score = recon + U, U = -F - log p_beta
    torch.testing.assert_close(one["score"], outlier_scores(run.model, x, seed=4))
    torch.testing.assert_close(one["score"], one["recon"] + one["U"])
    torch.testing.assert_close(one["U"], -one["F"] - one["log_p_beta"])
    four = outlier_score_parts(run.model, x, seed=4, n_chains=4, batch_size=20)  # 5 images x 4 chains per call
    assert all(v.shape == (12,) for v in four.values())
    torch.testing.assert_close(four["score"], outlier_scores(run.model, x, seed=4, n_chains=4, batch_size=20))
    # the average of 4 chains is the mean of the per-chain negative log joints of those chains
    z = run.model.sample_posterior(x.repeat(4, 1, 1, 1), generator=eval_generator(4))
    direct = run.model.neg_log_joint(x.repeat(4, 1, 1, 1), z).detach().reshape(4, 12).mean(0)
    torch.testing.assert_close(outlier_score_parts(run.model, x, seed=4, n_chains=4)["score"], direct)
    with pytest.raises(ValueError, match="n_chains must be an int >= 1"):
        outlier_score_parts(run.model, x, n_chains=0)


def test_auroc():
    assert auroc(torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.tensor([1, 0, 1, 0])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="both positives"):
        auroc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1]))


def test_weighted_score_recombines_the_parts(mle_run):
    run = jebm.load_run(mle_run.run_dir)
    x = load_dataset("digits", split="test").images[:12]
    parts = outlier_score_parts(run.model, x, seed=4, n_chains=2)
    # the model's own sigma_x with U(z): the negative log joint itself
    torch.testing.assert_close(weighted_score(parts, sigma_x=run.model.sigma_x, prior="U"), parts["score"])
    torch.testing.assert_close(parts["recon"], parts["sq"] / (2 * run.model.sigma_x ** 2))
    # another weight, and -F alone in place of U
    torch.testing.assert_close(weighted_score(parts, sigma_x=5.0, prior="F"), parts["sq"] / 50.0 - parts["F"])
    assert set(SCORE_PRIORS) == {"U", "F"}
    with pytest.raises(ValueError, match="prior must be one of"):
        weighted_score(parts, sigma_x=1.0, prior="eps")
    with pytest.raises(ValueError, match="sigma_x must be a finite number > 0"):
        weighted_score(parts, sigma_x=0.0)


def test_refinement_descends_the_posterior_energy(mle_run):
    # noise-free steps from the chains' ends go downhill on U(z | x) = recon + U (small steps)
    run = jebm.load_run(mle_run.run_dir)
    x = load_dataset("digits", split="test").images[:40]
    noisy = outlier_score_parts(run.model, x, seed=4, n_chains=2, sampling=run.sampling)
    refined = outlier_score_parts(run.model, x, seed=4, n_chains=2, sampling=run.sampling, refine_steps=20)
    assert float(refined["score"].mean()) < float(noisy["score"].mean())
    assert not torch.equal(refined["score"], noisy["score"])
    with pytest.raises(ValueError, match="refine_steps must be an int >= 0"):
        outlier_score_parts(run.model, x, refine_steps=-1)
