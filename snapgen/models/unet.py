"""`EfficientUNet`: one UNet class that realises every architecture of the paper's Fig. 2 from a `UNetConfig`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..config import UNetConfig
from .blocks import Downsample, ResnetBlock, SpatialTransformer, Upsample


class EfficientUNet(ModelMixin, ConfigMixin):
    """The SDXL-style UNet of Sec. 3.1 with every delta of Fig. 2 as a config switch.

    The constructor takes exactly the fields of `UNetConfig` (see its docstring), so `save_pretrained` /
    `from_pretrained` reload any variant. Inputs are latents or pixels (`in_channels`), at any size that the down path
    can halve (odd sizes are handled by upsampling to the skip's size). `timestep` is in [0, 1000] (flow: 1000·σ).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, in_channels: int = 16, out_channels: int = 16,
                 block_out_channels: tuple[int, ...] = (256, 512, 896), layers_per_block: int = 2,
                 transformer_layers_per_block: tuple[int, ...] = (0, 2, 4), mid_transformer_layers: int = 4,
                 self_attention: tuple[bool, ...] = (True, True, True), cross_attention_dim: int = 768,
                 attention_head_dim: int = 64, attention: str = "mhsa", conv: str = "conv", sepconv_expansion: int = 1,
                 ffn_ratio: float = 4.0, first_stage_ca: bool = False, qk_norm: str | None = None, rope: bool = False,
                 norm_num_groups: int = 32, time_embed_dim: int | None = None, pooled_projection_dim: int = 0):
        super().__init__()
        cfg = UNetConfig(**{k: v for k, v in locals().items() if k in UNetConfig.__dataclass_fields__})
        self.gradient_checkpointing = False
        chans = cfg.block_out_channels
        temb_dim = cfg.time_embed_dim or 4 * chans[0]
        conv_kw = dict(conv=cfg.conv, expansion=cfg.sepconv_expansion)
        groups = cfg.norm_num_groups

        def resnet(cin, cout):
            return ResnetBlock(cin, cout, temb_dim, groups, **conv_kw)

        def transformer(cin, cout, depth, self_attention):
            return SpatialTransformer(cin, cout, depth, cfg.cross_attention_dim, cfg.attention_head_dim, groups,
                                      cfg.attention == "mqa", self_attention, cfg.ffn_ratio, cfg.qk_norm,
                                      cfg.rope and self_attention)

        def block(stage, cin, cout):
            """One (residual [+ transformer]) unit of a stage, or a CA+FFN transformer in stage 1 under Fig. 2(e)."""
            if stage == 0 and cfg.first_stage_ca:
                return nn.ModuleList([transformer(cin, cout, max(1, cfg.transformer_layers_per_block[0]), False)])
            layers = [resnet(cin, cout)]
            if cfg.transformer_layers_per_block[stage] > 0:
                layers.append(transformer(cout, cout, cfg.transformer_layers_per_block[stage], cfg.self_attention[stage]))
            return nn.ModuleList(layers)

        self.time_proj = Timesteps(chans[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(chans[0], temb_dim)
        self.pooled_embedding = TimestepEmbedding(cfg.pooled_projection_dim, temb_dim) if cfg.pooled_projection_dim else None
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)

        self.down_blocks, self.downsamplers = nn.ModuleList(), nn.ModuleList()
        skip_channels, cin = [chans[0]], chans[0]
        for stage, ch in enumerate(chans):
            self.down_blocks.append(nn.ModuleList(block(stage, cin if j == 0 else ch, ch)
                                                  for j in range(cfg.layers_per_block)))
            skip_channels += [ch] * cfg.layers_per_block
            cin = ch
            last = stage == len(chans) - 1
            self.downsamplers.append(nn.Identity() if last else Downsample(ch, **conv_kw))
            if not last:
                skip_channels.append(ch)

        self.mid_block = nn.ModuleList([resnet(chans[-1], chans[-1]),
                                        transformer(chans[-1], chans[-1], cfg.mid_transformer_layers, cfg.self_attention[-1]),
                                        resnet(chans[-1], chans[-1])])

        self.up_blocks, self.upsamplers = nn.ModuleList(), nn.ModuleList()
        cin = chans[-1]
        for stage in reversed(range(len(chans))):
            ch = chans[stage]
            units = nn.ModuleList()
            for _ in range(cfg.layers_per_block + 1):
                units.append(block(stage, cin + skip_channels.pop(), ch))
                cin = ch
            self.up_blocks.append(units)
            self.upsamplers.append(Upsample(ch, **conv_kw) if stage > 0 else nn.Identity())

        self.norm_out = nn.GroupNorm(groups, chans[0], eps=1e-5)
        self.conv_out = nn.Conv2d(chans[0], cfg.out_channels, 3, padding=1)

    @classmethod
    def from_unet_config(cls, cfg: UNetConfig) -> "EfficientUNet":
        return cls(**cfg.to_dict())

    @property
    def unet_config(self) -> UNetConfig:
        return UNetConfig.from_dict({k: self.config[k] for k in UNetConfig.__dataclass_fields__})

    def _run(self, layer: nn.Module, *args):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(layer, *args)
        return layer(*args)

    def _unit(self, unit: nn.ModuleList, h, temb, context, context_mask):
        for layer in unit:
            if isinstance(layer, ResnetBlock):
                h = self._run(layer, h, temb)
            else:
                h = self._run(layer, h, context, context_mask)
        return h

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None,
                pooled_projections: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            sample: (B, in_channels, H, W) noisy latents (or pixels).
            timestep: (B,) or scalar, in [0, 1000].
            encoder_hidden_states: (B, S, cross_attention_dim) condition tokens.
            encoder_attention_mask: (B, S) bool, True for real tokens; None attends to all.
            pooled_projections: (B, pooled_projection_dim), required when the config has a pooled embedding.
        Returns:
            (B, out_channels, H, W): the velocity (flow) or noise (DDPM) prediction.
        """
        timestep = torch.as_tensor(timestep, device=sample.device).expand(sample.shape[0])
        temb = self.time_embedding(self.time_proj(timestep).to(sample.dtype))  # (B, temb_dim)
        if self.pooled_embedding is not None:
            if pooled_projections is None:
                raise ValueError("this UNet has pooled_projection_dim > 0 and needs `pooled_projections`")
            temb = temb + self.pooled_embedding(pooled_projections.to(sample.dtype))
        ctx, mask = encoder_hidden_states, encoder_attention_mask

        h = self.conv_in(sample)
        skips = [h]
        for units, down in zip(self.down_blocks, self.downsamplers):
            for unit in units:
                h = self._unit(unit, h, temb, ctx, mask)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = self._run(down, h)
                skips.append(h)

        h = self._unit(self.mid_block, h, temb, ctx, mask)

        for units, up in zip(self.up_blocks, self.upsamplers):
            for unit in units:
                h = self._unit(unit, torch.cat([h, skips.pop()], dim=1), temb, ctx, mask)
            if not isinstance(up, nn.Identity):
                h = self._run(up, h, tuple(skips[-1].shape[-2:]))
        return self.conv_out(F.silu(self.norm_out(h)))

    def dummy_inputs(self, batch: int = 1, latent: tuple[int, int] | int = (32, 32), text_len: int = 77,
                     generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random inputs of the right shapes (profiling, tests)."""
        h, w = (latent, latent) if isinstance(latent, int) else latent
        device, dtype = self.device, self.dtype
        g = generator or torch.Generator().manual_seed(0)
        inputs = {
            "sample": torch.randn(batch, self.config.in_channels, h, w, generator=g).to(device, dtype),
            "timestep": torch.full((batch,), 500.0, device=device),
            "encoder_hidden_states": torch.randn(batch, text_len, self.config.cross_attention_dim, generator=g).to(device, dtype),
        }
        if self.config.pooled_projection_dim:
            inputs["pooled_projections"] = torch.randn(batch, self.config.pooled_projection_dim, generator=g).to(device, dtype)
        return inputs
