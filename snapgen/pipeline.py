"""`SnapGenPipeline`: prompt -> text stack -> EfficientUNet (rectified flow, CFG) -> decoder, a diffusers pipeline.

Sampling (Sec. 3.3 / 4): the harness's one sampler (`snapgen.sampling`, Flow-Euler, tested against diffusers'
`FlowMatchEulerDiscreteScheduler`) on the registered scheduler's shift 3 ("a time shift of 3 for both training and
inference"), each image seeded by its index, the UNet taking `timestep = 1000 sigma` as in training (`snapgen.flow`), classifier-free
guidance with the null condition of training (every encoder dropped: zeros, attended in full). Modes:
- 28 steps (Table 3's setting) with CFG;
- few-step (4 or 8) for step-distilled UNets (Sec. 3.4); guidance defaults to 1 (off) there, as the distilled
  student is trained to sample without it.
Latent models decode with `TinyDecoder` (Sec. 3.2), TAESD3 (`AutoencoderTiny`) or the SD3 VAE (`AutoencoderKL`);
pixel-space UNets (the CIFAR-10 runs: `out_channels` 3, no decoder) return their samples directly.

`save_pretrained` / `from_pretrained` are diffusers' (components: unet, scheduler, text_stack, decoder); the text stack
stores named encoders by name and reloads them offline. `SnapGenPipeline.from_run(dir)` builds one from a
`snapgen.train` run directory (its config.yaml and EMA weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from . import flow, sampling
from .flow import NUM_TRAIN_TIMESTEPS, TRAIN_SHIFT
from .models import EfficientUNet
from .models.text_stack import TextStack, TextStackConfig

FEW_STEPS = (4, 8)  # Sec. 3.4: the step-distilled model samples in 4 or 8 steps
DEFAULT_STEPS = 28  # Table 3: "our sampling step is set to be 28"
DEFAULT_GUIDANCE = 4.0  # ours: the paper does not state the T2I CFG scale (its ImageNet model uses 1.1-5.4)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def flow_scheduler(shift: float = TRAIN_SHIFT) -> FlowMatchEulerDiscreteScheduler:
    """diffusers' Flow-Euler scheduler (Eq. 3) with the SD3 time shift; sigmas equal `snapgen.flow.flow_sigmas`."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)


def decoder_scale_factor(decoder) -> int:
    """Pixels per latent: 1 without a decoder (pixel-space UNet), else 8 (SD3 AE, TAESD3, TinyDecoder)."""
    if decoder is None:
        return 1
    if hasattr(decoder, "upsample_factor"):
        return int(decoder.upsample_factor)
    return 2 ** (len(decoder.config.block_out_channels) - 1) if hasattr(decoder.config, "block_out_channels") else 8


class SnapGenPipeline(DiffusionPipeline):
    """Text-to-image with the SnapGen UNet.

    Args:
        unet (`EfficientUNet`): predicts the flow velocity; `cross_attention_dim` must equal `text_stack.dim`.
        scheduler (`FlowMatchEulerDiscreteScheduler`): shift 3.
        text_stack (`TextStack`): prompts -> (hidden (B, S, D), mask (B, S), pooled).
        decoder: `TinyDecoder`, `AutoencoderTiny` (TAESD3), `AutoencoderKL` (SD3 VAE) or None (pixel-space UNet).
        resolution (`int`): default image side in pixels.
    """

    model_cpu_offload_seq = "text_stack->unet->decoder"
    _optional_components = ["decoder"]

    def __init__(self, unet: EfficientUNet, scheduler: FlowMatchEulerDiscreteScheduler, text_stack: TextStack,
                 decoder=None, resolution: int = 1024):
        super().__init__()
        if unet.config.cross_attention_dim != text_stack.dim:
            raise ValueError(f"unet.cross_attention_dim={unet.config.cross_attention_dim} but the text stack is "
                             f"{text_stack.dim} wide ({text_stack.stack_config.encoders})")
        if decoder is None and unet.config.out_channels != 3:
            pass  # a latent UNet without decoder: only output_type='latent' is possible (checked at call time)
        elif decoder is not None:
            channels = getattr(decoder.config, "latent_channels", None)
            if channels is not None and channels != unet.config.out_channels:
                raise ValueError(f"decoder takes {channels}-channel latents but unet.out_channels="
                                 f"{unet.config.out_channels}")
        self.register_modules(unet=unet, scheduler=scheduler, text_stack=text_stack, decoder=decoder)
        self.register_to_config(resolution=resolution)

    @property
    def vae_scale_factor(self) -> int:
        return decoder_scale_factor(self.decoder)

    # ---- stages ------------------------------------------------------------------------------------------------------

    def encode_prompt(self, prompts: list[str], use_encoders: tuple[str, ...] | None = None):
        """-> (hidden (B, S, D), mask (B, S)) on the UNet's device and dtype."""
        hidden, mask, _ = self.text_stack.encode(prompts, use=use_encoders)
        return hidden.to(self.unet.device, self.unet.dtype), mask.to(self.unet.device)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        factor = self.vae_scale_factor
        if height % factor or width % factor:
            raise ValueError(f"height={height} and width={width} must be divisible by the decoder's factor {factor}")
        return self.unet.config.in_channels, height // factor, width // factor

    def prepare_latents(self, batch: int, height: int, width: int, seed: int) -> torch.Tensor:
        """Noise at sigma = 1 of images 0..batch-1, seeded by (seed, index) as `snapgen.sampling` seeds every sample."""
        return sampling.initial_noise(range(batch), self.latent_shape(height, width), seed).to(self.unet.device)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) normalised latents (or pixels) -> (B, 3, H, W) images in [-1, 1]."""
        decoder = self.decoder
        if decoder is None:
            if self.unet.config.out_channels != 3:
                raise ValueError(f"this pipeline has no decoder and the UNet outputs {self.unet.config.out_channels} "
                                 f"channels; use output_type='latent' or add a decoder")
            return latents
        dtype = next(decoder.parameters()).dtype
        latents = latents.to(dtype)
        kind = type(decoder).__name__
        if kind == "AutoencoderKL":  # the SD3 VAE takes raw latents: z = x / scale + shift
            shift = decoder.config.shift_factor or 0.0
            return decoder.decode(latents / decoder.config.scaling_factor + shift).sample
        if kind == "AutoencoderTiny":  # TAESD3 takes the normalised latent (snapgen.models.taesd)
            return decoder.decode(latents).sample
        return decoder(latents)  # TinyDecoder: normalised latent -> RGB

    # ---- sampling ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_inference_steps: int = DEFAULT_STEPS,
                 guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
                 num_images_per_prompt: int = 1, seed: int = 0, use_encoders: tuple[str, ...] | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "pil", return_dict: bool = True):
        """Generate.

        Args:
            prompt: one prompt or a list.
            num_inference_steps: 28 (default) or a few-step count (4, 8) for a step-distilled UNet.
            guidance_scale: CFG scale; None = 4.0 for >= 9 steps, 1.0 (no CFG) for few-step sampling. 1 skips the
                unconditional batch.
            height, width: pixels (default `config.resolution`).
            seed: image i of the batch uses noise from seed + i (deterministic, batch-independent).
            use_encoders: a subset of the text stack's encoders (the rest contribute zeros, Sec. 4).
            latents: optional initial noise (B, C, h, w) instead of the seeded noise.
            output_type: 'pil', 'np' (B, H, W, 3) float in [0, 1], 'pt' (B, 3, H, W) in [0, 1], 'latent'.
        Returns:
            `ImagePipelineOutput(images=...)`, or the images alone when `return_dict=False`.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}; valid choices: {OUTPUT_TYPES}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps}; must be >= 1")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        if guidance_scale is None:
            guidance_scale = 1.0 if num_inference_steps <= max(FEW_STEPS) else DEFAULT_GUIDANCE
        height = height or self.config.resolution
        width = width or self.config.resolution
        batch = len(prompts)

        hidden, mask = self.encode_prompt(prompts, use_encoders)
        null_hidden, null_mask, _ = self.text_stack.null(batch)
        uncond = (null_hidden.to(hidden), null_mask.to(mask.device))
        unet = self.unet

        def net_fn(x, timestep, cond):  # timestep = 1000 sigma, as in training
            return unet(x.to(unet.dtype), timestep, cond[0], cond[1]).float()

        # The one sampler (Flow-Euler, Eq. 3, in fp32) on the registered scheduler's schedule (its shift).
        objective = flow.FlowObjective(shift=self.scheduler.config.shift)
        x = sampling.sample(net_fn, objective, range(batch), self.latent_shape(height, width), (hidden, mask), uncond,
                            steps=num_inference_steps, guidance=guidance_scale, seed=seed, noise=latents,
                            device=unet.device).to(unet.device)

        if output_type == "latent":
            images = x
        else:
            images = (self.decode_latents(x).float().clamp(-1, 1) + 1) / 2  # (B, 3, H, W) in [0, 1]
            if output_type != "pt":
                images = images.permute(0, 2, 3, 1).cpu().numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else images

    # ---- from a training run -----------------------------------------------------------------------------------------

    @classmethod
    def from_run(cls, run: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> "SnapGenPipeline":
        """A `snapgen.train` run directory -> pipeline (its EMA UNet, its text encoder, its resolution; pixel space, or
        its autoencoder's decoder for a latent-space run).

        Raises:
            FileNotFoundError when `run` is not a run directory; ValueError for DDPM runs (not a flow model).
        """
        from .runs import open_run

        opened = open_run(run)
        if opened.objective != "flow":
            raise ValueError(f"{run} was trained with objective={opened.objective!r}; this pipeline samples "
                             f"rectified-flow models (use `python -m snapgen.sample` for DDPM runs)")
        net = opened.net(ema=ema, device=device)
        from .models.text_stack import load_text_stack

        stack = load_text_stack(TextStackConfig(channel_group=(opened.text_encoder,), sequence_group=()),
                                device=device)
        decoder = None
        if opened.autoencoder != "none":  # a latent-space run: its autoencoder's decoder
            from .models.taesd import load_taesd

            decoder = load_taesd(opened.autoencoder, parts=("decoder",)).to(device)
        return cls(net, flow_scheduler(), stack, decoder, resolution=opened.resolution)


def load_pipeline(ckpt: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> SnapGenPipeline:
    """A saved pipeline directory (model_index.json) or a `snapgen.train` run directory (config.yaml)."""
    ckpt = Path(ckpt)
    if (ckpt / "model_index.json").is_file():
        return SnapGenPipeline.from_pretrained(ckpt).to(device)
    if (ckpt / "config.yaml").is_file() or ckpt.name == "checkpoint":
        return SnapGenPipeline.from_run(ckpt, ema=ema, device=device)
    raise FileNotFoundError(f"{ckpt} is neither a saved SnapGenPipeline (model_index.json) nor a snapgen.train run "
                            f"directory (config.yaml + checkpoint/)")


def images_to_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """(N, H, W, 3) float in [0, 1] -> uint8 grid (rows*H, columns*W, 3)."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    padded = np.zeros((rows * columns, h, w, c), dtype=images.dtype)
    padded[:n] = images
    grid = padded.reshape(rows, columns, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, c)
    return (grid * 255).round().astype(np.uint8)


def describe(pipe: SnapGenPipeline) -> dict[str, Any]:
    """A short, loggable summary of a pipeline's parts."""
    return {"unet_params_m": sum(p.numel() for p in pipe.unet.parameters()) / 1e6,
            "text_encoders": list(pipe.text_stack.stack_config.encoders),
            "loaded_encoders": sorted(pipe.text_stack.encoders),
            "decoder": type(pipe.decoder).__name__ if pipe.decoder is not None else None,
            "resolution": pipe.config.resolution}
