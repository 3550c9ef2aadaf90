"""Image-quality metrics with no download (``jebm.evaluate.frechet``, ``inception``,
``classifier``): the Frechet distance, the Inception-v3 feature network (from a weights file), FID
end to end with cached training statistics, and the classifier Frechet distance on the digits.

The FID test uses a randomly initialised Inception weights file written by the test: it checks the
whole path (loading, 299 x 299 features, statistics, cache, eval.json), not FID values, which
need the real weights. That our network computes what pytorch-fid's does was checked once, by
hand, on shared random weights; the architecture check here is the parameter count of
torchvision's documentation.
"""
import json

import numpy as np
import pytest
import torch

import jebm
from jebm.cli import main
from jebm.data import load_dataset
from jebm.evaluate import frechet as fd
from jebm.evaluate.classifier import CLASSIFIER_NAME, _accuracy, ensure_classifier, load_classifier, train_classifier
from jebm.evaluate.inception import InceptionV3Features, load_inception

TINY = dict(dims=[6, 3], ebm_hidden=[16], gauss_hidden=[16], dec_hidden=[32], prior_steps=4, post_steps=4,
            batch_size=50, sample_every=0, n_samples=4)


def _spd(d, seed):
    g = np.random.default_rng(seed)
    a = g.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


# ---- the Frechet distance -----------------------------------------------------------------------

def test_frechet_distance_matches_closed_forms():
    mu, s = np.arange(4.0), _spd(4, 0)
    assert fd.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    # diagonal covariances: ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    want = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 0.5) ** 2
    assert fd.frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(want, rel=1e-12)


def test_frechet_distance_matches_the_sqrtm_formula_on_full_covariances():
    from scipy import linalg
    for d, seed in ((3, 1), (17, 2)):
        s1, s2 = _spd(d, seed), _spd(d, seed + 10)
        m1, m2 = np.random.default_rng(seed).standard_normal((2, d))
        covmean = linalg.sqrtm(s1 @ s2).real   # pytorch-fid's route
        want = (m1 - m2) @ (m1 - m2) + np.trace(s1 + s2 - 2 * covmean)
        assert fd.frechet_distance(m1, s1, m2, s2) == pytest.approx(want, rel=1e-8)


def test_frechet_distance_is_finite_for_singular_covariances_and_rejects_bad_shapes():
    # fewer samples than features: rank-deficient covariances, as with a small N against 2048 features
    f1, f2 = np.random.default_rng(0).standard_normal((2, 5, 20))
    v = fd.frechet_distance(*fd.feature_statistics(f1), *fd.feature_statistics(f2))
    assert np.isfinite(v) and v > 0
    with pytest.raises(ValueError, match="means \\[D\\] and covariances"):
        fd.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="N >= 2"):
        fd.feature_statistics(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN or inf"):
        fd.feature_statistics(np.array([[0.0, np.nan], [1.0, 2.0]]))


def test_low_rank_route_gives_the_same_distance():
    g = np.random.default_rng(5)
    ref = g.standard_normal((40, 12)) @ g.standard_normal((12, 12))
    mu, s = fd.feature_statistics(ref)
    for n in (3, 8, 30):   # N - 1 < D takes the N x N route, N - 1 >= D the D x D one
        f = g.standard_normal((n, 12)) + 0.5
        # rel 1e-7: the D x D route takes square roots of the singular covariance's zero eigenvalues,
        # which rounding leaves at ~1e-15 (sqrt: ~3e-8 each); the N x N route has none
        assert fd.frechet_distance_to_features(f, mu, s) == pytest.approx(
            fd.frechet_distance(*fd.feature_statistics(f), mu, s), rel=1e-7)
    with pytest.raises(ValueError, match="12 dimensions"):
        fd.frechet_distance_to_features(f[:3], mu[:5], s[:5, :5])
    with pytest.raises(ValueError, match="of one D"):
        fd.frechet_distance_to_features(f, mu[:5], s[:5, :5])


def test_feature_statistics_are_the_unbiased_mean_and_covariance():
    f = np.random.default_rng(3).standard_normal((50, 4))
    mu, s = fd.feature_statistics(torch.from_numpy(f).float())
    np.testing.assert_allclose(mu, f.astype(np.float32).mean(0), rtol=1e-6)
    np.testing.assert_allclose(s, np.cov(f.astype(np.float32), rowvar=False), rtol=1e-5, atol=1e-7)


def test_quantize_rounds_to_8_bit_levels():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.5])
    q = fd.quantize(x)
    assert q.min() >= -1 and q.max() <= 1
    torch.testing.assert_close((q + 1) * 127.5, torch.round((q + 1) * 127.5))


# ---- Inception-v3 from a weights file ------------------------------------------------------------

def test_inception_has_torchvisions_parameter_count():
    # torchvision documents 27,161,264 parameters for inception_v3 (with its auxiliary classifier,
    # 3,326,696 of them, which the features do not have); the FID variant's classifier has 1008 rows.
    n = sum(p.numel() for p in InceptionV3Features(fid=False).parameters())
    assert n == 27_161_264 - 3_326_696
    n_fid = sum(p.numel() for p in InceptionV3Features(fid=True).parameters())
    assert n_fid == n + 8 * 2049


def _weights_file(path, fid=True, seed=0):
    """A randomly initialised Inception whose features do not vanish (Kaiming-scaled convolutions)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = InceptionV3Features(fid=fid)
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


def test_load_inception_reads_both_weight_kinds_and_rejects_others(tmp_path):
    w = _weights_file(tmp_path / "fid.pt")
    net = load_inception(w)
    assert net.fid and not net.training
    f = net(torch.rand(2, 1, 8, 8) * 2 - 1)
    assert f.shape == (2, 2048) and torch.isfinite(f).all() and float(f.detach().std(0).mean()) > 1e-3
    # torchvision's files carry the auxiliary classifier: it is ignored
    tv = InceptionV3Features(fid=False).state_dict()
    tv["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    torch.save(tv, tmp_path / "tv.pt")
    assert not load_inception(tmp_path / "tv.pt").fid
    with pytest.raises(ValueError, match="no such file.*nothing is downloaded"):
        load_inception(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable torch file"):
        load_inception(tmp_path / "junk.pt")
    torch.save({"fc.weight": torch.zeros(10, 2048)}, tmp_path / "small.pt")
    with pytest.raises(ValueError, match="10 rows"):
        load_inception(tmp_path / "small.pt")
    torch.save({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}, tmp_path / "cut.pt")
    with pytest.raises(ValueError, match="do not match Inception-v3"):
        load_inception(tmp_path / "cut.pt")


# ---- end to end ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return jebm.train(iters=3, out_dir=tmp_path_factory.mktemp("fid") / "run", progress=False, **TINY)


def test_fid_end_to_end_from_a_weights_file_with_cached_statistics(tiny_run, tmp_path):
    """Random Inception weights written here: this checks the path (features, statistics, cache,
    eval.json and the CLI), not FID values."""
    w = _weights_file(tmp_path / "incep.pt")
    cache = tmp_path / "cache"
    argv = ["eval", str(tiny_run.run_dir), "--out", str(tmp_path / "ev"), "--n-test", "4", "--n-hier", "2",
            "--fid-weights", str(w), "--fid-cache", str(cache), "--fd-n", "3", "--fd-n-train", "3", "--no-progress"]
    assert main(argv) == 0
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())["fid"]
    assert np.isfinite(res["fid"]) and res["fid"] > 0
    assert res["n_samples"] == 3 and res["n_train"] == 3 and res["inception"].startswith("pytorch-fid")
    assert not res["train_statistics_cached"]
    stats = list(cache.glob("*.npz"))
    assert [p.name for p in stats] == [f"digits-{fd.images_digest(load_dataset('digits').images[:3])[:12]}-"
                                      f"{res['weights_sha256'][:12]}-n3.npz"]
    # the second evaluation reads the training statistics from the cache and gives the same FID
    run = jebm.load_run(tiny_run.run_dir)
    again = fd.image_quality(run, fid_weights=w, n=3, n_train=3, cache_dir=cache)["fid"]
    assert again["train_statistics_cached"] and again["fid"] == pytest.approx(res["fid"], rel=1e-9)
    # the training statistics are those of the first three training images
    net = load_inception(w)
    mu, _ = fd.feature_statistics(fd.extract_features(net, load_dataset("digits").images[:3]))
    with np.load(stats[0]) as z:
        np.testing.assert_allclose(z["mu"], mu, rtol=1e-5, atol=1e-7)


def test_eval_rejects_bad_fid_arguments(tiny_run, tmp_path, capsys):
    base = ["eval", str(tiny_run.run_dir), "--out", str(tmp_path), "--n-test", "4", "--n-hier", "2", "--no-progress"]
    assert main(base + ["--fid-weights", str(tmp_path / "nope.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(base + ["--classifier-fd", "--fd-n", "1"]) == 2
    assert "int >= 2" in capsys.readouterr().err


def test_classifier_separates_digits_and_its_features_see_the_difference():
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    clf = train_classifier(train.images, train.labels, steps=100, seed=0)   # 0.88 test accuracy
    assert _accuracy(clf, test.images, test.labels) > 0.8   # 10 classes: chance is 0.1
    ref = fd.feature_statistics(fd.extract_features(clf.features, train.images))

    def dist(images):
        return fd.frechet_distance_to_features(fd.extract_features(clf.features, images), *ref)
    same, held_out = dist(train.images), dist(test.images)
    noise = dist(torch.rand(test.images.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    inverted = dist(-test.images)
    # zero up to rounding: dead ReLU features give zero eigenvalues, whose square roots turn rounding
    # of ~1e-16 relative into ~1e-8
    assert abs(same) < 1e-7 * np.trace(ref[1])
    assert held_out < 0.2 * min(noise, inverted)
    with pytest.raises(ValueError, match="labelled data set"):
        train_classifier(train.images, None)


def test_classifier_fd_is_saved_with_the_run_and_reused(tiny_run):
    run = jebm.load_run(tiny_run.run_dir)
    out = fd.image_quality(run, classifier=True, n=40, n_train=200, classifier_steps=60)["classifier_fd"]
    path = tiny_run.run_dir / CLASSIFIER_NAME
    assert path.is_file() and (tiny_run.run_dir / "classifier_stats.npz").is_file()
    assert np.isfinite(out["fd"]) and out["fd"] > 0 and out["feature_dim"] == 128
    assert out["classifier"]["steps"] == 60 and 0 < out["classifier"]["test_accuracy"] <= 1
    assert not out["train_statistics_cached"]
    assert 0 < out["test_split_fd"] < out["fd"] and out["n_test_split"] == 359   # 3 iterations: far from the data
    again = fd.image_quality(run, classifier=True, n=40, n_train=200)["classifier_fd"]
    assert again["train_statistics_cached"] and again["fd"] == pytest.approx(out["fd"], rel=1e-9)
    clf, info = load_classifier(path)
    assert info["dataset"] == "digits" and info["exclude_class"] is None
    with pytest.raises(ValueError, match="not this run's"):
        ensure_classifier(tiny_run.run_dir, {**run.config, "exclude_class": 3})
