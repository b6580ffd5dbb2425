"""Benchmark scoring rules on hand-built detections and answers (GenEval, DPG-Bench): pure functions, no models."""

import json

import numpy as np
import pytest
from PIL import Image

from evals import dpg, geneval
from evals.geneval import Detection


def det(x1, y1, x2, y2, score=0.99, mask=None):
    return Detection(np.array([x1, y1, x2, y2, score], dtype=np.float32), mask)


def square(cx, cy, side=10, score=0.99):
    return det(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, score)


def no_colors(objects, classname):
    raise AssertionError("colour classifier must not be called")


# --- GenEval: detection filtering -----------------------------------------------------------------------------------
def test_detection_threshold_and_counting_threshold():
    dets = {"clock": [square(10, 10, score=s) for s in (0.5, 0.95, 0.9, 0.91, 0.3, 0.31)]}
    counting = geneval.select_detections(dets, "counting")
    assert [float(d.box[4]) for d in counting["clock"]] == pytest.approx([0.95, 0.91])  # 0.9 itself is not > 0.9
    other = geneval.select_detections(dets, "single_object")
    assert [float(d.box[4]) for d in other["clock"]] == pytest.approx([0.95, 0.91, 0.9, 0.5, 0.31])  # 0.3 dropped
    assert geneval.select_detections({"cat": [square(5, 5, score=0.2)]}, "colors") == {}


def test_at_most_16_objects_per_class_no_nms():
    same_place = {"cup": [square(10, 10, score=0.4 + i / 100) for i in range(20)]}  # identical boxes: no NMS at 1.0
    kept = geneval.select_detections(same_place, "two_object")["cup"]
    assert len(kept) == geneval.MAX_OBJECTS == 16
    assert float(kept[0].box[4]) == pytest.approx(0.59)


def counting_meta(count):
    return {"tag": "counting", "include": [{"class": "clock", "count": count}],
            "exclude": [{"class": "clock", "count": count + 1}], "prompt": f"a photo of {count} clocks"}


@pytest.mark.parametrize("scores,expected", [
    ((0.95, 0.92), True),                # exactly two above 0.9
    ((0.95, 0.90), False),               # the second sits at the threshold: not kept -> 1 < 2
    ((0.95, 0.92, 0.91), False),         # three kept -> the exclude clause (>= 3) fails it
    ((0.95, 0.92, 0.89), True),          # the third is below the counting threshold
])
def test_counting_around_threshold(scores, expected):
    dets = {"clock": [square(20 * i + 10, 10, score=s) for i, s in enumerate(scores)]}
    objects = geneval.select_detections(dets, "counting")
    correct, reason = geneval.evaluate(objects, counting_meta(2), no_colors)
    assert correct is expected, reason


# --- GenEval: position ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dx,expected", [
    (0.0, set()), (-2.0, set()),        # offset inside 0.1 x (10 + 10): nothing
    (-4.0, set()),                      # revised 2 / offset 4 = 0.5: not > 0.5
    (-4.1, {"left of"}), (4.1, {"right of"}), (-30.0, {"left of"}),
])
def test_relative_position_horizontal_threshold(dx, expected):
    assert geneval.relative_position(square(50 + dx, 50).box, square(50, 50).box) == expected


@pytest.mark.parametrize("dy,expected", [(-4.1, {"above"}), (4.1, {"below"}), (3.9, set())])
def test_relative_position_vertical(dy, expected):
    assert geneval.relative_position(square(50, 50 + dy).box, square(50, 50).box) == expected


def test_relative_position_diagonal_gives_both():
    assert geneval.relative_position(square(20, 20).box, square(60, 60).box) == {"left of", "above"}


def position_meta(rel):
    return {"tag": "position", "include": [{"class": "chair", "count": 1},
                                           {"class": "bed", "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of a bed {rel} a chair"}


def test_position_rule_uses_matched_group():
    objects = {"chair": [square(20, 50)], "bed": [square(80, 50)]}
    assert geneval.evaluate(objects, position_meta("right of"), no_colors) == (True, "")
    correct, reason = geneval.evaluate(objects, position_meta("left of"), no_colors)
    assert not correct and "expected bed left of target, found right of target" in reason
    correct, reason = geneval.evaluate({"bed": [square(80, 50)]}, position_meta("right of"), no_colors)
    assert not correct and "expected chair>=1, found 0" in reason and "no target for bed" in reason


# --- GenEval: colours -----------------------------------------------------------------------------------------------
COLOR_ATTR = {"tag": "color_attr", "include": [{"class": "wine glass", "count": 1, "color": "purple"},
                                               {"class": "apple", "count": 1, "color": "black"}],
              "prompt": "a photo of a purple wine glass and a black apple"}


def fixed_colors(table):
    return lambda objects, classname: [table[classname]] * len(objects)


def test_color_attribution_binds_colour_to_object():
    objects = {"wine glass": [square(20, 20)], "apple": [square(60, 60)]}
    assert geneval.evaluate(objects, COLOR_ATTR, fixed_colors({"wine glass": "purple", "apple": "black"}))[0]
    correct, reason = geneval.evaluate(objects, COLOR_ATTR, fixed_colors({"wine glass": "black", "apple": "purple"}))
    assert not correct
    assert "expected purple wine glass>=1, found 0 purple; and 1 black" in reason


def test_colors_only_on_most_confident_objects():
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a red car"}
    seen = []

    def classify(objects, classname):
        seen.append([float(o.box[4]) for o in objects])
        return ["red"] * len(objects)

    objects = geneval.select_detections({"car": [square(10, 10, score=0.5), square(40, 40, score=0.8)]}, "colors")
    assert geneval.evaluate(objects, meta, classify)[0]
    assert seen == [[pytest.approx(0.8)]]


def test_colour_crop_masks_background_then_crops_box():
    image = Image.new("RGB", (20, 20), (255, 0, 0))
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:10, 5:10] = True
    crops = geneval.ClipColorClassifier(None, None).crops(image, [det(0, 0, 10, 10, mask=mask)])
    pixels = np.asarray(crops[0])
    assert pixels.shape == (10, 10, 3)
    assert (pixels[5:, 5:] == [255, 0, 0]).all() and (pixels[:5, :5] == [153, 153, 153]).all()


# --- GenEval: summary -----------------------------------------------------------------------------------------------
def test_overall_is_mean_over_tasks_not_images():
    def row(tag, correct, prompt):
        return {"tag": tag, "correct": correct, "metadata": json.dumps({"tag": tag, "prompt": prompt})}
    results = [row("single_object", True, "a")] * 4 + [row("counting", False, "b")] * 3 + [row("counting", True, "c")]
    scores = geneval.summarize(results)
    assert scores["geneval_single_object"] == 1.0 and scores["geneval_counting"] == 0.25
    assert scores["geneval_overall"] == pytest.approx(0.625)  # per image it would be 5/8
    assert scores["correct_images"] == pytest.approx(5 / 8) and scores["correct_prompts"] == pytest.approx(2 / 3)


def test_iou():
    assert geneval.compute_iou([0, 0, 9, 9], [0, 0, 9, 9]) == 1
    assert geneval.compute_iou([0, 0, 9, 9], [10, 10, 19, 19]) == 0
    assert geneval.compute_iou([0, 0, 9, 9], [5, 0, 14, 9]) == pytest.approx(50 / 150)


# --- DPG-Bench -------------------------------------------------------------------------------------------------------
DEPS = {1: [0], 2: [1], 3: [1], 4: [2, 3]}


def test_child_of_a_no_parent_scores_zero():
    answers = {1: "no", 2: "yes", 3: "yes", 4: "yes"}
    score, before = dpg.score_crop(answers, DEPS)
    assert score == 0.0 and before == {1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0}
    score, _ = dpg.score_crop({1: "yes", 2: "no", 3: "yes", 4: "yes"}, DEPS)
    assert score == pytest.approx(2 / 4)  # 4 depends on 2 (no) -> 0
    assert dpg.score_crop({1: "yes", 2: "yes", 3: "yes", 4: "yes"}, DEPS)[0] == 1.0


def test_only_exact_yes_counts():
    assert dpg.score_crop({1: "Yes", 2: "yes ", 3: "yes", 4: "no"}, {q: [0] for q in (1, 2, 3, 4)})[0] == 0.25


def test_missing_parent_raises_like_official():
    with pytest.raises(KeyError):
        dpg.score_crop({2: "yes"}, {2: [1]})


def test_item_average_over_crops_and_last_crop_categories():
    crops = [{1: "yes", 2: "yes", 3: "yes", 4: "yes"}, {1: "no", 2: "yes", 3: "yes", 4: "yes"},
             {1: "yes", 2: "no", 3: "yes", 4: "yes"}, {1: "yes", 2: "yes", 3: "no", 4: "no"}]
    crop_scores, average, before = dpg.score_item(crops, DEPS)
    assert crop_scores == [1.0, 0.0, 0.5, 0.5] and average == pytest.approx(0.5)
    assert before == {1: 1.0, 2: 1.0, 3: 0.0, 4: 0.0}


def test_categories_and_summary():
    assert dpg.category_of("entity - whole (bicycle)") == ("entity", "entity - whole")
    assert dpg.category_of("attribute - color (bicycle, red)") == ("attribute", "attribute - color")
    scores = dpg.summarize([0.5, 1.0], {"entity - whole": [1, 0], "attribute - color": [1, 1], "entity - part": [0]})
    assert scores["dpg_overall"] == pytest.approx(75.0)
    assert scores["dpg_entity"] == pytest.approx(100 / 3) and scores["dpg_attribute"] == 100
    assert scores["dpg_entity_whole"] == 50


def write_csv(path, rows):
    import pandas as pd

    pd.DataFrame(rows, columns=["item_id", "text", "keywords", "proposition_id", "dependency", "category_broad",
                                "category_detailed", "tuple", "question_natural_language"]).to_csv(path, index=False)


def test_parse_questions_skips_first_row_like_official(tmp_path):
    rows = [["0", "t", "k", 1, "0", "entity", "whole", "entity - whole (cat)", "Is there a cat?"],
            ["0", "t", "k", 2, "1", "attribute", "color", "attribute - color (cat, red)", "Is the cat red?"],
            ["1", "t", "k", 1, "0", "entity", "whole", "entity - whole (dog)", "Is there a dog?"],
            ["1", "t", "k", 2, "1, 0", "global", "", "global - ()", "Is it a photo?"]]
    write_csv(tmp_path / "dpg.csv", rows)
    questions = dpg.parse_questions(tmp_path / "dpg.csv")
    assert set(questions["0"].qid2question) == {2}  # row 0 skipped, as the official script does
    assert questions["1"].qid2dependency == {1: [0], 2: [1, 0]}
    assert questions["1"].qid2tuple[2] == "global - ()"


# --- the official CLIs' options: GenEval --options key=value, DPG-Bench --pic-num ------------------------------------


def test_geneval_options_default_to_the_official_values_and_change_the_rules():
    assert geneval.parse_options([]) == geneval.DEFAULT_OPTIONS
    assert (geneval.DEFAULT_OPTIONS.threshold, geneval.DEFAULT_OPTIONS.counting_threshold,
            geneval.DEFAULT_OPTIONS.max_objects, geneval.DEFAULT_OPTIONS.max_overlap,
            geneval.DEFAULT_OPTIONS.position_threshold) == (0.3, 0.9, 16, 1.0, 0.1)
    options = geneval.parse_options(["threshold=0.5", "max_objects=2", "max_overlap=0.5", "position_threshold=0.4"])
    assert (options.threshold, options.max_objects, options.counting_threshold) == (0.5, 2, 0.9)
    dets = {"cat": [square(5, 5, score=0.4), square(30, 30, score=0.8), square(60, 60, score=0.7),
                    square(61, 60, score=0.75)]}
    assert len(geneval.select_detections(dets, "single_object")["cat"]) == 4  # defaults: > 0.3, 16, no NMS
    kept = geneval.select_detections(dets, "single_object", options)["cat"]
    assert [float(d.box[4]) for d in kept] == pytest.approx([0.8, 0.75])  # > 0.5, at most 2
    nms = geneval.select_detections(dets, "single_object", geneval.parse_options(["max_overlap=0.5"]))["cat"]
    assert len(nms) == 3  # the two overlapping squares at (60, 60), (61, 60) become one
    a, b = square(62, 50).box, square(50, 50).box  # 12 px apart, boxes of 10: 0.1 keeps it, 0.4 removes it
    assert geneval.relative_position(a, b) == {"right of"}
    assert geneval.relative_position(a, b, options.position_threshold) == set()


@pytest.mark.parametrize("pairs, message", [(["threshold"], "key=value"), (["clip_model=ViT-B"], "unknown"),
                                            (["max_objects=many"], "not a valid int")])
def test_geneval_bad_options_are_one_line_errors(pairs, message):
    with pytest.raises(ValueError, match=message):
        geneval.parse_options(pairs)


class CountingVQA:
    """Answers "yes" and counts the crops it was shown."""

    name = "counting stub"

    def __init__(self):
        self.sizes = []

    def vqa(self, image, question):
        self.sizes.append(image.size)
        return "yes"


@pytest.mark.parametrize("pic_num, file_size", [(1, (16, 16)), (2, (32, 16)), (4, (32, 32))])
def test_dpg_pic_num_scores_the_official_crops(tmp_path, pic_num, file_size):
    assert dpg.crop_boxes(16, pic_num) == [(0, 0, 16, 16), (16, 0, 32, 16), (0, 16, 16, 32),
                                           (16, 16, 32, 32)][:pic_num]
    Image.new("RGB", file_size).save(tmp_path / "7.png")
    questions = {"7": dpg.ItemQuestions({1: "entity - whole (cat)"}, {1: [0]}, {1: "Is there a cat?"})}
    vqa = CountingVQA()
    (tmp_path / "out").mkdir()
    result = dpg.evaluate_folder(tmp_path, questions, vqa, None, tmp_path / "out", pic_num=pic_num)
    assert vqa.sizes == [(16, 16)] * pic_num and result["scores"]["dpg_overall"] == 100.0
