"""Core ML export of a tiny UNet and a tiny decoder on Linux: the packages exist with the expected I/O names and shapes."""

import json

import pytest
import torch

pytest.importorskip("coremltools")

from snapgen.export import coreml  # noqa: E402
from snapgen.models import EfficientUNet  # noqa: E402
from snapgen.models.decoder import TinyDecoder  # noqa: E402
from snapgen.registry import resolve, shrink  # noqa: E402


def test_tiny_unet_and_decoder_convert(tmp_path):
    torch.manual_seed(0)
    unet = EfficientUNet.from_unet_config(shrink(resolve("snapgen-t2i"), base_width=16, head_dim=8, context_dim=24))
    decoder = TinyDecoder(block_out_channels=(16, 16, 8, 8), layers_per_block=(1, 1, 1, 0), norm_num_groups=4)
    report = coreml.export((unet, decoder, 10), tmp_path, latent=8, batch=2)

    u = coreml.package_io(tmp_path / "unet.mlpackage")  # read back from the saved package's spec
    assert u["inputs"] == {"sample": [2, 16, 8, 8], "timestep": [2], "encoder_hidden_states": [2, 10, 24],
                           "encoder_attention_mask": [2, 10]}
    assert u["outputs"] == {"velocity": [2, 16, 8, 8]}
    d = coreml.package_io(tmp_path / "decoder.mlpackage")
    assert d["inputs"] == {"latent": [2, 16, 8, 8]} and d["outputs"] == {"image": [2, 3, 64, 64]}

    saved = json.loads((tmp_path / "export_report.json").read_text())
    assert set(saved["packages"]) == {"unet", "decoder"}
    if not coreml.coreml_runtime_available():
        assert saved["packages"]["unet"]["max_abs_err_vs_torch"] is None
        assert coreml.benchmark(tmp_path / "unet.mlpackage", {})["available"] is False
    else:  # macOS: the numerical check ran (fp16 compute)
        assert report["packages"]["unet"]["max_abs_err_vs_torch"] < 0.1


def test_latencies_logged_through_the_tracking_adapter(mlflow_uri):
    from snapgen import tracking

    report = {"device": "Mac15,3", "latent": 128, "precision": "fp16", "packages": {
        "unet": {"benchmark": {"available": True, "latency_ms_CPU_AND_NE": 120.5}},
        "decoder": {"benchmark": None}}}
    run_id = coreml.log_to_mlflow(report)
    run = tracking.client(mlflow_uri).get_run(run_id)
    assert run.info.run_name == "coreml" and run.data.metrics == {"coreml_unet_latency_ms_CPU_AND_NE": 120.5}
    assert run.data.tags["latency_backend"] == "coreml" and run.data.params == {"latent": "128", "precision": "fp16"}
