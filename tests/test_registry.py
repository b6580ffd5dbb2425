"""The registry: names, purity, walks, and the exact efficiency targets of Fig. 3 and Table 1."""

import pytest
import torch

from snapgen.config import UNetConfig
from snapgen.models import EfficientUNet
from snapgen.registry import DELTAS, SNAPGEN_DELTAS, apply_delta, baseline, resolve, walk


def _params(cfg: UNetConfig) -> int:
    with torch.device("meta"):  # counts without allocating 600M parameters
        return sum(p.numel() for p in EfficientUNet.from_unet_config(cfg).parameters())


@pytest.mark.parametrize("delta", sorted(DELTAS))
def test_applying_a_delta_twice_changes_nothing(delta):
    once = apply_delta(baseline(), delta)
    assert apply_delta(once, delta) == once
    assert once != baseline()


def test_deltas_are_pure():
    cfg = baseline()
    before = cfg.to_dict()
    for name in DELTAS:
        apply_delta(cfg, name)
    assert cfg.to_dict() == before


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(KeyError, match="valid presets: .*snapgen-imagenet"):
        resolve("snapgen-xl")
    with pytest.raises(KeyError, match="valid deltas: .*qk_rmsnorm_rope"):
        resolve("baseline+no_such_delta")
    with pytest.raises(KeyError, match="valid walks: .*fig3"):
        walk("fig9")


def test_config_round_trips_and_rejects_unknown_keys():
    cfg = resolve("snapgen-t2i")
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.config_hash() == UNetConfig.from_dict(cfg.to_dict()).config_hash()
    with pytest.raises(ValueError, match="unknown UNetConfig keys \\['channels'\\]"):
        UNetConfig.from_dict({"channels": 3})
    with pytest.raises(ValueError, match="conv='depthwise'"):
        baseline().replace(conv="depthwise")


def test_delta_arguments():
    assert apply_delta(baseline(), "sepconv:3").sepconv_expansion == 3
    assert apply_delta(baseline(), "ffn_trim:2.5").ffn_ratio == 2.5


def test_snapgen_is_every_delta_and_composes_in_any_order():
    full = resolve("baseline+" + "+".join(SNAPGEN_DELTAS))
    reverse = resolve("baseline+" + "+".join(reversed(SNAPGEN_DELTAS)))
    assert full == reverse
    assert resolve("snapgen-imagenet") == full.replace(cross_attention_dim=768)


def test_walks_chain_their_parents():
    steps = walk("fig3")
    names = [s.name for s in steps]
    assert names[0] == "a_baseline" and steps[0].config == baseline()
    by_name = {s.name: s for s in steps}
    for s in steps[1:]:
        assert s.parent in by_name and names.index(s.parent) < names.index(s.name)
        assert apply_delta(by_name[s.parent].config, s.delta) == s.config
    assert steps[-1].config == resolve("snapgen-imagenet")
    loo = walk("loo")
    assert len(loo) == 1 + len(SNAPGEN_DELTAS)
    assert len({s.config for s in loo}) == len(loo)


# Fig. 3 parameter deltas stated in Sec. 3.1 (percent against the step before); FLOP deltas are in test_profile.
PAPER_PARAM_DELTAS = {"c_sepconv_plain": -24, "c_sepconv_expanded": -15, "d_ffn_trim": -12, "e_mqa": -16}


def test_fig3_parameter_deltas_within_two_points():
    steps = walk("fig3")
    params = {s.name: _params(s.config) for s in steps}
    parents = {s.name: s.parent for s in steps}
    for name, paper in PAPER_PARAM_DELTAS.items():
        ours = 100 * (params[name] / params[parents[name]] - 1)
        assert abs(ours - paper) <= 2, f"{name}: {ours:+.1f}% vs paper {paper}%"
    # Sec. 3.1: first-stage CA makes the model smaller; RMSNorm + RoPE add almost nothing.
    assert params["f_first_stage_ca"] < params["e_mqa"]
    assert abs(params["g_qk_rmsnorm_rope"] / params["f_first_stage_ca"] - 1) < 1e-3


def test_final_models_parameter_counts():
    assert abs(_params(resolve("snapgen-imagenet")) / 372e6 - 1) <= 0.01  # Table 1: 372M
    assert abs(_params(resolve("snapgen-t2i")) / 379e6 - 1) <= 0.01  # Sec. 4 / Table 3: 0.38B (379M)
