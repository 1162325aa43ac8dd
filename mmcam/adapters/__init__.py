"""Adapters: the only code that knows a model family's insides."""

from mmcam.adapters.base import CaptionAdapter, ClassifierAdapter, VQAAdapter

__all__ = ["CaptionAdapter", "ClassifierAdapter", "VQAAdapter"]
