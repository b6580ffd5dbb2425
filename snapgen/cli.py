"""The one error policy of every `python -m ...` entry point, in a module that imports only the standard library (so
light tools such as `evals.feature_net` run on a machine without diffusers)."""
from __future__ import annotations

import os
import sys
from typing import Any, Callable


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """Run a CLI's `main`; a bad input (ValueError, KeyError, FileNotFoundError, RunError, ...) prints one line on
    stderr and exits 2, unless `--debug` or SNAPGEN_DEBUG=1 asks for the traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("SNAPGEN_DEBUG") == "1"
    try:
        result = main(args)
        return int(result) if isinstance(result, int) else 0
    except (ValueError, KeyError, FileNotFoundError, FloatingPointError, RuntimeError, OSError) as e:
        if debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return 2
