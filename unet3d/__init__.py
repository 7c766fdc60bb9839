"""A parameterized 3D-UNet for brain-tumour MRI and the whole path to train it (no search here)."""

from __future__ import annotations

from unet3d import runtime  # noqa: F401  (sets TensorFlow's fast CPU path before TF loads)

__all__ = ["__version__"]
__version__ = "0.1.0"
