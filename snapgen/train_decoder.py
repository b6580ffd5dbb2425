"""Train and evaluate the tiny decoder (Sec. 3.2): `python -m snapgen.train_decoder --scale smoke --out DIR`.

"We train our decoder with the mean squared error (MSE) loss, lpips loss, adversarial loss, and discard the KL term as
the encoder is fixed. The decoder is trained on 256^2 image patches with a batch size of 256 and for 1M iterations."

- Encoder: frozen. `sd3` = the SD3 VAE encoder (real use; weights through `snapgen.weights`, `sd3_vae`), `taesd3` =
  TAESD3's encoder (the offline default: it maps into the same normalised SD3 latent space). Latents are computed
  under `no_grad` from a module with `requires_grad_(False)`: no gradient reaches it.
- Losses (`decoder_losses`): MSE + LPIPS (`lpips` package; its torchvision backbone found through `snapgen.weights`,
  else LPIPS is off, which is said on stderr and recorded in config.yaml as `losses.lpips_active: false` with the
  reason) + the generator's hinge loss against a PatchGAN discriminator (`PatchDiscriminator`, Isola et al. 2017, as
  in taming-transformers' VQGAN), which is trained with the hinge loss (`snapgen.adversarial.gan_d_loss`).
- What the paper leaves open ("adversarial loss [23]"), as options (our defaults): the GAN loss `gan_loss` ('hinge',
  taming's VQGAN; 'nonsaturating' = the log form), its weight `gan_weight` = 0.1 (0 = no discriminator: the
  ablation's "without" arm), fixed or, with `gan_adaptive`, times VQGAN's adaptive weight (off by default), and start
  `gan_start`, D's learning rate `disc_lr` = the decoder's and `disc_warmup` = 0
  (steps D trains alone before the adversarial term reaches the decoder), and the PatchGAN's regulariser:
  `spectral_norm` (every conv, Miyato et al. 2018) and/or an R1 penalty on real patches `r1_weight` (Mescheder et al.
  2018); both off by default, as in taming-transformers.
- Diagnostics (`snapgen.adversarial`) in every record: `train_d_acc_real`, `train_d_acc_fake`, the mean logits, and the
  decoder's `train_adv_grad_ratio` (hinge-G vs MSE + LPIPS gradient norm at the reconstruction); one warning line
  when D has sat at chance for `chance_window` steps.
- Run dir and resume as `snapgen.train`: config.yaml, metrics.jsonl, checkpoint/{decoder/ (diffusers
  save_pretrained), training_state.pt (both optimizers, the discriminator, step, run hash)}; written atomically;
  rerun the same command to resume; all randomness from (seed, step).
- Evaluation: `python -m snapgen.train_decoder eval RUN_OR_CKPT [--images DIR]`: PSNR, SSIM (torchmetrics) and LPIPS
  (when its backbone is present) of our decoder, TAESD3's decoder, and the SD3 decoder (when its weights are
  present) on the same TAESD3-encoded latents. `--images` = a folder (COCO 2017 val for Table 2; each image resized
  so its shorter side is `--resolution`, then center-cropped); without it, the CIFAR-10 test split upsampled
  32 -> 256 (bilinear): the honest offline set, but blurry, so PSNRs are far higher than on COCO.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adversarial import (GAN_LOSSES, ChanceWatch, GradProbe, adaptive_weight, d_diagnostics, gan_d_loss, gan_g_loss,
                          r1_penalty)
from .config import load_yaml, preset_config, stable_hash
from .models.autoencoders import ENCODERS, load_frozen_encoder
from .models.decoder import TinyDecoder, decoder_config
from .training import EngineOptions, Phase, Stage, fit
from .training.cli import add_run_arguments, parse_overrides, print_options, run_cli

LPIPS_NETS = {"alex": "lpips_alexnet_backbone", "squeeze": "lpips_squeezenet_backbone", "vgg": "lpips_vgg_backbone"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class DecoderTrainConfig(EngineOptions):
    arch: str = "tiny"               # snapgen.models.decoder registry: name[+delta...]
    encoder: str = "taesd3"          # frozen encoder: "sd3" (SD3 VAE, real use) or "taesd3" (offline default)
    data: str = "cifar10"            # "cifar10" (upsampled to `resolution`) or a folder of images (random patches)
    resolution: int = 256            # patch side in pixels (Sec. 3.2: 256)
    batch_size: int = 256            # Sec. 3.2: 256
    steps: int = 1_000_000           # Sec. 3.2: 1M iterations
    lr: float = 1e-4                 # decoder AdamW; not stated in the paper (taming-transformers' VQGAN: 4.5e-6 x B)
    disc_lr: float = 1e-4            # discriminator AdamW
    betas: tuple[float, float] = (0.5, 0.9)  # GAN-style Adam betas (taming-transformers); not stated in the paper
    weight_decay: float = 0.0
    mse_weight: float = 1.0          # loss weights: not stated in the paper (ours)
    lpips_weight: float = 1.0
    lpips_net: str = "alex"          # LPIPS backbone: alex (lpips default) | squeeze | vgg
    gan_weight: float = 0.1          # 0 = no discriminator at all (the ablation's "without GAN" arm)
    gan_adaptive: bool = False       # gan_weight x VQGAN's adaptive weight (|grad task| / |grad adv| at the output)
    gan_start: int = 0               # step from which the adversarial term reaches the decoder
    gan_loss: str = "hinge"          # 'hinge' (taming's VQGAN) or 'nonsaturating' (the log form)
    disc_warmup: int = 0             # steps D trains alone before gan_start (its phase starts at gan_start - disc_warmup)
    disc_channels: int = 64          # PatchGAN width (pix2pix: 64)
    disc_layers: int = 3             # PatchGAN strided layers (pix2pix: 3, 70x70 receptive field)
    spectral_norm: bool = False      # spectral normalisation of every PatchGAN conv
    r1_weight: float = 0.0           # R1 penalty E|grad_x D(x)|^2 on real patches (with the D loss); 0 = off
    chance_window: int = 1000        # warn when D has been at chance this many steps; 0 = never
    grad_checkpointing: bool = False
    val_every: int = 1000
    val_size: int = 64               # held-out images (CIFAR-10 test, or the first images of the folder, held out)
    ckpt_every: int = 5000

    def __post_init__(self):
        super().__post_init__()
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder={self.encoder!r}; valid choices: {ENCODERS}")
        if self.lpips_net not in LPIPS_NETS:
            raise ValueError(f"lpips_net={self.lpips_net!r}; valid choices: {sorted(LPIPS_NETS)}")
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"resolution={self.resolution} must be a positive multiple of 8 (the autoencoder's f)")
        for name in ("lr", "disc_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss={self.gan_loss!r}; valid choices: {', '.join(GAN_LOSSES)}")
        for name in ("spectral_norm", "gan_adaptive"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")
        for name in ("gan_start", "mse_weight", "lpips_weight", "gan_weight", "disc_warmup", "r1_weight",
                     "chance_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.val_size < 1 or self.disc_channels < 1 or self.disc_layers < 1:
            raise ValueError(f"val_size, disc_channels and disc_layers must be >= 1 (got {self.val_size}, "
                             f"{self.disc_channels}, {self.disc_layers})")
        decoder_config(self.arch)  # unknown arch names fail here, before any work


SCALES: dict[str, dict[str, Any]] = {
    # CPU, seconds: the real decoder on CIFAR-10 upsampled to 64x64 (8x8 latents), TAESD3 encoder.
    "smoke": dict(resolution=64, batch_size=4, steps=20, lr=2e-4, disc_lr=2e-4, gan_start=10, disc_layers=2,
                  log_every=5, val_every=10, val_size=8, ckpt_every=10),
    # One GPU, about an hour: CIFAR-10 upsampled to 128 (or pass a folder of photos with --set data=DIR).
    "small": dict(resolution=128, batch_size=32, steps=20_000, lr=2e-4, disc_lr=2e-4, gan_start=5_000,
                  log_every=50, val_every=1000, val_size=256, ckpt_every=2000),
    # Sec. 3.2: 256^2 patches, batch 256, 1M iterations; SD3 VAE encoder; a folder of natural images.
    "paper": dict(encoder="sd3", resolution=256, batch_size=256, steps=1_000_000, gan_start=50_000,
                  log_every=100, val_every=10_000, val_size=1024, ckpt_every=10_000, grad_checkpointing=True),
}


def make_config(scale: str = "smoke", **overrides: Any) -> DecoderTrainConfig:
    return preset_config(DecoderTrainConfig, SCALES, scale, overrides, "decoder training options")


# ---- frozen encoders -------------------------------------------------------------------------------------------------


# ---- losses ----------------------------------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix, Isola et al. 2017; taming-transformers' NLayerDiscriminator): `(B, 3, H, W)` -> logits
    `(B, 1, H', W')`, one per overlapping patch. GroupNorm in place of BatchNorm so the loss of a sample does not
    depend on its batch (and small smoke batches behave)."""

    def __init__(self, channels: int = 64, num_layers: int = 3, in_channels: int = 3, spectral_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, num_layers + 1):
            out = channels * min(2 ** i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.GroupNorm(32 if out % 32 == 0 else 1, out), nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        if spectral_norm:  # every conv's weight divided by its largest singular value (one power iteration a call)
            layers = [nn.utils.parametrizations.spectral_norm(m) if isinstance(m, nn.Conv2d) else m for m in layers]
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


def load_lpips(net: str = "alex") -> tuple[nn.Module | None, str]:
    """LPIPS with its ImageNet backbone found through `snapgen.weights` (never a torchvision download).

    The linear heads ship inside the `lpips` wheel; the backbone (torchvision's `features`) is loaded from the file
    `snapgen.weights.find(LPIPS_NETS[net])` returns, key by key, strictly.

    Returns:
        (model in eval mode with `requires_grad_(False)`, 'ok'), or (None, why it is unavailable).
    """
    from . import weights

    if net not in LPIPS_NETS:
        raise ValueError(f"lpips net={net!r}; valid choices: {sorted(LPIPS_NETS)}")
    try:
        path = weights.find(LPIPS_NETS[net], download=not weights.is_offline())
    except (weights.WeightsNotFoundError, OSError) as e:
        return None, f"LPIPS off: backbone {LPIPS_NETS[net]} not found ({str(e).splitlines()[0]})"
    import lpips

    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)  # heads from the wheel
    backbone = torch.load(path, map_location="cpu", weights_only=True)
    state = {}
    for name in model.net.state_dict():  # "slice2.3.weight" -> torchvision "features.3.weight"
        key = "features." + name.split(".", 1)[1]
        if key not in backbone:
            raise KeyError(f"{path}: no {key} for LPIPS {net} parameter {name}; is it torchvision's {net}?")
        state[name] = backbone[key]
    model.net.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False), "ok"


def decoder_losses(reconstruction: torch.Tensor, target: torch.Tensor, cfg: DecoderTrainConfig,
                   lpips_model: nn.Module | None, discriminator: nn.Module | None) -> dict[str, torch.Tensor]:
    """The decoder's loss (Sec. 3.2): w_mse MSE + w_lpips LPIPS + w_gan GAN-G (`cfg.gan_loss`); no KL (the encoder
    is fixed). With `cfg.gan_adaptive`, w_gan is gan_weight x `adaptive_weight` (VQGAN's balance of the two gradients).

    Args:
        reconstruction, target (`torch.Tensor` of shape `(B, 3, H, W)`, in [-1, 1]).
        lpips_model: None when LPIPS is off. discriminator: None before `gan_start`.

    Returns:
        `dict(loss, mse, lpips?, g_adv?, logit_fake?, gan_scale?, adv_grad?, task_grad?, adv_grad_ratio?)` of fp32
        scalars (gan_scale: the adaptive w_gan; the gradient norms at the reconstruction are filled in by the
        backward pass: `snapgen.adversarial.GradProbe`).
    """
    adversarial = discriminator is not None and bool(cfg.gan_weight)
    probe = GradProbe(reconstruction.device) if adversarial else None
    rec_adv, rec_task = probe.split(reconstruction) if probe is not None else (reconstruction, reconstruction)
    rec, tgt = rec_task.float(), target.float()
    terms = {"mse": F.mse_loss(rec, tgt)}
    loss = cfg.mse_weight * terms["mse"]
    if lpips_model is not None and cfg.lpips_weight:
        terms["lpips"] = lpips_model(rec, tgt).mean()
        loss = loss + cfg.lpips_weight * terms["lpips"]
    if adversarial:
        logits = discriminator(rec_adv).float()
        terms["g_adv"] = gan_g_loss(logits, cfg.gan_loss)
        terms["logit_fake"] = logits.detach().mean()
        weight = cfg.gan_weight
        if cfg.gan_adaptive:
            weight = weight * adaptive_weight(loss, terms["g_adv"], reconstruction)
            terms["gan_scale"] = weight
        terms.update(probe.metrics())
        loss = loss + weight * terms["g_adv"]
    terms["loss"] = loss
    return terms


# ---- data ------------------------------------------------------------------------------------------------------------


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS) if root.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return files


def load_image(path: Path, resolution: int, crop: str, generator: torch.Generator | None = None) -> np.ndarray:
    """uint8 (R, R, 3): shorter side resized to `resolution` only if smaller (random patches keep the native
    scale, Sec. 3.2 "256^2 image patches"); `crop` = 'random' (training) or 'center' (eval, after resizing the shorter
    side to exactly `resolution`)."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    short = min(img.size)
    if crop == "center" or short < resolution:
        scale = resolution / short
        img = img.resize((max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale))),
                         Image.BICUBIC)
    if crop == "center":
        left, top = (img.width - resolution) // 2, (img.height - resolution) // 2
    else:
        left = int(torch.randint(img.width - resolution + 1, (1,), generator=generator))
        top = int(torch.randint(img.height - resolution + 1, (1,), generator=generator))
    return np.asarray(img.crop((left, top, left + resolution, top + resolution)))


class PatchData:
    """Training batches `(B, 3, R, R)` in [-1, 1], a pure function of (seed, step): CIFAR-10 upsampled to R, or random
    R x R patches of a folder's images; random horizontal flips."""

    def __init__(self, source: str, resolution: int, batch_size: int, seed: int, holdout: int):
        from .data import load_cifar10

        self.resolution, self.batch_size, self.seed = resolution, batch_size, seed
        if source == "cifar10":
            self.images, _, _ = load_cifar10("train")
            self.files = None
            self.num = len(self.images)
        else:
            self.images, self.files = None, list_images(source)[holdout:]  # the first `holdout` are validation
            self.num = len(self.files)
        self._perm: tuple[int, torch.Tensor] | None = None

    def _index(self, step: int) -> torch.Tensor:
        positions = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        out = []
        for epoch in torch.unique(positions // self.num).tolist():
            if self._perm is None or self._perm[0] != epoch:
                self._perm = (epoch, torch.randperm(self.num, generator=torch.Generator().manual_seed(
                    int(stable_hash([self.seed, "epoch", epoch]), 16) % 2**63)))
            out.append(self._perm[1][positions[positions // self.num == epoch] % self.num])
        return torch.cat(out)

    def batch(self, step: int) -> torch.Tensor:
        from .data import to_model_range

        g = torch.Generator().manual_seed(int(stable_hash([self.seed, "patch", step]), 16) % 2**63)
        index = self._index(step)
        if self.images is not None:
            x = to_model_range(self.images[index.numpy()], self.resolution)
        else:
            x = to_model_range(np.stack([load_image(self.files[i], self.resolution, "random", g) for i in index]))
        flip = torch.rand(len(x), generator=g) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


def eval_images(images: str | None, resolution: int, limit: int | None) -> tuple[torch.Tensor, str]:
    """Held-out images `(N, 3, R, R)` in [-1, 1] and a label saying what they are."""
    from .data import load_cifar10, to_model_range

    if images is None:
        pixels, _, _ = load_cifar10("test", limit=limit or 256)
        return to_model_range(pixels, resolution), (f"CIFAR-10 test ({len(pixels)} images, 32x32 JPEG upsampled "
                                                    f"bilinearly to {resolution}: blurry, PSNR much easier than COCO)")
    files = list_images(images)[:limit] if limit else list_images(images)
    x = to_model_range(np.stack([load_image(f, resolution, "center") for f in files]))
    return x, f"{images} ({len(files)} images, shorter side -> {resolution}, center crop)"


# ---- the stage -------------------------------------------------------------------------------------------------------


def decoder_dir(path: str | Path) -> Path:
    """A decoder run (or its checkpoint dir) or a bare decoder dir (diffusers config.json) -> the decoder's
    `save_pretrained` dir."""
    from .runs import open_run

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    return open_run(path).module_dir("decoder")


class DecoderStage(Stage):
    """Two phases on one batch of patches: G (the decoder: MSE + LPIPS + GAN-G from `gan_start`, Sec. 3.2) from step
    0, then D (the PatchGAN) from `gan_start - disc_warmup`, on the reconstruction G left in the batch; with
    gan_weight = 0 the G phase alone."""

    kind = "decoder"

    def __init__(self, cfg: DecoderTrainConfig):
        self.options = self.cfg = cfg

    def setup(self, device, rank, world):
        cfg = self.cfg
        holdout = cfg.val_size if cfg.data != "cifar10" else 0
        self.data = PatchData(cfg.data, cfg.resolution, cfg.batch_size, cfg.seed, holdout)
        if cfg.data == "cifar10":
            val_x, _ = eval_images(None, cfg.resolution, cfg.val_size)
        else:
            val_x = torch.stack([torch.as_tensor(load_image(f, cfg.resolution, "center")) for f in
                                 list_images(cfg.data)[:holdout]]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        self.val_x = val_x
        self.encoder = load_frozen_encoder(cfg.encoder).to(device)
        lpips_model, lpips_note = load_lpips(cfg.lpips_net) if cfg.lpips_weight else (None, "LPIPS off: lpips_weight=0")
        if lpips_model is None and rank == 0:
            print(f"[train_decoder] {lpips_note}; training with MSE + GAN only (recorded in config.yaml)",
                  file=sys.stderr)
        self.lpips = lpips_model.to(device) if lpips_model is not None else None
        self.losses = {"mse": True, "lpips_active": self.lpips is not None, "lpips_note": lpips_note,
                       "gan": bool(cfg.gan_weight), "kl": False}
        self.dec_cfg = decoder_config(cfg.arch)
        torch.manual_seed(cfg.seed)
        self.decoder = TinyDecoder(**self.dec_cfg)
        self.decoder.gradient_checkpointing = cfg.grad_checkpointing
        self.discriminator = PatchDiscriminator(cfg.disc_channels, cfg.disc_layers, spectral_norm=cfg.spectral_norm)
        self.chance = ChanceWatch("train_d_", cfg.chance_window, what="decoder's PatchGAN") \
            if cfg.gan_weight and cfg.chance_window else None
        with torch.no_grad():  # the validation latents, once (the encoder is frozen)
            self.val_latent = torch.cat([self.encoder(val_x[i:i + 16].to(device))
                                         for i in range(0, len(val_x), 16)]).float()

    def modules(self):
        return {"decoder": self.decoder, "discriminator": self.discriminator} if self.cfg.gan_weight else \
            {"decoder": self.decoder}

    def phases(self):
        cfg = self.cfg

        def g_loss(models, batch, generator):
            target = batch["image"]
            with torch.no_grad():
                latent = self.encoder(target)  # frozen: no graph, no gradient
            reconstruction = models.decoder(latent)
            adversarial = bool(cfg.gan_weight) and batch["step"] >= cfg.gan_start
            batch["reconstruction"] = reconstruction.detach()  # for the D phase of this step
            return decoder_losses(reconstruction, target, cfg, self.lpips,
                                  models.discriminator if adversarial else None)

        def d_loss(models, batch, generator):
            real_input = batch["image"].detach().requires_grad_(cfg.r1_weight > 0)
            real = models.discriminator(real_input).float()
            fake = models.discriminator(batch["reconstruction"]).float()
            terms = {"gan": gan_d_loss(real, fake, cfg.gan_loss), **d_diagnostics(real, fake)}
            terms["loss"] = terms["gan"]
            if cfg.r1_weight:
                terms["r1"] = r1_penalty(real, real_input)
                terms["loss"] = terms["loss"] + cfg.r1_weight * terms["r1"]
            return terms

        phases = [Phase("g", ["decoder"], g_loss, cfg.lr, cfg.betas, cfg.weight_decay)]
        if cfg.gan_weight:
            phases.append(Phase("d", ["discriminator"], d_loss, cfg.disc_lr, cfg.betas, cfg.weight_decay,
                                grad_clip=0.0, start=max(0, cfg.gan_start - cfg.disc_warmup), prefix="train_d_"))
        return phases

    def batch(self, step, generator):
        return {"image": self.data.batch(step), "step": step}

    def identity(self):
        return {"decoder": self.dec_cfg, "lpips": self.losses["lpips_active"]}

    def run_config(self):
        return {"train": dataclasses.asdict(self.cfg), "decoder": self.dec_cfg, "losses": self.losses}

    def evaluate(self, models, step):
        decoder = models.raw["decoder"]
        rec = torch.cat([decoder(self.val_latent[i:i + 16]) for i in range(0, len(self.val_latent), 16)]).float()
        return {"val_psnr": float(psnr(rec.cpu(), self.val_x).mean()), "val_mse": float(F.mse_loss(rec.cpu(), self.val_x))}

    def describe_progress(self, record):
        warning = self.chance.describe(record) if self.chance is not None else ""
        psnr_line = f"val_psnr {record['val_psnr']:.2f} dB" if "val_psnr" in record else ""
        return "; ".join(x for x in (psnr_line, warning) if x)


def train(cfg: DecoderTrainConfig, out: str | Path, hooks: Sequence[Callable[[int, dict], None]] = (),
          progress: bool = True, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train (or resume) the decoder in `out` through the engine. Returns the last logged metrics, `step`, `out`,
    `losses` (which loss terms were active and why)."""
    stage = DecoderStage(cfg)
    result = fit(stage, out, progress=progress, callbacks=[*hooks, *callbacks])
    return {**result, "losses": stage.losses}


# ---- evaluation ------------------------------------------------------------------------------------------------------


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of `(N, 3, H, W)` images in [-1, 1], on [0, 1] pixels after clamping (torchmetrics)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    rec, tgt = ((reconstruction.float().clamp(-1, 1) + 1) / 2), ((target.float() + 1) / 2)
    return peak_signal_noise_ratio(rec, tgt, data_range=1.0, reduction="none", dim=(1, 2, 3))


def reconstruction_metrics(reconstruction: torch.Tensor, target: torch.Tensor,
                           lpips_model: nn.Module | None) -> dict[str, float | None]:
    """Mean PSNR, SSIM (torchmetrics, Gaussian 11x11) and LPIPS (None when off) over `(N, 3, H, W)` in [-1, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    rec = reconstruction.float().clamp(-1, 1)
    result: dict[str, float | None] = {"psnr": float(psnr(rec, target).mean())}
    result["ssim"] = float(structural_similarity_index_measure((rec + 1) / 2, (target.float() + 1) / 2,
                                                               data_range=1.0))
    if lpips_model is not None:
        with torch.no_grad():
            result["lpips"] = float(torch.cat([lpips_model(rec[i:i + 16], target[i:i + 16]).flatten()
                                               for i in range(0, len(rec), 16)]).mean())
    else:
        result["lpips"] = None
    return result


def peer_decoders(device: torch.device) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """TAESD3's decoder and the SD3 decoder (taking our normalised latents) where their weights exist."""
    from . import weights
    from .models.autoencoders import load_sd3_decoder
    from .models.taesd import TAESDDecoder, load_taesd

    found, notes = {}, {}
    try:
        found["taesd3"] = TAESDDecoder(load_taesd("taesd3", parts=("decoder",))).to(device)
    except weights.WeightsNotFoundError as e:
        notes["taesd3"] = str(e).splitlines()[0]
    try:
        sd3 = load_sd3_decoder().to(device)

        class _Normalised(nn.Module):  # our latents are normalised; the SD3 decoder takes raw z = x / scale + shift
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, latent):
                return self.inner(latent / self.inner.scaling_factor + self.inner.shift_factor)

        found["sd3"] = _Normalised(sd3)
    except (weights.WeightsNotFoundError, OSError) as e:
        notes["sd3"] = f"SD3 decoder not evaluated: {str(e).splitlines()[0]}"
    return found, notes


def evaluate(ckpt: str | Path, images: str | None = None, resolution: int = 256, limit: int | None = None,
             encoder: str = "taesd3", batch_size: int = 8, out: str | Path | None = None, peers: bool = True,
             log_mlflow: bool = False, return_images: bool = False) -> dict[str, Any]:
    """Reconstruction quality of our decoder (and peers) on the same frozen-encoder latents; writes `eval.json`.

    Args:
        ckpt: run dir, checkpoint dir or decoder dir.
        images: a folder (COCO 2017 val for Table 2) or None for the CIFAR-10 test split upsampled.
        resolution (`int`): image side; limit: at most this many images (CIFAR default 256).
        encoder (`str`): the frozen encoder making the shared latents ('taesd3' default, 'sd3').
        out: where eval.json goes (default: `ckpt` when it is a run dir, else the decoder dir).
        peers: also evaluate TAESD3's and the SD3 decoder when their weights exist.
        log_mlflow: log one run per decoder to the MLflow experiment 'decoder' (run names: the arch, 'taesd3',
            'sd3'), metrics psnr/ssim/lpips/params_m (+ gflops for ours), the schema `reports.tables` reads.
        return_images: also return `images={"target", "ours"}`, uint8 (N, R, R, 3), for metrics computed elsewhere
            (not written to eval.json).

    Returns:
        `dict(arch, eval_set, encoder, decoders={name: metrics}, notes[, images])`.
    """
    from . import profile, tracking

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dec_dir = decoder_dir(ckpt)
    ours = TinyDecoder.from_pretrained(dec_dir).to(device).eval()
    run_dir = Path(ckpt) if (Path(ckpt) / "config.yaml").is_file() else None
    arch = load_yaml(run_dir / "config.yaml")["train"]["arch"] if run_dir else "custom"
    x, eval_set = eval_images(images, resolution, limit)
    enc = load_frozen_encoder(encoder).to(device)
    decoders: dict[str, nn.Module] = {"ours": ours}
    notes: dict[str, str] = {}
    if peers:
        found, notes = peer_decoders(device)
        decoders.update(found)
    lpips_model, lpips_note = load_lpips("alex")
    if lpips_model is None:
        notes["lpips"] = lpips_note
    else:
        lpips_model = lpips_model.to(device)
    recs: dict[str, list[torch.Tensor]] = {name: [] for name in decoders}
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            latent = enc(x[i:i + batch_size].to(device))
            for name, dec in decoders.items():
                recs[name].append(dec(latent).float().cpu())
    results = {}
    for name, parts in recs.items():
        results[name] = {**reconstruction_metrics(torch.cat(parts), x, lpips_model.cpu() if lpips_model is not None else None),
                         "params_m": profile.count_params(decoders[name]) / 1e6}
    if arch != "custom":
        results["ours"]["gflops"] = profile.profile_decoder(arch, 128)["gflops_fvcore_default"]
    report = {"arch": arch, "decoder_dir": str(dec_dir), "eval_set": eval_set, "encoder": encoder,
              "resolution": resolution, "decoders": results, "notes": notes}
    target = Path(out) if out else (run_dir or dec_dir)
    target.mkdir(parents=True, exist_ok=True)
    (target / "eval.json").write_text(json.dumps(report, indent=2))
    if log_mlflow:
        for name, metrics in results.items():
            tracking.log_eval_run("decoder", arch if name == "ours" else name, metrics=metrics,
                                  tags={"eval_set": eval_set, "encoder": encoder, "decoder_dir": str(dec_dir)})
    if return_images:
        def to_uint8(t: torch.Tensor) -> np.ndarray:
            return ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

        report["images"] = {"target": to_uint8(x), "ours": to_uint8(torch.cat(recs["ours"]))}
    return report


# ---- CLI -------------------------------------------------------------------------------------------------------------


def _main_eval(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m snapgen.train_decoder eval", description=evaluate.__doc__.split("\n")[0])
    p.add_argument("ckpt", help="run dir, checkpoint dir or decoder dir")
    p.add_argument("--images", default=None, help="folder of held-out images (COCO 2017 val); default CIFAR-10 test "
                                                  "upsampled (offline, blurry)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--encoder", default="taesd3", choices=ENCODERS)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=None)
    p.add_argument("--no-peers", action="store_true", help="only our decoder")
    p.add_argument("--mlflow", action="store_true", help="log to the MLflow experiment 'decoder'")
    a = p.parse_args(argv)
    report = evaluate(a.ckpt, a.images, a.resolution, a.limit, a.encoder, a.batch_size, a.out, not a.no_peers,
                      a.mlflow)
    print(f"eval set: {report['eval_set']}; latents from the frozen {report['encoder']} encoder")
    print(f"{'decoder':10s} {'params (M)':>10s} {'PSNR':>7s} {'SSIM':>6s} {'LPIPS':>6s}")
    for name, m in report["decoders"].items():
        lp = f"{m['lpips']:.4f}" if m["lpips"] is not None else "-"
        print(f"{name:10s} {m['params_m']:10.2f} {m['psnr']:7.2f} {m['ssim']:6.3f} {lp:>6s}")
    for key, note in report["notes"].items():
        print(f"note ({key}): {note}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:
        return _main_eval(argv[1:])
    p = argparse.ArgumentParser(prog="python -m snapgen.train_decoder",
                                description=__doc__.split("\n")[0] + " (or: eval CKPT [--images DIR])")
    add_run_arguments(p, SCALES)
    a = p.parse_args(argv)
    cfg = make_config(a.scale, **parse_overrides(a.set))
    out = Path(a.out or f"runs/decoder-{cfg.arch}-{a.scale}")
    if a.dry_run:
        print_options(cfg, decoder=decoder_config(cfg.arch))
        return 0
    t0 = time.time()
    result = train(cfg, out, progress=not a.no_progress)
    print(json.dumps(result | {"minutes": (time.time() - t0) / 60}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
