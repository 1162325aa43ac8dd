"""mmcam: word-by-word Grad-CAM for image captioning and VQA models.

Every public name is imported on first use (PEP 562), so ``import mmcam`` and ``mmcam --help``
load neither torch nor anything else heavy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mmcam.errors import MMCamError

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "box_iou": "mmcam.cam",
    "localize": "mmcam.cam",
    "normalize": "mmcam.cam",
    "upsample": "mmcam.cam",
    "CaptionExplainer": "mmcam.caption",
    "CaptionExplanation": "mmcam.caption",
    "ClassExplainer": "mmcam.classify",
    "ClassExplanation": "mmcam.classify",
    "VQAExplainer": "mmcam.vqa",
    "VQAExplanation": "mmcam.vqa",
    "Geometry": "mmcam.geometry",
    "ChannelsLast": "mmcam.layers",
    "Conv": "mmcam.layers",
    "Custom": "mmcam.layers",
    "Tokens": "mmcam.layers",
}

if TYPE_CHECKING:  # what static tools (type checkers, the API reference) see
    from mmcam.cam import box_iou, localize, normalize, upsample
    from mmcam.caption import CaptionExplainer, CaptionExplanation
    from mmcam.classify import ClassExplainer, ClassExplanation
    from mmcam.geometry import Geometry
    from mmcam.layers import ChannelsLast, Conv, Custom, Tokens
    from mmcam.vqa import VQAExplainer, VQAExplanation


def load_model(name_or_path: str, **hf: Any) -> Any:
    """Load a shipped model by name, a model folder, or ``"hf:<hub id>"`` (keyword options
    ``prompt``, ``device``, ``dtype``, ``trust_remote_code`` for Hugging Face checkpoints);
    see :func:`mmcam.models.hub.load_model`."""
    from mmcam.models.hub import load_model as _load

    return _load(name_or_path, **hf)


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and keep the name here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mmcam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CaptionExplainer",
    "CaptionExplanation",
    "ChannelsLast",
    "ClassExplainer",
    "ClassExplanation",
    "Conv",
    "Custom",
    "Geometry",
    "MMCamError",
    "Tokens",
    "VQAExplainer",
    "VQAExplanation",
    "box_iou",
    "load_model",
    "localize",
    "normalize",
    "upsample",
]
