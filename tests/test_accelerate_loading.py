"""With `accelerate` installed, diffusers' `from_pretrained` builds our models on the meta device first
(low_cpu_mem_usage): every ModelMixin we save (EfficientUNet in every walk step, TinyDecoder in every registered arch)
must still come back bitwise (parameters, buffers and outputs), from save_pretrained and from a run's checkpoint, and
diffusers' "accelerate was not found" warning must not print."""

import logging

import pytest
import torch

from snapgen import runs
from snapgen.models import EfficientUNet
from snapgen.models.decoder import DECODER_ARCHS, TinyDecoder, decoder_config
from snapgen.registry import walk

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def diffusers_log():
    """Every record diffusers logs while the test runs (its loggers do not propagate to the root)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _assert_bitwise(a: torch.nn.Module, b: torch.nn.Module, inputs) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    buffers_a, buffers_b = dict(a.named_buffers()), dict(b.named_buffers())  # non-persistent ones too (RoPE)
    assert buffers_a.keys() == buffers_b.keys()
    assert all(not t.is_meta for t in [*b.parameters(), *b.buffers()])
    for key in buffers_a:
        assert torch.equal(buffers_a[key], buffers_b[key]), key
    with torch.no_grad():
        out_a, out_b = a.eval()(*inputs) if isinstance(inputs, tuple) else a.eval()(**inputs), \
            b.eval()(*inputs) if isinstance(inputs, tuple) else b.eval()(**inputs)
    out_a, out_b = (getattr(o, "sample", o) for o in (out_a, out_b))
    assert torch.equal(out_a, out_b)


def test_accelerate_is_installed():
    from diffusers.utils import is_accelerate_available

    assert is_accelerate_available()  # pyproject.toml's dependency; without it the warning below comes back


@pytest.mark.parametrize("step", walk("fig3", shrink_to_tiny=True), ids=lambda s: s.name)
def test_unet_save_load_round_trip_is_bitwise(step, tmp_path, diffusers_log):
    torch.manual_seed(0)
    net = EfficientUNet.from_unet_config(step.config)
    net.save_pretrained(tmp_path / "unet")
    loaded = EfficientUNet.from_pretrained(tmp_path / "unet")
    _assert_bitwise(net, loaded, net.dummy_inputs(batch=1, latent=(8, 8)))
    assert not [r for r in diffusers_log if "accelerate" in r.getMessage()]


@pytest.mark.parametrize("arch", sorted(DECODER_ARCHS))
def test_decoder_save_load_round_trip_is_bitwise(arch, tmp_path, diffusers_log):
    torch.manual_seed(0)
    decoder = TinyDecoder(**decoder_config(arch))
    decoder.save_pretrained(tmp_path / "decoder")
    loaded = TinyDecoder.from_pretrained(tmp_path / "decoder")
    _assert_bitwise(decoder, loaded, (torch.randn(1, decoder.latent_channels, 4, 4),))
    assert not [r for r in diffusers_log if "accelerate" in r.getMessage()]


def test_checkpoint_round_trip_is_bitwise(tmp_path, diffusers_log):
    """`runs.save_checkpoint` -> `runs.load_checkpoint` into freshly initialised models (what resume does)."""
    steps = walk("fig3", shrink_to_tiny=True)
    torch.manual_seed(1)
    saved = {"unet": EfficientUNet.from_unet_config(steps[-1].config), "decoder": TinyDecoder(**decoder_config("tiny"))}
    ckpt = runs.save_checkpoint(tmp_path, saved, {"run_hash": "h", "step": 3})
    torch.manual_seed(2)
    fresh = {"unet": EfficientUNet.from_unet_config(steps[-1].config), "decoder": TinyDecoder(**decoder_config("tiny"))}
    assert runs.load_checkpoint(ckpt, fresh, "h")["step"] == 3
    _assert_bitwise(saved["unet"], fresh["unet"], saved["unet"].dummy_inputs(batch=1, latent=(8, 8)))
    _assert_bitwise(saved["decoder"], fresh["decoder"], (torch.randn(1, 16, 4, 4),))
    assert not [r for r in diffusers_log if "accelerate" in r.getMessage()]
