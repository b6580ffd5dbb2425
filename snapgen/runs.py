"""The run directory: its one format, its one reader, and the files every stage writes there.

    <out>/config.yaml        kind (unet | decoder | step_distill), the resolved options, the net's config, run_hash,
                             and what a reader needs to sample (resolution, autoencoder, text encoder, class names)
    <out>/metrics.jsonl      one JSON record per logged step (`{"step": n, "time": unix_s, ...}`)
    <out>/checkpoint/        <name>/ per diffusers module (save_pretrained, safetensors) + training_state.pt
                             (optimizers, step, counters, plain modules' state dicts; loadable with weights_only=True)
    <out>/samples/           sample grids (step_<n>.png)
    <out>/.lock              held (flock) by the process that writes the run

Every consumer (sampling, evals, step distillation, the pipeline, reports) opens a run through `open_run`; every loop
writes it through the functions below (via `snapgen.training.fit`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .config import load_yaml
from .models.autoencoders import AUTOENCODERS

CONFIG_FILE, METRICS_FILE, CHECKPOINT_DIR, STATE_FILE, LOCK_FILE = (
    "config.yaml", "metrics.jsonl", "checkpoint", "training_state.pt", ".lock")
KINDS = ("unet", "decoder", "step_distill")


class RunError(RuntimeError):
    """A run directory that cannot be opened, resumed or written; the message says which file and what to do."""


# ---- the writer's lock -----------------------------------------------------------------------------------------------


class RunLock:
    """An exclusive advisory lock on a run directory (`flock` on `<out>/.lock`; the kernel releases it when the holder
    dies, so a crash never leaves a stale lock). A second writer fails with the holder's PID and host: at once, or
    after `wait_s` seconds of trying (a restarted distributed trial whose killed predecessor is still exiting)."""

    def __init__(self, out: str | Path, wait_s: float = 0.0):
        self.path, self._fd, self.wait_s = Path(out) / LOCK_FILE, None, wait_s

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EACCES) and time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise RunError(f"{self.path.parent} is being written by {holder}; wait for it, or use another "
                                   f"--out")
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


# ---- metrics.jsonl ---------------------------------------------------------------------------------------------------


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    """Every record of `<out>/metrics.jsonl`; a torn last line (a crash or a full disk mid-write) is dropped."""
    path = Path(out) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise RunError(f"{path}: line {i + 1} is not JSON ({line[:60]!r}); the file was edited or corrupted")
    return records


def truncate_metrics(out: str | Path, step: int) -> None:
    """Keep the records up to `step` (a resumed run logs the later ones again) and drop a torn last line."""
    path = Path(out) / METRICS_FILE
    if path.exists():
        kept = [r for r in read_metrics(out) if r["step"] <= step]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(path)


def append_metrics(out: str | Path, record: dict[str, Any]) -> None:
    with open(Path(out) / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


# ---- checkpoints -----------------------------------------------------------------------------------------------------


def _dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0


def save_checkpoint(out: str | Path, models: dict[str, torch.nn.Module], state: dict[str, Any]) -> Path:
    """Write `<out>/checkpoint/{<name>/ per model (save_pretrained), training_state.pt}` atomically: the new directory
    is complete before it replaces the last good one. On a full disk the partial directory is removed, the last good
    checkpoint stays, and the error says how much space is needed."""
    out = Path(out)
    tmp, final, old = out / "checkpoint.tmp", out / CHECKPOINT_DIR, out / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for name, model in models.items():
            model.save_pretrained(tmp / name)
        torch.save(state, tmp / STATE_FILE)
    except (OSError, RuntimeError) as e:
        # torch reports ENOSPC as "RuntimeError: [enforce fail at inline_container.cc] ... unexpected pos"
        need = max(_dir_size_mb(final), _dir_size_mb(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
        full = isinstance(e, OSError) and e.errno == errno.ENOSPC or "unexpected pos" in str(e) \
            or shutil.disk_usage(out).free < 2**20
        if full:
            raise RunError(f"no space left on {out}: a checkpoint needs ~{need:.0f} MB; the last good checkpoint "
                           f"({final if final.exists() else 'none yet'}) is kept") from None
        raise
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out: str | Path) -> Path | None:
    for name in (CHECKPOINT_DIR, "checkpoint.old"):  # .old survives a crash between the two renames above
        if (Path(out) / name / STATE_FILE).is_file():
            return Path(out) / name
    return None


def read_state(ckpt: Path) -> dict[str, Any]:
    """`training_state.pt` with `weights_only=True`: tensors and plain containers only, so a crafted file cannot run
    code; anything else is refused as a file we did not write."""
    try:
        return torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle errors, truncation, foreign formats
        raise RunError(f"refusing {ckpt / STATE_FILE}: not a training state this harness wrote ({str(e).splitlines()[0][:200]}). "
                       f"Delete {ckpt} to start over, or point --out elsewhere.") from None


def load_checkpoint(ckpt: Path, models: dict[str, torch.nn.Module], run_hash: str) -> dict[str, Any]:
    """Load the models saved by `save_checkpoint` in place; return the training state (checked against run_hash)."""
    state = read_state(ckpt)
    if state.get("run_hash") != run_hash:
        raise RunError(f"checkpoint {ckpt} was written by a run with another config (hash {state.get('run_hash')}, "
                       f"this run {run_hash}); use another --out, or delete {ckpt.parent} to start over")
    for name, model in models.items():
        try:
            model.load_state_dict(type(model).from_pretrained(ckpt / name).state_dict())
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: say which and what to do
            raise RunError(f"cannot read {ckpt / name}: {str(e).splitlines()[0][:200]}. Delete {ckpt} to start "
                           f"over, or point --out elsewhere.") from None
    return state


# ---- the reader ------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """An opened run directory. `config` is config.yaml; the properties are what samplers and evals need."""

    path: Path
    config: dict[str, Any]
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        return self.config.get("kind", "unet")

    @property
    def train(self) -> dict[str, Any]:
        """The training options of the UNet this run holds (a step-distilled run carries its student's)."""
        return self.config.get("train", {})

    @property
    def resolution(self) -> int:
        return int(self.train["resolution"])

    @property
    def autoencoder(self) -> str:
        return self.train.get("autoencoder", "none")

    @property
    def text_encoder(self) -> str:
        return self.train.get("text_encoder", "minilm")

    @property
    def objective(self) -> str:
        return self.train.get("objective", "flow")

    @property
    def class_names(self) -> list[str]:
        return list(self.config.get("class_names", []))

    @property
    def text_len(self) -> int:
        return int(self.config.get("text_len", 0))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of what the UNet generates: pixels, or the autoencoder's latents."""
        channels, factor = AUTOENCODERS[self.autoencoder]
        return channels, self.resolution // factor, self.resolution // factor

    def weight_entries(self) -> tuple[str, ...]:
        """The `snapgen.weights` entries sampling this run loads: its autoencoder's decoder, its text encoder's files
        (`minilm` ships inside a pip package)."""
        from .models.taesd import TAESD_MODELS

        entries = [TAESD_MODELS[self.autoencoder][2]] if self.autoencoder in TAESD_MODELS else []
        return tuple(entries + (["clip_vit_l14"] if self.text_encoder == "clip-l" else []))

    @property
    def checkpoint(self) -> Path:
        ckpt = find_checkpoint(self.path)
        if ckpt is None and (self.path / CHECKPOINT_DIR).is_dir():
            return self.path / CHECKPOINT_DIR  # a copied run may carry the weights without the training state
        if ckpt is None:
            raise RunError(f"{self.path} has no checkpoint yet (no {CHECKPOINT_DIR}/); train it first")
        return ckpt

    @property
    def step(self) -> int:
        return int(read_state(self.checkpoint)["step"])

    def module_dir(self, name: str) -> Path:
        path = self.checkpoint / name
        if not path.is_dir():
            available = sorted(p.name for p in self.checkpoint.iterdir() if p.is_dir())
            raise RunError(f"{self.path} ({self.kind} run) has no module {name!r}; it has {available}")
        return path

    def net(self, ema: bool = True, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The UNet (EMA weights by default) in eval mode; a run of another net class loads that class."""
        from .models import EfficientUNet

        if self.kind == "decoder":
            raise RunError(f"{self.path} is a decoder run; it holds no UNet (use .decoder_net())")
        cls = EfficientUNet
        if self.config.get("net_class", "EfficientUNet") == "SD3Transformer2DModel":
            from diffusers import SD3Transformer2DModel as cls  # the small teacher's runs
        return cls.from_pretrained(self.module_dir("unet_ema" if ema else "unet")).to(device).eval()

    def decoder_net(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        from .models.decoder import TinyDecoder

        return TinyDecoder.from_pretrained(self.module_dir("decoder")).to(device).eval()

    def decode_fn(self, device: str | torch.device = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
        """What the UNet generates -> images in [-1, 1]: identity in pixel space, else the run's autoencoder's decoder
        (loaded once per Run)."""
        key = f"decode:{device}"
        if key not in self._cache:
            self._cache[key] = latent_decoder(self.autoencoder, torch.device(device))
        return self._cache[key]


def latent_decoder(autoencoder: str, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """latents -> images in [-1, 1] (identity for pixel space)."""
    if autoencoder == "none":
        return lambda x: x
    from .models.taesd import TAESDDecoder, load_taesd

    decoder = TAESDDecoder(load_taesd(autoencoder, parts=("decoder",))).to(device).eval()
    return lambda x: decoder(x.float())


def open_run(path: str | Path) -> Run:
    """A run directory (or its `checkpoint/`) -> `Run`. One clear error when it is not one."""
    path = Path(path)
    if path.name in (CHECKPOINT_DIR, "checkpoint.old"):
        path = path.parent
    if not (path / CONFIG_FILE).is_file():
        what = "does not exist" if not path.exists() else f"has no {CONFIG_FILE}"
        raise RunError(f"{path} {what}: not a run directory of snapgen.train / train_decoder / step_distill")
    try:
        config = load_yaml(path / CONFIG_FILE)
    except Exception as e:  # noqa: BLE001 - YAML errors
        raise RunError(f"{path / CONFIG_FILE} is not readable YAML: {str(e).splitlines()[0]}") from None
    if config.get("kind", "unet") not in KINDS:
        raise RunError(f"{path / CONFIG_FILE}: kind={config.get('kind')!r}; valid kinds: {', '.join(KINDS)}")
    return Run(path, config)


__all__ = ["RunError", "RunLock", "read_metrics", "truncate_metrics", "append_metrics", "save_checkpoint",
           "find_checkpoint", "read_state", "load_checkpoint", "Run", "open_run", "latent_decoder"]
