"""The SnapGen paper's numbers, as data, each with where it comes from.

Source: paper/snapgen-paper-with-supplement.txt (main text, Tables 1-3; supplement Tables 1-3). A value the paper
does not give is `None`, never filled in. Table cells the paper prints as words ("OOM", "-") are kept as the
paper's word in a `str`, with `None` reserved for "not given".

Units: params in millions (M) unless the field says `_b` (billions); FLOPs in GFLOPs (one multiply-add = one
FLOP); deltas in signed percent relative to the walk step's parent (-17.0 = 17% fewer); latency in ms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

PAPER = "SnapGen (Hu, Chen, Huang et al., 2024), arXiv:2412.09619"


# --------------------------------------------------------------------------------------------------------------
# Fig. 3: the architecture walk. The figure's bars are not in the text; the deltas below are the ones Sec. 3.1
# states in words, keyed by the walk step names of snapgen.registry.walk('fig3'). FLOPs/latency at a 128x128
# latent (1024px), latency on iPhone 15 Pro, FID on ImageNet-1K 256px after 120 epochs.


@dataclass(frozen=True)
class Fig3Step:
    """What Sec. 3.1 says one design change does, relative to its parent step."""

    step: str
    change: str
    params_delta_pct: float | None = None
    flops_delta_pct: float | None = None
    latency_delta_pct: float | None = None
    speedup: float | None = None  # latency ratio parent / step, where the text says "N x speedup"
    fid_parent: float | None = None
    fid: float | None = None
    fid_note: str | None = None  # the text's qualitative claim where it gives no number
    fid_direction: str | None = None  # what the text says the step does to quality: better | worse | comparable
    source: str = "Sec. 3.1 text"


FIG3_STEPS: dict[str, Fig3Step] = {
    s.step: s
    for s in (
        Fig3Step("a_baseline", "SDXL UNet thinned: channels [256, 512, 896], transformer blocks [0, 2, 4]",
                 fid=3.76, source="Sec. 3.1 text (baseline FID, quoted in the SA-removal paragraph)"),
        Fig3Step("b_no_sa_high_res", "self-attention only in the lowest-resolution stage",
                 flops_delta_pct=-17.0, latency_delta_pct=-24.0, fid_parent=3.76, fid=3.12, fid_direction="better"),
        Fig3Step("c_sepconv_plain", "Conv -> separable conv (DW + PW), no expansion",
                 params_delta_pct=-24.0, latency_delta_pct=-62.0, fid_parent=3.12, fid=3.38,
                 fid_direction="worse"),
        Fig3Step("c_sepconv_expanded", "Conv -> expanded separable conv (UIB-like, expansion 2)",
                 params_delta_pct=-15.0, flops_delta_pct=-27.0, speedup=2.4, fid_parent=3.12,
                 fid_note="lower FID than 3.12 (no number given)", fid_direction="better"),
        Fig3Step("d_ffn_trim", "FFN expansion ratio 4 -> 3 (gated)",
                 params_delta_pct=-12.0, flops_delta_pct=-12.0, fid_note="comparable FID (no number given)",
                 fid_direction="comparable"),
        Fig3Step("e_mqa", "MHSA -> MQA", params_delta_pct=-16.0, flops_delta_pct=-6.0, latency_delta_pct=-9.0,
                 fid_note="minimal impact on performance (no number given)", fid_direction="comparable"),
        Fig3Step("f_first_stage_ca", "transformer blocks with CA + FFN (no SA) in the first stage",
                 fid_note="smaller, faster, and better FID (no numbers given)", fid_direction="better"),
        Fig3Step("g_qk_rmsnorm_rope", "QK RMSNorm + 2-D RoPE",
                 fid_note="negligible compute/param overhead, measurable FID gain (no numbers given)",
                 fid_direction="better"),
    )
}


# --------------------------------------------------------------------------------------------------------------
# Tables. Each row is a dataclass; `source` names the table.


@dataclass(frozen=True)
class Table1Row:
    """Table 1: class-conditional ImageNet 256x256 with CFG; FLOPs for one forward pass."""

    model: str
    params_m: float
    gflops: float
    fid: float
    source: str = "Table 1"


TABLE1: list[Table1Row] = [
    Table1Row("LDM-4", 400, 104, 3.60),
    Table1Row("UViT-L", 287, 77, 3.40),
    Table1Row("UViT-H", 501, 133, 2.29),
    Table1Row("DiT-XL", 675, 119, 2.27),
    Table1Row("SiT-XL", 675, 119, 2.06),
    Table1Row("Ours", 372, 38, 2.06),
]


@dataclass(frozen=True)
class Table2Row:
    """Table 2: decoders; PSNR on COCO 2017 val; FLOPs/latency decoding a 128x128 latent to 1024x1024 on iPhone 15 Pro.

    Latency cells are ms, or the paper's word: "OOM" (ran out of memory); None where the paper prints "-".
    """

    decoder: str
    latent_channels: int
    psnr: float
    params_m: float
    gflops: float
    latency_ane_ms: float | str | None
    latency_gpu_ms: float | str | None
    source: str = "Table 2"


TABLE2: list[Table2Row] = [
    Table2Row("SDXL", 4, 24.89, 49.49, 4970, "OOM", 9469),
    Table2Row("SD3", 16, 27.92, 49.55, 4970, "OOM", "OOM"),
    Table2Row("Ours", 16, 27.85, 1.38, 224, 174, None),
]


@dataclass(frozen=True)
class Table3Row:
    """Table 3: T2I benchmarks. Param is the UNet/DiT backbone (billions); throughput samples/s on one A100-80GB at
    1024px with the largest practical batch (None where the paper prints "-"); ours sampled with 28 steps."""

    model: str
    params_b: float
    throughput: float | None
    geneval: float
    dpg: float
    clip: float
    image_reward: float
    source: str = "Table 3"


TABLE3: list[Table3Row] = [
    Table3Row("PixArt-α", 0.6, 0.42, 0.48, 71.1, 0.316, 1.15),
    Table3Row("PixArt-Σ", 0.6, 0.46, 0.53, 80.5, 0.317, 1.13),
    Table3Row("SD-1.5", 0.9, None, 0.43, 63.2, 0.287, 0.19),
    Table3Row("SD-2.1", 0.9, None, 0.50, 64.2, 0.281, 0.29),
    Table3Row("Sana", 1.6, 1.00, 0.66, 84.8, 0.327, 1.25),
    Table3Row("LUMINA-Next", 2.0, 0.06, 0.46, 74.6, 0.309, 0.88),
    Table3Row("SDXL", 2.6, 0.18, 0.55, 74.7, 0.301, 0.99),
    Table3Row("Playgroundv2", 2.6, 0.18, 0.59, 74.5, 0.317, 1.25),
    Table3Row("Playgroundv2.5", 2.6, 0.18, 0.56, 75.5, 0.319, 1.34),
    Table3Row("IF-XL", 5.5, 0.06, 0.61, 75.6, 0.311, 0.65),
    Table3Row("Ours w/o KD", 0.38, 1.04, 0.61, 76.3, 0.321, 1.20),
    Table3Row("SnapGen (ours)", 0.38, 1.04, 0.66, 81.1, 0.332, 1.32),
]


@dataclass(frozen=True)
class GenEvalRow:
    """Supplement Table 1: GenEval per task."""

    model: str
    params_b: float
    overall: float
    single_object: float
    two_objects: float
    counting: float
    colors: float
    position: float
    color_attribution: float
    source: str = "Supplement Table 1"


SUPP_TABLE1_GENEVAL: list[GenEvalRow] = [
    GenEvalRow("PixArt-α", 0.6, 0.48, 0.98, 0.50, 0.44, 0.80, 0.08, 0.07),
    GenEvalRow("PixArt-Σ", 0.6, 0.53, 0.99, 0.65, 0.46, 0.82, 0.12, 0.12),
    GenEvalRow("SD-1.5", 0.9, 0.43, 0.97, 0.38, 0.38, 0.76, 0.04, 0.06),
    GenEvalRow("SD-2.1", 0.9, 0.50, 0.98, 0.51, 0.44, 0.85, 0.07, 0.17),
    GenEvalRow("Sana", 1.6, 0.66, 0.99, 0.77, 0.62, 0.88, 0.21, 0.47),
    GenEvalRow("LUMINA-Next", 2.0, 0.46, 0.92, 0.46, 0.48, 0.70, 0.09, 0.13),
    GenEvalRow("SDXL", 2.6, 0.55, 0.98, 0.74, 0.39, 0.85, 0.15, 0.23),
    GenEvalRow("PlayGroundv2", 2.6, 0.59, 0.98, 0.73, 0.67, 0.82, 0.14, 0.22),
    GenEvalRow("PlayGroundv2.5", 2.6, 0.56, 0.98, 0.77, 0.52, 0.84, 0.11, 0.17),
    GenEvalRow("IF-XL", 5.5, 0.61, 0.97, 0.74, 0.66, 0.81, 0.13, 0.35),
    GenEvalRow("Ours w/o KD", 0.38, 0.61, 0.98, 0.77, 0.43, 0.89, 0.18, 0.38),
    GenEvalRow("SnapGen (ours)", 0.38, 0.66, 1.00, 0.84, 0.60, 0.88, 0.18, 0.45),
]


@dataclass(frozen=True)
class DPGRow:
    """Supplement Table 2: DPG-Bench per category."""

    model: str
    params_b: float
    overall: float
    global_: float
    entity: float
    attribute: float
    relation: float
    other: float
    source: str = "Supplement Table 2"


SUPP_TABLE2_DPG: list[DPGRow] = [
    DPGRow("PixArt-α", 0.6, 71.1, 75.0, 79.3, 78.6, 82.6, 77.0),
    DPGRow("PixArt-Σ", 0.6, 80.5, 86.9, 82.9, 88.9, 86.6, 87.7),
    DPGRow("SDv1.5", 0.9, 63.2, 74.6, 74.2, 75.4, 73.5, 67.8),
    DPGRow("SDv2.1", 0.9, 64.2, 72.7, 72.8, 75.8, 82.2, 76.5),
    DPGRow("Sana", 1.6, 84.8, 86.0, 91.5, 88.9, 91.9, 90.7),
    DPGRow("LUMINA-Next", 2.0, 74.6, 82.8, 88.7, 86.4, 80.5, 81.8),
    DPGRow("SDXL", 2.6, 74.7, 83.3, 82.4, 80.9, 86.8, 80.4),
    DPGRow("PlayGroundv2", 2.6, 74.5, 83.6, 79.9, 82.7, 80.6, 81.2),
    DPGRow("PlayGroundv2.5", 2.6, 75.5, 83.1, 82.6, 81.2, 84.1, 83.5),
    DPGRow("IF-XL", 5.5, 75.6, 77.7, 81.2, 83.3, 81.8, 82.9),
    DPGRow("Ours w/o KD", 0.38, 76.3, 77.8, 83.7, 84.3, 86.7, 77.4),
    DPGRow("SnapGen (ours)", 0.38, 81.1, 88.3, 85.1, 87.0, 87.3, 87.6),
]


@dataclass(frozen=True)
class KDAblationRow:
    """Supplement Table 3: which KD components are on (the registry's KD toggles) and the scores."""

    task: bool
    kd: bool
    featkd: bool
    t_scaling: bool
    geneval: float
    image_reward: float
    source: str = "Supplement Table 3"

    @property
    def name(self) -> str:
        """'task+kd+featkd+t_scaling' style name of the toggles that are on."""
        return "+".join(f.name for f in fields(self)[:4] if getattr(self, f.name))


SUPP_TABLE3_KD: list[KDAblationRow] = [
    KDAblationRow(True, False, False, False, 0.61, 1.20),
    KDAblationRow(True, True, False, False, 0.62, 1.23),
    KDAblationRow(True, True, True, False, 0.64, 1.26),
    KDAblationRow(True, True, True, True, 0.66, 1.32),
]


# --------------------------------------------------------------------------------------------------------------
# Single numbers stated in the text.


@dataclass(frozen=True)
class TextValue:
    value: float
    unit: str
    source: str


TEXT_VALUES: dict[str, TextValue] = {
    "imagenet_final_params_m": TextValue(372, "M params", "Abstract; Table 1"),
    "t2i_unet_params_m": TextValue(379, "M params", "Abstract; Conclusion"),
    "flops_latent": TextValue(128, "latent side for Fig. 3 / Table 2 FLOPs", "Sec. 3.1 Evaluation Metrics"),
    "decoder_smaller_x": TextValue(35.9, "x smaller than SDXL/SD3 decoder", "Sec. 3.2 Training of the Decoder"),
    "decoder_faster_x": TextValue(54.4, "x faster on mobile than SDXL/SD3 decoder", "Sec. 3.2 Training of the Decoder"),
    "iphone16_decoder_ms": TextValue(119, "ms, decoder, iPhone 16 Pro-Max", "Sec. 3.2 Discussion of Total Latency"),
    "iphone16_unet_step_ms": TextValue(274, "ms per UNet step, iPhone 16 Pro-Max", "Sec. 3.2 Discussion"),
    "geneval_8_step": TextValue(0.63, "GenEval, 8 steps after step distillation", "Author Contribution Statement"),
    "geneval_4_step": TextValue(0.61, "GenEval, 4 steps after step distillation", "Author Contribution Statement"),
}


def rows_as_dicts(rows: list[Any]) -> list[dict[str, Any]]:
    """Table rows as plain dicts (for pandas)."""
    return [asdict(r) for r in rows]
