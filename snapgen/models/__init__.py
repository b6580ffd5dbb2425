"""Models: the efficient UNet (every Fig. 2 variant), its blocks and attention."""

from .unet import EfficientUNet

__all__ = ["EfficientUNet"]
