"""TAESD3 in diffusers' AutoencoderTiny: strict key mapping and a natural-image reconstruction.

The natural image is matplotlib's bundled `grace_hopper.jpg` (a 512x600 photo, center-cropped and resized to
256x256): sharp, unlike CIFAR-10 upsampled, so the PSNR threshold means something. MANIFEST.md reports 32.0 dB on
another 256x256 photo; here it is about 28.6 dB.
"""

import numpy as np
import pytest
import torch

from snapgen import weights
from snapgen.models.taesd import load_taesd, map_taesd_keys


def natural_image(side: int = 256) -> torch.Tensor:
    from matplotlib import cbook
    from PIL import Image

    img = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    s = min(img.size)
    left, top = (img.width - s) // 2, (img.height - s) // 2
    img = img.crop((left, top, left + s, top + s)).resize((side, side), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_key_mapping():
    mapped = map_taesd_keys({"1.weight": torch.zeros(1), "3.conv.0.bias": torch.zeros(1)}, "decoder")
    assert set(mapped) == {"decoder.layers.0.weight", "decoder.layers.2.conv.0.bias"}
    assert set(map_taesd_keys({"0.weight": torch.zeros(1)}, "encoder")) == {"encoder.layers.0.weight"}
    with pytest.raises(KeyError, match="unexpected key '0.weight'"):
        map_taesd_keys({"0.weight": torch.zeros(1)}, "decoder")  # index 0 of the decoder is the Clamp


def test_taesd3_loads_strictly_and_reconstructs_a_photo():
    from safetensors.torch import load_file

    model = load_taesd("taesd3")
    decoder_file = load_file(weights.find("taesd3_decoder"))
    assert len(decoder_file) == 67
    assert torch.equal(model.decoder.layers[0].weight, decoder_file["1.weight"].float())
    x = natural_image()
    with torch.no_grad():
        latent = model.encode(x).latents
        y = model.decode(latent).sample
    assert latent.shape == (1, 16, 32, 32)
    assert 0.7 < latent.std() < 1.4  # the diffusion model's normalised latent space
    mse = ((y.clamp(-1, 1) - x) / 2).pow(2).mean()
    assert 10 * torch.log10(1 / mse) > 25.0


def test_missing_weights_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPGEN_ASSETS", str(tmp_path / "a"))
    monkeypatch.setenv("SNAPGEN_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(weights.WeightsNotFoundError, match="taesd3_decoder"):
        load_taesd("taesd3", parts=("decoder",))
    with pytest.raises(ValueError, match="valid: \\['taesd3', 'taesdxl'\\]"):
        load_taesd("taesd9")
