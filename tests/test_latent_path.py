"""A latent-space run (autoencoder=taesd3, 32 px images -> 4x4x16 latents) through every consumer of a run directory:
`snapgen.sample`, `snapgen.generate`, `evals.fid`, step distillation (with its few-step evaluation), `evals.geneval`
with tiny random judges, and the multi-stage recipe with `--set autoencoder=taesd3`."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from snapgen.runs import open_run, read_metrics
from snapgen.train import make_config, train

REPO = Path(__file__).resolve().parents[1]
LATENT = dict(autoencoder="taesd3", resolution=32, batch_size=4, train_limit=40, val_size=4, val_timesteps=2,
              log_every=1, val_every=2, ckpt_every=2, samples_per_class=1, sample_steps=2, warmup=0, steps=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """SNAPGEN_CACHE in a fresh folder for the whole module (latents and text embeddings are cached there)."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SNAPGEN_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def latent_run(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latent") / "run"
    result = train(make_config("smoke", **LATENT), out, progress=False)
    assert result["step"] == 2 and result["unet_config"].in_channels == 16
    run = open_run(out)
    assert run.autoencoder == "taesd3" and run.latent_shape == (16, 4, 4) and run.resolution == 32
    assert list(cache.rglob("*")), "latents were not cached under SNAPGEN_CACHE"
    return out


def test_sample_cli_writes_a_grid(latent_run, tmp_path):
    from snapgen.sample import main

    assert main([str(latent_run), "--steps", "2", "--n", "2", "--out", str(tmp_path / "x.png")]) == 0
    grid = Image.open(tmp_path / "x.png")
    names = open_run(latent_run).class_names
    # one labelled row per class, 2 decoded 32 px samples each, upscaled 8x to 256 px tiles
    assert grid.size[1] == len(names) * 256 and grid.size[0] > 2 * 256
    tiles = np.asarray(grid)[:, -2 * 256:]
    assert tiles.std() > 0  # decoded images, not a blank canvas
    labels = np.asarray(grid)[:, : grid.size[0] - 2 * 256]
    assert (labels < 128).any() and (labels == 255).mean() > 0.5  # dark label text on white


def test_generate_cli_writes_a_32px_image(latent_run, tmp_path):
    from snapgen.generate import main

    main([str(latent_run), "--prompt", "a photo of a cat", "--steps", "2", "--plain", "--out", str(tmp_path / "y.png")])
    image = Image.open(tmp_path / "y.png")
    assert image.size == (32, 32) and image.mode == "RGB"  # the run's resolution, decoded by its autoencoder
    main([str(latent_run), "--prompt", "a photo of a cat", "--steps", "2", "--out", str(tmp_path / "z.png")])
    shown = Image.open(tmp_path / "z.png")  # for people: upscaled 8x (nearest), labelled on the left
    assert shown.size[1] == 256 and shown.size[0] > 256
    assert np.array_equal(np.asarray(shown)[::8, -256::8], np.asarray(image))


def test_fid_of_the_latent_run_is_finite(latent_run, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from evals import fid

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
    net.fc = torch.nn.Identity()  # the 2048-d pool features, as the FID Inception (random init: the path, not FID)
    net.eval()
    feature_fn = fid.make_feature_fn(lambda x: net(x / 127.5 - 1.0), batch_size=8)
    result = fid.fid_of_run(latent_run, num_samples=4, sample_steps=2, batch_size=4, feature_fn=feature_fn,
                            feature_id="random-inception", reference_limit=8, cache_dir=tmp_path / "stats",
                            samples_out=tmp_path / "samples.npz")
    assert math.isfinite(result["fid"]) and result["num_samples"] == 4
    assert np.load(tmp_path / "samples.npz")["images"].shape == (4, 32, 32, 3)  # decoded to pixels


def test_step_distillation_of_the_latent_run_evaluates_in_one_step(latent_run, tmp_path):
    from snapgen.step_distill import step_distill
    from snapgen.teachers import SmallTeacherConfig, build_small_teacher

    teacher = build_small_teacher(SmallTeacherConfig(resolution=32, autoencoder="taesd3", num_layers=2,
                                                     num_attention_heads=2, attention_head_dim=8), 384, seed=1)
    assert teacher.config.in_channels == 16 and teacher.config.sample_size == 4
    out = tmp_path / "fewstep"
    result = step_distill(latent_run, teacher, out, steps=2, progress=False, evaluate=True, batch_size=4,
                          log_every=1, ckpt_every=2, eval_steps=(1,), before_steps=(1,), reference_steps=2,
                          eval_samples_per_class=1)
    assert result["step"] == 2
    grid = Image.open(out / "samples" / "fewstep_1.png")
    assert grid.size[1] == len(open_run(latent_run).class_names) * 256  # 32 px decoded tiles, upscaled 8x
    assert (out / "samples" / "before_1.png").is_file() and (out / "eval.json").is_file()
    assert math.isfinite(result["fewstep_mse_vs_teacher_1"]) and math.isfinite(result["before_mse_vs_teacher_1"])
    distilled = open_run(out)
    assert distilled.kind == "step_distill" and distilled.latent_shape == (16, 4, 4)


def test_geneval_with_tiny_random_judges(latent_run, tmp_path):
    from evals import geneval

    out = tmp_path / "geneval"
    summary = geneval.main([str(latent_run), "--out", str(out), "--limit", "1", "--steps", "2", "--cfg", "2.0",
                            "--per-prompt", "1", "--tiny-random-judges", "--no-mlflow"])
    images = sorted(out.glob("*/samples/*.png"))
    assert [p.relative_to(out).as_posix() for p in images] == ["00000/samples/0000.png"]
    assert Image.open(images[0]).size == (32, 32)
    assert 0.0 <= summary["geneval_overall"] <= 1.0 and summary["weights"] == "tiny-random"
    assert len((out / "results.jsonl").read_text().splitlines()) == 1


def test_recipe_t2i_smoke_in_latent_space_runs_every_stage(cache, tmp_path):
    """`python -m snapgen.recipes t2i --scale smoke --set autoencoder=taesd3`: every stage, chained, on latents
    (64 -> 256 px images, 8 -> 32 px latents; ~80 s on a shared 2-core CPU)."""
    from snapgen import recipes

    out = tmp_path / "recipe"
    env = {**os.environ, "SNAPGEN_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "snapgen.recipes", "t2i", "--scale", "smoke", "--out", str(out),
                           "--set", "autoencoder=taesd3"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"recipe t2i smoke (taesd3): {time.time() - t0:.0f} s")
    results = json.loads((out / "recipe.json").read_text())
    stages = recipes.t2i_smoke()
    assert [r["stage"] for r in results] == [s.name for s in stages]
    assert all(r["step"] == 2 for r in results)
    for r, stage in zip(results, stages):
        run = open_run(r["out"])
        assert run.autoencoder == "taesd3" and run.latent_shape[0] == 16, stage.name
        records = read_metrics(r["out"])
        assert records and all(math.isfinite(v) for rec in records for v in rec.values() if isinstance(v, float))
    # the pixel recipe's sizes, as latents: resolutions x8, so the last UNet stage generates 32x32 latents
    assert open_run(results[-2]["out"]).latent_shape == (16, 32, 32)
