"""SnapGenPipeline: latent and pixel-space generation, determinism per seed, save/load round trip, the CLI."""

import numpy as np
import pytest
import torch

from snapgen.flow import flow_sigmas
from snapgen.models import EfficientUNet
from snapgen.models.decoder import TinyDecoder
from snapgen.models.text_stack import tiny_snapgen_stack
from snapgen.pipeline import SnapGenPipeline, flow_scheduler
from snapgen.registry import resolve, shrink

TINY_DECODER = dict(block_out_channels=(16, 16, 8, 8), layers_per_block=(1, 1, 1, 0), norm_num_groups=4)


def tiny_unet(context_dim: int, channels: int = 16) -> EfficientUNet:
    torch.manual_seed(0)
    cfg = shrink(resolve("snapgen-t2i"), base_width=16, head_dim=8, context_dim=context_dim)
    return EfficientUNet.from_unet_config(cfg.replace(in_channels=channels, out_channels=channels)).eval()


@pytest.fixture(scope="module")
def pipe():
    stack = tiny_snapgen_stack()
    p = SnapGenPipeline(tiny_unet(stack.dim), flow_scheduler(), stack, TinyDecoder(**TINY_DECODER), resolution=64)
    p.set_progress_bar_config(disable=True)
    return p


def test_scheduler_matches_snapgen_flow():
    scheduler = flow_scheduler()
    scheduler.set_timesteps(28)
    assert torch.allclose(scheduler.sigmas.float(), flow_sigmas(28).float(), atol=1e-6)


@pytest.mark.parametrize("steps,cfg", [(28, 4.0), (4, None), (8, 2.0)])
def test_generates_images(pipe, steps, cfg):
    images = pipe(["a cat", "a dog"], num_inference_steps=steps, guidance_scale=cfg, output_type="np").images
    assert images.shape == (2, 64, 64, 3) and np.isfinite(images).all()
    assert images.min() >= 0 and images.max() <= 1


def test_deterministic_per_seed_and_batch_independent(pipe):
    a = pipe(["a cat", "a dog"], num_inference_steps=4, guidance_scale=3.0, seed=7, output_type="pt").images
    b = pipe(["a cat", "a dog"], num_inference_steps=4, guidance_scale=3.0, seed=7, output_type="pt").images
    c = pipe(["a cat", "a dog"], num_inference_steps=4, guidance_scale=3.0, seed=8, output_type="pt").images
    single = pipe(["a cat"], num_inference_steps=4, guidance_scale=3.0, seed=7, output_type="pt").images
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a[:1], single, atol=1e-5)


def test_prompt_and_guidance_change_the_image(pipe):
    kw = dict(num_inference_steps=4, seed=1, output_type="latent")
    cat = pipe("a cat", guidance_scale=5.0, **kw).images
    dog = pipe("a dog", guidance_scale=5.0, **kw).images
    no_cfg = pipe("a cat", guidance_scale=1.0, **kw).images
    assert not torch.allclose(cat, dog) and not torch.allclose(cat, no_cfg)
    assert cat.shape == (1, 16, 8, 8)


def test_encoder_subsets(pipe):
    kw = dict(num_inference_steps=2, seed=1, output_type="latent", guidance_scale=2.0)
    full = pipe("a cat", **kw).images
    only_lm = pipe("a cat", use_encoders=("gemma2-2b-tiny",), **kw).images
    assert torch.isfinite(only_lm).all() and not torch.allclose(full, only_lm)


def test_save_pretrained_roundtrip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    again = SnapGenPipeline.from_pretrained(tmp_path / "pipe")
    again.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=4, guidance_scale=3.0, seed=3, output_type="pt")
    assert torch.equal(pipe("a red car", **kw).images, again("a red car", **kw).images)
    assert type(again.decoder) is TinyDecoder and again.config.resolution == 64


def test_pixel_space_pipeline_and_cli(tmp_path):
    """The CIFAR-10 runs: a pixel-space UNet (3 channels) on MiniLM, no decoder; then `python -m snapgen.generate`."""
    from PIL import Image

    from snapgen import generate
    from snapgen.models.text_stack import TextStackConfig, load_text_stack

    stack = load_text_stack(TextStackConfig.offline())
    pipe = SnapGenPipeline(tiny_unet(stack.dim, channels=3), flow_scheduler(), stack, None, resolution=16)
    pipe.save_pretrained(tmp_path / "pixel")
    out = tmp_path / "img.png"
    generate.main([str(tmp_path / "pixel"), "--prompt", "a photo of a cat", "--prompt", "a photo of a ship",
                   "--steps", "3", "--n", "2", "--out", str(out), "--plain"])
    assert Image.open(out).size == (32, 32)  # 2 x 2 images of 16 px, at their own pixels
    plain = np.asarray(Image.open(out)).copy()
    generate.main([str(tmp_path / "pixel"), "--prompt", "a photo of a cat", "--prompt", "a photo of a ship",
                   "--steps", "3", "--n", "2", "--out", str(out)])
    shown = np.asarray(Image.open(out))  # for people: 2 labelled rows, tiles upscaled 16x (nearest) to 256 px
    assert shown.shape[:2] == (2 * 256, shown.shape[1]) and shown.shape[1] > 2 * 256
    assert np.array_equal(shown[::16, -2 * 256::16], plain)
    first = shown.copy()
    generate.main([str(tmp_path / "pixel"), "--prompt", "a photo of a cat", "--prompt", "a photo of a ship",
                   "--steps", "3", "--n", "2", "--out", str(out)])
    assert np.array_equal(first, np.asarray(Image.open(out)))


def test_mismatched_widths_are_an_error():
    stack = tiny_snapgen_stack()
    with pytest.raises(ValueError, match="cross_attention_dim"):
        SnapGenPipeline(tiny_unet(stack.dim + 8), flow_scheduler(), stack, None)


def test_throughput_benchmark_quick(tmp_path):
    """benchmarks/throughput.py --quick on CPU: every model row and the files (the numbers themselves mean nothing)."""
    import json

    from benchmarks import throughput

    assert throughput.main(["--quick", "--out", str(tmp_path), "--repeats", "1", "--models", "snapgen", "sdxl",
                            "--settings", "eager", "+cudnn-benchmark", "--profile", "eager"]) == 0
    result = json.loads((tmp_path / "throughput.json").read_text())
    rows = {(r["model"], r["setting"]): r for r in result["unets"]}
    assert set(rows) == {(m, s) for m in ("snapgen-t2i", "sdxl-unet") for s in ("eager", "+cudnn-benchmark")}
    assert all(r["samples_per_s"] > 0 and r["unet_batch"] == 2 * r["batch"] for r in result["unets"])
    assert all(r["mfu"] is not None and 0 < r["mfu"] for r in result["unets"])
    # both ratios: against SDXL under the same setting and against SDXL eager
    own = rows[("snapgen-t2i", "+cudnn-benchmark")]
    assert own["ratio_same_setting"] == pytest.approx(
        own["samples_per_s"] / rows[("sdxl-unet", "+cudnn-benchmark")]["samples_per_s"])
    assert own["ratio_vs_sdxl_eager"] == pytest.approx(own["samples_per_s"] / rows[("sdxl-unet", "eager")]["samples_per_s"])
    profile = rows[("snapgen-t2i", "eager")]["kernel_profile"]
    assert sum(c["share"] for c in profile["categories"]) == pytest.approx(1.0)
    assert {"conv (dense, incl. 1x1)", "attention", "norm"} <= {c["category"] for c in profile["categories"]}
    assert "kernel_profile" not in rows[("snapgen-t2i", "+cudnn-benchmark")]
    assert result["decoders"] and (tmp_path / "throughput.md").read_text().count("|") > 10
    # a second call adds its rows to the same file
    assert throughput.main(["--quick", "--out", str(tmp_path), "--repeats", "1", "--models", "snapgen",
                            "--settings", "+channels-last", "--no-decoders"]) == 0
    again = json.loads((tmp_path / "throughput.json").read_text())
    assert len(again["unets"]) == 5 and again["decoders"]
