"""The fused text stack (Sec. 4): SD3 layout, per-encoder dropout statistics, any subset, save/load."""

import itertools

import pytest
import torch

from snapgen.models.text_stack import ENCODER_DROP_PROB, TextStack, TextStackConfig, tiny_snapgen_stack

PROMPTS = ["a photo of a cat", "a red car parked on a wet street at night"]
L_NAME, G_NAME, LM_NAME = "clip-l-tiny", "clip-g-tiny", "gemma2-2b-tiny"


@pytest.fixture(scope="module")
def stack():
    return tiny_snapgen_stack(widths=(16, 24, 48), max_length=8)


def test_snapgen_config_widths():
    cfg = TextStackConfig.snapgen()
    assert cfg.dim == 2304 and cfg.pooled_dim == 768 + 1280  # CLIP-L+G 2048 padded to Gemma's 2304
    assert cfg.seq_len == 77 * 2
    assert TextStackConfig.offline().dim == 384


def test_fused_layout_is_sd3(stack):
    parts = stack.encode_each(PROMPTS)
    hidden, mask, pooled = stack.fuse(parts, len(PROMPTS))
    assert hidden.shape == (2, 16, 48) and mask.shape == (2, 16) and pooled.shape == (2, 16 + 24)
    # CLIP tokens: L then G on channels, then zeros up to the stack width.
    assert torch.equal(hidden[:, :8, :16], parts[L_NAME][0])
    assert torch.equal(hidden[:, :8, 16:40], parts[G_NAME][0])
    assert hidden[:, :8, 40:].abs().max() == 0
    # Gemma tokens appended on the sequence axis.
    assert torch.equal(hidden[:, 8:], parts[LM_NAME][0])
    assert torch.equal(pooled, torch.cat([parts[L_NAME][2], parts[G_NAME][2]], -1))
    assert torch.equal(mask[:, 8:], parts[LM_NAME][1])


def test_encoder_dropout_statistics(stack):
    n = 20000
    drop = stack.sample_drop(n, torch.Generator().manual_seed(0))
    for name, d in drop.items():
        assert abs(d.float().mean().item() - ENCODER_DROP_PROB) < 0.015, name  # each ~46.4%
    all_three = (drop[L_NAME] & drop[G_NAME] & drop[LM_NAME]).float().mean().item()
    assert abs(all_three - ENCODER_DROP_PROB ** 3) < 0.01 and abs(all_three - 0.10) < 0.012  # ~10% unconditional
    # independence: P(L and G) ~ p^2
    assert abs((drop[L_NAME] & drop[G_NAME]).float().mean().item() - ENCODER_DROP_PROB ** 2) < 0.015


def test_dropout_zeroes_exactly_the_dropped_encoders(stack):
    parts = stack.encode_each(PROMPTS)
    drop = {L_NAME: torch.tensor([True, False]), G_NAME: torch.tensor([False, False]),
            LM_NAME: torch.tensor([False, True])}
    hidden, mask, pooled = stack.fuse(parts, 2, drop)
    assert hidden[0, :8, :16].abs().max() == 0 and hidden[1, :8, :16].abs().max() > 0
    assert pooled[0, :16].abs().max() == 0 and pooled[0, 16:].abs().max() > 0
    assert hidden[1, 8:].abs().max() == 0 and mask[1, 8:].all()  # fully dropped group: null condition
    assert torch.equal(hidden[0, 8:], parts[LM_NAME][0][0])


def test_training_mode_drops_and_eval_mode_does_not(stack):
    stack.train()
    try:
        counts = [(stack.encode(PROMPTS * 50, generator=torch.Generator().manual_seed(1))[2] == 0).all(-1).float()
                  .mean().item()]
    finally:
        stack.eval()
    # pooled is zero only when both CLIPs are dropped: p^2 ~ 0.215 on 100 samples
    assert 0.08 < counts[0] < 0.4
    _, _, pooled = stack.encode(PROMPTS)
    assert (pooled != 0).any(-1).all()


@pytest.mark.parametrize("subset", [s for r in range(0, 4) for s in itertools.combinations((L_NAME, G_NAME, LM_NAME), r)])
def test_any_subset_runs(stack, subset):
    hidden, mask, pooled = stack.fuse(stack.encode_each(PROMPTS, use=subset), len(PROMPTS))
    assert hidden.shape == (2, 16, 48) and mask.shape == (2, 16) and pooled.shape == (2, 40)
    assert torch.isfinite(hidden).all()
    if LM_NAME not in subset:
        assert hidden[:, 8:].abs().max() == 0 and mask[:, 8:].all()
    if not subset:
        assert torch.equal(hidden, stack.null(2)[0])


def test_save_load_roundtrip(stack, tmp_path):
    stack.save_pretrained(tmp_path / "text_stack")
    again = TextStack.from_pretrained(tmp_path / "text_stack")
    for a, b in zip(stack.encode(PROMPTS), again.encode(PROMPTS)):
        assert torch.equal(a, b)
    partial = TextStack.from_pretrained(tmp_path / "text_stack", use=(LM_NAME,))
    hidden, _, pooled = partial.encode(PROMPTS)
    assert hidden[:, :8].abs().max() == 0 and pooled.abs().max() == 0


def test_errors_name_the_bad_value(stack):
    with pytest.raises(ValueError, match="t5"):
        stack.encode_each(PROMPTS, use=("t5",))
    with pytest.raises(ValueError, match="no width"):
        TextStackConfig(channel_group=("mystery",), sequence_group=())
