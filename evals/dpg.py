"""DPG-Bench (Table 3 "DPG"): `python -m evals.dpg TARGET --csv dpg_bench.csv [--pic-num 4] [--out DIR] [--limit N]`.

Protocol of ELLA's `dpg_bench/compute_dpg_bench.py` (TencentQQGYLab/ELLA):
- images: one file per prompt, `<out>/<item_id>.png`, holding `--pic-num` images (official default 4, as a 2x2 grid;
  1: the image alone, 2: side by side), scored on the official crops `[:pic_num]` (top-left, top-right, bottom-left,
  bottom-right);
- questions and their dependency graph: the user's `dpg_bench.csv` (not in the shared assets); parsed as the official
  script does, which skips the CSV's first data row (`if i == 0: continue`), so item 0 loses its first question, and
  an item whose question depends on a missing question fails and is left out (the official script catches the error
  and prints "Failed filename");
- per crop: every question is asked; only the answer "yes" scores 1; then, in CSV order, a question with a parent
  (proposition id != 0) that scores 0 is set to 0; the crop's score is the mean over its questions;
- per image: the mean over its `pic_num` crops; DPG score = 100 x the mean over images;
- categories: the tuple's text before "(" is the L2 category ("entity - whole"), before "-" the L1 ("entity"); each
  question contributes its answer score before the dependency rule, from the LAST crop (as the official script
  returns `qid2scores_orig`); category score = 100 x mean.
The question answerer is mPLUG-large (ModelScope, the official one) when `modelscope` is installed, else BLIP VQA
(transformers `BlipForQuestionAnswering`, Salesforce/blip-vqa-capfilt-large); outputs name it.

Outputs: `<out>/dpg-bench_results.txt` and `<out>/dpg-bench_results_detail.txt` (the official files) and
`<out>/dpg_summary.json`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import common

BENCHMARK = "dpg"
PIC_NUM = 4  # images per prompt (the official `--pic-num` default), tiled 2x2
# --pic-num -> how the generated images of a prompt are tiled, so that the official crops [:pic_num] find them (3 would
# leave the fourth cell of a 2x2 file empty: not offered)
PIC_GRIDS = {1: "1x1", 2: "1x2", 4: "2x2"}
VQA_MAX_NEW_TOKENS = 10  # answers are "yes"/"no"; a few tokens is plenty
CSV_HELP = ("DPG-Bench's question table dpg_bench/dpg_bench.csv from https://github.com/TencentQQGYLab/ELLA "
            "(columns item_id, text, keywords, proposition_id, dependency, category_broad, category_detailed, tuple, "
            "question_natural_language); it is not in the shared assets")


@dataclass
class ItemQuestions:
    """One prompt's questions, keyed by proposition id, in CSV order."""

    qid2tuple: dict[int, str]
    qid2dependency: dict[int, list[int]]
    qid2question: dict[int, str]


# --------------------------------------------------------------------------------------------------------------------
# The rules: pure functions over answers
# --------------------------------------------------------------------------------------------------------------------
def parse_questions(csv_path: str | Path) -> dict[str, ItemQuestions]:
    """`prepare_dpg_data` of the official script, including its skip of the first data row."""
    import pandas as pd

    data = pd.read_csv(csv_path, dtype={"item_id": str})
    required = {"item_id", "proposition_id", "dependency", "tuple", "question_natural_language"}
    if not required <= set(data.columns):
        raise ValueError(f"{csv_path} lacks columns {sorted(required - set(data.columns))}; expected {CSV_HELP}")
    questions: dict[str, ItemQuestions] = {}
    for i, line in data.iterrows():
        if i == 0:  # the official script skips the first data row; kept, so scores compare with published ones
            continue
        item = questions.setdefault(str(line.item_id), ItemQuestions({}, {}, {}))
        qid = int(line.proposition_id)
        item.qid2tuple[qid] = line.tuple
        item.qid2dependency[qid] = [int(d.strip()) for d in str(line.dependency).split(",")]
        item.qid2question[qid] = line.question_natural_language
    return questions


def score_crop(answers: dict[int, str], qid2dependency: dict[int, list[int]]) -> tuple[float, dict[int, float]]:
    """One crop: only "yes" scores; a question with a parent (id != 0) scoring 0 is zeroed, in CSV order.

    Returns (crop score = mean over questions, the scores before the dependency rule).
    Raises KeyError when a parent question does not exist (the official script then skips the image)."""
    scores = {qid: float(answer == "yes") for qid, answer in answers.items()}
    before = dict(scores)
    for qid, parents in qid2dependency.items():
        if any(scores[p] == 0 for p in parents if p != 0):  # reads the already-updated scores, as the official loop
            scores[qid] = 0.0
    return sum(scores.values()) / len(scores), before


def score_item(crop_answers: list[dict[int, str]], qid2dependency: dict[int, list[int]]
               ) -> tuple[list[float], float, dict[int, float]]:
    """One image: (crop scores, their mean, the last crop's scores before the dependency rule)."""
    crop_scores, before = [], {}
    for answers in crop_answers:
        score, before = score_crop(answers, qid2dependency)
        crop_scores.append(score)
    return crop_scores, sum(crop_scores) / len(crop_scores), before


def category_of(tuple_text: str) -> tuple[str, str]:
    """'entity - whole (bicycle)' -> ('entity', 'entity - whole')."""
    l2 = tuple_text.split("(")[0].strip()
    return l2.split("-")[0].strip(), l2


def summarize(image_scores: list[float], category_scores: dict[str, list[float]]) -> dict[str, float]:
    """{'dpg_overall', 'dpg_<l1>', 'dpg_<l1>_<l2>'}, each 100 x a mean."""
    result = {"dpg_overall": float(np.mean(image_scores)) * 100}
    l1: dict[str, list[float]] = {}
    for l2, values in category_scores.items():
        l1.setdefault(category_of(l2)[0], []).extend(values)
    for name, values in l1.items():
        result[f"dpg_{metric_safe(name)}"] = float(np.mean(values)) * 100
    for name, values in sorted(category_scores.items()):
        result[f"dpg_{metric_safe(name)}"] = float(np.mean(values)) * 100
    return result


def metric_safe(name: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def crop_boxes(resolution: int, pic_num: int = PIC_NUM) -> list[tuple[int, int, int, int]]:
    """The official crops: top-left, top-right, bottom-left, bottom-right, the first `pic_num` of them."""
    r = resolution
    return [(0, 0, r, r), (r, 0, 2 * r, r), (0, r, r, 2 * r), (r, r, 2 * r, 2 * r)][:pic_num]


# --------------------------------------------------------------------------------------------------------------------
# The question answerer
# --------------------------------------------------------------------------------------------------------------------
class BlipVQA:
    """transformers' BLIP VQA answering one question about one image."""

    def __init__(self, model, processor, name: str):
        self.model, self.processor, self.name = model, processor, name

    @torch.no_grad()
    def vqa(self, image: Image.Image, question: str) -> str:
        inputs = self.processor(images=image, text=question, return_tensors="pt").to(self.model.device)
        ids = self.model.generate(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                                  attention_mask=inputs["attention_mask"], max_new_tokens=VQA_MAX_NEW_TOKENS)
        return self.processor.tokenizer.decode(ids[0], skip_special_tokens=True).strip()


class MplugVQA:
    """The official answerer: ModelScope's mPLUG-large VQA pipeline."""

    def __init__(self, path: Path, device: str):
        from modelscope.pipelines import pipeline
        from modelscope.utils.constant import Tasks

        self.pipeline = pipeline(Tasks.visual_question_answering, model=str(path), device=device)
        self.name = "mPLUG-large (damo/mplug_visual-question-answering_coco_large_en, ModelScope)"

    def vqa(self, image: Image.Image, question: str) -> str:
        return self.pipeline({"image": image, "question": question})["text"]


def tiny_blip_config(tokenizer, image_size: int = 32):
    from transformers import BlipConfig

    return BlipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, encoder_hidden_size=32, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=image_size, patch_size=8),
        projection_dim=16, image_text_hidden_size=32)


def load_vqa(tiny_random: bool, device: str = "cpu"):
    """mPLUG-large when modelscope is installed, else BLIP VQA (real weights through snapgen.weights), or tiny BLIP."""
    from transformers import BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    if tiny_random:
        tokenizer = common.tiny_tokenizer()
        torch.manual_seed(0)
        model = BlipForQuestionAnswering(tiny_blip_config(tokenizer))
        processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                                  tokenizer=tokenizer)
        return BlipVQA(model.to(device).eval(), processor, "tiny-random BlipForQuestionAnswering (hidden 32)")
    from snapgen import weights

    if importlib.util.find_spec("modelscope") is not None:
        return MplugVQA(weights.find_dir("mplug_large_vqa"), device)
    root = weights.find_dir("blip_vqa_large")
    model = BlipForQuestionAnswering.from_pretrained(root).to(device).eval()
    return BlipVQA(model, BlipProcessor.from_pretrained(root),
                   "Salesforce/blip-vqa-capfilt-large (transformers BLIP VQA; stands in for the official mPLUG-large)")


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------
def load_prompts(limit: int | None = None) -> list[dict]:
    from snapgen import weights

    rows = [json.loads(line) for line in weights.find("dpg_prompts").read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def evaluate_folder(root: Path, questions: dict[str, ItemQuestions], vqa, resolution: int | None, out: Path,
                    keep: set[str] | None = None, pic_num: int = PIC_NUM) -> dict:
    """Score every `<root>/<item_id>.<png|jpg>` (`pic_num` images each); writes the official results and detail
    files into `out`. `resolution` None: one image is the file's width / its columns."""
    results_path, detail_path = out / "dpg-bench_results.txt", out / "dpg-bench_results_detail.txt"
    results_path.write_text("")
    detail_path.write_text("")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.stem in questions
                   and (keep is None or p.stem in keep))
    if not files:
        raise FileNotFoundError(f"no <item_id>.png under {root} matches an item of the DPG-Bench CSV")
    image_scores, category_scores, failed = [], {}, []
    for path in files:
        item = questions[path.stem]
        image = Image.open(path).convert("RGB")
        res = resolution or image.width // (1 if pic_num == 1 else 2)
        crop_answers = []
        with open(detail_path, "a") as detail:
            for box in crop_boxes(res, pic_num):
                crop = image.crop(box)
                answers = {qid: vqa.vqa(crop, q) for qid, q in item.qid2question.items()}
                for qid, q in item.qid2question.items():
                    detail.write(f"{path}, {box}, {q}, {answers[qid]}\n")
                crop_answers.append(answers)
        try:
            crop_scores, average, before = score_item(crop_answers, item.qid2dependency)
        except KeyError as error:  # the official script prints this and leaves the image out
            print(f"Failed filename: {path.name} (question {error} is a parent but is not in the CSV)")
            failed.append(path.name)
            continue
        with open(results_path, "a") as handle:
            handle.write(f"{path}, {', '.join(str(s) for s in crop_scores)}, {average}\n")
        image_scores.append(average)
        for qid, tuple_text in item.qid2tuple.items():
            category_scores.setdefault(category_of(tuple_text)[1], []).append(before[qid])
    if not image_scores:
        raise RuntimeError(f"every image failed: {failed}")
    scores = summarize(image_scores, category_scores)
    l1 = sorted({category_of(c)[0] for c in category_scores})
    text = [f"Model: {root.name}", "L1 category scores:"]
    text += [f"\t{name}: {scores['dpg_' + metric_safe(name)]}" for name in l1]
    text += ["L2 category scores:"] + [f"\t{c}: {scores['dpg_' + metric_safe(c)]}" for c in sorted(category_scores)]
    text += [f"Image path: {root}", f"Save results to: {results_path}", f"DPG-Bench score: {scores['dpg_overall']}"]
    with open(results_path, "a") as handle:
        handle.write("\n".join(text) + "\n")
    return {"scores": scores, "num_images": len(image_scores), "failed": failed, "l1": l1,
            "results": str(results_path)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m evals.dpg", description=__doc__.split("\n")[0])
    common.add_common_arguments(parser, default_per_prompt=PIC_NUM)
    parser.add_argument("--pic-num", type=int, default=PIC_NUM, choices=sorted(PIC_GRIDS),
                        help=f"images per prompt, as the official --pic-num (default {PIC_NUM}: a 2x2 grid)")
    parser.add_argument("--csv", help=CSV_HELP)
    parser.add_argument("--resolution", type=int, default=None,
                        help="side of one image in the 2x2 grid (default: half the file's width)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts (quick runs)")
    args = parser.parse_args(argv)
    if not common.is_run_dir(args.target):  # an empty folder fails before any judge loads
        common.require_images(args.target)
    if not args.csv or not Path(args.csv).is_file():  # before loading or generating anything
        parser.error(f"--csv {args.csv or '(not given)'}: not a file. DPG-Bench needs {CSV_HELP}. Nothing was "
                     "generated.")
    if args.per_prompt not in (PIC_NUM, args.pic_num):
        parser.error(f"--per-prompt {args.per_prompt}: DPG-Bench's images per prompt is --pic-num ({args.pic_num})")
    args.per_prompt = args.pic_num
    common.require_files(args, BENCHMARK, "DPG-Bench")  # every missing file in one error, before any work
    questions = parse_questions(args.csv)
    out = common.output_dir(args, BENCHMARK)
    device = common.default_device(args.device)
    vqa = load_vqa(args.tiny_random_judges, device)  # before any image is generated

    settings, keep = None, None
    if common.is_run_dir(args.target):
        prompts = load_prompts(args.limit)
        jobs = [common.Job(i, p["prompt"], (out / f"{p['item_id']}.png",)) for i, p in enumerate(prompts)]
        generator = common.make_generator(args, grid=PIC_GRIDS[args.pic_num])
        common.generate_jobs(generator, jobs, out)
        settings, root, keep = generator.settings, out, {p["item_id"] for p in prompts}
        resolution = args.resolution or settings.resolution
    else:
        root, resolution = Path(args.target), args.resolution
        if args.limit:
            keep = {p["item_id"] for p in load_prompts(args.limit)}
    out.mkdir(parents=True, exist_ok=True)
    result = evaluate_folder(root, questions, vqa, resolution, out, keep, args.pic_num)
    scores = result["scores"]
    summary = {**scores, "num_images": result["num_images"], "failed": result["failed"], "judge": vqa.name,
               "pic_num": args.pic_num,
               "weights": common.weights_kind(args.tiny_random_judges)}
    (out / "dpg_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"images scored: {result['num_images']}" + (f", failed: {result['failed']}" if result["failed"] else "")]
    lines += [f"{name:<12} = {scores['dpg_' + metric_safe(name)]:.2f}" for name in result["l1"]]
    lines += [f"DPG-Bench score = {scores['dpg_overall']:.2f}  (paper, SnapGen: 81.1)", f"written: {result['results']}"]
    common.print_summary(f"DPG-Bench (VQA: {vqa.name})", lines, args.tiny_random_judges)
    if not args.no_mlflow:
        common.log_metrics(args.name or common.target_name(args.target), BENCHMARK, scores, judge=vqa.name,
                           tiny_random=args.tiny_random_judges, target=args.target, settings=settings,
                           artifacts=[out / "dpg-bench_results.txt", out / "dpg_summary.json"])
    return summary


if __name__ == "__main__":
    import sys

    from snapgen.training.cli import run_cli

    sys.exit(run_cli(main))
