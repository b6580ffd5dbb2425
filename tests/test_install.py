"""The installed environment imports what the harness needs, in fresh interpreters (as users and CI run it)."""

import json
import os
import subprocess
import sys

# The snippets run in one fresh interpreter (the torchvision repair acts at first import, so an import already done
# in this test process would prove nothing). lpips goes first so that torchvision is first imported through it.
IMPORT_SNIPPETS = {
    "lpips": "import lpips",
    "cleanfid": "from cleanfid import fid",
    "torchvision models": "import torchvision, torch; torchvision.models.squeezenet1_1(weights=None)(torch.zeros(1, 3, 64, 64))",
    "transformers CLIPModel": "from transformers import CLIPModel",
    "diffusers AutoencoderKL": "from diffusers import AutoencoderKL",
}
_IMPORT_CHECK = """
import json, traceback
failures = {}
for name, code in json.loads(SNIPPETS).items():
    try:
        exec(code, {})
    except BaseException:
        failures[name] = traceback.format_exc(limit=3)
print(json.dumps(failures))
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)


def test_imports_in_fresh_interpreter():
    result = _run(f"SNIPPETS = {json.dumps(IMPORT_SNIPPETS)!r}\n{_IMPORT_CHECK}")
    assert result.returncode == 0, result.stderr[-2000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert failures == {}, "\n".join(f"{name}:\n{trace}" for name, trace in failures.items())


def test_torchvision_compiled_ops_fail_loudly_not_silently():
    """Where torchvision's C++ ops are missing, calling one must raise, never return a wrong answer."""
    code = (
        "import torch, torchvision\n"
        "from torchvision.extension import _has_ops\n"
        "if _has_ops():\n"
        "    keep = torchvision.ops.nms(torch.tensor([[0., 0, 1, 1], [0, 0, 1, 1]]), torch.tensor([1., .5]), .5)\n"
        "    assert keep.tolist() == [0], keep\n"
        "    print('native')\n"
        "else:\n"
        "    for call in (lambda: torchvision.ops.nms(torch.rand(2, 4), torch.rand(2), .5),\n"
        "                 lambda: torch.ops.torchvision.nms(torch.rand(2, 4), torch.rand(2), .5)):\n"
        "        try:\n"
        "            call()\n"
        "        except (RuntimeError, NotImplementedError) as error:\n"
        "            assert 'torchvision' in str(error) or 'C++ ops' in str(error), error\n"
        "        else:\n"
        "            raise AssertionError('nms without kernels returned a value')\n"
        "    print('repaired')\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() in {"native", "repaired"}


def test_repair_hook_does_not_import_torch_at_startup():
    result = _run("import sys; print('torch' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_repair_pth_line_is_inert_without_its_module(tmp_path):
    """A .pth left behind after the module moved must not print errors at every interpreter start."""
    from snapgen import _torchvision_compat

    line = _torchvision_compat.pth_line(tmp_path / "gone.py")
    code = f"exec({line.strip()!r}); import sys; print(any(type(f).__name__ == 'TorchvisionImportHook' for f in sys.meta_path))"
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert result.stderr == ""


def test_repair_pth_line_installs_hook_without_importing_torch():
    from snapgen import _torchvision_compat

    line = _torchvision_compat.pth_line(_torchvision_compat.__file__)
    code = (
        f"exec({line.strip()!r}); exec({line.strip()!r}); import sys; "
        "hooks = [f for f in sys.meta_path if type(f).__name__ == 'TorchvisionImportHook']; "
        "print(len(hooks), 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 False"  # one hook even when site runs the line twice; torch not loaded


def test_repair_pth_line_can_be_switched_off():
    from snapgen import _torchvision_compat

    line = _torchvision_compat.pth_line(_torchvision_compat.__file__)
    code = f"exec({line.strip()!r}); import sys; print(any(type(f).__name__ == 'TorchvisionImportHook' for f in sys.meta_path))"
    env = {**os.environ, _torchvision_compat.DISABLE_ENV: "0"}
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, check=False, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
