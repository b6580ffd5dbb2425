"""Issue 13: bad inputs fail with one clear line naming the file/option/value and the fix."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from snapgen import data, registry

REPO = Path(__file__).resolve().parents[1]


def _cli(*argv, cwd=None, timeout=60):
    env = {**os.environ, "SNAPGEN_DEBUG": "0"}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO,
                          env={**env, "PYTHONPATH": str(REPO)})


def _npz(path, n_images=4, n_labels=4):
    from PIL import Image
    import io

    chunks = []
    for i in range(n_images):
        buf = io.BytesIO()
        Image.fromarray(np.full((32, 32, 3), 20 * i, np.uint8)).save(buf, format="JPEG")
        chunks.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int64)
    arrays = {"class_names": np.array(["a", "b"])}
    for split in ("train", "test"):
        arrays.update({f"{split}_jpeg": np.concatenate(chunks), f"{split}_offsets": offsets,
                       f"{split}_labels": np.arange(n_labels) % 2, f"{split}_index": np.arange(n_labels)})
    np.savez(path, **arrays)
    return path


# 1. CIFAR-10 npz
def test_cifar10_labels_cut(tmp_path):
    src = _npz(tmp_path / "cut.npz", n_images=4, n_labels=2)
    with pytest.raises(ValueError, match=r"cut\.npz.*4 images.*2 labels"):
        data.load_cifar10("train", path=src, cache_dir=tmp_path / "cache")


def test_cifar10_truncated_npz(tmp_path):
    src = _npz(tmp_path / "cifar10_jpeg.npz")
    raw = src.read_bytes()
    src.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cifar10_jpeg\.npz is truncated or corrupt.*56,033,637 bytes") as info:
        data.load_cifar10("train", path=src, cache_dir=tmp_path / "cache")
    assert not isinstance(info.value, zipfile.BadZipFile)


def test_cifar10_good_npz_still_loads(tmp_path):
    images, labels, names = data.load_cifar10("train", path=_npz(tmp_path / "ok.npz"), cache_dir=tmp_path / "c")
    assert images.shape == (4, 32, 32, 3) and labels.tolist() == [0, 1, 0, 1] and names == ["a", "b"]


# 2. image folders
def _folder(root, classes, n=1):
    from PIL import Image

    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.jpg")
    return root


def test_truncated_jpeg_names_the_file(tmp_path):
    root = _folder(tmp_path / "imgs", ["cat", "dog"])
    bad = root / "dog" / "0.jpg"
    bad.write_bytes(bad.read_bytes()[:60])
    ds = data.ImageDataset.image_folder(root, resolution=8)
    with pytest.raises(OSError, match=r"dog/0\.jpg.*truncated or corrupt"):
        ds.uint8([0, 1])


def test_empty_class_folder_named(tmp_path):
    root = _folder(tmp_path / "imgs", ["cat"])
    (root / "dog").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*dog has no images"):
        data.ImageDataset.image_folder(root, resolution=8)


def test_wnid_folders_take_names_from_synset_mapping(tmp_path):
    root = _folder(tmp_path / "train", ["n99999991", "n99999992"])
    (tmp_path / "LOC_synset_mapping.txt").write_text("n99999991 tench, Tinca tinca\nn99999992 goldfish, Carassius\n")
    ds = data.ImageDataset.image_folder(root, resolution=8)
    assert ds.prompts()[0] == ["a photo of a tench", "a photo of a Tinca tinca"]
    assert ds.prompts()[1][0] == "a photo of a goldfish"


def test_wnid_folders_words_txt_in_folder(tmp_path):
    root = _folder(tmp_path / "train", ["n99999991"])
    (root / "words.txt").write_text("n99999991\tbig fish, fish\n")
    assert data.ImageDataset.image_folder(root, resolution=8).prompts()[0][0] == "a photo of a big fish"


def test_wnid_folders_without_names_fail(tmp_path):
    root = _folder(tmp_path / "train", ["n99999991", "n99999992"])
    with pytest.raises(ValueError, match=r"WordNet ids.*n99999991.*LOC_synset_mapping\.txt"):
        data.ImageDataset.image_folder(root, resolution=8)


def test_imagenet_1k_wnids_resolve_without_names_file(tmp_path):
    root = _folder(tmp_path / "train", ["n01440764"])
    assert data.ImageDataset.image_folder(root, resolution=8).prompts()[0][0] == "a photo of a tench"


# 3. registry deltas
@pytest.mark.parametrize("arch, match", [
    ("snapgen-imagenet+sepconv:abc", r"delta 'sepconv:abc'.*not a number.*sepconv takes one argument"),
    ("baseline+mqa:2", r"delta 'mqa:2'.*mqa takes no argument"),
    ("baseline+sepconv:2.5", r"delta 'sepconv:2.5'.*not an integer"),
    ("baseline+sepconv:0", r"delta 'sepconv:0'.*>= 1"),
    ("baseline+ffn_trim:nan", r"delta 'ffn_trim:nan'.*not a number"),
])
def test_registry_delta_arguments(arch, match):
    with pytest.raises(ValueError, match=match):
        registry.resolve(arch)


def test_registry_delta_arguments_still_work():
    assert registry.resolve("baseline+sepconv:3").sepconv_expansion == 3
    assert registry.resolve("baseline+ffn_trim:2.5").ffn_ratio == 2.5


# 4. profile int options
@pytest.mark.parametrize("argv, option", [
    (["unet", "--arch", "tiny", "--latent", "0"], "--latent 0"),
    (["unet", "--arch", "tiny", "--latent", "-4"], "--latent -4"),
    (["unet", "--arch", "tiny", "--batch", "0"], "--batch 0"),
    (["unet", "--arch", "tiny", "--batch", "-2"], "--batch -2"),
    (["unet", "--arch", "tiny", "--latent", "6"], "--latent 6"),
    (["decoder", "--arch", "sd3", "--latent", "0"], "--latent 0"),
    (["walk", "fig3", "--latent", "-1"], "--latent -1"),
])
def test_profile_int_options(argv, option):
    from snapgen import profile

    with pytest.raises(ValueError, match=option):
        profile.main(argv)


# 5. weights CLI
def test_weights_unknown_name_one_line():
    from snapgen import weights
    from snapgen.training.cli import run_cli

    with pytest.raises(KeyError, match="python -m snapgen.weights"):
        weights.main(["nosuch"])
    result = _cli("-m", "snapgen.weights", "nosuch")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "'nosuch'" in result.stderr and "python -m snapgen.weights" in result.stderr
    assert run_cli(weights.main, ["nosuch"]) == 2


# 6. evals on an empty folder
@pytest.mark.parametrize("module", ["fid", "geneval", "dpg", "clipscore", "imagereward"])
def test_evals_empty_folder(module, tmp_path):
    import importlib

    empty = tmp_path / "empty"
    empty.mkdir()
    main = importlib.import_module(f"evals.{module}").main
    with pytest.raises(FileNotFoundError, match=f"no images in {empty}"):
        main([str(empty), "--out", str(tmp_path / "out")] + ([] if module == "fid" else ["--no-mlflow"]))


def test_evals_empty_prompt_index(tmp_path):
    from evals import common
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "prompts.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match=f"no images in {tmp_path}: .*lists none"):
        common.read_prompt_index(tmp_path)


@pytest.mark.parametrize("module", ["geneval", "imagereward"])
def test_evals_missing_weights_message_only(module, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs" / "00000" / "samples"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "0000.png")
    env_weights = tmp_path / "noweights"
    result = subprocess.run([sys.executable, "-m", f"evals.{module}", str(tmp_path / "imgs"), "--no-mlflow", "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**os.environ, "SNAPGEN_WEIGHTS": str(env_weights), "PYTHONPATH": str(REPO)})
    if result.returncode == 0:
        pytest.skip("judge weights are installed here")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.lstrip().startswith("error: ")  # the message only (it spans lines: where to get weights)


# 7. same-named folders are separate MLflow runs
def test_same_named_folders_are_two_runs(tmp_path, mlflow_uri):
    from evals import common

    a, b = tmp_path / "a" / "imgs", tmp_path / "b" / "imgs"
    a.mkdir(parents=True), b.mkdir(parents=True)
    kw = dict(judge="j", tiny_random=True, settings=None, uri=mlflow_uri)
    run_a = common.log_metrics("imgs", "clipscore", {"clip_score": 0.1}, target=str(a), **kw)
    run_b = common.log_metrics("imgs", "clipscore", {"clip_score": 0.2}, target=str(b), **kw)
    again = common.log_metrics("imgs", "imagereward", {"image_reward": 1.0}, target=str(a), **kw)
    assert run_a != run_b and again == run_a
    assert common.target_key(a) != common.target_key(b)
    assert common.target_key(tmp_path / "run" / "checkpoint") == common.target_key(tmp_path / "run")


# 8. reports.tables
def test_reports_tables_bad_arguments_one_line():
    result = _cli("-m", "reports.tables", "nosuch")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nosuch" in result.stderr.strip().splitlines()[-1]


def test_dead_ray_cluster_is_detected_and_reported():
    """A raylet that dies must not leave the sweep's driver hanging: the watchdog reports it once the grace passes."""
    from ablations.sweep import watch_cluster

    probes, messages = iter([True, False, False, False, False]), []
    watch_cluster(lambda: next(probes), messages.append, interval_s=0.01, grace_s=0.02)
    assert len(messages) == 1 and "Ray cluster" in messages[0] and "rerun" in messages[0]
    flaky = iter([False, True, False, True, False, False, False, False])
    seen = []
    watch_cluster(lambda: next(flaky), seen.append, interval_s=0.01, grace_s=0.025)
    assert len(seen) == 1  # a probe that recovers resets the clock; it fires only after a full dead stretch

    def broken():
        raise ConnectionError("GCS unreachable")

    seen.clear()
    watch_cluster(broken, seen.append, interval_s=0.01, grace_s=0.0)
    assert len(seen) == 1


def test_sweep_checks_every_trials_options_up_front(mlflow_uri, capsys):
    from ablations import sweep

    with pytest.raises(KeyError, match="nosuch"):
        sweep.main(["unet", "--set", "nosuch=1"])
    with pytest.raises(ValueError, match="--seeds"):
        sweep.main(["unet", "--seeds", "0", "--dry-run"])
