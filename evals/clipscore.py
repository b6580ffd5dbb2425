"""CLIP score on a fixed 6K subset of MS-COCO val captions (Table 3 "CLIP"): `python -m evals.clipscore TARGET --captions FILE`.

Protocol: draw `--num` (6000) captions from the user's COCO captions JSON (`captions_val2014.json` or
`captions_val2017.json`: {"annotations": [{"id", "image_id", "caption"}, ...]}) with a fixed seed, save the subset
(`<out>/coco_subset.json`), generate one image per caption, and score each (image, caption) pair with CLIP ViT-L/14
through torchmetrics' `CLIPScore`. torchmetrics reports 100 * max(cos, 0); the paper reports the cosine itself
(SnapGen: 0.332), so we divide by 100. On transformers 5, `CLIPModel.get_image_features` returns a ModelOutput and
torchmetrics breaks; then the same cosine is computed here with `CLIPModel` (`clip_cosine`), and the output says
which path scored.

Outputs: `<out>/images/<k>.png`, `<out>/prompts.jsonl`, `<out>/clip_scores.jsonl` (per image), `<out>/clip_score.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from . import common

BENCHMARK = "clipscore"
DEFAULT_SUBSET_SIZE = 6000  # Table 3: "6K subset of MS-COCO val"
SUBSET_SEED = 0  # fixed draw, so every model is scored on the same captions
CLIP_MAX_TOKENS = 77  # CLIP's text context
TORCHMETRICS_SCALE = 100.0  # torchmetrics' CLIPScore = 100 * max(cos, 0)


# --------------------------------------------------------------------------------------------------------------------
# CLIP ViT-L/14 (shared with GenEval's colour classifier)
# --------------------------------------------------------------------------------------------------------------------
def load_clip(tiny_random: bool, device: str = "cpu"):
    """(CLIPModel, CLIPProcessor-like, name): real weights through `snapgen.weights`, or a tiny random CLIP."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    if tiny_random:
        from transformers import CLIPConfig

        tokenizer = common.tiny_tokenizer()
        config = CLIPConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=CLIP_MAX_TOKENS,
                             bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                             pad_token_id=tokenizer.pad_token_id),
            vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               image_size=32, patch_size=8),
            projection_dim=16)
        torch.manual_seed(0)
        model = CLIPModel(config)
        image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
        name = "tiny-random CLIPModel (hidden 32)"
    else:
        from snapgen import weights

        root = weights.find_dir("clip_vit_l14")
        model, processor = CLIPModel.from_pretrained(root), CLIPProcessor.from_pretrained(root)
        name = "openai/clip-vit-large-patch14 (transformers CLIPModel)"
    return model.to(device).eval(), processor, name


def _features(output) -> torch.Tensor:
    """transformers <5 returns the projected embedding; 5.x a ModelOutput holding it as `pooler_output`."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def clip_cosine(model, processor, images: list[np.ndarray], captions: list[str]) -> torch.Tensor:
    """max(cos(image, caption), 0) per pair, as torchmetrics' CLIPScore / 100: (N,) float."""
    pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(model.device)
    text = processor.tokenizer(captions, padding=True, truncation=True, max_length=CLIP_MAX_TOKENS,
                               return_tensors="pt").to(model.device)
    image_emb = _features(model.get_image_features(pixel_values=pixels))  # (N, D)
    text_emb = _features(model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"]))
    cos = torch.nn.functional.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)
    return cos.clamp(min=0).cpu()


def torchmetrics_cosine(model, processor, images: list[np.ndarray], captions: list[str]) -> torch.Tensor:
    """The same through torchmetrics' CLIPScore (per-pair scores / 100): (N,) float. Raises where torchmetrics breaks."""
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update

    tensors = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in images]  # (3, H, W) uint8
    score, _ = _clip_score_update(tensors, captions, model, processor)
    return score.detach().float().cpu() / TORCHMETRICS_SCALE


def score_pairs(model, processor, images: list[np.ndarray], captions: list[str], batch: int = 32
                ) -> tuple[np.ndarray, str]:
    """Per-pair cosine for every (image, caption), and which path computed it ('torchmetrics' | 'CLIPModel cosine')."""
    try:
        first = torchmetrics_cosine(model, processor, images[:batch], captions[:batch])
        backend, fn = "torchmetrics CLIPScore", torchmetrics_cosine
    except (AttributeError, TypeError, RuntimeError, ValueError) as error:
        print(f"torchmetrics CLIPScore failed ({type(error).__name__}: {str(error)[:120]}); computing the same "
              "cosine with CLIPModel directly", file=sys.stderr)
        first = clip_cosine(model, processor, images[:batch], captions[:batch])
        backend, fn = "CLIPModel cosine (torchmetrics CLIPScore formula)", clip_cosine
    scores = [first] + [fn(model, processor, images[i:i + batch], captions[i:i + batch])
                        for i in range(batch, len(images), batch)]
    return torch.cat(scores).numpy(), backend


# --------------------------------------------------------------------------------------------------------------------
# The caption subset
# --------------------------------------------------------------------------------------------------------------------
def draw_subset(captions_json: str | Path, num: int = DEFAULT_SUBSET_SIZE, seed: int = SUBSET_SEED) -> list[dict]:
    """`num` captions of distinct images, drawn with a fixed seed from a COCO captions file, in annotation-id order."""
    annotations = json.loads(Path(captions_json).read_text()).get("annotations")
    if not annotations:
        raise ValueError(f"{captions_json} has no 'annotations': expected COCO captions_val20xx.json")
    by_image: dict[int, list[dict]] = {}
    for ann in sorted(annotations, key=lambda a: a["id"]):
        by_image.setdefault(ann["image_id"], []).append(ann)
    image_ids = sorted(by_image)
    if num > len(image_ids):
        raise ValueError(f"--num {num} > {len(image_ids)} captioned images in {captions_json}")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(image_ids), size=num, replace=False).tolist())
    subset = []
    for k in chosen:
        options = by_image[image_ids[k]]
        ann = options[int(rng.integers(len(options)))]
        subset.append({"id": ann["id"], "image_id": ann["image_id"], "caption": ann["caption"].strip()})
    return subset


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m evals.clipscore", description=__doc__.split("\n")[0])
    common.add_common_arguments(parser, default_per_prompt=1)
    parser.add_argument("--captions", help="COCO captions JSON (captions_val2014.json); needed to generate")
    parser.add_argument("--num", type=int, default=DEFAULT_SUBSET_SIZE, help="subset size (Table 3: 6000)")
    args = parser.parse_args(argv)
    if not common.is_run_dir(args.target):  # an empty folder fails before any judge loads
        common.require_images(args.target, recursive=True)
    out = common.output_dir(args, BENCHMARK)
    generating = common.is_run_dir(args.target)
    if generating and not args.captions and not (out / "coco_subset.json").is_file():
        parser.error("generating needs --captions PATH (MS-COCO captions_val2014.json or captions_val2017.json, from "
                     "https://cocodataset.org/#download, annotations zip); the subset it draws is saved in --out")
    if generating and args.per_prompt != 1:
        parser.error("CLIP score uses one image per caption (--per-prompt 1)")

    common.require_files(args, BENCHMARK, "CLIP score")  # every missing file in one error, before any work
    device = common.default_device(args.device)
    model, processor, judge = load_clip(args.tiny_random_judges, device)  # before any image is generated

    settings = None
    if generating:
        out.mkdir(parents=True, exist_ok=True)
        subset_path = out / "coco_subset.json"
        if subset_path.is_file():
            subset = json.loads(subset_path.read_text())
        else:
            subset = draw_subset(args.captions, args.num)
            subset_path.write_text(json.dumps(subset, indent=0) + "\n")
        jobs = [common.Job(k, s["caption"], (out / "images" / f"{k:05d}.png",)) for k, s in enumerate(subset)]
        generator = common.make_generator(args)
        common.generate_jobs(generator, jobs, out)
        settings = generator.settings
        common.write_prompt_index(out, ({"file": f"images/{k:05d}.png", "prompt": s["caption"]}
                                        for k, s in enumerate(subset)))
        folder = out
    else:
        folder = Path(args.target)
        out.mkdir(parents=True, exist_ok=True)
    rows = common.read_prompt_index(folder)
    from PIL import Image

    images = [np.asarray(Image.open(folder / r["file"]).convert("RGB")) for r in rows]
    scores, backend = score_pairs(model, processor, images, [r["prompt"] for r in rows])
    with open(out / "clip_scores.jsonl", "w") as handle:
        for row, s in zip(rows, scores):
            handle.write(json.dumps({**row, "clip_score": float(s)}) + "\n")
    summary = {"clip_score": float(scores.mean()), "num_images": len(rows), "judge": judge, "backend": backend,
               "weights": common.weights_kind(args.tiny_random_judges), "scale": "cosine (torchmetrics / 100)"}
    (out / "clip_score.json").write_text(json.dumps(summary, indent=1) + "\n")
    common.print_summary(f"CLIP score ({judge}; {backend}) on {len(rows)} images from {folder}",
                         [f"clip_score = {summary['clip_score']:.4f}  (paper, SnapGen: 0.332)",
                          f"written: {out / 'clip_scores.jsonl'}, {out / 'clip_score.json'}"], args.tiny_random_judges)
    if not args.no_mlflow:
        common.log_metrics(args.name or common.target_name(args.target), BENCHMARK,
                           {"clip_score": summary["clip_score"]}, judge=f"{judge} via {backend}",
                           tiny_random=args.tiny_random_judges, target=args.target, settings=settings,
                           artifacts=[out / "clip_score.json"])
    return summary


if __name__ == "__main__":
    import sys

    from snapgen.training.cli import run_cli

    sys.exit(run_cli(main))
