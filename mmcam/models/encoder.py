"""The image side shared by the reference models: preprocessing and a VGG-style conv stack."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from mmcam.images import ImageInput, load_image

IMAGE_SIZE = 128
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
CHANNELS = (16, 32, 64, 64, 96)
STRIDES = (2, 2, 2, 1, 1)


def prepare_image(
    image: ImageInput,
    size: int = IMAGE_SIZE,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> torch.Tensor:
    """RGB image -> pixels (1,3,size,size) = (bilinear_resize(image) / 255 - mean) / std."""
    im = load_image(image)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return pixels_from_uint8(
        torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None], mean, std
    )


def pixels_from_uint8(
    images: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD
) -> torch.Tensor:
    """uint8 (B,3,H,W) -> float pixels (x / 255 - mean) / std."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() / 255.0 - m) / s


class ConvEncoder(nn.Sequential):
    """VGG-style stack of [Conv3x3 (no bias) -> BatchNorm -> ReLU] blocks.

    With the defaults a (B,3,128,128) input gives (B,96,16,16); the receptive field of one
    output cell is 47 px. The output is the last block's ReLU: the layer that is explained.
    Module names: block k is ``3k`` (conv), ``3k+1`` (BN), ``3k+2`` (ReLU).
    """

    def __init__(
        self, channels: Sequence[int] = CHANNELS, strides: Sequence[int] = STRIDES
    ) -> None:
        layers: list[nn.Module] = []
        c_in = 3
        for c, s in zip(channels, strides):
            layers += [
                nn.Conv2d(c_in, c, 3, stride=s, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
            ]
            c_in = c
        super().__init__(*layers)
        self.out_channels = c_in

    @property
    def last_layer(self) -> str:
        """Name of the explained module (the last ReLU) inside this Sequential."""
        return str(len(self) - 1)
