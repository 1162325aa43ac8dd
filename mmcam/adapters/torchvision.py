"""torchvision classifiers by name, with each family's default explained layer."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF

from mmcam.errors import MMCamError
from mmcam.models.hub import first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_layer(name: str, model: nn.Module) -> str:
    """The explained layer of a family: the output of its last conv block.

    ResNet/ResNeXt/Wide-ResNet: ``layer4``; VGG/AlexNet: the last ``nn.ReLU`` in
    ``features`` (rectified last conv layer, as in the paper); DenseNet/MobileNet/
    EfficientNet/ConvNeXt/SqueezeNet etc.: ``features``.
    """
    if name.startswith(("resnet", "resnext", "wide_resnet")):
        return "layer4"
    if name.startswith(("vgg", "alexnet")):
        relus = [n for n, m in model.named_modules() if n.startswith("features.")
                 and isinstance(m, nn.ReLU)]
        return relus[-1]
    if hasattr(model, "features"):
        return "features"
    raise MMCamError(f"no default layer known for {name!r}: pass --layer NAME")


@dataclass
class TorchvisionClassifier:
    """A torchvision classifier with ImageNet preprocessing (resize only, no crop)."""

    model: nn.Module
    layer: str
    labels: list[str]
    size: int = 224
    name: str = ""
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    std: tuple[float, float, float] = field(default=IMAGENET_STD)

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """Resize to ``size x size`` (bilinear), scale to [0,1], normalize with mean/std."""
        im = image.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        x = TF.to_tensor(im)
        return TF.normalize(x, self.mean, self.std).unsqueeze(0)


def build_classifier(
    name: str,
    weights: str | os.PathLike | None = None,
    layer: str | None = None,
    num_classes: int | None = None,
) -> TorchvisionClassifier:
    """Build torchvision classifier ``name`` (e.g. ``resnet50``, ``vgg16``).

    ``weights``: None (random init), ``"DEFAULT"`` or a weights enum name such as
    ``"IMAGENET1K_V1"`` (torchvision's download, needs the hub cache), or a path to a
    ``.pth``/``.safetensors`` state dict. The model is returned in eval mode.
    """
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = [a for a in available if a.startswith(name[:3])][:6]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise MMCamError(f"unknown torchvision model {name!r}{hint}")
    labels: list[str] | None = None
    kwargs: dict = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    path = Path(weights) if weights is not None and str(weights) not in ("", "None") else None
    if path is not None and (path.suffix in (".pth", ".pt", ".safetensors") or path.exists()):
        if not path.exists():
            raise MMCamError(f"weights file not found: {path}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = torchvision.models.get_model(name, weights=None, **kwargs)
        state = _load_state_dict(path)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise MMCamError(f"weights {path} do not fit {name}: {first}") from None
    elif path is not None:
        try:
            enum = torchvision.models.get_model_weights(name)
            w = enum.DEFAULT if str(weights) == "DEFAULT" else enum[str(weights)]
        except KeyError:
            raise MMCamError(f"unknown weights {weights!r} for {name}") from None
        said = io.StringIO()  # torch.hub's "Downloading: ..." line: shown only on success
        try:
            with contextlib.redirect_stderr(said):
                model = torchvision.models.get_model(name, weights=w, **kwargs)
        except Exception as e:  # noqa: BLE001 - download/cache errors vary by version
            raise MMCamError(f"cannot get weights {w} (no download here?): give a local file "
                             f"instead ({first_line(e)})") from None
        sys.stderr.write(said.getvalue())
        labels = list(w.meta.get("categories", [])) or None
    else:
        with warnings.catch_warnings():  # googlenet/inception: a FutureWarning on random init
            warnings.simplefilter("ignore", FutureWarning)
            model = torchvision.models.get_model(name, weights=None, **kwargs)
    model.eval()
    n_out = _num_outputs(model)
    if labels is None:
        labels = [f"class {i}" for i in range(n_out)]
    chosen = default_layer(name, model) if layer is None else layer
    return TorchvisionClassifier(model=model, layer=chosen, labels=labels, name=name)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise MMCamError(f"cannot read weights file {path}: {first_line(e)}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def _num_outputs(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels
