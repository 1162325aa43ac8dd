"""Grad-CAM for CNN classifiers: :class:`ClassExplainer` and :class:`ClassExplanation`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from mmcam.cam import get_method, localize, normalize, upsample
from mmcam.capture import capture, eval_mode
from mmcam.errors import MMCamError
from mmcam.guided import guided_backprop, guided_gradcam
from mmcam.images import ImageInput, load_image
from mmcam.viz import draw_boxes, guided_image, overlay


def layer_gradients(
    model: nn.Module,
    layer: str | nn.Module,
    pixels: torch.Tensor,
    targets: torch.Tensor | None = None,
    top: int = 1,
    score: str = "logit",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass; activations and gradients of class scores at ``layer``.

    pixels (B,3,H,W); targets (B,k) class ids, or None for the top-``top`` classes.
    ``score="logit"`` explains the pre-softmax score y_c, ``"logprob"`` log softmax(y)_c.
    Returns (logits (B,K), targets (B,k), A (B,C,h,w), G (B,k,C,h,w)).
    The caller chooses train/eval mode; the model and its parameters' ``.grad`` are untouched.
    """
    if score not in ("logit", "logprob"):
        raise MMCamError(f"unknown score {score!r}: use 'logit' or 'logprob'")
    with capture(model, layer) as cap:
        logits = model(pixels)
        A = cap.get()
        if logits.dim() != 2:
            shape = tuple(logits.shape)
            raise MMCamError(f"the model must output (B, classes) scores, got {shape}")
        y = logits if score == "logit" else torch.log_softmax(logits, dim=1)
        if targets is None:
            targets = y.topk(min(top, y.shape[1]), dim=1).indices
        targets = torch.as_tensor(targets, dtype=torch.long).reshape(pixels.shape[0], -1)
        if targets.numel() and (targets.min() < 0 or targets.max() >= y.shape[1]):
            raise MMCamError(f"class id out of range: the model has {y.shape[1]} classes")
        k = targets.shape[1]
        grads = []
        for j in range(k):
            yj = y.gather(1, targets[:, j : j + 1]).sum()
            (g,) = torch.autograd.grad(yj, A, retain_graph=j < k - 1)
            grads.append(g)
    return logits.detach(), targets, A.detach(), torch.stack(grads, dim=1)


@dataclass(frozen=True)
class ClassExplanation:
    """Maps for the top (or chosen) classes of one image.

    ``maps`` (k,H,W) are un-normalized, ReLU'd and bilinearly upsampled to the image's own
    size; ``layer_maps`` (k,h,w) are at the explained layer's resolution; ``guided_gradcam``
    (k,3,Hin,Win) is at the model input's resolution; ``boxes`` are 15%-of-max boxes in image
    pixels.
    """

    image: Image.Image
    classes: list[int]
    labels: list[str]
    scores: list[float]
    probabilities: list[float]
    maps: torch.Tensor
    layer_maps: torch.Tensor
    boxes: list[tuple[int, int, int, int] | None]
    method: str
    layer: str
    guided_gradcam: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no pixel data)."""
        return {
            "method": self.method,
            "layer": self.layer,
            "image_size": list(self.image.size),
            "classes": [
                {"id": c, "label": lab, "score": s, "probability": p, "box": list(b) if b else None}
                for c, lab, s, p, b in zip(
                    self.classes, self.labels, self.scores, self.probabilities, self.boxes
                )
            ],
        }

    def overlays(self, alpha: float = 0.5, shared: bool = True) -> list[Image.Image]:
        """One heat-map overlay per class (one shared scale unless ``shared=False``)."""
        heat = normalize(self.maps, shared=shared)
        return [overlay(self.image, h, alpha) for h in heat]

    def save(self, out: str | Path) -> list[Path]:
        """Write overlays, guided Grad-CAM images, boxes and ``result.json`` to ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for i, (c, ov) in enumerate(zip(self.classes, self.overlays(shared=False))):
            p = out / f"class{i}_{c}_{self.method}.png"
            ov.save(p)
            written.append(p)
            p = out / f"class{i}_{c}_box.png"
            draw_boxes(ov, [self.boxes[i]]).save(p)
            written.append(p)
            if self.guided_gradcam is not None:
                p = out / f"class{i}_{c}_guided_gradcam.png"
                guided_image(self.guided_gradcam[i]).resize(self.image.size).save(p)
                written.append(p)
        p = out / "result.json"
        p.write_text(json.dumps(self.to_dict(), indent=2))
        written.append(p)
        return written


class ClassExplainer:
    """Explain a CNN classifier's classes with a CAM method at one layer.

    ``model`` is an ``nn.Module`` (then give ``layer``, and ``prepare`` unless you pass pixel
    tensors) or an adapter with ``.model``, ``.layer``, ``.labels`` and ``.prepare``.
    The model is put in eval mode during a call and its flags restored afterwards.
    """

    def __init__(
        self,
        model: Any,
        layer: str | nn.Module | None = None,
        method: str = "gradcam",
        prepare: Any = None,
        labels: list[str] | None = None,
        score: str = "logit",
    ) -> None:
        if isinstance(model, nn.Module):
            self.model = model
            self.prepare = prepare
            self.labels = labels
            self.layer = layer
        else:
            self.model = model.model
            self.prepare = prepare or model.prepare
            self.labels = labels or list(model.labels)
            self.layer = layer or model.layer
        if self.layer is None:
            raise MMCamError("give the layer to explain, e.g. layer='layer4'")
        self.method_name = method
        self.method = get_method(method)
        self.score = score

    def _pixels(self, image: ImageInput) -> tuple[Image.Image, torch.Tensor]:
        if isinstance(image, torch.Tensor) and image.dim() == 4:
            raise MMCamError("give one image; use explain_batch for a (B,3,H,W) tensor")
        pil = load_image(image)
        if self.prepare is None:
            raise MMCamError("no prepare function: pass prepare= or an adapter")
        return pil, self.prepare(pil)

    def explain_batch(
        self,
        pixels: torch.Tensor,
        targets: torch.Tensor | None = None,
        top: int = 1,
        guided: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Batched core. pixels (B,3,H,W) -> dict with ``logits`` (B,K), ``targets`` (B,k),
        ``layer_maps`` (B,k,h,w), ``maps`` (B,k,H,W) upsampled to the pixels' size and,
        with ``guided=True``, ``guided_gradcam`` (B,k,3,H,W) and ``guided_backprop``.
        """
        with eval_mode(self.model):
            logits, targets, A, G = layer_gradients(
                self.model, self.layer, pixels, targets, top, self.score
            )
            B, k = targets.shape
            Ak = A.unsqueeze(1).expand(-1, k, -1, -1, -1).reshape(B * k, *A.shape[1:])
            lmaps = self.method(Ak, G.reshape(B * k, *A.shape[1:]))
            H, W = pixels.shape[-2:]
            out = {
                "logits": logits,
                "targets": targets,
                "layer_maps": lmaps.reshape(B, k, *lmaps.shape[-2:]),
                "maps": upsample(lmaps, (H, W)).reshape(B, k, H, W),
            }
            if guided:
                gb = guided_backprop(self.model, pixels, targets)
                out["guided_backprop"] = gb
                out["guided_gradcam"] = guided_gradcam(out["layer_maps"], gb)
        return out

    def explain(
        self,
        image: ImageInput,
        classes: list[int] | None = None,
        top: int = 1,
        guided: bool = True,
    ) -> ClassExplanation:
        """Explain one image for ``classes`` (ids) or its ``top`` classes."""
        pil, pixels = self._pixels(image)
        targets = None if classes is None else torch.tensor([list(classes)])
        r = self.explain_batch(pixels, targets, top, guided)
        W, H = pil.size
        maps = upsample(r["layer_maps"][0], (H, W))
        ids = r["targets"][0].tolist()
        logits = r["logits"][0]
        probs = torch.softmax(logits, dim=0)
        names = self.labels or [f"class {i}" for i in range(logits.shape[0])]
        return ClassExplanation(
            image=pil,
            classes=ids,
            labels=[names[i] for i in ids],
            scores=[float(logits[i]) for i in ids],
            probabilities=[float(probs[i]) for i in ids],
            maps=maps,
            layer_maps=r["layer_maps"][0],
            boxes=localize(maps),
            method=self.method_name,
            layer=str(self.layer),
            guided_gradcam=r["guided_gradcam"][0] if guided else None,
        )
