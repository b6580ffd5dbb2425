"""EfficientUNet and its attention: every preset and delta at a tiny width, RoPE, MQA, save/load, shapes."""

import pytest
import torch

from snapgen.models import EfficientUNet
from snapgen.models.attention import Attention, apply_rope, rope_2d_angles
from snapgen.registry import DELTAS, PRESETS, apply_delta, baseline, resolve, shrink

TINY_BASE = shrink(baseline())  # the real baseline, shrunk: one shared init for the variant tests


def _tiny_model(cfg, seed=0):
    torch.manual_seed(seed)
    return EfficientUNet.from_unet_config(cfg)


def _forward_backward(model, latent=(8, 8), batch=2):
    inputs = model.dummy_inputs(batch, latent, text_len=5)
    out = model(**inputs)
    assert out.shape == (batch, model.config.out_channels, *latent)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "every parameter takes part in the forward pass"
    return out


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_runs_forward_and_backward_tiny(preset):
    _forward_backward(_tiny_model(shrink(resolve(preset))))


@pytest.mark.parametrize("delta", sorted(DELTAS))
def test_every_single_delta_runs_forward_and_backward_tiny(delta):
    cfg = apply_delta(TINY_BASE, delta)
    assert cfg != TINY_BASE, f"{delta} changed nothing"
    _forward_backward(_tiny_model(cfg))


@pytest.mark.parametrize("latent", [(8, 12), (12, 8), (9, 7)])
def test_non_square_and_odd_latents(latent):
    model = _tiny_model(shrink(resolve("snapgen-imagenet")))
    _forward_backward(model, latent=latent, batch=1)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    d, H, W = 16, 6, 7
    q, k = torch.randn(1, 1, 1, d), torch.randn(1, 1, 1, d)
    angles = rope_2d_angles(H, W, d).view(H, W, d // 2)

    def score(pq, pk):
        rq = apply_rope(q, angles[pq].view(1, -1))
        rk = apply_rope(k, angles[pk].view(1, -1))
        return (rq * rk).sum()

    base = score((1, 2), (3, 1))
    for shift in [(1, 0), (0, 3), (2, 4)]:
        shifted = score((1 + shift[0], 2 + shift[1]), (3 + shift[0], 1 + shift[1]))
        assert torch.allclose(base, shifted, atol=1e-5)
    assert not torch.allclose(base, score((1, 2), (3, 2)), atol=1e-3), "a different offset gives a different score"


def test_rope_preserves_norms():
    x = torch.randn(2, 3, 20, 8)
    assert torch.allclose(apply_rope(x, rope_2d_angles(4, 5, 8)).norm(dim=-1), x.norm(dim=-1), atol=1e-5)


@pytest.mark.parametrize("context_dim", [None, 12])
def test_mqa_equals_mhsa_when_kv_heads_are_tied(context_dim):
    torch.manual_seed(0)
    heads, head_dim, dim = 4, 8, 32
    mha = Attention(dim, context_dim, heads, head_dim, kv_heads=heads)
    mqa = Attention(dim, context_dim, heads, head_dim, kv_heads=1)
    with torch.no_grad():
        mha.to_q.weight.copy_(mqa.to_q.weight)
        mha.to_out.load_state_dict(mqa.to_out.state_dict())
        # Tie every K/V head of the MHSA to MQA's single head.
        mha.to_k.weight.copy_(mqa.to_k.weight.repeat(heads, 1))
        mha.to_v.weight.copy_(mqa.to_v.weight.repeat(heads, 1))
    x = torch.randn(2, 10, dim)
    ctx = None if context_dim is None else torch.randn(2, 6, context_dim)
    assert torch.allclose(mha(x, ctx), mqa(x, ctx), atol=1e-5)
    assert sum(p.numel() for p in mqa.parameters()) < sum(p.numel() for p in mha.parameters())


def test_cross_attention_mask_ignores_padding_tokens():
    torch.manual_seed(0)
    attn = Attention(16, 8, 2, 8, kv_heads=2)
    x, ctx = torch.randn(1, 5, 16), torch.randn(1, 4, 8)
    mask = torch.tensor([[True, True, False, False]])
    padded = torch.cat([ctx[:, :2], torch.randn(1, 2, 8)], dim=1)
    assert torch.allclose(attn(x, ctx, mask), attn(x, padded, mask), atol=1e-6)


def test_save_pretrained_round_trip(tmp_path):
    cfg = shrink(resolve("snapgen-t2i"))
    model = _tiny_model(cfg).eval()
    model.save_pretrained(tmp_path)
    loaded = EfficientUNet.from_pretrained(tmp_path).eval()
    assert loaded.unet_config == cfg
    inputs = model.dummy_inputs(1, (8, 8), text_len=5)
    with torch.no_grad():
        assert torch.equal(model(**inputs), loaded(**inputs))


def test_forward_is_deterministic_for_a_seed():
    a, b = _tiny_model(TINY_BASE, seed=3), _tiny_model(TINY_BASE, seed=3)
    inputs = a.dummy_inputs(1, (8, 8), text_len=5)
    with torch.no_grad():
        assert torch.equal(a(**inputs), b(**inputs))


def test_gradient_checkpointing_gives_the_same_gradients():
    cfg = shrink(resolve("snapgen-imagenet"))
    plain, ckpt = _tiny_model(cfg, seed=1), _tiny_model(cfg, seed=1)
    ckpt.enable_gradient_checkpointing()
    inputs = plain.dummy_inputs(1, (8, 8), text_len=5)
    plain(**inputs).square().mean().backward()
    ckpt(**inputs).square().mean().backward()
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


def test_pixel_space_config():
    model = _tiny_model(TINY_BASE.replace(in_channels=3, out_channels=3))
    _forward_backward(model, latent=(16, 16), batch=1)
