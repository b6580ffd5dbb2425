"""ImageReward (Table 3): `python -m evals.imagereward TARGET [--out DIR] [--per-prompt N]`.

Prompts: the 64 PixArt-alpha demo prompts (`$SNAPGEN_ASSETS/prompts/pixart/pixart_alpha_samples.txt`).

The model is ImageReward v1.0 (THUDM/ImageReward, `ImageReward.pt` + `med_config.json`): BLIP ViT-L/16 image
encoder, BLIP's BERT text encoder cross-attending to the image, an MLP on the [CLS] state, and the reward normalised
with the training set's mean 0.16717362830052426 and std 1.0333394966054072. The `image-reward` PyPI package pins
timm==0.6.13 and fairscale==0.4.13 and its BLIP code imports transformers internals that transformers 5 removed, so
we build the same network from transformers' BLIP classes (`BlipVisionModel`, `BlipTextModel`) and map the
checkpoint's keys onto them (`map_checkpoint_keys`); the checkpoint file is read as published.
Text: BERT-base-uncased WordPiece, padded/truncated to 35 tokens (as `ImageReward.score`); image: bicubic resize of
the short side to 224, centre crop, CLIP normalisation.

Outputs: `<out>/images/<prompt>_<k>.png`, `<out>/prompts.jsonl`, `<out>/image_reward.jsonl` (per image),
`<out>/image_reward.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import common

BENCHMARK = "imagereward"
REWARD_MEAN = 0.16717362830052426  # ImageReward.mean: normalises the raw MLP output
REWARD_STD = 1.0333394966054072  # ImageReward.std
TEXT_MAX_LENGTH = 35  # ImageReward.score pads/truncates prompts to 35 tokens
IMAGE_SIZE = 224  # BLIP ViT-L input
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # ImageReward's _transform normalisation (CLIP's)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIT_L = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, patch_size=16,
             layer_norm_eps=1e-6, hidden_act="gelu")  # BLIP create_vit('large'): ViT-L/16, LayerNorm eps 1e-6
DEFAULT_PER_PROMPT = 4


def reward_mlp(input_size: int) -> nn.Sequential:
    """ImageReward's MLP, with its layer indices (0, 2, 4, 6, 7) so checkpoint keys `mlp.layers.<i>` fit as they are."""
    return nn.Sequential(nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))


class ImageRewardModel(nn.Module):
    """ImageReward on transformers' BLIP classes.

    Args:
        vision_config: `BlipVisionConfig` of the image encoder.
        text_config: `BlipTextConfig` of the text encoder (`encoder_hidden_size` = the vision width).
    """

    def __init__(self, vision_config, text_config):
        super().__init__()
        from transformers import BlipTextModel, BlipVisionModel

        self.visual_encoder = BlipVisionModel(vision_config)
        self.text_encoder = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = reward_mlp(text_config.hidden_size)
        self.image_size = vision_config.image_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised rewards.

        Args:
            input_ids, attention_mask: (B, L) prompt tokens.
            pixel_values: (B, 3, S, S) preprocessed images.
        Returns:
            (B,) float rewards, (raw - REWARD_MEAN) / REWARD_STD.
        """
        image_embeds = self.visual_encoder(pixel_values=pixel_values).last_hidden_state  # (B, 1 + N, Dv)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                 encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts)
        raw = self.mlp(text.last_hidden_state[:, 0, :].float()).squeeze(-1)  # (B,): from the [CLS] state
        return (raw - REWARD_MEAN) / REWARD_STD


# --------------------------------------------------------------------------------------------------------------------
# The checkpoint: ImageReward.pt keys -> our modules
# --------------------------------------------------------------------------------------------------------------------
_VIT_NAMES = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding"}
_VIT_RENAMES = (  # BLIP ViT (timm layout) -> transformers BlipVisionModel, substring renames
    ("patch_embed.proj.", "embeddings.patch_embedding."),
    ("blocks.", "encoder.layers."),
    (".norm1.", ".layer_norm1."),
    (".norm2.", ".layer_norm2."),
    (".attn.qkv.", ".self_attn.qkv."),
    (".attn.proj.", ".self_attn.projection."),
)


def map_checkpoint_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ImageReward.pt's state dict -> `ImageRewardModel`'s. Keys of BLIP parts ImageReward does not use are dropped.

    `blip.visual_encoder.*` is renamed to transformers' vision layout; `blip.text_encoder.*` (BLIP's med BERT) has the
    names transformers' BlipTextModel uses; `mlp.layers.*` keeps its indices."""
    mapped = {}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            name = key.removeprefix("blip.visual_encoder.")
            if name in _VIT_NAMES:
                name = _VIT_NAMES[name]
            elif name.startswith("norm."):  # the final LayerNorm
                name = "post_layernorm." + name.removeprefix("norm.")
            else:
                for old, new in _VIT_RENAMES:
                    name = name.replace(old, new)
            mapped["visual_encoder." + name] = value
        elif key.startswith("blip.text_encoder."):
            name = key.removeprefix("blip.text_encoder.")
            if name != "embeddings.position_ids":  # a buffer transformers rebuilds
                mapped["text_encoder." + name] = value
        elif key.startswith("mlp.layers."):
            mapped["mlp." + key.removeprefix("mlp.layers.")] = value
    return mapped


def load_checkpoint(model: ImageRewardModel, path: str | Path) -> None:
    """Load ImageReward.pt into `model`; every parameter must be filled (strict)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    missing, unexpected = model.load_state_dict(map_checkpoint_keys(state), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit ImageReward: missing {missing[:8]}..., unexpected {unexpected[:8]}...")


def configs_from_med(med_config: dict, vision_overrides: dict | None = None):
    """(BlipVisionConfig, BlipTextConfig) of ImageReward from its med_config.json (BLIP's BERT config)."""
    from transformers import BlipTextConfig, BlipVisionConfig

    vision = BlipVisionConfig(**{**VIT_L, "image_size": IMAGE_SIZE, **(vision_overrides or {})})
    text = BlipTextConfig(
        vocab_size=med_config["vocab_size"], hidden_size=med_config["hidden_size"],
        num_hidden_layers=med_config["num_hidden_layers"], num_attention_heads=med_config["num_attention_heads"],
        intermediate_size=med_config["intermediate_size"], hidden_act=med_config.get("hidden_act", "gelu"),
        max_position_embeddings=med_config["max_position_embeddings"],
        layer_norm_eps=med_config.get("layer_norm_eps", 1e-12), pad_token_id=med_config.get("pad_token_id", 0),
        encoder_hidden_size=vision.hidden_size,  # BLIP_Pretrain sets encoder_width = vision_width
        bos_token_id=None, sep_token_id=None, eos_token_id=None)
    return vision, text


def preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """ImageReward's `_transform`: bicubic resize of the short side, centre crop, CLIP normalisation: (3, size, size)."""
    image = image.convert("RGB")
    w, h = image.size  # torchvision Resize(size): the short side becomes `size`, the long one int(size * long / short)
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (array - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def load_imagereward(tiny_random: bool, device: str = "cpu"):
    """(ImageRewardModel, tokenizer, name): THUDM/ImageReward through snapgen.weights, or a tiny random one."""
    if tiny_random:
        tokenizer = common.tiny_tokenizer()
        med = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=64)
        vision, text = configs_from_med(med, dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                  intermediate_size=64, image_size=32, patch_size=8))
        torch.manual_seed(0)
        return ImageRewardModel(vision, text).to(device).eval(), tokenizer, "tiny-random ImageReward (hidden 32)"
    from transformers import AutoTokenizer

    from snapgen import weights

    checkpoint, med_path = weights.find("imagereward"), weights.find("imagereward_med_config")
    # ImageReward's tokenizer is bert-base-uncased's vocab; BLIP's processor ships exactly that vocab.
    tokenizer = AutoTokenizer.from_pretrained(weights.find_dir("blip_vqa_large"))
    vision, text = configs_from_med(json.loads(med_path.read_text()))
    model = ImageRewardModel(vision, text)
    load_checkpoint(model, checkpoint)
    return model.to(device).eval(), tokenizer, "THUDM/ImageReward v1.0 (BLIP ViT-L on transformers' BLIP classes)"


@torch.no_grad()
def score(model: ImageRewardModel, tokenizer, prompts: list[str], images: list[Image.Image], batch: int = 16
          ) -> np.ndarray:
    """ImageReward of each (prompt, image) pair: (N,) float."""
    rewards = []
    for i in range(0, len(images), batch):
        text = tokenizer(prompts[i:i + batch], padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH,
                         return_tensors="pt").to(next(model.parameters()).device)
        pixels = torch.stack([preprocess(im, model.image_size) for im in images[i:i + batch]])
        rewards.append(model(text["input_ids"], text["attention_mask"], pixels.to(text["input_ids"].device)))
    return torch.cat(rewards).cpu().numpy()


def load_prompts(limit: int | None = None) -> list[str]:
    from snapgen import weights

    prompts = [line.strip() for line in weights.find("pixart_alpha_prompts").read_text().splitlines() if line.strip()]
    return prompts[:limit] if limit else prompts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m evals.imagereward", description=__doc__.split("\n")[0])
    common.add_common_arguments(parser, default_per_prompt=DEFAULT_PER_PROMPT)
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts (quick runs)")
    args = parser.parse_args(argv)
    if not common.is_run_dir(args.target):  # an empty folder fails before any judge loads
        common.require_images(args.target, recursive=True)
    common.require_files(args, BENCHMARK, "ImageReward")  # every missing file in one error, before any work
    out = common.output_dir(args, BENCHMARK)
    device = common.default_device(args.device)
    model, tokenizer, judge = load_imagereward(args.tiny_random_judges, device)  # before any image is generated

    settings = None
    if common.is_run_dir(args.target):
        prompts = load_prompts(args.limit)
        names = [[f"images/{i:03d}_{j}.png" for j in range(args.per_prompt)] for i in range(len(prompts))]
        jobs = [common.Job(i, p, tuple(out / n for n in names[i])) for i, p in enumerate(prompts)]
        generator = common.make_generator(args)
        common.generate_jobs(generator, jobs, out)
        settings, folder = generator.settings, out
        common.write_prompt_index(out, ({"file": n, "prompt": p} for p, ns in zip(prompts, names) for n in ns))
    else:
        folder = Path(args.target)
    rows = common.read_prompt_index(folder)
    out.mkdir(parents=True, exist_ok=True)
    rewards = score(model, tokenizer, [r["prompt"] for r in rows], [Image.open(folder / r["file"]) for r in rows])
    with open(out / "image_reward.jsonl", "w") as handle:
        for row, reward in zip(rows, rewards):
            handle.write(json.dumps({**row, "image_reward": float(reward)}) + "\n")
    summary = {"image_reward": float(rewards.mean()), "num_images": len(rows), "judge": judge,
               "weights": common.weights_kind(args.tiny_random_judges)}
    (out / "image_reward.json").write_text(json.dumps(summary, indent=1) + "\n")
    common.print_summary(f"ImageReward ({judge}) on {len(rows)} images", [
        f"image_reward = {summary['image_reward']:.4f}  (paper, SnapGen: 1.32)",
        f"written: {out / 'image_reward.jsonl'}, {out / 'image_reward.json'}"], args.tiny_random_judges)
    if not args.no_mlflow:
        common.log_metrics(args.name or common.target_name(args.target), BENCHMARK,
                           {"image_reward": summary["image_reward"]}, judge=judge,
                           tiny_random=args.tiny_random_judges, target=args.target, settings=settings,
                           artifacts=[out / "image_reward.json"])
    return summary


if __name__ == "__main__":
    import sys

    from snapgen.training.cli import run_cli

    sys.exit(run_cli(main))
