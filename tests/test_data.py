"""Data pipeline (snapgen.data): the real CIFAR-10 npz (a few hundred images only), prompts, batches and caches."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from snapgen import data

ASSETS = os.environ.get("SNAPGEN_ASSETS") or str(Path(__file__).resolve().parents[2] / "shared" / "assets")


@pytest.fixture(autouse=True)
def assets(monkeypatch):
    monkeypatch.setenv("SNAPGEN_ASSETS", ASSETS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_load_cifar10_subset_and_cache(cache, monkeypatch):
    images, labels, names = data.load_cifar10("train", limit=300, cache_dir=cache)
    assert images.shape == (300, 32, 32, 3) and images.dtype == np.uint8
    assert names[:2] == ["airplane", "automobile"] and len(names) == 10
    assert set(labels.tolist()) == set(range(10))  # strided subset spans the class-sorted file
    # Channel means near CIFAR-10's (0.491, 0.482, 0.447), which MANIFEST.md reports for the full train split.
    np.testing.assert_allclose(images.reshape(-1, 3).mean(0) / 255, [0.491, 0.482, 0.447], atol=0.05)
    assert len(list((cache / "data").glob("cifar10_train_*.images.npy"))) == 1

    import PIL.Image

    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: pytest.fail("decoded again despite the cache"))
    again = data.load_cifar10("train", limit=300, cache_dir=cache)
    np.testing.assert_array_equal(again[0], images)
    np.testing.assert_array_equal(again[1], labels)
    with pytest.raises(pytest.fail.Exception):  # another limit is another key: decoded anew
        data.load_cifar10("train", limit=50, cache_dir=cache)
    with pytest.raises(ValueError, match="valid choices"):
        data.load_cifar10("val", cache_dir=cache)


def test_test_split_and_dataset_item(cache):
    ds = data.ImageDataset.cifar10("test", resolution=64, limit=20, cache_dir=cache)
    x, label = ds[3]
    assert len(ds) == 20 and x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert -1 <= x.min() < 0 < x.max() <= 1 and 0 <= label < 10


def test_subset_npz_through_env_matches_the_full_file(cache, tmp_path, monkeypatch):
    subset = data.write_cifar10_subset(tmp_path / "sub.npz", n_train=50, n_test=20)
    full_images, full_labels, _ = data.load_cifar10("train", cache_dir=cache, limit=50)
    monkeypatch.setenv("SNAPGEN_CIFAR10_NPZ", str(subset))
    images, labels, names = data.load_cifar10("train", cache_dir=tmp_path / "c")
    assert images.shape == (50, 32, 32, 3) and len(names) == 10 and set(labels.tolist()) == set(range(10))
    # The same strided picks as `limit=50` on the full file: identical pixels and labels.
    assert np.array_equal(images, full_images) and np.array_equal(labels, full_labels)
    assert len(data.load_cifar10("test", cache_dir=tmp_path / "c")[1]) == 20


def test_missing_file_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPGEN_ASSETS", str(tmp_path))
    monkeypatch.setenv("SNAPGEN_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"cifar10_jpeg\.npz.*56,033,637 bytes"):
        data.load_cifar10("train", limit=10, cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"cifar10_jpeg\.npz \(56,033,637 bytes"):
        data.load_cifar10("train", path=tmp_path / "cifar10_jpeg.npz", cache_dir=tmp_path)


def test_class_prompts():
    prompts = data.class_prompts(["airplane", "automobile", "cat", "unlisted"])
    assert prompts[0] == ["a photo of an airplane", "a photo of an aeroplane", "a photo of a plane"]
    assert prompts[1] == ["a photo of an automobile", "a photo of a car"]
    assert prompts[2] == ["a photo of a cat"] and prompts[3] == ["a photo of an unlisted"]


def _toy_data(seed=0, n=20, batch_size=8):
    images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 2, 2, 3).contiguous()
    labels = torch.arange(n) % 2
    return data.ClassConditionalData(images, labels, [["a photo of a cat"], ["a photo of a car", "a photo of an auto"]],
                                     batch_size, seed=seed)


def _ids(batch):
    return ((batch["x0"][:, 0, 0, 0] + 1) * 127.5).round().long()


def test_batches_deterministic_resumable_and_cover_epochs():
    a, b = _toy_data(), _toy_data()
    batches = [a.batch(s) for s in range(5)]  # 40 positions = 2 epochs of 20
    for s in (4, 2, 0):  # any order, fresh instance: same batches
        for k in batches[s]:
            torch.testing.assert_close(b.batch(s)[k], batches[s][k])
    resumed = next(_toy_data().iterate(3))
    torch.testing.assert_close(resumed["prompt_idx"], batches[3]["prompt_idx"])
    ids = torch.cat([_ids(x) for x in batches])
    assert torch.bincount(ids[:20], minlength=20).tolist() == [1] * 20  # each epoch is a permutation
    assert torch.bincount(ids[20:], minlength=20).tolist() == [1] * 20
    assert not torch.equal(ids[:20], ids[20:])
    assert not torch.equal(_ids(_toy_data(seed=1).batch(0)), ids[:8])
    first = batches[0]
    assert first["x0"].shape == (8, 3, 2, 2) and first["label"].shape == (8,)
    torch.testing.assert_close(first["label"], ids[:8] % 2)
    # Class 0 has prompt 0; class 1 draws prompts 1 or 2, both of them over enough draws.
    pidx = torch.cat([x["prompt_idx"] for x in batches])
    labels = torch.cat([x["label"] for x in batches])
    assert (pidx[labels == 0] == 0).all() and set(pidx[labels == 1].tolist()) == {1, 2}
    assert _toy_data().prompts == ["a photo of a cat", "a photo of a car", "a photo of an auto"]


def test_image_folder_with_imagenet_names(tmp_path):
    from PIL import Image

    for wnid, size in [("n01440764", (40, 30)), ("n01443537", (30, 50))]:
        (tmp_path / wnid).mkdir()
        for i in range(2):
            Image.fromarray(np.full((size[1], size[0], 3), 60 * i, np.uint8)).save(tmp_path / wnid / f"{i}.JPEG")
    ds = data.ImageDataset.image_folder(tmp_path, resolution=16)
    assert len(ds) == 4 and ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.prompts()[0][0] == "a photo of a tench" and len(ds.prompts()[1]) >= 2  # goldfish, Carassius auratus
    x, label = ds[3]
    assert x.shape == (3, 16, 16) and label == 1
    with pytest.raises(FileNotFoundError, match="class folders"):
        data.ImageDataset.image_folder(tmp_path / "n01440764" / "missing")


def test_latent_and_text_caches_rebuild_on_key_change(cache, tmp_path):
    ds = data.ImageDataset.cifar10("test", resolution=32, limit=12, cache_dir=cache)
    calls = []

    def encode_fn(x):  # a stand-in autoencoder: 4x average pooling
        calls.append(x.shape[0])
        return torch.nn.functional.avg_pool2d(x, 4)

    first = data.latent_cache(ds, encode_fn, "cifar10", "test", "pool4", batch_size=5, cache_dir=tmp_path)
    assert first["latents"].shape == (12, 3, 8, 8) and calls == [5, 5, 2]
    again = data.latent_cache(ds, encode_fn, "cifar10", "test", "pool4", batch_size=5, cache_dir=tmp_path)
    assert calls == [5, 5, 2]
    torch.testing.assert_close(again["latents"], first["latents"])
    data.latent_cache(ds, encode_fn, "cifar10", "test", "pool4-v2", batch_size=12, cache_dir=tmp_path)
    ds.resolution = 16
    small = data.latent_cache(ds, encode_fn, "cifar10", "test", "pool4", batch_size=12, cache_dir=tmp_path)
    assert calls == [5, 5, 2, 12, 12] and small["latents"].shape == (12, 3, 4, 4)

    class FakeEncoder:
        name, encoded = "fake", []

        def encode(self, prompts):
            self.encoded += prompts
            n = torch.tensor([[len(p)] for p in prompts], dtype=torch.float32)
            return n.expand(-1, 3)[:, :, None].expand(-1, 3, 2), torch.ones(len(prompts), 3, dtype=torch.bool), n

    enc = FakeEncoder()
    out = data.text_embedding_cache(["a", "bb"], enc, cache_dir=tmp_path)
    data.text_embedding_cache(["a", "bb"], enc, cache_dir=tmp_path)
    assert enc.encoded == ["a", "bb"] and out["pooled"][:, 0].tolist() == [1.0, 2.0]
    data.text_embedding_cache(["a", "ccc"], enc, cache_dir=tmp_path)
    assert enc.encoded == ["a", "bb", "a", "ccc"]


def test_prompt_conditioning_encodes_each_distinct_prompt_once(tmp_path, monkeypatch):
    """Rows follow the prompts; repeats share one encoding, and any batch of the same distinct prompts (in the same
    first-seen order) hits the same cache entry, whatever its length: what a box without the text encoder relies on."""
    from snapgen import conditioning

    encoded = []

    class FakeEncoder:
        name = "fake"

        def encode(self, prompts):
            encoded.extend(prompts)
            n = torch.tensor([[len(p)] for p in prompts], dtype=torch.float32)
            return n[:, :, None].expand(-1, 3, 2), torch.ones(len(prompts), 3, dtype=torch.bool), n

    monkeypatch.setenv("SNAPGEN_CACHE", str(tmp_path))
    monkeypatch.setattr(conditioning, "text_encoder", lambda name: FakeEncoder())
    long = conditioning.PromptConditioning(["a", "bbb", "a", "bbb", "a"], "fake", "cpu")
    assert long.hidden[:, 0, 0].tolist() == [1.0, 3.0, 1.0, 3.0, 1.0] and encoded == ["a", "bbb"]
    short = conditioning.PromptConditioning(["a", "bbb"], "fake", "cpu")
    assert encoded == ["a", "bbb"]  # served by the cache
    torch.testing.assert_close(short.hidden, long.hidden[:2])
