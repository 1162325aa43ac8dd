"""Grad-CAM for classifiers: :class:`ClassExplainer` (results: :class:`ClassExplanation`)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmcam.cam import PATH_STEPS, get_method
from mmcam.errors import MMCamError
from mmcam.geometry import Geometry
from mmcam.guided import guided_backprop, guided_gradcam
from mmcam.images import ImageInput, load_image
from mmcam.layers import Layout, eval_mode
from mmcam.limits import check_at_least
from mmcam.pipeline import Context, Explained, Pipeline, Rows, autograd_on
from mmcam.results import ClassExplanation

__all__ = ["ClassExplainer", "ClassExplanation"]


@dataclass
class _Classifier:
    """The adapter view of a plain ``nn.Module`` classifier."""

    model: nn.Module
    layer: Any
    prepare: Any
    layout: Any = None


class ClassExplainer:
    """Explain a classifier's classes with a CAM method at one layer.

    ``model`` is an ``nn.Module`` (then give ``layer``, and ``prepare`` unless you pass pixel
    tensors to :meth:`explain_pixels`) or an adapter with ``.model``, ``.layer``,
    ``.labels`` and ``.prepare`` (which may return ``(pixels, Geometry)``). The explained
    score is the logit (``score="logit"``) or its log-softmax (``"logprob"``). The model is in
    eval mode during a call and its flags are restored afterwards. ``align``: "receptive"
    draws each grid cell at the centre of its receptive field, "bilinear" where plain
    bilinear upsampling puts it (:mod:`mmcam.align`). ``steps``: the points of the
    "integrated" method's path (:func:`mmcam.cam.integrated`).
    """

    def __init__(
        self,
        model: Any,
        layer: str | nn.Module | None = None,
        method: str = "gradcam",
        prepare: Any = None,
        labels: list[str] | None = None,
        score: str = "logit",
        layout: Layout | str | Callable | None = None,
        strategy: str = "auto",
        chunk_size: int | None = 64,
        align: str = "receptive",
        steps: int = PATH_STEPS,
    ) -> None:
        if isinstance(model, nn.Module):
            self.model, self.prepare, self.labels = model, prepare, labels
        else:
            self.model = model.model
            self.prepare = prepare or model.prepare
            self.labels = labels or list(model.labels)
            layer = model.layer if layer is None else layer  # "" is refused, not the default
            layout = layout or getattr(model, "layout", None)
        if layer is None:
            raise MMCamError("give the layer to explain, e.g. layer='layer4'")
        if score not in ("logit", "logprob"):
            raise MMCamError(f"unknown score {score!r}: use 'logit' or 'logprob'")
        self.layer = layer
        self.method_name = method
        self.method = get_method(method)
        self.score = score
        adapter = _Classifier(self.model, layer, self._prepare)
        self.pipeline = Pipeline(adapter, self._scores, layer=layer, layout=layout,
                                 strategy=strategy, chunk_size=chunk_size, stack_inputs=True,
                                 align=align, steps=steps)

    def _prepare(self, image: Any) -> Any:
        if self.prepare is None:
            raise MMCamError("no prepare function: pass prepare= or an adapter")
        return self.prepare(image)

    def _scores(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixels)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise MMCamError(f"the model must output (B, classes) scores, got {shape}")
        logits = logits.float()
        return logits if self.score == "logit" else torch.log_softmax(logits, dim=1)

    def _rows(self, classes: Sequence[Sequence[int] | None] | None, top: int):
        check_at_least(1, top=top)
        classes = None if classes is None else [None if c is None else _class_ids(c)
                                                for c in classes]

        def rows(ctx: Context, i: int) -> Rows:
            y = ctx.score(torch.zeros(1, 0, dtype=torch.long))[0].cpu()
            K = y.shape[0]
            if self.labels is not None and len(self.labels) != K:
                raise MMCamError(f"labels has {len(self.labels)} names but the model has {K} "
                                 "classes: give one name per class")
            if classes is None or classes[i] is None:
                ids = y.topk(min(top, K)).indices.tolist()
            else:
                ids = classes[i]
                if any(not 0 <= c < K for c in ids):
                    raise MMCamError(f"class id out of range: the model has {K} classes")
            coefs = torch.zeros(len(ids), K)
            coefs[torch.arange(len(ids)), torch.tensor(ids, dtype=torch.long)] = 1.0
            return Rows(torch.zeros(len(ids), 0, dtype=torch.long), coefs, (ids, y))

        return rows

    def _guided(self, e: Explained) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor([e.rows.info[0]])
        with eval_mode(self.model):
            gb = guided_backprop(self.model, self.pipeline._to_device(e.inputs), ids)[0]
        return gb, guided_gradcam(e.layer_maps, gb, e.cell)

    @autograd_on
    def explain_pixels(
        self,
        pixels: torch.Tensor,
        targets: torch.Tensor | None = None,
        top: int = 1,
        guided: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Tensor API. pixels (B,3,H,W) -> dict with ``logits`` (B,K), ``targets`` (B,k),
        ``layer_maps`` (B,k,h,w), ``maps`` (B,k,H,W) at the pixels' size and, with
        ``guided=True``, ``guided_backprop`` and ``guided_gradcam`` (B,k,3,H,W)."""
        if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or len(pixels) == 0:
            got = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else \
                type(pixels).__name__
            raise MMCamError(f"pixels must be a (B,3,H,W) tensor with B >= 1, got {got}")
        if pixels.is_inference():  # made under torch.inference_mode: autograd cannot save it
            pixels = pixels.clone()
        H, W = pixels.shape[-2:]
        prepared = [(pixels[b:b + 1], Geometry.identity((W, H))) for b in range(len(pixels))]
        classes = None
        if targets is not None:
            t = torch.as_tensor(targets)
            if t.numel() == 0 or t.numel() % len(pixels):
                raise MMCamError(f"{t.numel()} targets for {len(pixels)} images: give the "
                                 "same number of class ids for every image")
            classes = t.reshape(len(pixels), -1).tolist()
        done = self.pipeline.explain_prepared([None] * len(pixels), prepared,
                                              self._rows(classes, top), self.method_name)
        out = {
            "logits": torch.stack([e.rows.info[1] for e in done]),
            "targets": torch.tensor([e.rows.info[0] for e in done]),
            "layer_maps": torch.stack([e.layer_maps for e in done]),
            "maps": torch.stack([e.maps for e in done]),
        }
        if guided:  # one pass for the batch, as Guided Backprop is usually run
            with eval_mode(self.model):
                gb = guided_backprop(self.model, self.pipeline._to_device(pixels),
                                     out["targets"])
            out["guided_backprop"] = gb
            out["guided_gradcam"] = guided_gradcam(out["layer_maps"], gb, done[0].cell)
        return out

    def explain(
        self,
        image: ImageInput,
        classes: list[int] | None = None,
        top: int = 1,
        guided: bool = True,
    ) -> ClassExplanation:
        """Explain one image for ``classes`` (ids) or its ``top`` classes."""
        if isinstance(image, torch.Tensor) and image.dim() == 4:
            raise MMCamError("give one image; use explain_pixels for a (B,3,H,W) tensor")
        return self.explain_batch([image], None if classes is None else [classes], top,
                                  guided)[0]

    @autograd_on
    def explain_batch(
        self,
        images: Sequence[ImageInput],
        classes: Sequence[Sequence[int] | None] | None = None,
        top: int = 1,
        guided: bool = True,
    ) -> list[ClassExplanation]:
        """Explain several images in one pass (same-size inputs share one forward)."""
        pils = [load_image(im) for im in images]
        if classes is not None and not isinstance(classes, Sequence):
            raise MMCamError("classes must hold one list of class ids per image, got "
                             f"{type(classes).__name__}")
        if classes is not None and len(classes) != len(pils):
            raise MMCamError(f"{len(classes)} class lists for {len(pils)} images")
        done = self.pipeline.explain(pils, self._rows(classes, top), self.method_name)
        return [self._result(e, guided) for e in done]

    def _result(self, e: Explained, guided: bool) -> ClassExplanation:
        ids, y = e.rows.info
        probs = torch.softmax(y, dim=0)
        names = self.labels or [f"class {i}" for i in range(y.shape[0])]
        return ClassExplanation(
            image=e.image,
            classes=ids,
            labels=[names[i] for i in ids],
            scores=[float(y[i]) for i in ids],
            probabilities=[float(probs[i]) for i in ids],
            maps=None,
            layer_maps=e.layer_maps,
            boxes=None,
            pixels=e.pixels,
            method=self.method_name,
            layer=self.pipeline.layer_label,
            guided_gradcam=self._guided(e)[1] if guided else None,
        )


def _class_ids(classes: Any) -> list[int]:
    """One image's ``classes`` as a non-empty list of integer ids, or :class:`MMCamError`."""
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise MMCamError(f"classes must be a list of class ids (integers), got {classes!r:.40}")
    ids = []
    for c in classes:
        try:
            if isinstance(c, bool):
                raise TypeError
            ids.append(operator.index(c))
        except TypeError:
            raise MMCamError(f"class ids must be integers, got {c!r:.40}") from None
    if not ids:
        raise MMCamError("classes=[] names no class: give class ids, or leave classes out to "
                         "explain the top classes")
    return ids
