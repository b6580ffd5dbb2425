"""Baseline decoders of Table 2 (the SDXL and SD3 VAE decoders, built from their official configs), and the frozen
encoders that decoder training and latent-space UNet training use (TAESD3, the SD3 VAE).

The configs are written out here, key by key, as published in the `vae/config.json` of
`stabilityai/stable-diffusion-xl-base-1.0` and `stabilityai/stable-diffusion-3-medium-diffusers`, so building one
needs no download. `build_baseline_decoder` returns what runs at decode time: `post_quant_conv` (SDXL has one, SD3
does not) followed by the diffusers `Decoder`.

Counts with `snapgen.profile` (fvcore as shipped, one multiply-add = one FLOP) for a 128x128 latent (1024x1024 image):

| decoder | diffusers `Decoder` params | + post_quant_conv | fvcore GFLOPs |
| ------- | -------------------------- | ----------------- | ------------- |
| SDXL    | 49,490,179                 | + 20              | 4969.94       |
| SD3     | 49,545,475                 | (none)            | 4970.85       |

The paper's Table 2 gives 49.49M / 49.55M params and 4970 GFLOPs for both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# The SD3 latent space (stabilityai/stable-diffusion-3-medium-diffusers vae/config.json): what the T2I UNet generates
# is the normalised latent (z - shift) * scale. The one place these numbers live.
SD3_SCALING_FACTOR = 1.5305
SD3_SHIFT_FACTOR = 0.0609

# The spaces a UNet can be trained in: autoencoder -> (latent channels, downsampling factor f); "none" = pixels.
AUTOENCODERS: dict[str, tuple[int, int]] = {"none": (3, 1), "taesd3": (16, 8)}

# Official `AutoencoderKL` configs, every key written out (diffusers argument names).
SDXL_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,  # SDXL VAE config.json
    "force_upcast": True,  # the SDXL VAE overflows in fp16
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}

# SD3's VAE is SDXL's architecture with 16 latent channels and no quant convs.
SD3_VAE_CONFIG: dict[str, Any] = {
    **SDXL_VAE_CONFIG,
    "latent_channels": 16,  # Sec. 3.2: "f, c as 8, 16 in SD3"
    "scaling_factor": SD3_SCALING_FACTOR,
    "shift_factor": SD3_SHIFT_FACTOR,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}

BASELINE_VAE_CONFIGS: dict[str, dict[str, Any]] = {"sdxl": SDXL_VAE_CONFIG, "sd3": SD3_VAE_CONFIG}

# Where the real SD3 VAE lives under `snapgen.weights` (a diffusers folder with config.json + weights).
SD3_VAE_WEIGHTS_NAME = "sd3_vae"


class BaselineDecoder(nn.Module):
    """What an `AutoencoderKL` runs at decode time: `post_quant_conv` (when the config has one), then `decoder`.

    Latent scaling (`scaling_factor`, `shift_factor`) is the caller's job, as in diffusers pipelines; the values
    are kept as attributes so callers need not look them up.

    Args:
        post_quant_conv (`nn.Module`): 1x1 conv on the latent, or `nn.Identity` when the config has none.
        decoder (`diffusers.models.autoencoders.vae.Decoder`): the decoder body.
        latent_channels (`int`): channels of the latent it takes.
        scaling_factor (`float`), shift_factor (`float`): the VAE's latent normalisation.
    """

    def __init__(
        self,
        post_quant_conv: nn.Module,
        decoder: nn.Module,
        latent_channels: int,
        scaling_factor: float,
        shift_factor: float,
    ) -> None:
        super().__init__()
        self.post_quant_conv = post_quant_conv
        self.decoder = decoder
        self.latent_channels = latent_channels
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """Decode.

        Args:
            latent (`torch.Tensor` of shape `(B, latent_channels, h, w)`): unscaled VAE latent.

        Returns:
            `torch.Tensor` of shape `(B, 3, 8h, 8w)`: image in [-1, 1] (not clamped).
        """
        if latent.ndim != 4 or latent.shape[1] != self.latent_channels:
            raise ValueError(
                f"latent must have shape (B, {self.latent_channels}, h, w), got {tuple(latent.shape)}"
            )
        return self.decoder(self.post_quant_conv(latent))


def _check_name(name: str) -> str:
    if name not in BASELINE_VAE_CONFIGS:
        raise ValueError(f"unknown baseline decoder {name!r}; valid: {sorted(BASELINE_VAE_CONFIGS)}")
    return name


def build_baseline_vae(name: str):
    """The full `diffusers.AutoencoderKL` (randomly initialised) from the official config of `name`.

    Args:
        name (`str`): 'sdxl' or 'sd3'.
    """
    from diffusers import AutoencoderKL  # imported here: diffusers is heavy and only decoders need it

    return AutoencoderKL(**BASELINE_VAE_CONFIGS[_check_name(name)])


def decoder_from_vae(vae) -> BaselineDecoder:
    """Take the decode-time modules out of an `AutoencoderKL` (shares their parameters)."""
    post_quant_conv = vae.post_quant_conv if getattr(vae, "post_quant_conv", None) is not None else nn.Identity()
    return BaselineDecoder(
        post_quant_conv=post_quant_conv,
        decoder=vae.decoder,
        latent_channels=vae.config.latent_channels,
        scaling_factor=vae.config.scaling_factor,
        shift_factor=vae.config.shift_factor if vae.config.shift_factor is not None else 0.0,
    )


def build_baseline_decoder(name: str) -> BaselineDecoder:
    """The decoder of the SDXL or SD3 VAE (Table 2 baselines), randomly initialised, in eval mode.

    Args:
        name (`str`): 'sdxl' (4-channel latent) or 'sd3' (16-channel latent).

    Returns:
        `BaselineDecoder`: `(B, C, h, w) -> (B, 3, 8h, 8w)`.
    """
    return decoder_from_vae(build_baseline_vae(name)).eval()


def load_sd3_decoder(dtype: torch.dtype = torch.float32) -> BaselineDecoder:
    """The SD3 VAE decoder with the real SD3 weights, found through `snapgen.weights.find_dir`.

    The folder is a diffusers `AutoencoderKL` folder (`config.json` + `diffusion_pytorch_model.safetensors`, i.e.
    the `vae/` subfolder of `stabilityai/stable-diffusion-3-medium-diffusers`). Its config is checked against
    `SD3_VAE_CONFIG`, so a wrong folder fails here rather than decoding garbage.

    Raises:
        Whatever `snapgen.weights.find_dir` raises when the weights are absent (it names the file and where to put it).
        ValueError: the folder's config disagrees with the official SD3 VAE config.
    """
    from diffusers import AutoencoderKL

    from snapgen import weights

    vae_dir = weights.find_dir(SD3_VAE_WEIGHTS_NAME)
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=dtype)
    for key in ("latent_channels", "block_out_channels", "layers_per_block", "use_post_quant_conv"):
        expected = SD3_VAE_CONFIG[key]
        found = vae.config[key]
        if (tuple(found) if isinstance(found, list) else found) != expected:
            raise ValueError(f"{vae_dir}: {key}={found!r}, but the SD3 VAE has {key}={expected!r}")
    return decoder_from_vae(vae).eval()


# ---- frozen encoders (decoder training, latent-space UNet training) -------------------------------------------------

ENCODERS = ("taesd3", "sd3")


class SD3Encoder(nn.Module):
    """The SD3 VAE encoder: `(B, 3, H, W)` in [-1, 1] -> normalised latent `(mode(q(z|x)) - shift) * scale`.

    The posterior mean (mode) is used: the encoder is fixed, and without a KL term the decoder learns to invert it.
    """

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.latent_channels = vae.config.latent_channels
        self.scale, self.shift = vae.config.scaling_factor, vae.config.shift_factor or 0.0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (self.vae.encode(image).latent_dist.mode() - self.shift) * self.scale


def load_frozen_encoder(name: str) -> nn.Module:
    """The frozen encoder `name` ('taesd3' | 'sd3'), eval mode, `requires_grad_(False)`."""
    if name == "taesd3":
        from .taesd import TAESDEncoder, load_taesd

        encoder: nn.Module = TAESDEncoder(load_taesd("taesd3", parts=("encoder",)))
    elif name == "sd3":
        from diffusers import AutoencoderKL

        from snapgen import weights

        encoder = SD3Encoder(AutoencoderKL.from_pretrained(weights.find_dir("sd3_vae")))
    else:
        raise ValueError(f"encoder={name!r}; valid choices: {ENCODERS}")
    return encoder.eval().requires_grad_(False)
