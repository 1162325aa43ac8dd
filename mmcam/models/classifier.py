"""shapes-classifier: a plain CNN naming the shape of the one large object in a scene.

Task: scenes from ``mmcam.scenes.generate(n, seed, one_large=True)`` hold exactly one large
object and 0-3 small distractors; the label is the large object's shape (6 classes, softmax).
    logits = W . mean_{cells}(features(pixels)) + b      (global average pooling, as in CAM)
The explained layer is ``features.14``, the last conv block's ReLU output (B,96,16,16).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch import nn

from mmcam.models.encoder import CHANNELS, STRIDES, ConvEncoder, prepare_image


class ShapeClassifier(nn.Module):
    """pixels (B,3,128,128) -> logits (B, n_classes)."""

    def __init__(
        self,
        n_classes: int,
        channels: tuple[int, ...] = CHANNELS,
        strides: tuple[int, ...] = STRIDES,
    ) -> None:
        super().__init__()
        self.features = ConvEncoder(channels, strides)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.features.out_channels, n_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(pixels)).flatten(1))


class ClassifierModelAdapter:
    """:class:`mmcam.adapters.base.ClassifierAdapter` for :class:`ShapeClassifier`."""

    def __init__(self, model: ShapeClassifier, labels: list[str], config: dict[str, Any]) -> None:
        self.model = model
        self.labels = list(labels)
        self.config = config
        self.layer = "features." + model.features.last_layer

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> (1,3,128,128): bilinear resize, then (x/255 - mean) / std."""
        return prepare_image(
            image, self.config["image_size"], self.config["mean"], self.config["std"]
        )


def build(config: dict[str, Any]) -> ShapeClassifier:
    """An untrained :class:`ShapeClassifier` from ``config``."""
    a = config["arch"]
    return ShapeClassifier(
        len(config["labels"]), channels=tuple(a["channels"]), strides=tuple(a["strides"])
    )
