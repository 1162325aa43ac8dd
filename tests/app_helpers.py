"""Shared by the app tests: which models to serve, a toy classifier, a free port, the launch."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF
from toys import ToyCaptioner, ToyVQA

SHIPPED = ("shapes-captioner", "shapes-vqa", "shapes-classifier")


def shipped_models_present() -> bool:
    """True once all three shipped models can be loaded by name (``models/`` or
    ``$MMCAM_MODELS``, as the app finds them)."""
    from mmcam.errors import MMCamError
    from mmcam.models.hub import WEIGHTS, resolve

    try:
        return all((resolve(n) / WEIGHTS).is_file() for n in SHIPPED)
    except MMCamError:
        return False


class ToyClassifier:
    """A random-weight 4-class CNN with the classifier adapter's attributes."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.model = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
            nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
        )
        for p in self.model.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.model.eval()
        self.layer = "3"
        self.labels = ["circle", "square", "star", "cross"]

    def prepare(self, image: Image.Image) -> torch.Tensor:
        return TF.to_tensor(image.convert("RGB").resize((32, 32))).unsqueeze(0)


def adapters() -> dict[str, Any]:
    """The shipped models if present, else the toys: {"captioner", "vqa", "classifier"}."""
    if shipped_models_present():
        from mmcam import load_model

        return {k: load_model(f"shapes-{k}") for k in ("captioner", "vqa", "classifier")}
    return {"captioner": ToyCaptioner(), "vqa": ToyVQA(), "classifier": ToyClassifier()}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(models: dict[str, Any], app: Any = None, **build: Any):
    """The app at a free 127.0.0.1 port; yields (url, {dropdown elem_id: model name}, app).

    With the shipped models present the app loads them itself (the real start-up path);
    otherwise it is given the toys in ``models``. ``build``: options of ``build_app``.
    """
    from mmcam.app import build_app, launch

    if app is not None:
        pass
    elif shipped_models_present():
        app = build_app(**build)
    else:
        app = build_app(models["captioner"], models["vqa"], models["classifier"], **build)
    port = free_port()
    threads = torch.get_num_threads()
    launch(port=port, app=app, block=False, threads=None)
    try:
        names = {}
        for block in app.blocks.values():
            elem = getattr(block, "elem_id", None)
            if elem in ("cap_model", "vqa_model", "cls_model"):
                names[elem] = block.value
        yield f"http://127.0.0.1:{port}/", names, app
    finally:
        app.close()
        torch.set_num_threads(threads)
