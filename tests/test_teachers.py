"""Teacher adapter: a tiny SD3Transformer2DModel, its conditioning map, feature taps and freezing."""

import pytest
import torch

from snapgen.teachers import SmallTeacherConfig, TeacherAdapter, build_small_teacher, masked_mean, teacher_fn

TEXT_DIM = 16
TINY = SmallTeacherConfig(resolution=8, num_layers=2, num_attention_heads=2, attention_head_dim=8)


def tiny_teacher() -> TeacherAdapter:
    return build_small_teacher(TINY, TEXT_DIM, seed=0)


def inputs(b=2, r=8, length=5):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, r, r, generator=g)
    hidden = torch.randn(b, length, TEXT_DIM, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 3:] = False
    return x, torch.tensor([100.0, 900.0]), (hidden, mask)


def test_shapes_and_features_are_last_block_tokens():
    teacher = tiny_teacher()
    x, t, cond = inputs()
    out = teacher(x, t, cond, feature_layers=(0, -1))
    d_t, p = teacher.feature_dim, teacher.patch_size
    assert out["v"].shape == x.shape
    assert out["grid"] == (8 // p, 8 // p)
    assert out["features"].shape == (2, (8 // p) ** 2, d_t) == (2, 16, 16)
    assert [f.shape for f in out["layer_features"]] == [(2, 16, d_t)] * 2
    assert torch.equal(out["features"], out["layer_features"][-1])
    assert not torch.allclose(out["layer_features"][0], out["layer_features"][1])
    # the tap is the last block's image-token output: norm_out's input in diffusers' own forward
    seen = {}
    h = teacher.transformer.norm_out.register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    teacher(x, t, cond)
    h.remove()
    assert torch.allclose(seen["x"], out["features"])
    assert not teacher.transformer._forward_hooks and not teacher.transformer.transformer_blocks[-1]._forward_hooks


def test_conditioning_map_masks_padding_and_checks_width():
    teacher = tiny_teacher()
    x, t, (hidden, mask) = inputs()
    enc, pooled = teacher.sd3_inputs((hidden, mask))
    assert torch.allclose(pooled[0], hidden[0, :3].mean(0)) and torch.allclose(pooled[1], hidden[1].mean(0))
    assert (enc[0, 3:] == 0).all()
    assert torch.allclose(masked_mean(hidden, None), hidden.mean(1))
    # padding content does not change the teacher's output
    noisy = hidden.clone()
    noisy[0, 3:] = 100.0
    assert torch.allclose(teacher(x, t, (hidden, mask))["v"], teacher(x, t, (noisy, mask))["v"])
    with pytest.raises(ValueError, match="joint_attention_dim"):
        teacher(x, t, (torch.randn(2, 5, 7), mask))
    # SD3's own conditioning passes through
    v = teacher(x, t, {"encoder_hidden_states": enc, "pooled_projections": pooled})["v"]
    assert torch.allclose(v, teacher_fn(teacher)(x, t, (hidden, mask)))


def test_frozen_eval_and_input_gradients():
    teacher = tiny_teacher()
    teacher.train()
    assert not teacher.training and not teacher.transformer.training
    assert all(not p.requires_grad for p in teacher.parameters())
    x, t, cond = inputs()
    x.requires_grad_(True)
    teacher(x, t, cond)["features"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_small_teacher_config_is_larger_than_smoke_student_and_hash_keyed():
    from snapgen.models import EfficientUNet
    from snapgen.train import make_config

    student = EfficientUNet.from_unet_config(make_config("smoke").unet_config(384))
    teacher = build_small_teacher(SmallTeacherConfig(), 384)
    n_s, n_t = (sum(p.numel() for p in m.parameters()) for m in (student, teacher))
    assert n_t > 3 * n_s
    assert SmallTeacherConfig().cache_key() != SmallTeacherConfig(num_layers=4).cache_key()
    with pytest.raises(ValueError, match="patch_size"):
        SmallTeacherConfig(resolution=15).transformer_config(384)


def test_small_teacher_trains_through_the_one_loop_and_is_cached(tmp_path, monkeypatch):
    from diffusers import SD3Transformer2DModel

    from snapgen.teachers import small_teacher, teacher_cache_dir, train_small_teacher

    monkeypatch.setenv("SNAPGEN_CACHE", str(tmp_path / "cache"))
    import shutil
    from pathlib import Path

    real_cache = Path.home() / ".cache" / "snapgen"
    for sub in ("data", "text"):  # reuse the decoded CIFAR-10 and the prompt embeddings
        if (real_cache / sub).is_dir():
            shutil.copytree(real_cache / sub, tmp_path / "cache" / sub)
    cfg = SmallTeacherConfig(resolution=8, num_layers=2, num_attention_heads=2, attention_head_dim=8, batch_size=4,
                             steps=2, warmup=0, train_overrides=(("val_size", 8), ("val_timesteps", 2),
                                                                 ("sample_steps", 2), ("samples_per_class", 1),
                                                                 ("train_limit", 64)))
    path = train_small_teacher(cfg, progress=False)
    assert path.parent.parent == teacher_cache_dir(cfg)
    assert (path / "config.json").is_file()
    mtime = (path / "config.json").stat().st_mtime
    teacher = small_teacher(cfg, progress=False)  # cached: no retraining
    assert (path / "config.json").stat().st_mtime == mtime
    assert isinstance(teacher.transformer, SD3Transformer2DModel) and not teacher.training
    assert teacher.transformer.config.joint_attention_dim == 384  # MiniLM width
