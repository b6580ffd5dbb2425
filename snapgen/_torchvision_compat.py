"""Repair for a torchvision whose compiled ``_C`` extension cannot load (e.g. a CUDA wheel on CPU-only torch).

Why this exists: torchvision 0.28's ``_meta_registrations.py`` calls ``torch.library.register_fake("torchvision::nms")``
(and ``qnms``) unconditionally. Those operators are *defined* by the C++ extension ``torchvision/_C.so``; when that
extension fails to load (here: a CUDA build of torchvision next to torch ``+cpu``), ``import torchvision`` dies with
``RuntimeError: operator torchvision::nms does not exist``. Everything that imports torchvision (lpips, clean-fid,
parts of transformers and diffusers) dies with it, although none of the models we use needs the C++ ops.

The repair defines the ``torchvision::*`` operator *schemas* (copied from torchvision's C++ ``TORCH_LIBRARY_FRAGMENT``
blocks, see ``OP_SCHEMAS``) with ``torch.library`` before torchvision's first import, and gives them CPU/CUDA kernels
that raise ``NotImplementedError``. torchvision's own ``_has_ops()`` stays ``False``, so ``torchvision.ops.nms`` &c.
still raise torchvision's "Couldn't load custom C++ ops" error; pure-PyTorch model code (inception_v3, squeezenet,
vgg, ...) imports and runs.

How it is switched on: ``make install`` runs ``python -m snapgen._torchvision_compat --install-if-broken``, which
writes ``snapgen_torchvision_repair.pth`` into site-packages ONLY if ``import torchvision`` fails in a fresh
subprocess. That ``.pth`` loads this file (by path, without importing torch or the ``snapgen`` package) and puts a
``sys.meta_path`` finder in place; the finder does nothing until ``torchvision`` is first imported, then removes
itself, checks that ``_C`` really fails to load, and only then defines the schemas. ``SNAPGEN_TORCHVISION_REPAIR=0``
in the environment switches the hook off for a process.

This module must stay import-light at top level (stdlib only): it is executed at interpreter start-up.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

PTH_FILENAME = "snapgen_torchvision_repair.pth"
MODULE_NAME_AT_STARTUP = "_snapgen_torchvision_compat"
DISABLE_ENV = "SNAPGEN_TORCHVISION_REPAIR"  # =0 turns the start-up hook off (the install step tests the bare import so)

# Exact schemas of torchvision 0.28's C++ ops (csrc/ops/*.cpp, TORCH_LIBRARY_FRAGMENT(torchvision, m)).
# Every op that torchvision's Python code looks up through torch.ops.torchvision is listed.
OP_SCHEMAS: tuple[str, ...] = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, bool aligned) -> Tensor",
    "qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, float rois_scale, "
    "int rois_zero_point, float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
    "bool aligned) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) "
    "-> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
    "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, "
    "SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor",
    "_cuda_version() -> int",
)

# The torch.library.Library holding our definitions. It must stay referenced for the whole process: a Library
# object that is garbage-collected deregisters everything it defined.
_LIBRARY = None
_REPAIRED = False


def _torchvision_package_dir() -> Path | None:
    """Locate the installed torchvision package without importing it (no finder of ours is consulted)."""
    for finder in sys.meta_path:
        if _is_hook(finder):
            continue
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        spec = find_spec("torchvision", None)
        if spec is not None and spec.submodule_search_locations:
            return Path(list(spec.submodule_search_locations)[0])
    return None


def _find_extension(package_dir: Path, stem: str) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = package_dir / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def torchvision_c_extension_loads() -> bool:
    """Return True if torchvision's ``_C`` extension loads with the installed torch (then no repair is needed).

    Loading it here is harmless in the working case: torchvision's own ``torch.ops.load_library`` of the same file
    later is a no-op for the dynamic loader.
    """
    package_dir = _torchvision_package_dir()
    if package_dir is None:
        return True  # no torchvision at all: nothing to repair; the import will fail with its normal error
    extension = _find_extension(package_dir, "_C")
    if extension is None:
        return False
    import torch

    try:
        torch.ops.load_library(str(extension))
    except (ImportError, OSError):
        return False
    return True


def _missing_kernel(op_name: str):
    def kernel(*args, **kwargs):
        raise NotImplementedError(
            f"torchvision::{op_name} has no kernel: torchvision's compiled extension (_C) cannot load with this "
            f"torch build, so snapgen's compatibility repair only defined the operator schema. Install a torchvision "
            f"wheel built for your torch (e.g. from the PyTorch CPU index) to use torchvision.ops."
        )

    return kernel


def define_missing_ops() -> list[str]:
    """Define every ``torchvision::*`` schema in ``OP_SCHEMAS`` that does not exist yet; return the names defined.

    Each op gets CPU and CUDA kernels that raise ``NotImplementedError`` naming the op. Idempotent.
    """
    global _LIBRARY
    import torch
    import torch.library

    defined = []
    for schema in OP_SCHEMAS:
        op_name = schema.split("(", 1)[0]
        if _op_exists(torch, op_name):
            continue
        if _LIBRARY is None:
            _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
        _LIBRARY.define(schema)
        for dispatch_key in ("CPU", "CUDA"):
            _LIBRARY.impl(op_name, _missing_kernel(op_name), dispatch_key)
        defined.append(op_name)
    return defined


def _op_exists(torch, op_name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{op_name}", "")
    except RuntimeError:
        return False
    return True


def repair() -> bool:
    """Define the missing torchvision op schemas if (and only if) torchvision's ``_C`` cannot load.

    Returns:
        True if schemas were defined in this call or an earlier one, False if torchvision works as installed.
    """
    global _REPAIRED
    if _REPAIRED:
        return True
    if torchvision_c_extension_loads():
        return False
    define_missing_ops()
    _REPAIRED = True
    return True


class TorchvisionImportHook:
    """``sys.meta_path`` finder that runs :func:`repair` just before torchvision's first import, then removes itself.

    It never finds a module itself (``find_spec`` returns None), so the normal import machinery imports torchvision.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        remove_import_hook()
        try:
            repair()
        except Exception as error:  # never turn a repair problem into an ImportError of unrelated code
            sys.stderr.write(f"snapgen torchvision repair failed ({type(error).__name__}: {error}); continuing\n")
        return None


def install_import_hook() -> None:
    """Put :class:`TorchvisionImportHook` first on ``sys.meta_path`` (no-op if torchvision is already imported)."""
    if "torchvision" in sys.modules:
        return
    if not any(_is_hook(finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, TorchvisionImportHook())


def remove_import_hook() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not _is_hook(finder)]


def _is_hook(finder) -> bool:
    # By name, not isinstance: this file may be loaded twice (by the .pth as a bare module and as
    # snapgen._torchvision_compat), giving two distinct classes.
    return type(finder).__name__ == TorchvisionImportHook.__name__


def pth_line(module_path: Path) -> str:
    """The single line written to the ``.pth`` file: load this file by path and install the hook.

    A ``.pth`` line starting with ``import`` is executed by ``site`` at start-up. It only uses the stdlib, does not
    import torch, and does nothing if this file has been removed. It runs once even when ``site`` processes
    site-packages twice (a venv's ``lib64 -> lib`` symlink makes that happen).
    """
    path = str(Path(module_path).resolve())
    return (
        f"import os, sys, importlib.util as u; p = {path!r}; "
        f"s = {MODULE_NAME_AT_STARTUP!r} not in sys.modules and os.environ.get({DISABLE_ENV!r}) != '0' "
        f"and os.path.isfile(p) and u.spec_from_file_location({MODULE_NAME_AT_STARTUP!r}, p); "
        f"m = s and u.module_from_spec(s); "
        f"s and (sys.modules.setdefault({MODULE_NAME_AT_STARTUP!r}, m), s.loader.exec_module(m), "
        f"m.install_import_hook())\n"
    )


def torchvision_import_works(python: str = sys.executable, with_repair: bool = True) -> tuple[bool, str]:
    """Try ``import torchvision`` in a fresh interpreter; return (ok, last line of its stderr).

    ``with_repair=False`` runs it with the start-up hook switched off, i.e. tests the torchvision as installed.
    """
    env = dict(os.environ)
    if with_repair:
        env.pop(DISABLE_ENV, None)
    else:
        env[DISABLE_ENV] = "0"
    result = subprocess.run(
        [python, "-c", "import torchvision"], capture_output=True, text=True, timeout=300, check=False, env=env
    )
    last_line = (result.stderr.strip().splitlines() or [""])[-1]
    return result.returncode == 0, last_line


def install_pth_if_broken(site_packages: Path | None = None) -> str:
    """Write the ``.pth`` into site-packages only if ``import torchvision`` fails; return what was done (one line).

    Rerunning it re-tests the bare install (hook switched off by ``SNAPGEN_TORCHVISION_REPAIR=0``), so a torchvision
    that has since been fixed loses the repair; the ``.pth`` is replaced atomically, so processes starting meanwhile
    never see it missing.
    """
    site_packages = Path(site_packages or sysconfig.get_paths()["purelib"])
    pth_path = site_packages / PTH_FILENAME
    ok, error_line = torchvision_import_works(with_repair=False)
    if ok:
        pth_path.unlink(missing_ok=True)
        return "torchvision imports fine: no repair installed"
    staged = pth_path.with_suffix(".pth.tmp")
    staged.write_text(pth_line(Path(__file__)))
    staged.replace(pth_path)
    ok_after, error_after = torchvision_import_works(with_repair=True)
    if not ok_after:
        pth_path.unlink()
        raise RuntimeError(
            f"`import torchvision` fails ({error_line}) and the snapgen repair did not fix it ({error_after}); "
            f"reinstall a torchvision that matches torch"
        )
    return f"torchvision import was broken ({error_line}); repair installed at {pth_path}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m snapgen._torchvision_compat", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--install-if-broken",
        action="store_true",
        help="write the start-up .pth into this interpreter's site-packages if `import torchvision` fails",
    )
    parser.add_argument("--site-packages", type=Path, default=None, help="override the target site-packages dir")
    args = parser.parse_args(argv)
    if args.install_if_broken:
        print(install_pth_if_broken(args.site_packages))
        return 0
    ok, error_line = torchvision_import_works(with_repair=True)
    installed = (Path(args.site_packages or sysconfig.get_paths()["purelib"]) / PTH_FILENAME).exists()
    print(f"import torchvision: {'ok' if ok else 'FAILS: ' + error_line}; repair .pth installed: {installed}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
