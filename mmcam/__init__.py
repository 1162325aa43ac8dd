"""mmcam: word-by-word Grad-CAM for image captioning and VQA models."""

from mmcam.cam import box_iou, localize, normalize, upsample
from mmcam.classify import ClassExplainer, ClassExplanation
from mmcam.errors import MMCamError
from mmcam.geometry import Geometry
from mmcam.layers import ChannelsLast, Conv, Custom, Tokens

__version__ = "0.1.0"


def load_model(name_or_path: str, **hf):  # noqa: ANN201 - returns one of the adapters
    """Load a shipped model by name, a model folder, or ``"hf:<hub id>"`` (keyword options
    ``prompt``, ``device``, ``dtype``, ``trust_remote_code`` for Hugging Face checkpoints);
    see :func:`mmcam.models.hub.load_model`."""
    from mmcam.models.hub import load_model as _load

    return _load(name_or_path, **hf)


def __getattr__(name: str):  # lazy: heavy modules load on first use
    if name in ("CaptionExplainer", "CaptionExplanation"):
        from mmcam import caption

        return getattr(caption, name)
    if name in ("VQAExplainer", "VQAExplanation"):
        from mmcam import vqa

        return getattr(vqa, name)
    raise AttributeError(f"module 'mmcam' has no attribute {name!r}")


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
