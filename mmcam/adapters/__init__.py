"""Adapters: the only code that knows a model family's insides."""

from mmcam.adapters.base import (
    CaptionAdapter,
    ClassifierAdapter,
    SplitCaptionAdapter,
    VQAAdapter,
)

__all__ = ["CaptionAdapter", "ClassifierAdapter", "SplitCaptionAdapter", "VQAAdapter"]
