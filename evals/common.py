"""What every T2I benchmark shares: the CLI, generation with resume, judge weights, tiny-random judges, MLflow.

A benchmark module (`evals.geneval`, `evals.dpg`, `evals.clipscore`, `evals.imagereward`) does, in this order:
1. check every file it will load at once (`require_files`: the judges', the prompt lists, a run's own text encoder
   and autoencoder; one error lists all that are missing), then load its judges (real weights through
   `snapgen.weights`, or `--tiny-random-judges`), before any image is generated (STYLE.md 9);
2. generate the benchmark's images from a checkpoint with `generate_jobs` (skips files that exist, so an interrupted
   generation resumes; every image is seeded by its global index and carries its generation record in a PNG text
   chunk, and `<out>/generation.json` holds the settings of the whole folder), or take a folder of images;
3. score them by the benchmark's own protocol, write the benchmark's own files, print a summary;
4. `log_metrics` into MLflow experiment `t2i-evals`, one run per checkpoint that accumulates every benchmark (found
   by run name and tag `target_key`, a hash of the resolved target path: same-named folders stay apart).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image, PngImagePlugin

EXPERIMENT = "t2i-evals"
GENERATION_RECORD = "generation.json"  # settings of a generated folder (resume refuses other settings)
PNG_TEXT_KEY = "snapgen"  # PNG tEXt chunk holding each image's generation record (JSON)
TINY_RANDOM = "tiny-random"
TINY_RANDOM_BANNER = (
    "!!! TINY-RANDOM JUDGES: every score below comes from randomly initialised tiny models (plumbing demo / tests); "
    "it measures NOTHING about the images !!!"
)


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------
def add_common_arguments(parser: argparse.ArgumentParser, default_per_prompt: int) -> None:
    """The arguments every benchmark takes (target, output, generation settings, judges, MLflow)."""
    parser.add_argument("target", help="run directory of `python -m snapgen.train` (generate, then score) or a "
                        "folder of images in this benchmark's layout (score only)")
    parser.add_argument("--out", help="output folder (default: evals_out/<benchmark>/<target name>)")
    parser.add_argument("--name", help="run name in MLflow (default: the checkpoint/folder name)")
    parser.add_argument("--per-prompt", type=int, default=default_per_prompt, help="images per prompt")
    parser.add_argument("--steps", type=int, default=28, help="sampler steps")
    parser.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale (1 = none)")
    parser.add_argument("--seed", type=int, default=0, help="image k of the benchmark is seeded seed + k")
    parser.add_argument("--batch", type=int, default=4, help="prompts per generation call")
    parser.add_argument("--sampler", default="euler", choices=["euler", "heun"])
    parser.add_argument("--raw", action="store_true", help="generate with the raw weights instead of the EMA")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--tiny-random-judges", action="store_true",
                        help="score with tiny randomly-initialised judge models (tests / plumbing demo only)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--debug", action="store_true", help="full tracebacks (also SNAPGEN_DEBUG=1)")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def require_images(folder: str | Path, recursive: bool = False) -> Path:
    """`folder`, if it holds at least one image (in subfolders too with `recursive`); else "no images in DIR"."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no images in {folder}: not a folder (nor a run directory of snapgen.train)")
    files = folder.rglob("*") if recursive else folder.iterdir()
    if not any(f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() for f in files):
        raise FileNotFoundError(f"no images in {folder} ({', '.join(IMAGE_SUFFIXES)}"
                                f"{', in subfolders too' if recursive else ''}): pass a run directory to generate them "
                                "or a folder of generated images")
    return folder


def require_files(args: argparse.Namespace, benchmark: str, what: str) -> None:
    """Every file this evaluation loads, checked at once before any work (`snapgen.weights.require`): the judges'
    and prompt lists (only the prompt lists with `--tiny-random-judges`) and, when generating, the run's own."""
    from snapgen import weights

    judged = weights.command_files(benchmark)
    names = list(weights.PROMPT_FILES[benchmark] if args.tiny_random_judges else judged)
    if is_run_dir(args.target):
        from snapgen.runs import open_run

        names += open_run(args.target).weight_entries()
    weights.require(names, what, command=benchmark if set(names) == set(judged) else None)


def default_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def is_run_dir(path: str | Path) -> bool:
    """A run directory of `snapgen.train` (or its `checkpoint/`)."""
    path = Path(path)
    if path.name == "checkpoint":
        path = path.parent
    return (path / "config.yaml").is_file() and (path / "checkpoint").is_dir()


def target_name(target: str | Path) -> str:
    """The checkpoint's name: the run directory's name (`runs/snapgen-t2i/checkpoint` -> `snapgen-t2i`)."""
    path = Path(target).resolve()
    return path.parent.name if path.name == "checkpoint" else path.name


def output_dir(args: argparse.Namespace, benchmark: str) -> Path:
    return Path(args.out) if args.out else Path("evals_out") / benchmark / target_name(args.target)


def weights_kind(tiny_random: bool) -> str:
    return TINY_RANDOM if tiny_random else "real"


# --------------------------------------------------------------------------------------------------------------------
# Generation (resumable, seeded by global index)
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides a generated image besides its prompt and index (recorded with every output)."""

    checkpoint: str    # absolute run directory
    ema: bool          # EMA weights (True) or raw
    steps: int         # sampler steps
    cfg_scale: float   # classifier-free guidance scale
    seed: int          # image with global index k uses the noise of (seed, k) (snapgen.sampling)
    batch: int         # prompts per generation call (does not change any image: seeds are per image)
    resolution: int    # pixels, from the run's config
    sampler: str       # 'euler' | 'heun'
    per_prompt: int    # images per prompt
    grid: str          # 'none' (one file per image) or 'RxC' (one file per prompt, images tiled row-major)


@dataclass(frozen=True)
class Job:
    """One prompt's images: `index` is the prompt's global index (image j has global index index*per_prompt + j).

    `paths` are the files it writes: `per_prompt` files (grid 'none') or one tiled file."""

    index: int
    prompt: str
    paths: tuple[Path, ...]

    def done(self) -> bool:
        return all(p.is_file() for p in self.paths)


class CheckpointGenerator:
    """A run directory's model, ready to generate benchmark images."""

    def __init__(self, run_dir: str | Path, *, steps: int, cfg_scale: float, seed: int, batch: int, sampler: str,
                 per_prompt: int, grid: str = "none", ema: bool = True, device: str | None = None):
        from snapgen.runs import open_run

        self.run = open_run(run_dir)
        self.device = default_device(device)
        self.net = self.run.net(ema=ema, device=self.device)
        run_dir = self.run.path.resolve()
        if grid != "none":
            rows, cols = (int(v) for v in grid.split("x"))
            if rows * cols != per_prompt:
                raise ValueError(f"grid {grid!r} holds {rows * cols} images but per_prompt={per_prompt}")
        self.settings = GenerationSettings(
            checkpoint=str(run_dir), ema=ema, steps=steps, cfg_scale=cfg_scale, seed=seed, batch=batch,
            resolution=self.run.resolution, sampler=sampler, per_prompt=per_prompt, grid=grid)

    def images(self, prompts: list[str], first_index: int) -> np.ndarray:
        """Images of consecutive prompts `first_index ...`: uint8 (len(prompts), per_prompt, R, R, 3)."""
        from snapgen import sampling

        s = self.settings
        return sampling.generate(self.run, prompts, s.per_prompt, steps=s.steps, guidance=s.cfg_scale, seed=s.seed,
                                 first_index=first_index * s.per_prompt, sampler=s.sampler, batch_size=s.batch,
                                 device=self.device, net=self.net)


def check_generation_record(out: Path, settings: GenerationSettings) -> None:
    """Write `<out>/generation.json`, or check that a resumed folder was made with the same settings."""
    record = out / GENERATION_RECORD
    new = asdict(settings)
    if record.is_file():
        old = json.loads(record.read_text())
        changed = {k: (old.get(k), v) for k, v in new.items() if k != "batch" and old.get(k) != v}
        if changed:
            raise ValueError(f"{out} holds images generated with other settings {changed} (old, new); "
                             "use another --out or delete the folder")
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(new, indent=1) + "\n")


def save_png(image: np.ndarray, path: Path, record: dict[str, Any]) -> None:
    """Save atomically (a killed run never leaves a truncated file that a resume would skip), record in tEXt."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_TEXT_KEY, json.dumps(record))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png.part", delete=False) as handle:
        Image.fromarray(image).save(handle, format="PNG", pnginfo=info)
    os.replace(handle.name, path)


def read_png_record(path: str | Path) -> dict[str, Any] | None:
    """The generation record `save_png` wrote into an image, or None for an image from elsewhere."""
    with Image.open(path) as image:
        text = getattr(image, "text", {}).get(PNG_TEXT_KEY)
    return json.loads(text) if text else None


def tile(images: np.ndarray, grid: str) -> np.ndarray:
    """(N, R, R, 3) -> one (rows*R, cols*R, 3) image, row-major."""
    rows, cols = (int(v) for v in grid.split("x"))
    n, r, _, c = images.shape
    return images.reshape(rows, cols, r, r, c).transpose(0, 2, 1, 3, 4).reshape(rows * r, cols * r, c)


def generate_jobs(generator: CheckpointGenerator, jobs: list[Job], out: Path, progress: bool = True) -> int:
    """Generate every job whose files are not all there yet; returns how many prompts were generated.

    Consecutive pending prompts go `settings.batch` at a time; seeds depend on global indices only, so a resumed run
    writes the same pixels as an uninterrupted one.
    """
    settings = generator.settings
    check_generation_record(out, settings)
    pending = [job for job in jobs if not job.done()]
    if progress:
        print(f"generation: {len(jobs) - len(pending)} of {len(jobs)} prompts already done, {len(pending)} to go "
              f"({settings.per_prompt} per prompt, {settings.steps} steps, cfg {settings.cfg_scale}, "
              f"{settings.resolution}px, seed {settings.seed})", flush=True)
    chunks: list[list[Job]] = []
    for job in pending:  # runs of consecutive indices, at most `batch` long
        if chunks and len(chunks[-1]) < settings.batch and chunks[-1][-1].index == job.index - 1:
            chunks[-1].append(job)
        else:
            chunks.append([job])
    for n, chunk in enumerate(chunks):
        images = generator.images([job.prompt for job in chunk], chunk[0].index)
        for job, per_job in zip(chunk, images):
            base = {**asdict(settings), "prompt": job.prompt, "prompt_index": job.index}
            first = settings.seed + job.index * settings.per_prompt
            if settings.grid == "none":
                for j, (image, path) in enumerate(zip(per_job, job.paths)):
                    if path.is_file():  # a prompt is generated whole, but finished files are never rewritten
                        continue
                    save_png(image, path, {**base, "image_index": j, "image_seed": first + j})
            else:
                save_png(tile(per_job, settings.grid), job.paths[0],
                         {**base, "image_seeds": list(range(first, first + settings.per_prompt))})
        if progress and (n + 1) % 10 == 0:
            print(f"  generated {n + 1}/{len(chunks)} batches", flush=True)
    return len(pending)


def make_generator(args: argparse.Namespace, grid: str = "none") -> CheckpointGenerator:
    return CheckpointGenerator(args.target, steps=args.steps, cfg_scale=args.cfg, seed=args.seed, batch=args.batch,
                               sampler=args.sampler, per_prompt=args.per_prompt, grid=grid, ema=not args.raw,
                               device=args.device)


def write_prompt_index(out: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """`<out>/prompts.jsonl`: {"file", "prompt"} per image, so a generated folder can be re-scored on its own."""
    path = out / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_prompt_index(folder: Path) -> list[dict[str, Any]]:
    path = folder / "prompts.jsonl"
    require_images(folder, recursive=True)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: an image folder to score needs prompts.jsonl with one "
                                '{"file": <name relative to the folder>, "prompt": <text>} line per image')
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise FileNotFoundError(f"no images in {folder}: {path} lists none")
    missing = [r["file"] for r in rows if not (folder / r["file"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images listed in {path} are missing, e.g. {missing[:3]}")
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Tiny-random judges (tests / plumbing): a character-level WordPiece tokenizer, so no vocab file is needed
# --------------------------------------------------------------------------------------------------------------------
TINY_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_tokenizer():
    """A BertTokenizerFast whose vocab is single characters (and their ## forms), plus BLIP's [DEC]/[ENC].

    Every text tokenizes (character by character), ids stay below ~150, so tiny models keep tiny embeddings."""
    from transformers import BertTokenizerFast

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()/&%+=")
    vocab = TINY_SPECIAL_TOKENS + chars + ["##" + c for c in chars]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tokenizer


# --------------------------------------------------------------------------------------------------------------------
# MLflow: one run per (checkpoint, weights kind) in `t2i-evals`, accumulating every benchmark
# --------------------------------------------------------------------------------------------------------------------
def target_key(target: str | Path) -> str:
    """Short hash of the target's resolved absolute path (a run's `checkpoint/` counts as the run): two folders of one
    name (`a/imgs`, `b/imgs`) are two MLflow runs, while every benchmark of one target lands in one run."""
    import hashlib

    path = Path(target).resolve()
    path = path.parent if path.name == "checkpoint" else path
    return hashlib.sha256(str(path).encode()).hexdigest()[:10]


def mlflow_run_name(name: str, tiny_random: bool) -> str:
    """The checkpoint's name; tiny-random scores get a suffix so `reports.tables table3` never reads them as ours."""
    return f"{name} [{TINY_RANDOM}]" if tiny_random else name


def log_metrics(name: str, benchmark: str, metrics: dict[str, float], *, judge: str, tiny_random: bool,
                target: str, settings: GenerationSettings | None, artifacts: Iterable[str | Path] = (),
                uri: str | None = None) -> str:
    """Log one benchmark's metrics into the checkpoint's run of experiment `t2i-evals`; returns the run id.

    Tags: `judge` (every benchmark's judge so far, `benchmark: model; ...`), `judge_<benchmark>`, `weights`
    (real | tiny-random), `checkpoint`, `git_sha`, `generation_<benchmark>` (the settings, JSON).
    """
    from snapgen.tracking import client, experiment_id, git_sha

    c = client(uri)
    exp_id = experiment_id(c, EXPERIMENT)
    run_name = mlflow_run_name(name, tiny_random)
    key = target_key(target)  # the run is found by name AND resolved target, so same-named folders never merge
    quoted = run_name.replace("'", "\\'")
    runs = c.search_runs([exp_id], filter_string=f"attributes.run_name = '{quoted}' and tags.target_key = '{key}'",
                         order_by=["attributes.start_time DESC"])
    run_id = (runs[0].info.run_id if runs
              else c.create_run(exp_id, run_name=run_name, tags={"target_key": key}).info.run_id)
    judges = dict(runs[0].data.tags) if runs else {}
    judges = {k.removeprefix("judge_"): v for k, v in judges.items() if k.startswith("judge_")}
    judges[benchmark] = judge
    tags = {"judge": "; ".join(f"{k}: {v}" for k, v in sorted(judges.items())), f"judge_{benchmark}": judge,
            "weights": weights_kind(tiny_random), "checkpoint": str(Path(target).resolve()), "git_sha": git_sha(), "target_key": key}
    if settings is not None:
        tags[f"generation_{benchmark}"] = json.dumps(asdict(settings))
    tags.update(generation_runtime_tags(settings))
    for key, value in tags.items():
        c.set_tag(run_id, key, value)
    for key, value in metrics.items():
        c.log_metric(run_id, key, float(value))
    for path in artifacts:
        if Path(path).is_file():
            c.log_artifact(run_id, str(path), artifact_path=benchmark)
    c.set_terminated(run_id, "FINISHED")
    return run_id


def generation_runtime_tags(settings: GenerationSettings | None) -> dict[str, str]:
    """`snapgen.tracking.RUNTIME_TAGS` (gpu, backend, dtype, batch) of the images this process generated: the
    sampler runs bf16 autocast on CUDA, fp32 on the CPU (`snapgen.sampling.generate`); a scored folder says so."""
    import platform

    import torch

    from snapgen.tracking import runtime_tags

    if settings is None:
        return runtime_tags(*["n/a (scored an image folder)"] * 4)
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})"
    return runtime_tags(gpu, "pytorch eager", "bf16 autocast" if cuda else "fp32", settings.batch)


def print_summary(title: str, lines: list[str], tiny_random: bool) -> None:
    bar = "=" * 100
    print(bar)
    if tiny_random:
        print(TINY_RANDOM_BANNER)
    print(title)
    for line in lines:
        print("  " + line)
    if tiny_random:
        print(TINY_RANDOM_BANNER)
    print(bar, flush=True)
