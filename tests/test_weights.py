"""snapgen.weights: search order, size check, offline refusal and the one clear error."""

import os
import socket
from pathlib import Path

import pytest

from snapgen import weights
from snapgen.weights import REGISTRY, WeightEntry, WeightsNotFoundError, find, find_dir, search

TAESD3_DECODER = REGISTRY["taesd3_decoder"]


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Empty assets / weights / HF cache / torch home, wired through the environment; network calls forbidden."""
    places = {name: tmp_path / name for name in ("assets", "weights", "hf_hub", "torch")}
    for path in places.values():
        path.mkdir()
    monkeypatch.setenv("SNAPGEN_ASSETS", str(places["assets"]))
    monkeypatch.setenv("SNAPGEN_WEIGHTS", str(places["weights"]))
    monkeypatch.setenv("HF_HUB_CACHE", str(places["hf_hub"]))
    monkeypatch.setenv("TORCH_HOME", str(places["torch"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(weights.urllib.request, "urlopen", no_network)
    return places


def _write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return path


def _hf_cache_file(hub: Path, repo_id: str, filename: str, content: bytes = b"x") -> Path:
    """Lay a file out exactly as huggingface_hub's cache does (refs/main -> snapshots/<commit>/<file>)."""
    repo_dir = hub / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    path = repo_dir / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_assets_win_over_weights_dir(dirs):
    in_weights = _write(dirs["weights"] / TAESD3_DECODER.relpath, TAESD3_DECODER.size)
    in_assets = _write(dirs["assets"] / TAESD3_DECODER.relpath, TAESD3_DECODER.size)
    assert find("taesd3_decoder") == in_assets
    in_assets.unlink()
    assert find("taesd3_decoder") == in_weights


def test_weights_dir_defaults_to_user_cache(dirs, monkeypatch, tmp_path):
    monkeypatch.delenv("SNAPGEN_WEIGHTS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = _write(tmp_path / "home/.cache/snapgen" / TAESD3_DECODER.relpath, TAESD3_DECODER.size)
    assert find("taesd3_decoder") == expected


def test_hf_cache_is_searched_after_local_dirs(dirs):
    cached = _hf_cache_file(dirs["hf_hub"], "THUDM/ImageReward", "med_config.json", b"{}")
    assert find("imagereward_med_config") == cached
    local = _write(dirs["weights"] / REGISTRY["imagereward_med_config"].relpath, 2)
    assert find("imagereward_med_config") == local


def test_find_dir_uses_hub_snapshot_subfolder(dirs):
    _hf_cache_file(dirs["hf_hub"], "stabilityai/stable-diffusion-3-medium-diffusers", "vae/config.json", b"{}")
    found = find_dir("sd3_vae")
    assert found.name == "vae" and (found / "config.json").is_file()


def test_find_dir_rejects_directory_without_marker(dirs):
    entry = REGISTRY["clip_vit_l14"]
    (dirs["assets"] / entry.relpath).mkdir(parents=True)
    with pytest.raises(WeightsNotFoundError, match="no config.json inside"):
        find_dir("clip_vit_l14")
    (dirs["assets"] / entry.relpath / "config.json").write_text("{}")
    assert find_dir("clip_vit_l14") == dirs["assets"] / entry.relpath


def test_torch_hub_checkpoint_dir_is_searched(dirs):
    entry = REGISTRY["pytorch_fid_inception"]
    path = _write(dirs["torch"] / "hub" / "checkpoints" / entry.torch_hub_filename, entry.size)
    assert find("pytorch_fid_inception") == path


def test_wrong_size_is_rejected_and_reported(dirs):
    bad = _write(dirs["assets"] / TAESD3_DECODER.relpath, 100)
    good = _write(dirs["weights"] / TAESD3_DECODER.relpath, TAESD3_DECODER.size)
    assert find("taesd3_decoder") == good  # the truncated copy is skipped, the search goes on
    good.unlink()
    with pytest.raises(WeightsNotFoundError) as info:
        find("taesd3_decoder")
    assert f"{bad}" in str(info.value) and "100 bytes, expected 2,464,414" in str(info.value)


def test_verify_checks_sha256(dirs):
    _write(dirs["assets"] / TAESD3_DECODER.relpath, TAESD3_DECODER.size)  # right size, wrong bytes
    assert find("taesd3_decoder") is not None
    with pytest.raises(WeightsNotFoundError, match="sha256"):
        find("taesd3_decoder", verify=True)


def test_error_names_file_size_places_and_command(dirs):
    with pytest.raises(WeightsNotFoundError) as info:
        find("taesd3_decoder")
    message = str(info.value)
    assert "taesd3_decoder" in message and "taesd/taesd3_decoder.safetensors" in message
    assert "2,464,414 bytes" in message
    assert str(dirs["assets"]) in message and str(dirs["weights"]) in message
    assert "HF_HUB_OFFLINE" in message  # why no download was tried
    assert f"curl -L -o {dirs['weights'] / TAESD3_DECODER.relpath} {TAESD3_DECODER.url}" in message


def test_error_for_hub_entry_gives_hf_command(dirs):
    with pytest.raises(WeightsNotFoundError) as info:
        find_dir("sd35_large_turbo_transformer")
    message = str(info.value)
    assert "hf download stabilityai/stable-diffusion-3.5-large-turbo --include 'transformer/*'" in message
    assert "gated" in message and str(dirs["hf_hub"]) in message


def test_offline_never_downloads(dirs, monkeypatch):
    monkeypatch.setattr(weights, "_download", lambda entry: pytest.fail("download attempted while offline"))
    for name, entry in REGISTRY.items():
        with pytest.raises(WeightsNotFoundError):
            (find_dir if entry.is_dir else find)(name)


def test_online_download_is_tried_and_its_failure_reported(dirs, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []

    def failing_download(entry: WeightEntry):
        calls.append(entry.name)
        raise OSError("connection refused")

    monkeypatch.setattr(weights, "_download", failing_download)
    with pytest.raises(WeightsNotFoundError, match="failed \\(OSError: connection refused\\)"):
        find("cleanfid_inception")
    assert calls == ["cleanfid_inception"]
    with pytest.raises(WeightsNotFoundError, match="no automatic download"):
        find("cifar10_npz")  # derived file: nothing to download
    assert calls == ["cleanfid_inception"]


def test_url_download_writes_verified_file(dirs, monkeypatch):
    """The URL path streams to a temp file and keeps it only if its size and hash match."""
    import hashlib
    import io

    payload = b"prompt one\nprompt two\n"
    entry = WeightEntry(name="toy", relpath="toy/prompts.txt", description="toy", size=len(payload),
                        sha256=hashlib.sha256(payload).hexdigest(), url="https://example.invalid/prompts.txt")
    monkeypatch.setitem(REGISTRY, "toy", entry)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(weights.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    path = find("toy")
    assert path == dirs["weights"] / "toy/prompts.txt" and path.read_bytes() == payload

    monkeypatch.setitem(REGISTRY, "toy", WeightEntry(**{**entry.__dict__, "relpath": "toy/bad.txt", "sha256": "0" * 64}))
    with pytest.raises(WeightsNotFoundError, match="rejected: sha256"):
        find("toy")
    assert not any((dirs["weights"] / "toy").glob("*.part")) and not (dirs["weights"] / "toy/bad.txt").exists()


def test_unknown_name_and_wrong_kind(dirs):
    with pytest.raises(KeyError, match="known entries: .*taesd3_decoder"):
        find("taesd4_decoder")
    with pytest.raises(ValueError, match="use find_dir"):
        find("clip_vit_l14")


def test_search_report_lists_places_in_order(dirs):
    report = search("pytorch_fid_inception")
    assert [place for place, _, _ in report.tried] == [
        "$SNAPGEN_ASSETS", "$SNAPGEN_WEIGHTS", "torch hub checkpoints"
    ]
    assert report.found is None


def test_registry_entries_are_complete():
    for name, entry in REGISTRY.items():
        assert entry.name == name
        assert entry.downloadable or entry.manual, name  # every entry says how to get it
        assert not (entry.is_dir and entry.hf_filename), name


def test_cli_lists_found_and_missing(dirs, capsys):
    _write(dirs["assets"] / TAESD3_DECODER.relpath, TAESD3_DECODER.size)
    assert weights.main(["taesd3_decoder", "taesd3_encoder", "--how"]) == 0
    out = capsys.readouterr().out
    assert "found    taesd3_decoder" in out and "MISSING  taesd3_encoder" in out
    assert "curl -L -o" in out and "1 of 2 found" in out


@pytest.mark.skipif(not os.environ.get("SNAPGEN_ASSETS"), reason="needs the shared assets")
def test_shared_assets_verify():
    """The real shared assets pass the registry's size and sha256 (catches a stale registry)."""
    assets = Path(os.environ["SNAPGEN_ASSETS"])
    if not (assets / TAESD3_DECODER.relpath).is_file():
        pytest.skip(f"no shared assets at {assets}")
    for name in ("taesd3_encoder", "taesd3_decoder", "taesdxl_decoder", "geneval_metadata", "parti_prompts"):
        assert find(name, download=False, verify=True) == assets / REGISTRY[name].relpath


# ---- weights up front: what a command needs, all missing files in one error ------------------------------------------


def test_commands_name_known_entries():
    for command in weights.COMMAND_FILES:
        assert set(weights.command_files(command)) <= set(REGISTRY), command
    for command, prompts in weights.PROMPT_FILES.items():
        assert set(prompts) <= set(weights.COMMAND_FILES[command]), command


def test_require_lists_every_missing_file_and_the_fetch_command(dirs):
    for name in ("geneval_metadata", "geneval_object_names"):
        _write(dirs["assets"] / REGISTRY[name].relpath, REGISTRY[name].size)
    with pytest.raises(WeightsNotFoundError) as caught:
        weights.require(weights.command_files("geneval"), "GenEval", command="geneval")
    message = str(caught.value)
    assert caught.value.missing == ["mask2former_coco_instance", "clip_vit_l14"]
    assert "GenEval needs 4 file(s); 2 missing" in message
    assert "MISSING mask2former_coco_instance" in message and "MISSING clip_vit_l14" in message
    assert "about 870 MB" in message and "found   geneval_metadata" in message
    assert "python -m snapgen.weights geneval --fetch" in message
    assert "hf download facebook/mask2former-swin-large-coco-instance" in message  # and one by one
    found = weights.require(["geneval_metadata", "geneval_object_names"], "GenEval prompts")
    assert found["geneval_metadata"] == dirs["assets"] / REGISTRY["geneval_metadata"].relpath


def test_cli_lists_a_commands_files_with_sizes(dirs, capsys):
    entry = REGISTRY["geneval_metadata"]
    _write(dirs["assets"] / entry.relpath, entry.size)
    assert weights.main(["geneval"]) == 0
    out = capsys.readouterr().out
    assert "found    geneval_metadata" in out and "85,209 bytes" in out
    for name in ("geneval_object_names", "mask2former_coco_instance", "clip_vit_l14"):
        assert f"MISSING  {name}" in out
    assert "1 of 4 found" in out and "python -m snapgen.weights geneval --fetch" in out
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        weights.main(["geneval", "--fetch"])


@pytest.mark.parametrize("module, missing", [
    ("geneval", ["mask2former_coco_instance", "clip_vit_l14", "geneval_object_names"]),
    ("imagereward", ["imagereward", "imagereward_med_config", "blip_vqa_large"]),
    ("clipscore", ["clip_vit_l14"]),
])
def test_each_eval_reports_all_missing_files_before_any_work(dirs, tmp_path, module, missing):
    import importlib

    from PIL import Image

    images = tmp_path / "images" / "00000" / "samples"
    images.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(images / "0000.png")
    with pytest.raises(WeightsNotFoundError) as caught:
        importlib.import_module(f"evals.{module}").main([str(tmp_path / "images"), "--no-mlflow",
                                                       "--out", str(tmp_path / "out")])
    assert set(missing) <= set(caught.value.missing)
    assert not (tmp_path / "out").exists()  # nothing was written


def test_fid_reports_inception_and_cifar_together(dirs, tmp_path, capsys):
    from PIL import Image

    from evals import fid

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert fid.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "MISSING cleanfid_inception" in err and "MISSING cifar10_npz" in err
