"""TAESD3 (and TAESDXL): madebyollin's tiny autoencoders as diffusers `AutoencoderTiny`, the Table 2 peer decoder.

The weights come through `snapgen.weights` (`taesd3_encoder`, `taesd3_decoder`, ...): BF16 safetensors whose keys are
the `nn.Sequential` indices of madebyollin's `taesd.py` (shared/assets/MANIFEST.md). diffusers' `EncoderTiny` /
`DecoderTiny` hold the same layers in a `layers` Sequential, so the mapping is by index:
- encoder: `<i>.<rest>` -> `encoder.layers.<i>.<rest>` (identical order: conv, Block, stride-2 conv, Blocks, ...);
- decoder: `<i>.<rest>` -> `decoder.layers.<i-1>.<rest>`: madebyollin's index 0 is the parameter-free
  `Clamp` (`tanh(x / 3) * 3`), which `DecoderTiny.forward` applies before its `layers`.
Loading is strict: every key of the file maps to a parameter and every parameter gets a key.

Conventions (diffusers'): images in [-1, 1] in and out (`EncoderTiny` maps to TAESD's [0, 1] inside, `DecoderTiny`
maps back); latents in the diffusion model's normalised latent space (SD3: `(z - 0.0609) * 1.5305`), std about 1.
"""

from __future__ import annotations

import re
from typing import Any

import torch

# name -> (latent channels, weights.py entry of the encoder, of the decoder)
TAESD_MODELS: dict[str, tuple[int, str, str]] = {
    "taesd3": (16, "taesd3_encoder", "taesd3_decoder"),
    "taesdxl": (4, "taesdxl_encoder", "taesdxl_decoder"),
}
_KEY = re.compile(r"^(\d+)\.(.+)$")


def taesd_config(latent_channels: int) -> dict[str, Any]:
    """`AutoencoderTiny` kwargs of the published TAESD architecture (64 channels, 1/3/3/3 encoder and 3/3/3/1
    decoder blocks, ReLU, nearest x2 upsampling)."""
    return dict(in_channels=3, out_channels=3, encoder_block_out_channels=(64, 64, 64, 64),
                decoder_block_out_channels=(64, 64, 64, 64), act_fn="relu", upsample_fn="nearest",
                latent_channels=latent_channels, upsampling_scaling_factor=2, num_encoder_blocks=(1, 3, 3, 3),
                num_decoder_blocks=(3, 3, 3, 1), latent_magnitude=3, latent_shift=0.5, force_upcast=False,
                scaling_factor=1.0, shift_factor=0.0)


def map_taesd_keys(state_dict: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    """madebyollin `nn.Sequential` keys -> `AutoencoderTiny` keys for `part` ('encoder' or 'decoder')."""
    if part not in ("encoder", "decoder"):
        raise ValueError(f"part={part!r}; valid choices: 'encoder', 'decoder'")
    offset = 1 if part == "decoder" else 0  # the decoder's index 0 is Clamp, done in DecoderTiny.forward
    mapped = {}
    for key, value in state_dict.items():
        match = _KEY.match(key)
        if match is None or int(match.group(1)) < offset:
            raise KeyError(f"unexpected key {key!r} in a TAESD {part} file (expected '<index>.<param>' with index "
                           f">= {offset})")
        mapped[f"{part}.layers.{int(match.group(1)) - offset}.{match.group(2)}"] = value
    return mapped


def load_taesd(name: str = "taesd3", dtype: torch.dtype = torch.float32, parts: tuple[str, ...] = ("encoder",
               "decoder")):
    """`diffusers.AutoencoderTiny` with TAESD weights found through `snapgen.weights`, loaded strictly, in eval mode.

    Args:
        name (`str`): 'taesd3' (16-ch SD3 latents) or 'taesdxl' (4-ch SDXL latents).
        dtype: parameter dtype after loading (the files are BF16; the default upcasts to float32).
        parts: which halves to load; a half not loaded keeps its random init (and is reported in the error if a
            caller then expects it). Loading only the decoder needs only the decoder file.

    Raises:
        `snapgen.weights.WeightsNotFoundError` when a file is absent (names it and where to put it);
        RuntimeError when the file's keys or shapes do not match the architecture exactly.
    """
    from diffusers import AutoencoderTiny
    from safetensors.torch import load_file

    from snapgen import weights

    if name not in TAESD_MODELS:
        raise ValueError(f"unknown TAESD model {name!r}; valid: {sorted(TAESD_MODELS)}")
    channels, encoder_entry, decoder_entry = TAESD_MODELS[name]
    model = AutoencoderTiny(**taesd_config(channels))
    state: dict[str, torch.Tensor] = {}
    for part, entry in (("encoder", encoder_entry), ("decoder", decoder_entry)):
        if part in parts:
            state.update(map_taesd_keys({k: v.float() for k, v in load_file(weights.find(entry)).items()}, part))
    expected = {k for k in model.state_dict() if k.split(".")[0] in parts}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise RuntimeError(f"TAESD {name} {parts}: keys do not match AutoencoderTiny; missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    if parts == ("encoder", "decoder") or set(parts) == {"encoder", "decoder"}:
        model.load_state_dict(state, strict=True)
    else:
        for part in parts:
            getattr(model, part).load_state_dict({k.split(".", 1)[1]: v for k, v in state.items()
                                                  if k.startswith(part + ".")}, strict=True)
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.eval().requires_grad_(False)


class TAESDEncoder(torch.nn.Module):
    """A frozen `(B, 3, H, W)` image in [-1, 1] -> `(B, C, H/8, W/8)` normalised latent, from an AutoencoderTiny."""

    def __init__(self, autoencoder):
        super().__init__()
        self.encoder = autoencoder.encoder
        self.latent_channels = autoencoder.config.latent_channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image)


class TAESDDecoder(torch.nn.Module):
    """`(B, C, h, w)` normalised latent -> `(B, 3, 8h, 8w)` image in about [-1, 1], from an AutoencoderTiny."""

    def __init__(self, autoencoder):
        super().__init__()
        self.decoder = autoencoder.decoder
        self.latent_channels = autoencoder.config.latent_channels

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent)
