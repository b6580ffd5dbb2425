"""Every evaluator end to end on a tiny checkpoint with tiny randomly-initialised judges of the real classes.

Covers: official layouts and output schemas, generation records, resume without regeneration, MLflow logging, the one
clear error (before generating) when judge weights are missing, the torchmetrics CLIPScore fallback, and the
ImageReward checkpoint key mapping."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evals import clipscore, common, dpg, geneval, imagereward

GEN = ["--steps", "2", "--cfg", "2.0", "--per-prompt", "2", "--tiny-random-judges"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as `snapgen.train` writes it, with a tiny random EfficientUNet (16 px, MiniLM conditioning)."""
    from snapgen.config import save_yaml
    from snapgen.models import EfficientUNet
    from snapgen.registry import resolve, shrink

    torch.manual_seed(0)
    cfg = shrink(resolve("snapgen-imagenet"), base_width=16, context_dim=384).replace(in_channels=3, out_channels=3)
    run = tmp_path_factory.mktemp("runs") / "tiny-run"
    EfficientUNet.from_unet_config(cfg).save_pretrained(run / "checkpoint" / "unet_ema")
    save_yaml({"train": {"resolution": 16, "text_encoder": "minilm", "objective": "flow"}, "unet": cfg.to_dict(),
               "text_len": 8, "class_names": ["cat", "dog"]}, run / "config.yaml")
    return run


def mlflow_run(uri: str, name: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("t2i-evals")
    runs = c.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1
    return runs[0]


def test_geneval_end_to_end_resume_and_mlflow(run_dir, tmp_path, mlflow_uri, capsys):
    out = tmp_path / "geneval"
    summary = geneval.main([str(run_dir), "--out", str(out), "--limit", "2", *GEN])
    # official layout: <out>/<00000>/metadata.jsonl + samples/<0000>.png
    meta0 = json.loads((out / "00000" / "metadata.jsonl").read_text())
    assert meta0 == geneval.load_metadata(1)[0]
    images = sorted(out.glob("*/samples/*.png"))
    assert [p.relative_to(out).as_posix() for p in images] == [
        "00000/samples/0000.png", "00000/samples/0001.png", "00001/samples/0000.png", "00001/samples/0001.png"]
    record = common.read_png_record(images[3])
    assert record["image_seed"] == 3 and record["steps"] == 2 and record["cfg_scale"] == 2.0
    assert record["resolution"] == 16 and record["batch"] == 4
    assert record["prompt"] == geneval.load_metadata(2)[1]["prompt"] and record["image_index"] == 1
    assert json.loads((out / common.GENERATION_RECORD).read_text())["checkpoint"] == str(run_dir.resolve())
    # results.jsonl: the official schema
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    for line in lines:
        assert set(line) == {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
        assert isinstance(line["correct"], bool) and json.loads(line["metadata"])["tag"] == line["tag"]
        assert isinstance(json.loads(line["details"]), dict)
    assert 0.0 <= summary["geneval_overall"] <= 1.0 and "Mask2Former" in summary["judge"]
    assert summary["weights"] == "tiny-random"
    assert common.TINY_RANDOM_BANNER in capsys.readouterr().out
    # MLflow: one run for the checkpoint, tagged as tiny-random, named so table3 never mistakes it for real scores
    run = mlflow_run(mlflow_uri, "tiny-run [tiny-random]")
    assert run.data.tags["weights"] == "tiny-random" and "Mask2Former" in run.data.tags["judge"]
    assert run.data.metrics["geneval_overall"] == pytest.approx(summary["geneval_overall"])

    # resume: a missing image is regenerated, the others are not touched, pixels match
    before = {p: p.stat().st_mtime_ns for p in images}
    pixels = np.asarray(Image.open(images[2]))
    images[2].unlink()
    geneval.main([str(run_dir), "--out", str(out), "--limit", "2", *GEN, "--no-mlflow", "--batch", "1"])
    assert "1 of 2 prompts already done" in capsys.readouterr().out
    assert np.array_equal(np.asarray(Image.open(images[2])), pixels)
    assert all(p.stat().st_mtime_ns == before[p] for p in images if p != images[2])
    # other settings in the same folder are refused
    with pytest.raises(ValueError, match="other settings"):
        geneval.main([str(run_dir), "--out", str(out), "--limit", "2", *GEN, "--no-mlflow", "--steps", "3"])


def test_missing_judge_weights_fail_before_generation(run_dir, tmp_path, monkeypatch):
    from snapgen.weights import WeightsNotFoundError

    monkeypatch.setenv("SNAPGEN_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    out = tmp_path / "geneval"
    with pytest.raises(WeightsNotFoundError, match="mask2former_coco_instance") as error:
        geneval.main([str(run_dir), "--out", str(out), "--limit", "1", "--steps", "1", "--no-mlflow"])
    assert "870 MB" in str(error.value) and "hf download" in str(error.value)
    assert not list(tmp_path.rglob("*.png"))


def dpg_csv(path: Path) -> Path:
    import pandas as pd

    rows = [["0", "t", "k", 1, "0", "entity", "whole", "entity - whole (x)", "Is there an x?"],  # skipped (official)
            ["0", "t", "k", 2, "0", "entity", "whole", "entity - whole (field)", "Is there a field?"],
            ["0", "t", "k", 3, "2", "attribute", "color", "attribute - color (field, green)", "Is the field green?"],
            ["1", "t", "k", 1, "0", "entity", "whole", "entity - whole (cat)", "Is there a cat?"],
            ["1", "t", "k", 2, "1", "relation", "spatial", "relation - spatial (cat, mat, on)", "Is the cat on a mat?"]]
    pd.DataFrame(rows, columns=["item_id", "text", "keywords", "proposition_id", "dependency", "category_broad",
                                "category_detailed", "tuple", "question_natural_language"]).to_csv(path, index=False)
    return path


def test_dpg_end_to_end(run_dir, tmp_path, mlflow_uri, capsys):
    out = tmp_path / "dpg"
    with pytest.raises(SystemExit):  # no CSV: says so and stops before generating
        dpg.main([str(run_dir), "--out", str(out), "--limit", "2", "--steps", "1", "--tiny-random-judges"])
    assert "dpg_bench.csv" in capsys.readouterr().err and not out.exists()

    csv = dpg_csv(tmp_path / "dpg_bench.csv")
    summary = dpg.main([str(run_dir), "--out", str(out), "--csv", str(csv), "--limit", "2", "--steps", "2",
                        "--tiny-random-judges"])
    grid = Image.open(out / "0.png")
    assert grid.size == (32, 32)  # 2x2 grid of 16 px images, named after the prompt file
    assert len(common.read_png_record(out / "1.png")["image_seeds"]) == 4
    results = (out / "dpg-bench_results.txt").read_text().splitlines()
    assert results[0].startswith(str(out / "0.png") + ", ") and len(results[0].split(", ")) == 6  # path, 4 crops, mean
    assert results[-1].startswith("DPG-Bench score: ")
    detail = (out / "dpg-bench_results_detail.txt").read_text().splitlines()
    assert len(detail) == 4 * 2 + 4 * 2  # item 0: 2 questions (first CSV row skipped), item 1: 2; 4 crops each
    assert 0 <= summary["dpg_overall"] <= 100 and "Blip" in summary["judge"]
    assert {"dpg_entity", "dpg_attribute", "dpg_relation"} <= set(summary)
    assert mlflow_run(mlflow_uri, "tiny-run [tiny-random]").data.metrics["dpg_overall"] == pytest.approx(
        summary["dpg_overall"])


def coco_captions(path: Path, n_images: int = 12) -> Path:
    anns = [{"id": 100 + 2 * i + j, "image_id": i, "caption": f"A photo of thing {i} variant {j}. "}
            for i in range(n_images) for j in range(2)]
    path.write_text(json.dumps({"annotations": anns}))
    return path


def test_clipscore_end_to_end(run_dir, tmp_path, mlflow_uri):
    captions = coco_captions(tmp_path / "captions_val2014.json")
    out = tmp_path / "clip"
    summary = clipscore.main([str(run_dir), "--out", str(out), "--captions", str(captions), "--num", "3", "--steps",
                              "2", "--tiny-random-judges"])
    subset = json.loads((out / "coco_subset.json").read_text())
    assert subset == clipscore.draw_subset(captions, 3)  # a fixed draw
    assert len({s["image_id"] for s in subset}) == 3 and subset[0]["caption"] == subset[0]["caption"].strip()
    rows = [json.loads(line) for line in (out / "clip_scores.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [s["caption"] for s in subset]
    assert 0 <= summary["clip_score"] <= 1 and summary["clip_score"] == pytest.approx(
        np.mean([r["clip_score"] for r in rows]))
    assert "CLIPModel" in summary["judge"]
    # scoring the folder on its own gives the same number
    again = clipscore.main([str(out), "--out", str(tmp_path / "clip2"), "--tiny-random-judges", "--no-mlflow"])
    assert again["clip_score"] == pytest.approx(summary["clip_score"])
    assert mlflow_run(mlflow_uri, "tiny-run [tiny-random]").data.metrics["clip_score"] == pytest.approx(
        summary["clip_score"])


class TensorFeatures(torch.nn.Module):
    """CLIPModel whose get_*_features return tensors (the transformers 4 contract torchmetrics expects)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *args, **kwargs):
        return clipscore._features(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs):
        return clipscore._features(self.model.get_text_features(*args, **kwargs))


def test_clip_cosine_matches_torchmetrics_and_fallback_is_used():
    model, processor, _ = clipscore.load_clip(tiny_random=True)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    captions = ["a red cat", "two dogs on a mat", "a blue car"]
    ours = clipscore.clip_cosine(model, processor, images, captions)
    reference = clipscore.torchmetrics_cosine(TensorFeatures(model), processor, images, captions)
    assert torch.allclose(ours, reference, atol=1e-5)
    scores, backend = clipscore.score_pairs(model, processor, images, captions)
    if "torchmetrics" in backend:  # transformers < 5: torchmetrics works on the raw model
        assert np.allclose(scores, reference.numpy(), atol=1e-5)
    else:
        assert backend.startswith("CLIPModel cosine") and np.allclose(scores, ours.numpy())


def test_imagereward_end_to_end(run_dir, tmp_path, mlflow_uri):
    out = tmp_path / "ir"
    summary = imagereward.main([str(run_dir), "--out", str(out), "--limit", "2", *GEN])
    rows = [json.loads(line) for line in (out / "image_reward.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == ["images/000_0.png", "images/000_1.png", "images/001_0.png",
                                         "images/001_1.png"]
    assert rows[0]["prompt"] == imagereward.load_prompts(1)[0]
    assert np.isfinite(summary["image_reward"]) and summary["weights"] == "tiny-random"
    assert mlflow_run(mlflow_uri, "tiny-run [tiny-random]").data.metrics["image_reward"] == pytest.approx(
        summary["image_reward"])


def official_names(model: imagereward.ImageRewardModel) -> dict[str, torch.Tensor]:
    """`model`'s weights under ImageReward.pt's names (written out by hand from its BLIP code, not by our mapping)."""
    state, official = model.state_dict(), {}
    vision_layers = model.visual_encoder.config.num_hidden_layers
    official["blip.visual_encoder.cls_token"] = state["visual_encoder.embeddings.class_embedding"]
    official["blip.visual_encoder.pos_embed"] = state["visual_encoder.embeddings.position_embedding"]
    for p in ("weight", "bias"):
        official[f"blip.visual_encoder.patch_embed.proj.{p}"] = state[f"visual_encoder.embeddings.patch_embedding.{p}"]
        official[f"blip.visual_encoder.norm.{p}"] = state[f"visual_encoder.post_layernorm.{p}"]
        for i in range(vision_layers):
            ours = f"visual_encoder.encoder.layers.{i}"
            for theirs, mine in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.qkv", "self_attn.qkv"),
                                 ("attn.proj", "self_attn.projection"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                official[f"blip.visual_encoder.blocks.{i}.{theirs}.{p}"] = state[f"{ours}.{mine}.{p}"]
    for key, value in state.items():
        if key.startswith("text_encoder."):
            official["blip." + key] = value  # BLIP's med BERT uses transformers' BERT names
        elif key.startswith("mlp."):
            official["mlp.layers." + key.removeprefix("mlp.")] = value
    official["blip.text_encoder.embeddings.position_ids"] = torch.arange(64)[None]
    official["blip.vision_proj.weight"] = torch.zeros(4, 4)  # parts of BLIP_Pretrain that ImageReward does not use
    official["blip.text_decoder.cls.predictions.bias"] = torch.zeros(4)
    return official


def test_imagereward_checkpoint_keys_map_onto_transformers_blip(tmp_path):
    source, _, _ = imagereward.load_imagereward(tiny_random=True)
    torch.save(official_names(source), tmp_path / "ImageReward.pt")
    torch.manual_seed(123)
    target = imagereward.ImageRewardModel(source.visual_encoder.config, source.text_encoder.config).eval()
    imagereward.load_checkpoint(target, tmp_path / "ImageReward.pt")
    tokenizer = common.tiny_tokenizer()
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 12, 3), dtype=np.uint8)) for i in range(2)]
    prompts = ["a cat", "a dog on a sofa"]
    expected = imagereward.score(source, tokenizer, prompts, images)
    assert np.allclose(imagereward.score(target, tokenizer, prompts, images), expected, atol=1e-6)
    # the reward is the MLP output on [CLS], normalised with ImageReward's mean and std
    text = tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    pixels = torch.stack([imagereward.preprocess(im, 32) for im in images])
    with torch.no_grad():
        emb = source.visual_encoder(pixel_values=pixels).last_hidden_state
        cls = source.text_encoder(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                                  encoder_hidden_states=emb).last_hidden_state[:, 0]
        raw = source.mlp(cls).squeeze(-1)
    assert np.allclose(expected, ((raw - 0.16717362830052426) / 1.0333394966054072).numpy(), atol=1e-6)
    broken = official_names(source)
    del broken["blip.visual_encoder.norm.weight"]
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="post_layernorm"):
        imagereward.load_checkpoint(target, tmp_path / "broken.pt")


def test_imagereward_preprocess_is_short_side_resize_and_centre_crop():
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 10, 20))  # a black band on the left quarter: cut away by the centre crop
    pixels = imagereward.preprocess(image, 16)
    assert pixels.shape == (3, 16, 16)
    white = (1 - torch.tensor(imagereward.CLIP_MEAN)) / torch.tensor(imagereward.CLIP_STD)
    assert torch.allclose(pixels[:, :, 3:13].mean((1, 2)), white, atol=1e-3)
