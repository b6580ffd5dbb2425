"""evals.fid: the Fréchet distance against its closed form, and the whole path (run -> samples -> features -> FID)
with a randomly initialised Inception (torchvision's inception_v3, weights=None): numbers are meaningless, the path
and the caching are what is tested."""

import numpy as np
import pytest
import torch

from evals import fid


def test_frechet_distance_closed_form_for_commuting_gaussians():
    rng = np.random.default_rng(0)
    d = 6
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # a shared eigenbasis: the covariances commute
    s1, s2 = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    sigma1, sigma2 = q @ np.diag(s1) @ q.T, q @ np.diag(s2) @ q.T
    # Tr(S1 + S2 - 2 (S1 S2)^1/2) = sum_i (sqrt(s1_i) - sqrt(s2_i))^2 when S1, S2 share eigenvectors
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert fid.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-6)
    assert fid.frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_matches_cleanfid_and_survives_few_samples():
    from cleanfid.fid import frechet_distance as cleanfid_frechet

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) * 1.5 + 0.3
    stats_a, stats_b = fid.statistics(a), fid.statistics(b)
    assert fid.frechet_distance(*stats_a, *stats_b) == pytest.approx(cleanfid_frechet(*stats_a, *stats_b), rel=1e-6)
    few_a, few_b = fid.statistics(rng.normal(size=(5, 64))), fid.statistics(rng.normal(size=(5, 64)))  # rank 4 of 64
    assert np.isfinite(fid.frechet_distance(*few_a, *few_b)) and fid.frechet_distance(*few_a, *few_b) > 0
    assert fid.frechet_distance(*few_a, *few_a) == pytest.approx(0.0, abs=1e-3)  # sqrt of round-off eigenvalues


def test_statistics_recover_a_gaussian():
    rng = np.random.default_rng(1)
    cov = np.array([[2.0, 0.3], [0.3, 0.5]])
    x = rng.multivariate_normal([1.0, -2.0], cov, size=20000)
    mu, sigma = fid.statistics(x)
    assert np.allclose(mu, [1.0, -2.0], atol=0.05) and np.allclose(sigma, cov, atol=0.05)


def test_missing_weights_name_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("SNAPGEN_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setenv("SNAPGEN_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(fid.FIDWeightsMissing, match="inception-2015-12-05.pt"):
        fid.inception_feature_fn()


@pytest.fixture(scope="module")
def random_inception_fn():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
    net.fc = torch.nn.Identity()  # the 2048-d pool features, as the FID Inception
    net.eval()
    return fid.make_feature_fn(lambda x: net(x / 127.5 - 1.0), batch_size=8)


def test_fid_of_a_run_with_random_inception(tmp_path, random_inception_fn):
    from snapgen.train import make_config, train

    run = tmp_path / "run"
    cfg = make_config("smoke", arch="baseline", steps=2, val_every=2, ckpt_every=2, val_size=8, samples_per_class=1,
                      sample_steps=2)
    train(cfg, run, progress=False)
    cache = tmp_path / "stats"
    result = fid.fid_of_run(run, num_samples=4, sample_steps=2, batch_size=3, feature_fn=random_inception_fn,
                            feature_id="random-inception", reference_limit=8, cache_dir=cache,
                            samples_out=tmp_path / "samples.npz")
    assert np.isfinite(result["fid"]) and result["fid"] > 0 and result["num_samples"] == 4
    assert "8 images at 16x16" in result["reference"]
    assert len(list(cache.glob("*.npz"))) == 1  # reference statistics computed once, cached by content
    samples = np.load(tmp_path / "samples.npz")["images"]
    assert samples.shape == (4, 16, 16, 3) and samples.dtype == np.uint8
    # each sample is seeded by its global index: a different batch size gives the same images
    again = fid.generate(run, num_samples=4, sample_steps=2, batch_size=4)
    assert np.array_equal(again, samples)
    # a second FID of the same run reads the cached reference statistics and gives the same number
    assert fid.fid_of_images(samples, *fid.cifar10_reference(16, limit=8), random_inception_fn, "random-inception",
                             cache)["fid"] == pytest.approx(result["fid"], rel=1e-6)
    assert len(list(cache.glob("*.npz"))) == 1
