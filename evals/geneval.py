"""GenEval (Table 3, supplement Table 1): `python -m evals.geneval TARGET [--out DIR] [--limit N] [--options K=V ...]`.

Layout and rules are GenEval's (djghosh13/geneval, `evaluation/evaluate_images.py` and `summary_scores.py`):
- images: `<out>/<00000>/metadata.jsonl` (the prompt's metadata line) and `<out>/<00000>/samples/<0000>.png`, 4 each;
- detections: per class, kept when score > 0.3 (0.9 for the `counting` task), most confident first, at most 16 per
  class, no NMS (max overlap 1.0); these and the position threshold are the official CLI's `--options key=value`
  (`threshold`, `counting_threshold`, `max_objects`, `max_overlap`, `position_threshold`, `bgcolor`), with its
  defaults (`GenEvalOptions`);
- rules (`evaluate`): every `include` clause needs `count` objects; colour clauses classify each of those objects'
  masked crop (background #999) with CLIP ViT-L/14 zero-shot over GenEval's 10 colours; position clauses compare box
  centres after shrinking the offset by 0.1 x (sum of the two boxes' sizes); any `exclude` clause met fails the image;
- `results.jsonl`: one line per image (filename, tag, prompt, correct, reason, metadata, details), the official schema;
- score: per task the fraction of correct images; overall = mean over the six tasks.

The detector is transformers' Mask2Former (COCO instance segmentation, `facebook/mask2former-swin-large-coco-instance`);
the official GenEval uses mmdetection's Mask2Former Swin-S checkpoint, so our scores are GenEval's rules with a
stronger detector, and every output names the detector. Detections are turned into GenEval's (box, score, mask) form
the way mmdetection post-processes Mask2Former (top-100 query-class pairs, score = class prob x mask score, box = the
mask's bounding box).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps

from . import common

BENCHMARK = "geneval"
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
THRESHOLD = 0.3  # detection confidence (GenEval `threshold`)
COUNTING_THRESHOLD = 0.9  # detection confidence for the counting task
MAX_OBJECTS = 16  # detections kept per class
NMS_THRESHOLD = 1.0  # GenEval's `max_overlap`: 1.0 = no NMS
POSITION_THRESHOLD = 0.1  # fraction of the two boxes' summed size removed from the centre offset
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES = ("a photo of a {c} {classname}", "a photo of a {c}-colored {classname}", "a photo of a {c} object")
MASK_BACKGROUND = "#999"  # GenEval's `bgcolor`: colour crops see only the object
MAX_DETECTIONS_PER_IMAGE = 100  # mmdetection's Mask2Former test_cfg.max_per_image
IMAGES_PER_PROMPT = 4


@dataclass(frozen=True)
class GenEvalOptions:
    """The official `evaluate_images.py --options key=value` settings, with its defaults."""

    threshold: float = THRESHOLD
    counting_threshold: float = COUNTING_THRESHOLD
    max_objects: int = MAX_OBJECTS
    max_overlap: float = NMS_THRESHOLD
    position_threshold: float = POSITION_THRESHOLD
    bgcolor: str = MASK_BACKGROUND


DEFAULT_OPTIONS = GenEvalOptions()


def parse_options(pairs: list[str]) -> GenEvalOptions:
    """`["threshold=0.4", "max_objects=8"]` -> `GenEvalOptions` (each value cast to the field's type).

    Raises:
        ValueError: a pair without `=`, an unknown key (the official CLI would ignore it silently), or a bad value.
    """
    fields = {f.name: f for f in dataclasses.fields(GenEvalOptions)}
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--options {pair!r}: expected key=value (e.g. threshold=0.3)")
        if key not in fields:
            raise ValueError(f"--options {key}: unknown; valid: {', '.join(fields)} (the detector and CLIP model are "
                             f"fixed here, see the module docstring)")
        cast = {"float": float, "int": int, "str": str}[fields[key].type]
        try:
            values[key] = cast(value)
        except ValueError:
            raise ValueError(f"--options {key}={value}: not a valid {fields[key].type}") from None
    return GenEvalOptions(**values)


@dataclass
class Detection:
    """One detected object: `box` = (x1, y1, x2, y2, score) in pixels, `mask` = (H, W) bool or None."""

    box: np.ndarray
    mask: np.ndarray | None = None


# --------------------------------------------------------------------------------------------------------------------
# The rules: pure functions over detections
# --------------------------------------------------------------------------------------------------------------------
def compute_iou(box_a, box_b) -> float:
    """GenEval's IoU (pixel-inclusive areas, +1)."""
    def area(box):
        return max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)
    inter = area([max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]), min(box_a[3], box_b[3])])
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0


def select_detections(per_class: dict[str, list[Detection]], tag: str,
                      options: GenEvalOptions = DEFAULT_OPTIONS) -> dict[str, list[Detection]]:
    """GenEval's filtering: score > threshold (counting_threshold when tag == 'counting'), most confident first,
    <= max_objects per class, NMS at max_overlap (1.0: none). Defaults 0.3, 0.9, 16, 1.0.

    Classes with nothing left are dropped."""
    threshold = options.counting_threshold if tag == "counting" else options.threshold
    selected: dict[str, list[Detection]] = {}
    for classname, detections in per_class.items():
        ordering = sorted((d for d in detections if d.box[4] > threshold), key=lambda d: -float(d.box[4]))
        ordering = ordering[:options.max_objects]
        kept: list[Detection] = []
        while ordering:
            best = ordering.pop(0)
            kept.append(best)
            ordering = [d for d in ordering
                        if options.max_overlap == 1 or compute_iou(best.box, d.box) < options.max_overlap]
        if kept:
            selected[classname] = kept
    return selected


def relative_position(box_a, box_b, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Where A is relative to B ('left of', 'right of', 'above', 'below'), factoring in object sizes (GenEval).

    The centre offset loses `threshold` (GenEval's `position_threshold`) x (size of A + size of B) per axis; a relation holds when its axis
    carries more than half of the remaining offset's direction (over the raw offset's length)."""
    boxes = np.array([box_a[:4], box_b[:4]], dtype=np.float64).reshape(2, 2, 2)  # (object, corner, xy)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


ColorClassifier = Callable[[list[Detection], str], list[str]]  # (objects, classname) -> one colour per object


def evaluate(objects: dict[str, list[Detection]], metadata: dict, classify_colors: ColorClassifier,
             options: GenEvalOptions = DEFAULT_OPTIONS) -> tuple[bool, str]:
    """GenEval's `evaluate`: includes AND-ed, excludes OR-ed; colour/position only on the most confident objects.

    Returns (correct, reason): the reasons it failed, newline-separated ('' when correct)."""
    correct, reasons, matched_groups = True, [], []
    for req in metadata.get("include", []):
        classname, matched = req["class"], True
        found = objects.get(classname, [])[: req["count"]]
        if len(found) < req["count"]:
            correct = matched = False
            reasons.append(f"expected {classname}>={req['count']}, found {len(found)}")
        else:
            if "color" in req:
                colors = classify_colors(found, classname)
                if colors.count(req["color"]) < req["count"]:
                    correct = matched = False
                    reasons.append(f"expected {req['color']} {classname}>={req['count']}, found "
                                   f"{colors.count(req['color'])} {req['color']}; and "
                                   + ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors))
            if "position" in req and matched:
                expected, target_group = req["position"]
                if matched_groups[target_group] is None:
                    correct = matched = False
                    reasons.append(f"no target for {classname} to be {expected}")
                else:
                    for obj in found:
                        for target in matched_groups[target_group]:
                            relations = relative_position(obj.box, target.box, options.position_threshold)
                            if expected not in relations:
                                correct = matched = False
                                reasons.append(f"expected {classname} {expected} target, found "
                                               f"{' and '.join(relations)} target")
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        classname = req["class"]
        if len(objects.get(classname, [])) >= req["count"]:
            correct = False
            reasons.append(f"expected {classname}<{req['count']}, found {len(objects[classname])}")
    return correct, "\n".join(reasons)


def summarize(results: list[dict]) -> dict[str, float]:
    """GenEval's summary: per task the fraction of correct images; overall = mean over the tasks present.

    Returns {'geneval_overall', 'geneval_<task>' ..., 'correct_images', 'correct_prompts'}."""
    by_task: dict[str, list[bool]] = {}
    by_prompt: dict[str, list[bool]] = {}
    for r in results:
        by_task.setdefault(r["tag"], []).append(bool(r["correct"]))
        by_prompt.setdefault(r["metadata"], []).append(bool(r["correct"]))
    task_scores = {f"geneval_{tag}": float(np.mean(v)) for tag, v in by_task.items()}
    return {"geneval_overall": float(np.mean(list(task_scores.values()))), **task_scores,
            "correct_images": float(np.mean([bool(r["correct"]) for r in results])),
            "correct_prompts": float(np.mean([any(v) for v in by_prompt.values()]))}


# --------------------------------------------------------------------------------------------------------------------
# The judges: Mask2Former detector, CLIP colour classifier
# --------------------------------------------------------------------------------------------------------------------
def object_names() -> list[str]:
    from snapgen import weights

    return [line.strip() for line in weights.find("geneval_object_names").read_text().splitlines() if line.strip()]


def load_detector(tiny_random: bool, device: str = "cpu"):
    """(Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor, name); classes in COCO order (= GenEval's)."""
    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

    if tiny_random:
        from transformers import Mask2FormerConfig, SwinConfig

        backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                              window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"])
        config = Mask2FormerConfig(backbone_config=backbone, num_labels=80, feature_size=32, mask_feature_size=32,
                                   hidden_dim=32, encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1,
                                   decoder_layers=2, num_attention_heads=2, num_queries=12, common_stride=4,
                                   use_pretrained_backbone=False)
        torch.manual_seed(0)
        model = Mask2FormerForUniversalSegmentation(config)
        processor = Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}, size_divisor=32)
        name = "tiny-random Mask2Former (Swin, hidden 32)"
    else:
        from snapgen import weights

        root = weights.find_dir("mask2former_coco_instance")
        model = Mask2FormerForUniversalSegmentation.from_pretrained(root)
        processor = Mask2FormerImageProcessor.from_pretrained(root)
        name = "facebook/mask2former-swin-large-coco-instance (transformers Mask2Former)"
    if model.config.num_labels != 80:
        raise ValueError(f"GenEval needs a COCO detector (80 classes); this one has {model.config.num_labels}")
    return model.to(device).eval(), processor, name


@torch.no_grad()
def detect(model, processor, image: Image.Image, classnames: list[str]) -> dict[str, list[Detection]]:
    """Every class's detections in `image`, as mmdetection post-processes Mask2Former (before GenEval's filtering)."""
    width, height = image.size
    inputs = processor(images=image, return_tensors="pt").to(model.device)
    outputs = model(pixel_values=inputs["pixel_values"])
    class_probs = outputs.class_queries_logits[0].softmax(-1)[:, :-1]  # (Q, C): the last class is "no object"
    num_queries, num_classes = class_probs.shape
    k = min(MAX_DETECTIONS_PER_IMAGE, num_queries * num_classes)
    scores, flat = class_probs.flatten().topk(k)
    labels, queries = flat % num_classes, flat // num_classes
    pixel_size = inputs["pixel_values"].shape[-2:]
    mask_logits = torch.nn.functional.interpolate(outputs.masks_queries_logits[:, queries], size=pixel_size,
                                                  mode="bilinear", align_corners=False)
    mask_logits = torch.nn.functional.interpolate(mask_logits, size=(height, width), mode="bilinear",
                                                  align_corners=False)[0]  # (k, H, W)
    binary = mask_logits > 0
    mask_scores = (mask_logits.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    det_scores = (scores * mask_scores).cpu().numpy()
    binary = binary.cpu().numpy()
    per_class: dict[str, list[Detection]] = {}
    for i in range(k):
        ys, xs = np.nonzero(binary[i])
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 0, 0]  # mmdet mask2bbox
        per_class.setdefault(classnames[int(labels[i])], []).append(
            Detection(np.array([*box, det_scores[i]], dtype=np.float32), binary[i]))
    return per_class


class ClipColorClassifier:
    """GenEval's colour classifier: CLIP zero-shot over COLORS, 3 templates averaged, on masked object crops."""

    def __init__(self, model, processor, bgcolor: str = MASK_BACKGROUND):
        self.model, self.processor, self.bgcolor, self._heads = model, processor, bgcolor, {}

    @torch.no_grad()
    def _head(self, classname: str) -> torch.Tensor:
        """(D, len(COLORS)) normalised class embeddings (mean over templates), cached per object class."""
        if classname not in self._heads:
            from .clipscore import _features

            weights = []
            for c in COLORS:
                texts = [t.format(c=c, classname=classname) for t in COLOR_TEMPLATES]
                tok = self.processor.tokenizer(texts, padding=True, return_tensors="pt").to(self.model.device)
                emb = _features(self.model.get_text_features(input_ids=tok["input_ids"],
                                                             attention_mask=tok["attention_mask"]))
                emb = torch.nn.functional.normalize(emb, dim=-1).mean(0)
                weights.append(torch.nn.functional.normalize(emb, dim=-1))
            self._heads[classname] = torch.stack(weights, dim=1)
        return self._heads[classname]

    def crops(self, image: Image.Image, objects: list[Detection]) -> list[Image.Image]:
        image = image.convert("RGB")
        blank = Image.new("RGB", image.size, color=self.bgcolor)
        crops = []
        for obj in objects:
            masked = image if obj.mask is None else Image.composite(image, blank, Image.fromarray(obj.mask))
            crops.append(masked.crop(tuple(float(v) for v in obj.box[:4])))
        return crops

    @torch.no_grad()
    def __call__(self, image: Image.Image, objects: list[Detection], classname: str) -> list[str]:
        from .clipscore import _features

        pixels = self.processor(images=self.crops(image, objects), return_tensors="pt")["pixel_values"]
        emb = _features(self.model.get_image_features(pixel_values=pixels.to(self.model.device)))
        logits = torch.nn.functional.normalize(emb, dim=-1) @ self._head(classname)  # (N, colours)
        return [COLORS[i] for i in logits.argmax(1).tolist()]


def evaluate_image(path: Path, metadata: dict, detector, color_classifier: ClipColorClassifier,
                   classnames: list[str], root: Path, options: GenEvalOptions = DEFAULT_OPTIONS) -> dict:
    """One results.jsonl line for one image (official schema)."""
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    detected = select_detections(detect(*detector, image, classnames), metadata["tag"], options)
    correct, reason = evaluate(detected, metadata, lambda objs, cls: color_classifier(image, objs, cls), options)
    return {"filename": str(path.relative_to(root) if path.is_relative_to(root) else path), "tag": metadata["tag"],
            "prompt": metadata["prompt"], "correct": bool(correct), "reason": reason,
            "metadata": json.dumps(metadata),
            "details": json.dumps({k: [d.box.tolist() for d in v] for k, v in detected.items()})}


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------
def load_metadata(limit: int | None = None) -> list[dict]:
    from snapgen import weights

    lines = weights.find("geneval_metadata").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return rows[:limit] if limit else rows


def write_layout(out: Path, metadata: list[dict], per_prompt: int) -> list[common.Job]:
    """The official folder layout: `<out>/<00000>/metadata.jsonl` now, the samples as jobs to generate."""
    jobs = []
    for i, meta in enumerate(metadata):
        folder = out / f"{i:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(meta) + "\n")
        jobs.append(common.Job(i, meta["prompt"], tuple(folder / "samples" / f"{j:04d}.png" for j in range(per_prompt))))
    return jobs


def list_images(root: Path) -> list[tuple[Path, dict]]:
    """(image, metadata) for every `<root>/<digits>/samples/<digits>.png`, as the official evaluator walks it."""
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        metadata = json.loads((folder / "metadata.jsonl").read_text())
        for image in sorted((folder / "samples").glob("*.png")):
            if image.stem.isdigit():
                found.append((image, metadata))
    if not found:
        raise FileNotFoundError(f"no <digits>/samples/<digits>.png under {root}: not a GenEval image folder")
    return found


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m evals.geneval", description=__doc__.split("\n")[0])
    common.add_common_arguments(parser, default_per_prompt=IMAGES_PER_PROMPT)
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts (quick runs)")
    parser.add_argument("--options", nargs="*", default=[], metavar="KEY=VALUE",
                        help="the official evaluator's options: " + ", ".join(
                            f"{k}={v}" for k, v in dataclasses.asdict(DEFAULT_OPTIONS).items()) + " (the defaults)")
    args = parser.parse_args(argv)
    try:
        options = parse_options(args.options)
    except ValueError as error:
        parser.error(str(error))
    if not common.is_run_dir(args.target):  # an empty folder fails before any judge loads
        common.require_images(args.target, recursive=True)
    common.require_files(args, BENCHMARK, "GenEval")  # every missing file in one error, before any work
    out = common.output_dir(args, BENCHMARK)
    device = common.default_device(args.device)
    classnames = object_names()
    detector = load_detector(args.tiny_random_judges, device)  # judges first: a missing file fails before generating
    from .clipscore import load_clip

    clip_model, clip_processor, clip_name = load_clip(args.tiny_random_judges, device)
    judge = f"detector: {detector[2]}; colours: {clip_name}"

    settings = None
    if common.is_run_dir(args.target):
        metadata = load_metadata(args.limit)
        jobs = write_layout(out, metadata, args.per_prompt)
        generator = common.make_generator(args)
        common.generate_jobs(generator, jobs, out)
        settings, root = generator.settings, out
    else:
        root = Path(args.target)
    images = list_images(root)
    if args.limit and not common.is_run_dir(args.target):
        keep = {json.dumps(m) for m in load_metadata(args.limit)}
        images = [(p, m) for p, m in images if json.dumps(m) in keep]
    colors = ClipColorClassifier(clip_model, clip_processor, options.bgcolor)
    results = [evaluate_image(path, meta, detector[:2], colors, classnames, root, options) for path, meta in images]
    out.mkdir(parents=True, exist_ok=True)
    import pandas as pd

    with open(out / "results.jsonl", "w") as handle:
        pd.DataFrame(results).to_json(handle, orient="records", lines=True)
    scores = summarize(results)
    summary = {**scores, "num_images": len(results), "judge": judge, "options": dataclasses.asdict(options),
               "weights": common.weights_kind(args.tiny_random_judges)}
    (out / "geneval_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"total images: {len(results)}, prompts: {len({r['metadata'] for r in results})}",
             f"correct images: {scores['correct_images']:.2%}, correct prompts: {scores['correct_prompts']:.2%}"]
    lines += [f"{tag:<16} = {scores[f'geneval_{tag}']:.2%}" for tag in TASKS if f"geneval_{tag}" in scores]
    lines += [f"overall (mean over {len(scores) - 3} tasks) = {scores['geneval_overall']:.5f}  (paper, SnapGen: 0.66)",
              f"written: {out / 'results.jsonl'}"]
    if options != DEFAULT_OPTIONS:  # a score under other rules than the official defaults says so, also in MLflow
        changed = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(options).items() if getattr(DEFAULT_OPTIONS, k) != v)
        lines.append(f"options (not the official defaults): {changed}")
        judge += f"; options {changed}"
    common.print_summary(f"GenEval ({judge})", lines, args.tiny_random_judges)
    if not args.no_mlflow:
        metrics = {k: v for k, v in scores.items() if k.startswith("geneval_")}
        common.log_metrics(args.name or common.target_name(args.target), BENCHMARK, metrics, judge=judge,
                           tiny_random=args.tiny_random_judges, target=args.target, settings=settings,
                           artifacts=[out / "results.jsonl", out / "geneval_summary.json"])
    return summary


if __name__ == "__main__":
    import sys

    from snapgen.training.cli import run_cli

    sys.exit(run_cli(main))
