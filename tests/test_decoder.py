"""TinyDecoder (Sec. 3.2): size targets of Table 2, the closed-form cost, shapes, registry, save/load."""

import pytest
import torch

from snapgen.models.decoder import (
    DECODER_ARCHS,
    PAPER_GFLOPS,
    PAPER_PARAMS_M,
    TinyDecoder,
    analytic_cost,
    build_decoder,
    decoder_config,
)
from snapgen.profile import count_flops, count_params, profile_decoder, table2_rows


def test_params_and_flops_hit_table2():
    decoder = build_decoder("tiny")
    params = count_params(decoder)
    assert params == 1_381_443
    assert abs(params / (PAPER_PARAMS_M * 1e6) - 1) <= 0.01
    # fvcore counts every op of this decoder linearly in pixels: 16x16 x 64 == 128x128 exactly.
    result = count_flops(decoder, (torch.randn(1, 16, 16, 16),))
    gflops_128 = result["gflops_fvcore_default"] * 64
    assert gflops_128 == pytest.approx(222.29, abs=0.01)
    assert abs(gflops_128 / PAPER_GFLOPS - 1) <= 0.03
    assert result["gflops_attention"] == 0  # rule 1: no attention


@pytest.mark.parametrize("arch", sorted(a for a in DECODER_ARCHS if a != "tiny_mid_attention"))
def test_analytic_cost_matches_model_and_fvcore(arch):
    decoder = build_decoder(arch)
    cost = analytic_cost(decoder_config(arch), latent=(4, 6))
    assert cost["params"] == count_params(decoder)
    assert cost["gflops"] == pytest.approx(count_flops(decoder, (torch.randn(1, 16, 4, 6),))["gflops_fvcore_default"],
                                           rel=1e-9)


@pytest.mark.parametrize("arch", sorted(DECODER_ARCHS))
def test_non_square_shapes_every_arch(arch):
    decoder = build_decoder(arch).eval()
    with torch.no_grad():
        image = decoder(torch.randn(2, 16, 3, 5))
    assert image.shape == (2, 3, 24, 40)
    assert torch.isfinite(image).all()


def test_rules_in_the_default_architecture():
    decoder = build_decoder("tiny")
    names = [type(m).__name__ for m in decoder.modules()]
    assert "Attention" not in names  # rule 1
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in decoder.modules()) == 3  # rule 2: only at 128x128
    assert all(isinstance(block.shortcut, torch.nn.Identity) for stage in decoder.stages for block in stage)  # rule 5
    widths = [up.conv.out_channels for up in decoder.upsamplers]
    assert widths == [256, 128, 64]  # the upsamplers change the width (rule 5)
    assert [len(s) for s in decoder.stages] == [3, 2, 2, 1]  # rule 4
    assert build_decoder("tiny_mid_attention").mid_attn is not None
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in build_decoder("tiny_no_gn").modules()) == 0


def test_registry_composition_and_errors():
    assert decoder_config("tiny+no_gn+wide") == decoder_config("tiny_wide") | {"norm_stages": (False,) * 4}
    assert decoder_config("tiny_no_gn") == decoder_config("tiny+no_gn")
    with pytest.raises(KeyError, match="valid: .*'tiny'"):
        decoder_config("huge")
    with pytest.raises(KeyError, match="unknown decoder delta 'nope'"):
        decoder_config("tiny+nope")
    with pytest.raises(ValueError, match="upsample_conv='dense'"):
        TinyDecoder(upsample_conv="dense")
    with pytest.raises(ValueError, match="one entry per stage"):
        TinyDecoder(layers_per_block=(1, 1))
    with pytest.raises(ValueError, match=r"\(B, 16, h, w\)"):
        build_decoder()(torch.randn(1, 4, 2, 2))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    decoder = TinyDecoder(block_out_channels=(32, 16), layers_per_block=(1, 1), norm_stages=(True, False),
                          norm_num_groups=8).eval()
    decoder.save_pretrained(tmp_path)
    loaded = TinyDecoder.from_pretrained(tmp_path).eval()
    assert loaded.config.block_out_channels == (32, 16) or list(loaded.config.block_out_channels) == [32, 16]
    latent = torch.randn(1, 16, 3, 4)
    with torch.no_grad():
        assert torch.equal(decoder(latent), loaded(latent))
    assert decoder(latent).shape == (1, 3, 6, 8)  # two stages: f = 2


def test_table2_rows_efficiency_only():
    rows = table2_rows()
    assert rows[0]["params_m"] == pytest.approx(1.381443)
    assert rows[0]["gflops"] == pytest.approx(222.29, abs=0.01)
    assert rows[0]["psnr"] is None
    assert profile_decoder("tiny", latent=32)["gflops_fvcore_default"] == pytest.approx(222.29 / 16, abs=0.01)
