"""The CIFAR-10 feature network of the offline sample metric (FD-CIFAR, KID, class accuracy): a proxy, not FID.

    python -m evals.feature_net train [--out DIR] [--epochs 40] [--seed 0]      (one GPU: well under 2 minutes)
    python -m evals.feature_net accuracy [--weights PATH] [--limit N]             (recompute the test accuracy)

FID needs clean-fid's Inception weights, which an offline machine cannot download. This harness trains its own
small ResNet on CIFAR-10 instead (about 1.2M parameters, an airbench/ResNet-9-like recipe: the data set on the GPU
as uint8, flips and reflect-padded crops, label smoothing, SGD with Nesterov momentum under a one-cycle schedule,
bf16 autocast) and commits its weights (`DEFAULT_WEIGHTS`, safetensors, with the command, seed and measured test
accuracy in the file's metadata and in the JSON beside it). Its penultimate features (the 256-d global max pool)
are the feature space of `evals.fid --features cifar10`; its logits give class-consistency accuracy.

Every image enters as `snapgen.data.to_model_range(images, 32)`: uint8 (N, H, W, 3) of any size, resized to 32x32
(bilinear, antialiased) into [-1, 1], as the net was trained.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "cifar10_resnet.safetensors"
WEIGHTS_NAME = DEFAULT_WEIGHTS.name
INPUT_SIZE = 32
WIDTHS = (64, 128, 256)  # the three blocks; the stem is half the first
TARGET_ACCURACY = 0.90   # the bar for the committed network


class CifarResNet(nn.Module):
    """Stem conv, then three blocks of (conv, 2x2 max pool, BN, GELU, conv, BN, GELU), global max pool, linear.

    The layout of airbench (Jordan 2024) without its whitening stem; the logits are scaled by 1/8 as in the ResNet-9
    DAWNBench recipe (Page 2018), which lets a large learning rate train stably."""

    def __init__(self, widths: tuple[int, int, int] = WIDTHS, num_classes: int = 10):
        super().__init__()
        self.widths = tuple(int(w) for w in widths)

        def conv_bn(c_in: int, c_out: int, pool: bool = False) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
            if pool:
                layers.append(nn.MaxPool2d(2))
            return layers + [nn.BatchNorm2d(c_out), nn.GELU()]

        stem = self.widths[0] // 2
        layers = conv_bn(3, stem)
        c_in = stem
        for width in self.widths:
            layers += conv_bn(c_in, width, pool=True) + conv_bn(width, width)
            c_in = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes, bias=False)
        self.feature_dim = c_in

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) in [-1, 1] -> (B, feature_dim): the penultimate features (FD-CIFAR's space)."""
        return F.adaptive_max_pool2d(self.body(x), 1).flatten(1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The metric's features: the mean of `features` over the image and its mirror image. A mirrored CIFAR image
        is as real as the original (training flips half the batch), so the metric should not tell them apart; the
        averaged view is also the better classifier (airbench's flip test-time augmentation: 90.94% vs 89.74% test
        accuracy for the committed weights, CPU fp32)."""
        return 0.5 * (self.features(x) + self.features(x.flip(3)))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features) / 8.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, 32, 32) in [-1, 1]: `snapgen.data.to_model_range` at 32x32."""
    from snapgen.data import to_model_range

    return to_model_range(images, INPUT_SIZE)


# ---- training (fast on one GPU; a tiny setting runs on a CPU) --------------------------------------------------------


def _augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flips and random crops of the reflect-padded batch (B, 3, 32, 32), all on x's device."""
    b, _, h, w = x.shape
    flip = torch.rand(b, device=x.device, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
    rows = (torch.arange(h, device=x.device)[None] + dy[:, None])[:, None, :, None]  # (B, 1, H, 1)
    cols = (torch.arange(w, device=x.device)[None] + dx[:, None])[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


@torch.no_grad()
def predict(net: CifarResNet, images: np.ndarray, batch_size: int = 500,
            device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features float64 (N, D), logits float32 (N, K)) of uint8 images (N, H, W, 3), eval mode."""
    device = torch.device(device or next(net.parameters()).device)
    net.eval()
    feats, logits = [], []
    for i in range(0, len(images), batch_size):
        x = to_input(torch.as_tensor(images[i: i + batch_size]).to(device))  # resized on the device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            f = net.embed(x)
        f = f.float()
        feats.append(f.cpu().numpy().astype(np.float64))
        logits.append(net.logits(f).float().cpu().numpy())
    return np.concatenate(feats), np.concatenate(logits)


def accuracy(net: CifarResNet, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy of the net on uint8 images."""
    _, logits = predict(net, images, batch_size)
    return float((logits.argmax(1) == np.asarray(labels)).mean())


def train_feature_net(out: str | Path, epochs: int = 40, batch_size: int = 512, lr: float = 0.4,
                      weight_decay: float = 5e-4, label_smoothing: float = 0.1, seed: int = 0,
                      widths: tuple[int, int, int] = WIDTHS, train_limit: int | None = None,
                      test_limit: int | None = None, device: str | None = None, command: str = "",
                      progress: bool = True) -> dict[str, Any]:
    """Train the net on CIFAR-10 train (through `snapgen.data.load_cifar10`), measure its test accuracy, save
    `<out>/cifar10_resnet.safetensors` (metadata: the record) and `<out>/cifar10_resnet.json`. Returns the record.

    Recipe: SGD, Nesterov momentum 0.9, one-cycle learning rate (linear up to `lr` over the first quarter, linear
    down to 0), weight decay on every weight, label smoothing, flips + 4-px reflect-padded crops, bf16 autocast."""
    from safetensors.torch import save_file

    from snapgen.data import load_cifar10

    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"epochs={epochs}, batch_size={batch_size} must be >= 1 and lr={lr} > 0")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    start = time.time()
    train_images, train_labels, names = load_cifar10("train", limit=train_limit)
    test_images, test_labels, _ = load_cifar10("test", limit=test_limit)
    x_train = to_input(train_images).to(device)  # (N, 3, 32, 32): the whole set on the device
    y_train = torch.as_tensor(train_labels).to(device)
    torch.manual_seed(seed)
    net = CifarResNet(widths, len(names)).to(device).to(memory_format=torch.channels_last)
    steps_per_epoch = max(1, len(x_train) // batch_size)  # the last partial batch is dropped (BN on full batches)
    total = epochs * steps_per_epoch
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    warm = max(1, total // 4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    generator = torch.Generator(device).manual_seed(seed)
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x_train), device=device, generator=generator)
        losses = []
        for step in range(steps_per_epoch):
            index = order[step * batch_size: (step + 1) * batch_size]
            x = _augment(x_train[index], generator).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = F.cross_entropy(net(x).float(), y_train[index], label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.detach())
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: train loss {torch.stack(losses).mean().item():.4f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    train_seconds = time.time() - start
    test_accuracy = accuracy(net, test_images, test_labels)
    record = {
        "test_accuracy": test_accuracy, "test_images": len(test_labels), "train_images": len(train_labels),
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "label_smoothing": label_smoothing, "seed": seed, "widths": list(widths), "class_names": list(names),
        "params": sum(p.numel() for p in net.parameters()), "device": _device_name(device),
        "torch": torch.__version__, "train_seconds": round(train_seconds, 1), "command": command,
        "data": "CIFAR-10 through snapgen.data.load_cifar10 (the npz of $SNAPGEN_ASSETS or $SNAPGEN_CIFAR10_NPZ)",
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    tmp = out / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"record": json.dumps(record)})
    tmp.replace(out / WEIGHTS_NAME)
    (out / WEIGHTS_NAME.replace(".safetensors", ".json")).write_text(json.dumps(record, indent=1) + "\n")
    if progress:
        print(f"test accuracy {100 * test_accuracy:.2f}% on {len(test_labels)} images; {record['params']:,} params; "
              f"trained in {train_seconds:.0f} s on {record['device']}; saved {out / WEIGHTS_NAME}", flush=True)
    return record


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


# ---- the committed network -------------------------------------------------------------------------------------------


class FeatureNetMissing(FileNotFoundError):
    """The feature network's weights file is not there; the message says how to train it."""


def load_feature_net(path: str | Path | None = None,
                     device: str | torch.device = "cpu") -> tuple[CifarResNet, dict[str, Any]]:
    """(net in eval mode, its record: test accuracy, command, seed, class names, ... and `feature_id`)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path or DEFAULT_WEIGHTS)
    if not path.is_file():
        raise FeatureNetMissing(f"the CIFAR-10 feature network {path} is not there: train it with `python -m "
                                f"evals.feature_net train --out {path.parent}` (one GPU, under 2 minutes)")
    with safe_open(str(path), "pt") as f:
        record = json.loads((f.metadata() or {}).get("record", "{}"))
    net = CifarResNet(tuple(record.get("widths", WIDTHS)), len(record.get("class_names", range(10))))
    net.load_state_dict(load_file(str(path)))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    record["feature_id"] = f"cifar10_resnet-flipavg:{digest}"  # reference statistics are cached per weights file
    record["weights"] = str(path)
    return net.to(device).eval(), record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.feature_net", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the net and save its weights + record")
    train.add_argument("--out", default=str(DEFAULT_WEIGHTS.parent), help="folder for cifar10_resnet.safetensors")
    train.add_argument("--epochs", type=int, default=40)
    train.add_argument("--batch-size", type=int, default=512)
    train.add_argument("--lr", type=float, default=0.4)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--widths", type=int, nargs=3, default=list(WIDTHS), help="the three blocks' widths")
    train.add_argument("--train-limit", type=int, default=None, help="train on this many images (CPU checks)")
    train.add_argument("--test-limit", type=int, default=None, help="measure on this many test images")
    train.add_argument("--device", default=None)
    check = sub.add_parser("accuracy", help="recompute the test accuracy of a weights file")
    check.add_argument("--weights", default=None, help=f"default {DEFAULT_WEIGHTS}")
    check.add_argument("--limit", type=int, default=None, help="this many test images, strided over the classes")
    for p in (train, check):
        p.add_argument("--debug", action="store_true", help="full tracebacks (also SNAPGEN_DEBUG=1)")
    args = parser.parse_args(argv)
    if args.command == "train":
        for option, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size),
                              ("--train-limit", args.train_limit or 1), ("--test-limit", args.test_limit or 1)):
            if value < 1:
                raise ValueError(f"{option} {value}: must be >= 1")
        command = "python -m evals.feature_net " + " ".join(argv if argv is not None else sys.argv[1:])
        train_feature_net(args.out, args.epochs, args.batch_size, args.lr, seed=args.seed, widths=tuple(args.widths),
                          train_limit=args.train_limit, test_limit=args.test_limit, device=args.device,
                          command=command)
        return 0
    from snapgen.data import load_cifar10

    net, record = load_feature_net(args.weights)
    images, labels, _ = load_cifar10("test", limit=args.limit)
    measured = accuracy(net, images, labels)
    print(f"test accuracy {100 * measured:.2f}% on {len(labels)} CIFAR-10 test images (CPU); the record states "
          f"{100 * record.get('test_accuracy', float('nan')):.2f}% on {record.get('test_images')} ({record['weights']})")
    return 0


if __name__ == "__main__":
    from snapgen.cli import run_cli

    sys.exit(run_cli(main))
