"""What every training CLI shares (`snapgen.train`, `snapgen.train_decoder`, `snapgen.step_distill`): `--set
KEY=VALUE` parsing, `--dry-run`, and one clear line for a bad option instead of a traceback."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any, Sequence

from ..cli import run_cli  # noqa: F401  (re-exported: the CLIs import it from here)


def parse_value(text: str) -> Any:
    """`--set` values: YAML scalars and lists, with numbers YAML 1.1 leaves as strings (`3e-4`) made floats."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_overrides(items: Sequence[str], option: str = "--set") -> dict[str, Any]:
    """`["lr=3e-4", "betas=[0.9,0.99]"]` -> `{"lr": 0.0003, "betas": [0.9, 0.99]}`."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} {item!r}: expected KEY=VALUE")
        out[key.strip()] = parse_value(value)
    return out


def add_run_arguments(parser: argparse.ArgumentParser, scales: Sequence[str]) -> None:
    parser.add_argument("--scale", default="smoke", choices=sorted(scales))
    parser.add_argument("--out", default=None, help="run directory; rerun the same command to resume")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override any training option")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved options and exit")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--debug", action="store_true", help="full tracebacks (also SNAPGEN_DEBUG=1)")


def print_options(options: Any, **extra: Any) -> None:
    print(json.dumps({"options": dataclasses.asdict(options), **extra}, indent=2, default=str))


