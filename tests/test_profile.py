"""snapgen.profile: params, fvcore FLOPs (closed forms, SDPA handler), latency, and the CLI's walk table."""

import json
import sys
import types
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from snapgen import profile


def test_count_params_counts_shared_once():
    linear = nn.Linear(3, 5)
    assert profile.count_params(linear) == 3 * 5 + 5
    shared = nn.Sequential(linear, nn.ReLU(), linear)
    assert profile.count_params(shared) == 20


def test_linear_flops_closed_form():
    batch, tokens, d_in, d_out = 2, 7, 16, 24
    result = profile.count_flops(nn.Linear(d_in, d_out), (torch.randn(batch, tokens, d_in),))
    assert result["gflops"] * 1e9 == pytest.approx(batch * tokens * d_in * d_out)
    assert result["gflops_fvcore_default"] == pytest.approx(result["gflops"])
    assert result["gflops_attention"] == 0


def test_conv_flops_closed_form():
    # multiply-adds of a conv: B * C_out * H_out * W_out * (C_in / groups) * k * k
    conv = nn.Conv2d(8, 12, kernel_size=3, padding=1, stride=2)
    result = profile.count_flops(conv, (torch.randn(2, 8, 10, 10),))
    assert result["gflops"] * 1e9 == pytest.approx(2 * 12 * 5 * 5 * 8 * 3 * 3)
    depthwise = nn.Conv2d(8, 8, kernel_size=3, padding=1, groups=8)
    result = profile.count_flops(depthwise, (torch.randn(1, 8, 6, 6),))
    assert result["gflops"] * 1e9 == pytest.approx(8 * 6 * 6 * 1 * 3 * 3)


class TinyAttention(nn.Module):
    """MHSA (kv_heads == heads) or MQA (kv_heads == 1) through F.scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, kv_heads: int, expand_kv: bool = False, gqa: bool = False):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.expand_kv, self.gqa = expand_kv, gqa
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.head_dim, bias=False)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, H, N, d)
        k, v = self.kv(x).view(b, n, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, Hkv, N, d)
        if self.expand_kv:
            k, v = k.expand(b, self.heads, n, self.head_dim), v.expand(b, self.heads, n, self.head_dim)
        if self.gqa:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return F.scaled_dot_product_attention(q, k, v)  # MQA: (B, 1, N, d) broadcasts over heads


@pytest.mark.parametrize(
    "kv_heads, expand_kv, gqa",
    [(4, False, False), (1, False, False), (1, True, False), (1, False, True), (2, False, True)],
    ids=["mhsa", "mqa-broadcast", "mqa-expanded", "mqa-enable_gqa", "gqa"],
)
def test_sdpa_handler_hand_count(kv_heads, expand_kv, gqa):
    if gqa and "enable_gqa" not in F.scaled_dot_product_attention.__doc__:
        pytest.skip("this torch has no enable_gqa")
    batch, tokens, dim, heads = 2, 10, 32, 4
    module = TinyAttention(dim, heads, kv_heads, expand_kv, gqa)
    result = profile.count_flops(module, (torch.randn(batch, tokens, dim),))
    head_dim = dim // heads
    projections = batch * tokens * dim * (dim + 2 * kv_heads * head_dim)
    attention = batch * heads * tokens * tokens * (head_dim + head_dim)  # QK^T + AV, every query head
    assert result["gflops_attention"] * 1e9 == pytest.approx(attention)
    assert result["gflops"] * 1e9 == pytest.approx(projections + attention)
    assert result["gflops_fvcore_default"] * 1e9 == pytest.approx(projections)
    assert "aten::scaled_dot_product_attention" not in result["skipped_ops"]


def test_sdpa_cross_attention_uses_key_length_and_value_dim():
    class Cross(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.randn(1, 3, 5, 8), torch.randn(1, 3, 7, 8), torch.randn(1, 3, 7, 6)
    result = profile.count_flops(Cross(), (q, k, v))
    assert result["gflops"] * 1e9 == pytest.approx(3 * 5 * 7 * (8 + 6))


def test_count_flops_dict_inputs_and_skipped_ops():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 6)

        def forward(self, sample, scale=None, mask=None):
            out = F.silu(self.proj(sample))
            return (out * scale if scale is not None else out,)

    inputs = {"sample": torch.randn(3, 4), "scale": torch.tensor(2.0), "mask": None}
    result = profile.count_flops(Net(), inputs)
    assert result["gflops"] * 1e9 == pytest.approx(3 * 4 * 6)
    assert result["skipped_ops"].get("aten::silu") == 1
    with pytest.raises(TypeError, match="tuple of tensors or a dict"):
        profile.count_flops(Net(), [torch.randn(3, 4)])


def test_count_flops_restores_training_mode():
    module = nn.Linear(2, 2).train()
    profile.count_flops(module, (torch.randn(1, 2),))
    assert module.training


def test_measure_latency_fields():
    calls = []
    result = profile.measure_latency(lambda: calls.append(1), warmup=2, repeats=5, device="cpu")
    assert len(calls) == 7
    assert result["backend"] == "torch-cpu"
    assert result["p10"] <= result["median_ms"] <= result["p90"]
    assert isinstance(result["device"], str) and result["device"]
    assert result["dtype"] == "float32"
    with pytest.raises(ValueError, match="repeats"):
        profile.measure_latency(lambda: None, repeats=0)


# ----- walk table against a fake registry (the real one is the lead's; these test our accounting) -----


@dataclass
class FakeConfig:
    width: int
    block_out_channels: tuple = (4,)  # one stage: any latent side is valid


@dataclass
class FakeStep:
    name: str
    parent: str | None
    delta: str | None
    config: FakeConfig


def _fake_registry(monkeypatch):
    steps = [
        FakeStep("a_baseline", None, None, FakeConfig(100)),
        FakeStep("b_no_sa_high_res", "a_baseline", "no_sa_high_res", FakeConfig(83)),  # FLOPs -17 %: PASS
        FakeStep("c_sepconv_plain", "b_no_sa_high_res", "sepconv_plain", FakeConfig(50)),  # params -40 %: FAIL
        FakeStep("c_sepconv_expanded", "b_no_sa_high_res", "sepconv_expanded", FakeConfig(70)),
    ]
    registry = types.ModuleType("snapgen.registry")
    registry.walk = lambda name: steps
    monkeypatch.setitem(sys.modules, "snapgen.registry", registry)


def _fake_profile(cfg, latent):
    # params and FLOPs both proportional to width, FLOPs also to latent area
    return {"params": cfg.width * 1_000_000, "gflops": cfg.width * latent * latent / 1e3}


def test_profile_walk_deltas_and_checks(monkeypatch):
    _fake_registry(monkeypatch)
    rows = {r["step"]: r for r in profile.profile_walk("fig3", latent=8, profile_fn=_fake_profile)}
    assert rows["a_baseline"]["d_params_pct"] is None and rows["a_baseline"]["check"] == "-"
    b = rows["b_no_sa_high_res"]
    assert b["d_gflops_pct"] == pytest.approx(-17.0)
    assert b["paper_d_gflops_pct"] == -17.0 and b["paper_d_params_pct"] is None
    assert b["check"] == "PASS"
    plain = rows["c_sepconv_plain"]
    assert plain["parent"] == "b_no_sa_high_res"
    assert plain["d_params_pct"] == pytest.approx(100 * (50 - 83) / 83)
    assert plain["check"] == "FAIL"  # paper -24 %, ours -39.8 %


def test_cli_walk_json_parses(monkeypatch, capsys):
    _fake_registry(monkeypatch)
    monkeypatch.setattr(profile, "profile_unet_config", lambda cfg, latent: _fake_profile(cfg, latent))
    assert profile.main(["walk", "fig3", "--latent", "8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["step"] for s in data["steps"]][:2] == ["a_baseline", "b_no_sa_high_res"]
    assert profile.main(["walk", "fig3", "--latent", "8"]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text and "FAIL" in text and "b_no_sa_high_res" in text


def test_cli_unet_json_parses(monkeypatch, capsys):
    class TinyUNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        @classmethod
        def from_unet_config(cls, cfg):
            return cls()

        def dummy_inputs(self, batch=1, latent=(32, 32), text_len=77):
            return {"sample": torch.randn(batch, 4, *latent), "timestep": torch.zeros(batch)}

        def forward(self, sample, timestep, encoder_hidden_states=None, encoder_attention_mask=None):
            return self.conv(sample)

    import snapgen.models
    import snapgen.registry

    monkeypatch.setattr(snapgen.registry, "resolve", lambda arch: FakeConfig(1))
    monkeypatch.setattr(snapgen.models, "EfficientUNet", TinyUNet)
    assert profile.main(["unet", "--arch", "tiny", "--latent", "8", "--batch", "2", "--latency", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == 4 * 4 * 9 + 4
    assert data["gflops"] * 1e9 == pytest.approx(2 * 4 * 8 * 8 * 4 * 9)
    assert data["latency"]["backend"] == "torch-cpu"


def test_forward_latency_tuple_and_dict_inputs():
    conv = nn.Conv2d(2, 2, 1)
    for inputs in ((torch.randn(1, 2, 4, 4),), {"input": torch.randn(1, 2, 4, 4)}):
        result = profile.forward_latency(conv, inputs, "cpu")
        assert result["repeats"] == 5 and result["backend"] == "torch-cpu" and result["median_ms"] > 0


def test_cli_decoder_text_with_latency(capsys):
    assert profile.main(["decoder", "--arch", "tiny+no_gn", "--latent", "8", "--latency", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "tiny+no_gn" in out and "GFLOPs (fvcore default)" in out and "torch-cpu" in out
