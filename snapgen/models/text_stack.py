"""The fused text stack of Sec. 4: CLIP-L, CLIP-G and Gemma-2-2b combined the SD3 way, with per-encoder dropout.

Fusion (SD3, Esser et al. 2024, Sec. 2.2 / Fig. 2; SnapGen Sec. 4 "multiple text encoders"):
- the *channel group* (CLIP-L 768 and CLIP-G 1280 penultimate hidden states, 77 tokens each) is concatenated on the
  channel axis -> (B, 77, 2048) and zero-padded to the stack width;
- each encoder of the *sequence group* (Gemma-2-2b, 2304 wide) is zero-padded to the stack width and appended on the
  sequence axis -> (B, 77 + L_gemma, 2304);
- the stack width `dim` = max(sum of channel-group widths, widths of the sequence group) = 2304 for SnapGen, the
  `cross_attention_dim` of registry preset `snapgen-t2i`;
- pooled = the channel group's pooled vectors concatenated (CLIP-L 768 + CLIP-G 1280 = 2048, the projected EOS
  token as in SD3). `snapgen-t2i` does not consume it (registry.T2I_POOLED_WIDTH = 0), but it is exposed.

Dropout (Sec. 4): during training each encoder's output is zeroed independently with p = 0.464 per sample, so all
three are dropped together with p = 0.464^3 = 0.0999, the usual 10% unconditional rate for CFG. At inference any subset
of encoders may be used; a missing or dropped encoder contributes zeros of its width (and, where no encoder of a
token group is present, a mask of ones over zeros: the null condition of `snapgen.train`).

Offline default (`TextStackConfig.offline()`): MiniLM alone (384 wide, the channel group of one), and the UNet's
`cross_attention_dim` follows the stack's `dim` (384). We do not pad MiniLM to 2304: padding adds no information and
would only make the tiny CPU models wider; the fused layout is exercised in tests with tiny same-class encoders.

Saving: named encoders (`minilm`, `clip-l`, `clip-g`, `gemma2-2b`) are stored by name and reloaded offline through
`snapgen.weights` / the MiniLM package; any other encoder (tiny test models) is saved in full beside the config.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401 - diffusers pipelines find the loader by this name
from torch import Tensor, nn

from .text import CLIP_HIDDEN_LAYER, MAX_LENGTH, TextEncoder, load_text_encoder

ENCODER_DROP_PROB = 0.464  # Sec. 4: per-encoder dropout; 0.464^3 = 0.0999 ~ 10% fully unconditional
CONFIG_NAME = "text_stack.json"


class ProjectedCLIPEncoder(TextEncoder):
    """CLIP text tower as SD3 uses it: hidden = penultimate layer, pooled = the projected EOS token (`text_embeds`).

    Works with `CLIPTextModelWithProjection` (pooled width = `projection_dim`) and falls back to `pooler_output` for a
    plain `CLIPTextModel`.
    """

    def __init__(self, name: str, tokenizer, model: nn.Module, max_length: int = MAX_LENGTH):
        super().__init__(name, tokenizer, model, "clip", max_length)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, got one string")
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        out = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                         output_hidden_states=True)
        pooled = out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output
        return out.hidden_states[CLIP_HIDDEN_LAYER].float(), tokens["attention_mask"].bool(), pooled.float()


def _load_clip(entry: str, name: str, device) -> TextEncoder:
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    from snapgen import weights

    root = weights.find_dir(entry)
    return ProjectedCLIPEncoder(name, CLIPTokenizer.from_pretrained(root),
                                CLIPTextModelWithProjection.from_pretrained(root)).to(device)


def _load_gemma(device) -> TextEncoder:
    from transformers import AutoTokenizer, Gemma2Model

    from snapgen import weights

    root = weights.find_dir("gemma2_2b")
    # kind "mean": hidden = Gemma's last (final-normed) hidden state; the mean-pooled vector is unused.
    return TextEncoder("gemma2-2b", AutoTokenizer.from_pretrained(root),
                       Gemma2Model.from_pretrained(root, torch_dtype=torch.float32), "mean").to(device)


@dataclass(frozen=True)
class EncoderSpec:
    """What the stack needs to know about an encoder without loading it (missing encoders -> zeros of `width`)."""

    width: int  # hidden width D of its tokens
    pooled_width: int  # width of its pooled vector (0: not part of the pooled output)
    loader: Callable[[torch.device | str], TextEncoder] | None = None


# Named encoders: widths of the released models (CLIP ViT-L/14 768, OpenCLIP ViT-bigG/14 1280, Gemma-2-2b 2304).
ENCODERS: dict[str, EncoderSpec] = {
    "minilm": EncoderSpec(384, 384, lambda device: load_text_encoder("minilm", device)),
    "clip-l": EncoderSpec(768, 768, lambda device: _load_clip("clip_vit_l14", "clip-l", device)),
    "clip-g": EncoderSpec(1280, 1280, lambda device: _load_clip("clip_vit_bigg14", "clip-g", device)),
    "gemma2-2b": EncoderSpec(2304, 0, _load_gemma),
}


@dataclass(frozen=True)
class TextStackConfig:
    """Which encoders, how they are fused, and how they are dropped.

    Args:
        channel_group: encoders whose tokens are concatenated on channels (same token count: CLIP's 77).
        sequence_group: encoders whose tokens are appended on the sequence axis.
        widths: hidden width of each encoder (defaults from `ENCODERS`).
        pooled_widths: pooled width of each channel-group encoder (0 = none).
        drop_prob: per-encoder dropout probability during training (Sec. 4: 0.464).
        max_length: tokens per encoder (pad/truncate).
    """

    channel_group: tuple[str, ...] = ("clip-l", "clip-g")
    sequence_group: tuple[str, ...] = ("gemma2-2b",)
    widths: dict[str, int] = field(default_factory=dict)
    pooled_widths: dict[str, int] = field(default_factory=dict)
    drop_prob: float = ENCODER_DROP_PROB
    max_length: int = MAX_LENGTH

    def __post_init__(self):
        names = self.encoders
        if not names:
            raise ValueError("a text stack needs at least one encoder")
        if len(set(names)) != len(names):
            raise ValueError(f"an encoder appears twice in {names}")
        for name in names:
            if name not in self.widths and name not in ENCODERS:
                raise ValueError(f"encoder {name!r} has no width: give widths[{name!r}] or use a named encoder "
                                 f"({', '.join(ENCODERS)})")
        if not 0.0 <= self.drop_prob < 1.0:
            raise ValueError(f"drop_prob={self.drop_prob}; must be in [0, 1)")

    @classmethod
    def snapgen(cls) -> "TextStackConfig":
        """Sec. 4: CLIP-L + CLIP-G on channels, Gemma-2-2b on the sequence axis; width 2304."""
        return cls()

    @classmethod
    def offline(cls) -> "TextStackConfig":
        """MiniLM alone (384 wide): the offline default; the UNet's cross_attention_dim follows `dim`."""
        return cls(channel_group=("minilm",), sequence_group=())

    @property
    def encoders(self) -> tuple[str, ...]:
        return tuple(self.channel_group) + tuple(self.sequence_group)

    def width(self, name: str) -> int:
        return int(self.widths.get(name, ENCODERS[name].width if name in ENCODERS else 0))

    def pooled_width(self, name: str) -> int:
        if name in self.pooled_widths:
            return int(self.pooled_widths[name])
        return ENCODERS[name].pooled_width if name in ENCODERS else self.width(name)

    @property
    def dim(self) -> int:
        """Token width: max(sum of channel-group widths, each sequence-group width)."""
        return max([sum(self.width(n) for n in self.channel_group)] + [self.width(n) for n in self.sequence_group])

    @property
    def pooled_dim(self) -> int:
        return sum(self.pooled_width(n) for n in self.channel_group)

    @property
    def seq_len(self) -> int:
        return self.max_length * ((1 if self.channel_group else 0) + len(self.sequence_group))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_group"], d["sequence_group"] = list(self.channel_group), list(self.sequence_group)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TextStackConfig":
        d = dict(d)
        d["channel_group"], d["sequence_group"] = tuple(d["channel_group"]), tuple(d["sequence_group"])
        return cls(**d)


def _pad_channels(x: Tensor, width: int) -> Tensor:
    """(B, L, D) -> (B, L, width), zeros appended on channels (SD3: CLIP 2048 -> T5 4096; here -> Gemma 2304)."""
    return torch.nn.functional.pad(x, (0, width - x.shape[-1]))


class TextStack(ModelMixin, ConfigMixin):
    """Prompts -> fused (hidden (B, S, dim), mask (B, S) bool, pooled (B, pooled_dim)), see the module docstring.

    A diffusers `ModelMixin` only so that `DiffusionPipeline.save_pretrained`/`from_pretrained` save and load it as a
    pipeline component; its own `save_pretrained`/`from_pretrained` store named encoders by name (no 5 GB copies).

    Args:
        config: the `TextStackConfig` (kept as `stack_config`: `config` is diffusers' ConfigMixin dict).
        encoders: the loaded encoders by name; names of the config absent here are "missing" and contribute zeros.
    """

    config_name = CONFIG_NAME

    def __init__(self, config: TextStackConfig, encoders: dict[str, TextEncoder] | None = None):
        super().__init__()
        self.stack_config = config
        self.register_to_config(text_stack=config.to_dict())  # diffusers reads `.config`; the real file is ours
        encoders = dict(encoders or {})
        unknown = sorted(set(encoders) - set(config.encoders))
        if unknown:
            raise ValueError(f"encoders {unknown} are not in the config's {config.encoders}")
        for name, enc in encoders.items():
            if enc.dim != config.width(name):
                raise ValueError(f"encoder {name!r} is {enc.dim} wide but the config says {config.width(name)}")
        self.encoders = nn.ModuleDict(encoders)
        self.eval()

    @property
    def dim(self) -> int:
        return self.stack_config.dim

    @property
    def pooled_dim(self) -> int:
        return self.stack_config.pooled_dim

    @property
    def device(self) -> torch.device:
        params = list(self.parameters())
        return params[0].device if params else torch.device("cpu")

    # ---- dropout -----------------------------------------------------------------------------------------------------

    def sample_drop(self, batch: int, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """Sec. 4 encoder dropout: {name: (B,) bool}, each True independently with p = `drop_prob`."""
        return {name: torch.rand(batch, generator=generator, device=device) < self.stack_config.drop_prob
                for name in self.stack_config.encoders}

    # ---- encode and fuse ---------------------------------------------------------------------------------------------

    def encode_each(self, prompts: list[str], use: tuple[str, ...] | None = None
                    ) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """Run the loaded encoders in `use` (default: all loaded) -> {name: (hidden, mask, pooled)}."""
        use = tuple(self.encoders) if use is None else tuple(use)
        bad = sorted(set(use) - set(self.stack_config.encoders))
        if bad:
            raise ValueError(f"unknown encoders {bad}; this stack has {self.stack_config.encoders}")
        not_loaded = sorted(set(use) - set(self.encoders))
        if not_loaded:
            raise ValueError(f"encoders {not_loaded} are not loaded; loaded: {sorted(self.encoders)}")
        return {name: self.encoders[name].encode(list(prompts)) for name in use}

    def fuse(self, parts: dict[str, tuple[Tensor, Tensor, Tensor]], batch: int,
             drop: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Fuse per-encoder outputs the SD3 way; missing encoders and dropped samples are zeros.

        Args:
            parts: {name: (hidden (B, L, D_name), mask (B, L) bool, pooled (B, P_name))} of the present encoders.
            batch: B (needed when no encoder is present: the null condition).
            drop: {name: (B,) bool}, True = zero this encoder's output for that sample.
        Returns:
            hidden (B, S, dim) float32, mask (B, S) bool, pooled (B, pooled_dim) float32, with
            S = max_length x (1 if a channel group else 0) + max_length x len(sequence_group).
        """
        cfg, device = self.stack_config, next((p[0].device for p in parts.values()), self.device)
        length = cfg.max_length

        def part(name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            """(hidden, mask, pooled, present (B,) bool) for one encoder, zeros where missing or dropped."""
            width, pooled_width = cfg.width(name), cfg.pooled_width(name)
            if name not in parts:
                return (torch.zeros(batch, length, width, device=device),
                        torch.zeros(batch, length, dtype=torch.bool, device=device),
                        torch.zeros(batch, pooled_width, device=device),
                        torch.zeros(batch, dtype=torch.bool, device=device))
            hidden, mask, pooled = parts[name]
            if hidden.shape[1] != length:
                raise ValueError(f"encoder {name!r} gave {hidden.shape[1]} tokens; the stack's max_length is {length}")
            keep = torch.ones(batch, dtype=torch.bool, device=device)
            if drop is not None and name in drop:
                keep = ~drop[name].to(device)
            hidden = hidden.float() * keep[:, None, None]
            pooled = pooled[:, :pooled_width].float() * keep[:, None] if pooled_width else pooled[:, :0].float()
            return hidden, mask & keep[:, None], pooled, keep

        def token_mask(mask: Tensor, present: Tensor) -> Tensor:
            """Where no encoder of a token group is present, attend to all of its zero tokens (the null condition)."""
            return torch.where(present[:, None], mask, torch.ones_like(mask))

        hiddens, masks, pooled = [], [], []
        if cfg.channel_group:
            group = [part(n) for n in cfg.channel_group]
            channel_hidden = torch.cat([g[0] for g in group], dim=-1)  # (B, 77, sum D), e.g. 768 + 1280 = 2048
            hiddens.append(_pad_channels(channel_hidden, cfg.dim))  # (B, 77, dim)
            any_present = torch.stack([g[3] for g in group]).any(0)  # (B,)
            union_mask = torch.stack([g[1] for g in group]).any(0)  # (B, 77)
            masks.append(token_mask(union_mask, any_present))
            pooled = [g[2] for g in group]
        for name in cfg.sequence_group:
            hidden, mask, _, present = part(name)
            hiddens.append(_pad_channels(hidden, cfg.dim))  # (B, L, dim)
            masks.append(token_mask(mask, present))
        pooled_out = torch.cat(pooled, dim=-1) if pooled else torch.zeros(batch, 0, device=device)
        return torch.cat(hiddens, dim=1), torch.cat(masks, dim=1), pooled_out  # sequence axis

    def encode(self, prompts: list[str], use: tuple[str, ...] | None = None,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Prompts -> fused (hidden (B, S, dim), mask (B, S), pooled (B, pooled_dim)).

        `use` picks a subset of the loaded encoders (inference); in training mode each encoder is also dropped per
        sample with p = drop_prob (Sec. 4).
        """
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, got one string")
        parts = self.encode_each(prompts, use)
        drop = self.sample_drop(len(prompts), generator) if self.training and self.stack_config.drop_prob > 0 else None
        return self.fuse(parts, len(prompts), drop)

    def forward(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        return self.encode(prompts)

    def null(self, batch: int) -> tuple[Tensor, Tensor, Tensor]:
        """The unconditional input of CFG: every encoder dropped."""
        return self.fuse({}, batch)

    # ---- save / load -------------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, **_: object) -> None:
        """Write the config; named encoders are stored by name, other (test) encoders in full under `<name>/`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        saved = {}
        for name, enc in self.encoders.items():
            if name in ENCODERS:
                continue
            enc.model.save_pretrained(directory / name)
            enc.tokenizer.save_pretrained(directory / name)
            saved[name] = {"model_class": type(enc.model).__name__, "kind": enc.kind,
                           "projected_clip": isinstance(enc, ProjectedCLIPEncoder)}
        record = {"config": self.stack_config.to_dict(), "loaded": sorted(self.encoders), "saved_encoders": saved}
        (directory / CONFIG_NAME).write_text(json.dumps(record, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: torch.device | str = "cpu",
                        use: tuple[str, ...] | None = None, **_: object) -> "TextStack":
        """Reload: named encoders through their loaders (offline), saved ones from `<name>/`.

        `use` limits which encoders are loaded (default: those loaded when saved); the rest contribute zeros.
        """
        import transformers

        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{directory / CONFIG_NAME} not found: not a saved TextStack")
        record = json.loads((directory / CONFIG_NAME).read_text())
        config = TextStackConfig.from_dict(record["config"])
        encoders = {}
        for name in (record["loaded"] if use is None else use):
            if name in record["saved_encoders"]:
                info = record["saved_encoders"][name]
                model = getattr(transformers, info["model_class"]).from_pretrained(directory / name)
                tokenizer = transformers.AutoTokenizer.from_pretrained(directory / name)
                enc = (ProjectedCLIPEncoder(name, tokenizer, model, config.max_length) if info["projected_clip"]
                       else TextEncoder(name, tokenizer, model, info["kind"], config.max_length))
            elif name in ENCODERS:
                enc = ENCODERS[name].loader(device)
                enc.max_length = config.max_length
            else:
                raise ValueError(f"cannot load encoder {name!r}: neither saved in {directory} nor a named encoder "
                                 f"({', '.join(ENCODERS)})")
            encoders[name] = enc.to(device)
        return cls(config, encoders)


def load_text_stack(config: TextStackConfig | None = None, device: torch.device | str = "cpu",
                    use: tuple[str, ...] | None = None) -> TextStack:
    """Load the named encoders of `config` (default: the offline MiniLM stack); `use` picks a subset to load."""
    config = config or TextStackConfig.offline()
    names = config.encoders if use is None else tuple(use)
    bad = sorted(set(names) - set(config.encoders))
    if bad:
        raise ValueError(f"unknown encoders {bad}; this stack has {config.encoders}")
    encoders = {}
    for name in names:
        if name not in ENCODERS or ENCODERS[name].loader is None:
            raise ValueError(f"encoder {name!r} is not a named encoder ({', '.join(ENCODERS)}); build the TextStack "
                             f"with it directly")
        encoders[name] = ENCODERS[name].loader(device)
        encoders[name].max_length = config.max_length
    return TextStack(config, encoders)


def tiny_snapgen_stack(widths: tuple[int, int, int] = (16, 24, 48), max_length: int = 8, seed: int = 0) -> TextStack:
    """The SnapGen layout (CLIP-L + CLIP-G on channels, Gemma-2 on the sequence axis) with tiny randomly initialised
    encoders of the same classes (`CLIPTextModelWithProjection` x 2, `Gemma2Model`), for CPU tests and smoke runs.

    All three share MiniLM's bundled BERT tokenizer (CLIP's and Gemma's tokenizers are not available offline); the
    stack is `sum(widths[:2])` vs `widths[2]` wide exactly as 768 + 1280 = 2048 vs Gemma's 2304.
    """
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModelWithProjection, Gemma2Config, Gemma2Model

    from .text import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    vocab, eos = tokenizer.vocab_size, tokenizer.sep_token_id
    torch.manual_seed(seed)
    clips = {}
    for name, width in (("clip-l", widths[0]), ("clip-g", widths[1])):
        config = CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                                num_attention_heads=2, max_position_embeddings=max_length, projection_dim=width,
                                eos_token_id=eos, bos_token_id=tokenizer.cls_token_id,
                                pad_token_id=tokenizer.pad_token_id)
        clips[name] = ProjectedCLIPEncoder(name, tokenizer, CLIPTextModelWithProjection(config), max_length)
    gemma_config = Gemma2Config(vocab_size=vocab, hidden_size=widths[2], intermediate_size=2 * widths[2],
                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                head_dim=widths[2] // 2, pad_token_id=tokenizer.pad_token_id)
    gemma = TextEncoder("gemma2-2b-tiny", tokenizer, Gemma2Model(gemma_config), "mean", max_length)
    config = TextStackConfig(channel_group=("clip-l-tiny", "clip-g-tiny"), sequence_group=("gemma2-2b-tiny",),
                             widths={"clip-l-tiny": widths[0], "clip-g-tiny": widths[1], "gemma2-2b-tiny": widths[2]},
                             max_length=max_length)
    clips["clip-l"].name, clips["clip-g"].name = "clip-l-tiny", "clip-g-tiny"
    return TextStack(config, {"clip-l-tiny": clips["clip-l"], "clip-g-tiny": clips["clip-g"], "gemma2-2b-tiny": gemma})
