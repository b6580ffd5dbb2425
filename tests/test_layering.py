"""Layers point down only (snapgen < evals < ablations < reports < benchmarks), and only snapgen/tracking.py writes
MLflow. Every import counts: top-level and inside functions, `import x` and `from x import y`, relative ones resolved
against their package."""

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RANKS = {"snapgen": 0, "evals": 1, "ablations": 2, "reports": 3, "benchmarks": 4}
# The models are the library's lowest layer: besides each other they use only the config dataclasses and the weights
# finder (profiling, tracking and training sit above them).
MODELS = "snapgen.models"
MODELS_MAY_IMPORT = (MODELS, "snapgen.config", "snapgen.weights")
MLFLOW_WRITER = "snapgen/tracking.py"
MLFLOW_READERS = "reports"  # may read MLflow directly


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    """`snapgen/models/unet.py` -> `snapgen.models.unet`; a package's `__init__.py` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = REPO_ROOT) -> list[tuple[int, str]]:
    """(line, absolute name) of every import in `path` at any depth. `from a import b` gives `a.b` (b may be a module
    or a name in a: either way the import depends on a); relative imports are resolved against the package."""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            found += [(node.lineno, base if alias.name == "*" else f"{base}.{alias.name}") for alias in node.names]
    return found


def sources() -> list[Path]:
    return sorted(p for layer in RANKS for p in (REPO_ROOT / layer).rglob("*.py"))


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO_ROOT)}:{line}"


def test_imports_resolve_relative_and_nested(tmp_path):
    path = tmp_path / "snapgen" / "models" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text("from ..config import A\nfrom . import b\n\ndef f():\n    import mlflow.tracking\n"
                    "    from reports.tables import render\n")
    assert [name for _, name in imports(path, tmp_path)] == [
        "snapgen.config.A", "snapgen.models.b", "mlflow.tracking", "reports.tables.render"]


def test_layers_import_only_downwards():
    upward = []
    for path in sources():
        layer = path.relative_to(REPO_ROOT).parts[0]
        for line, name in imports(path):
            top = name.split(".")[0]
            if RANKS.get(top, -1) > RANKS[layer]:
                upward.append(f"{_where(path, line)}: {layer} imports {name} ({top} is above it)")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_models_import_only_config_and_weights():
    upward = []
    for path in sorted((REPO_ROOT / "snapgen" / "models").rglob("*.py")):
        for line, name in imports(path):
            if name.split(".")[0] == "snapgen" and not any(name == m or name.startswith(m + ".")
                                                           for m in MODELS_MAY_IMPORT):
                upward.append(f"{_where(path, line)}: imports {name}")
    assert not upward, f"{MODELS} may import only {MODELS_MAY_IMPORT}:\n" + "\n".join(upward)


def test_only_the_tracking_adapter_imports_mlflow():
    writers = []
    for path in sources():
        rel = path.relative_to(REPO_ROOT)
        if rel.as_posix() == MLFLOW_WRITER or rel.parts[0] == MLFLOW_READERS:
            continue
        writers += [f"{_where(path, line)}: imports {name}" for line, name in imports(path)
                    if name.split(".")[0] == "mlflow"]
    assert not writers, f"MLflow is written through {MLFLOW_WRITER} only:\n" + "\n".join(writers)
