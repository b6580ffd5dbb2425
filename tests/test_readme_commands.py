"""Every `python -m ...` command in README.md parses: its module's `main(argv + ["--help"])` exits 0, so the module,
its sub-commands and the option names and values the README shows before `--help` exist (argparse reads them in
order and stops at `--help`)."""

import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MAKE_VARIABLES = {"$(SCALE)": "smoke", "$(EXECUTOR)": "local", "$(LATENT)": "128"}  # the Makefile's defaults


def readme_commands() -> list[list[str]]:
    """argv of each `python -m` command: code-block lines and inline code spans (which may wrap a line)."""
    text = README.read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        found += [line for line in block.splitlines() if line.strip().startswith("python -m ")]
    found += [span for span in re.findall(r"`(python -m [^`]+)`", text.replace("```", "\0\0\0"))]
    commands = []
    for command in found:
        for variable, value in MAKE_VARIABLES.items():
            command = command.replace(variable, value)
        commands.append(shlex.split(command.replace("\n", " "), comments=True))
    return commands


COMMANDS = readme_commands()
# modules whose parser still lacks prog="python -m ..." (owner to fix, then drop the entry: the mark is strict)
NO_PROG_YET: dict[str, str] = {}  # module -> why its usage line does not say `python -m ...` yet


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 20 and {"snapgen.weights", "evals.geneval", "ablations.sweep"} <= {c[2] for c in COMMANDS}


@pytest.mark.parametrize("argv", [
    pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=NO_PROG_YET[c[2]])) if c[2] in NO_PROG_YET else c
    for c in COMMANDS], ids=[" ".join(c[2:5]) for c in COMMANDS])
def test_readme_command_parses(argv):
    module = importlib.import_module(argv[2])
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        module.main(argv[3:] + ["--help"])
    assert exit_.value.code == 0, f"{' '.join(argv)} does not parse:\n{out.getvalue()[-600:]}"
    assert out.getvalue().startswith(f"usage: python -m {argv[2]}")  # the prog says how to run it
