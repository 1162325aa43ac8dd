"""The one explain path: image -> prepare -> gradients at the layer for all rows -> method ->
back through geometry -> localize. Caption, VQA and classification only choose the rows.

A model plugs in through one of two forms (see :mod:`mmcam.adapters.base`):

- **split**: ``encode(pixels) -> features`` and a scorer from features. The encoder runs once
  per image (shared with generation); the decoder's rows are batched by the strategy at the
  features; an explained layer inside the encoder receives them by one batched VJP through
  the encoder's remainder (exact: the chain rule is linear in the cotangent).
- **whole model**: a scorer from the prepared inputs. A forward hook on the explained layer
  hands its output to the strategy (copies or vjp, :mod:`mmcam.engine`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mmcam import engine
from mmcam.align import ALIGNS, Cell, receptive_cells, run_to_layer
from mmcam.cam import PATH_METHODS, PATH_STEPS, REDUCIBLE, Reduced, get_method, gradcam, localize
from mmcam.errors import MMCamError
from mmcam.evaluation import mean_fill
from mmcam.geometry import Geometry
from mmcam.guided import guided_from_layer, guided_gradcam
from mmcam.layers import (
    Conv,
    Layout,
    Tokens,
    as_layout,
    eval_mode,
    layer_name,
    resolve_layer,
    tap,
)
from mmcam.limits import check_at_least
from mmcam.pixelmaps import PixelMaps
from mmcam.scores import takes_last

Box = tuple[int, int, int, int]
RECURRENT = (nn.RNNBase, nn.RNNCellBase)


def module_of(adapter: Any) -> nn.Module | None:
    """The ``nn.Module`` behind an adapter (itself, or its ``.model``), if any."""
    if isinstance(adapter, nn.Module):
        return adapter
    m = getattr(adapter, "model", None)
    return m if isinstance(m, nn.Module) else None


def cam_of(method: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The CAM formula of ``method`` (Grad-CAM for "guided-gradcam")."""
    return gradcam if method == "guided-gradcam" else get_method(method)


def infer_layout(x: torch.Tensor) -> Layout:
    """Conv for (B,C,h,w); for (B,n,D) tokens the smallest prefix p <= 8 leaving a square."""
    if x.dim() == 4:
        return Conv()
    if x.dim() == 3:
        for p in range(9):
            r = math.isqrt(max(x.shape[1] - p, 0))
            if r > 0 and r * r == x.shape[1] - p:
                return Tokens(prefix=p)
    raise MMCamError(
        f"cannot read a {tuple(x.shape)} layer output as an (h,w) grid: choose a conv layer or a "
        "token block, or pass layout=Tokens(prefix=..., grid=(h, w)), ChannelsLast() or a callback"
    )


def _check_in_image_module(model: nn.Module, layer: nn.Module, image: str | None) -> None:
    """:class:`MMCamError` unless ``layer`` is the adapter's image encoder (the dotted path
    ``image``, when it declares one) or inside it: a text layer's tokens are no image grid."""
    if image is None:
        return
    encoder = resolve_layer(model, image)
    if not any(m is layer for m in encoder.modules()):
        raise MMCamError(f"the layer {layer_name(model, layer)!r} is not in the model's image "
                         f"encoder ({image}): its outputs are not image positions; explain "
                         f"{image} or a layer inside it")


def autograd_on(fn: Callable) -> Callable:
    """``fn`` run outside ``torch.inference_mode``: explaining needs autograd, which inference
    mode switches off (the engine turns gradients on itself under ``torch.no_grad``)."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(False):
            return fn(*args, **kwargs)
    return run


@dataclass(frozen=True)
class Rows:
    """What to explain for one image: ids (n,T) per row and coefficients (n,K) on scores."""

    ids: torch.Tensor
    coefs: torch.Tensor
    info: Any = None


@dataclass(frozen=True)
class Explained:
    """One image's rows explained: grid maps (n,h,w), and on the image's pixels (``pixels``:
    made on demand, see :mod:`mmcam.pixelmaps`) the maps (n,H,W) and their boxes."""

    image: Image.Image | None
    inputs: Any
    geometry: Geometry
    rows: Rows
    A: torch.Tensor  # (C,h,w); for a path method (integrated) A - A0
    G: torch.Tensor  # (n,C,h,w); for a path method the mean gradient along the path
    layer_maps: torch.Tensor
    pixels: PixelMaps
    scores: torch.Tensor  # (n,K) each row's scores
    guided: torch.Tensor | None  # (n,3,Hin,Win)
    cell: Cell | None = None  # where grid cells sit on the input (None: bilinear upsampling)

    @property
    def maps(self) -> torch.Tensor:
        """The rows' maps (n,H,W) on the image's pixels (made now)."""
        return self.pixels.stack()

    @property
    def boxes(self) -> list[Box | None]:
        """The rows' 15%-of-max boxes (computed on first use)."""
        return self.pixels.boxes()

    def extra_layer_map(self, method: Callable, G: torch.Tensor) -> torch.Tensor:
        """Grid map (h,w) for a further gradient G (C,h,w) of this image (e.g. a sum)."""
        return method(self.A[None], G[None])[0]

    def extra_map(self, method: Callable, G: torch.Tensor) -> tuple[torch.Tensor, Box | None]:
        """Map (H,W) and box for a further gradient G (C,h,w) of this image (e.g. a sum)."""
        m = self.geometry.to_image(self.extra_layer_map(method, G)[None], self.cell)[0]
        return m, localize(m)[0]

    def pixel_maps(self, extra: torch.Tensor | None = None, rows: int | None = None
                   ) -> PixelMaps:
        """The first ``rows`` rows' maps (all by default), then the grid maps ``extra``
        (k,h,w) if given, as one :class:`PixelMaps` (boxes of the rows reused if known)."""
        n = self.layer_maps.shape[0] if rows is None else rows
        if extra is None and n == self.layer_maps.shape[0]:
            return self.pixels
        lm = self.layer_maps[:n]
        if extra is not None:
            lm = torch.cat([lm, extra.to(lm.dtype).cpu()])
        return PixelMaps(lm, self.geometry, self.cell)


class Context:
    """What a task may ask of the model for one image before choosing its rows."""

    def __init__(self, score: Callable[[torch.Tensor], torch.Tensor],
                 generate: Callable[..., torch.Tensor] | None) -> None:
        self._score, self._generate = score, generate

    def score(self, ids: torch.Tensor) -> torch.Tensor:
        """Scores (n,K) of ``ids`` rows, without gradients."""
        with torch.no_grad():
            return self._score(ids).float()

    def generate(self, **kw: Any) -> torch.Tensor:
        if self._generate is None:
            raise MMCamError("the model has no generate()")
        with torch.no_grad():
            return self._generate(**kw)


def pixels_of(inputs: Any) -> torch.Tensor | None:
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, dict):
        for k in ("pixel_values", "pixels"):
            if isinstance(inputs.get(k), torch.Tensor):
                return inputs[k]
    return None


def path_mean(grad_at: Callable[[float], torch.Tensor], steps: int) -> torch.Tensor:
    """``mean_j grad_at(alpha_j)`` over the midpoint rule's points ``alpha_j = (j - 1/2) /
    steps``, j = 1..steps: a path method's mean gradient (:data:`mmcam.cam.PATH_METHODS`)."""
    total = None
    for j in range(steps):
        g = grad_at((j + 0.5) / steps)
        total = g if total is None else total + g
    return total / steps


def with_pixels(inputs: Any, px: torch.Tensor) -> Any:
    if isinstance(inputs, torch.Tensor):
        return px
    key = "pixel_values" if "pixel_values" in inputs else "pixels"
    return {**inputs, key: px}


_CELLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CELLS_LOCK = threading.Lock()


def check_align(align: str) -> str:
    """``align`` if it is one of :data:`mmcam.align.ALIGNS`, else an :class:`MMCamError`."""
    if align not in ALIGNS:
        raise MMCamError(f"unknown align {align!r}: use {' or '.join(ALIGNS)}")
    return align


class Pipeline:
    """A model bound to an explained layer, a layout, a strategy and a scoring function.

    ``score(inputs_or_features, ids) -> (n,K)`` and ``generate`` are the task's view of the
    adapter; ``split`` says whether ``score`` starts from ``encode``'s features.
    ``align``: "receptive" draws grid cells at the centres of their receptive fields
    (:mod:`mmcam.align`, derived once per model, layer and input size), "bilinear" where
    plain bilinear upsampling puts them (the paper's, captum's and pytorch-grad-cam's).
    ``method``: the CAM method the caller will ask for (lets "auto" pick "readers").
    ``steps``: the points of the integrated method's path (:data:`mmcam.cam.PATH_STEPS`).
    """

    def __init__(
        self,
        adapter: Any,
        score: Callable[[Any, torch.Tensor], torch.Tensor],
        generate: Callable[..., torch.Tensor] | None = None,
        layer: str | nn.Module | None = None,
        layout: Layout | str | Callable | None = None,
        strategy: str = "auto",
        chunk_size: int | None = 64,
        causal: bool = False,
        stack_inputs: bool = False,
        align: str = "receptive",
        method: str | None = None,
        steps: int = PATH_STEPS,
    ) -> None:
        self.adapter = adapter
        check_at_least(1, steps=steps)
        self.steps = steps
        self.method = method
        self.align = check_align(align)
        self.module = module_of(adapter)
        self.split = callable(getattr(adapter, "encode", None))
        self.score_fn, self.generate_fn = score, generate
        self.causal, self.stack_inputs = causal, stack_inputs
        self.takes_last = takes_last(score)
        if chunk_size is not None:
            check_at_least(1, chunk_size=chunk_size)
        self.chunk_size = chunk_size
        own = getattr(adapter, "layer", None)
        default = layer is None or layer is own or (isinstance(layer, str) and layer == own)
        if layer is None and not self.split:
            layer = getattr(adapter, "layer", None)
            if layer is None:
                raise MMCamError("give the layer to explain, e.g. layer='layer4'")
        if layer is not None:
            if self.module is None:
                raise MMCamError("a layer can only be named on an adapter with an nn.Module "
                                 ".model")
            found = resolve_layer(self.module, layer)  # fail early on a bad name
            _check_in_image_module(self.module, found, getattr(adapter, "image_module", None))
        self.layer = layer
        if layout is None and default:  # the adapter's layout goes with its default layer
            layout = getattr(adapter, "layout", None)
        self.layout = None if layout is None else as_layout(layout)  # None: inferred
        self.requested = engine.check_strategy(strategy)
        self._has_rnn: bool | None = None

    @property
    def strategy(self) -> str:
        """"copies", "vjp" or "readers": the requested one, or for "auto" the one chosen now
        for ``method`` (the model may have moved to another device since)."""
        return self._choose(self.requested, self.method, False)

    def readers(self) -> engine.Readers | None:
        """The modules through which alone the explained layer reaches the scores, when the
        adapter declares them for this layer (``adapter.readers(layer_module)``)."""
        fn = getattr(self.adapter, "readers", None)
        if self.split or self.layer is None or not callable(fn):
            return None
        return fn(resolve_layer(self.module, self.layer))

    @property
    def layer_label(self) -> str:
        """The explained layer's name. A split model's default (``encode``'s output) is named
        by the adapter's ``layer`` when it has one, as the app's layer picker names it (the
        shipped models: ``encoder.14``, the encoder's last module), else ``"encode output"``."""
        if self.layer is None:
            own = getattr(self.adapter, "layer", None)
            return own if isinstance(own, str) else "encode output"
        return layer_name(self.module, self.layer)

    def _choose(self, strategy: str, method: str | None, guided: bool) -> str:
        reducible = method in REDUCIBLE and not guided
        if strategy == "readers":
            if self.readers() is None:
                raise MMCamError("strategy 'readers' needs a model that declares the modules "
                                 "reading the explained layer (BLIP, GIT and PaliGemma at their "
                                 "tower's output or last block, VisionEncoderDecoder at its "
                                 "default layer): use 'vjp'")
            if not reducible:
                raise MMCamError(f"strategy 'readers' serves gradcam, hirescam and "
                                 f"counterfactual, not {'guided-gradcam' if guided else method}"
                                 ": use 'vjp'")
        if strategy != "auto":
            return strategy
        dev = self._device()
        cuda = dev is not None and dev.type == "cuda"
        # measured (benchmarks/bench_hf.py, BLIP base): readers is exact for HiResCAM where
        # dense float32 gradients are not, and the fastest for Grad-CAM on CPU; on an H100
        # copies/vjp were faster for Grad-CAM (readers' reductions are small kernels)
        if reducible and self.readers() is not None and (method == "hirescam" or not cuda):
            return "readers"
        own = getattr(self.adapter, "strategy", None)
        if own in ("copies", "vjp"):
            return own
        # measured (benchmarks/bench_engine.py): on CPU copies win for recurrent decoders and
        # vjp for transformer decoders; on a CUDA GPU copies won for both
        if cuda or self._recurrent():
            return "copies"
        return "vjp"

    def _recurrent(self) -> bool:
        """Whether the model has a recurrent module (looked up once per pipeline)."""
        if self._has_rnn is None:
            mods = self.module.modules() if self.module is not None else []
            self._has_rnn = any(isinstance(m, RECURRENT) for m in mods)
        return self._has_rnn

    # ------------------------------------------------------------------ preparation

    def prepare(self, image: Image.Image) -> tuple[Any, Geometry]:
        """``adapter.prepare`` -> (inputs, geometry); a bare pixel tensor means a resize."""
        out = self.adapter.prepare(image)
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Geometry):
            inputs, geom = out
        else:
            inputs = out
            px = pixels_of(inputs)
            if px is None:
                raise MMCamError("prepare() must return pixels (1,3,H,W) or (inputs, Geometry)")
            geom = Geometry.identity(image.size).resize((px.shape[-1], px.shape[-2]))
        if geom.image_size != tuple(image.size):
            raise MMCamError(f"prepare() recorded an image of size {geom.image_size}, but the "
                             f"image is {image.size}")
        return inputs, geom

    def _param(self) -> torch.Tensor | None:
        if self.module is None:
            return None
        return next(self.module.parameters(), None)

    def _device(self) -> torch.device | None:
        p = self._param()
        return p.device if p is not None else None

    def _to_device(self, inputs: Any) -> Any:
        """Tensors onto the model's device; floating ones in the model's dtype."""
        p = self._param()
        if p is None:
            return inputs

        def move(t: Any) -> Any:
            if not isinstance(t, torch.Tensor):
                return t
            return t.to(p.device, p.dtype) if t.is_floating_point() else t.to(p.device)

        if isinstance(inputs, dict):
            return {k: move(v) for k, v in inputs.items()}
        return move(inputs)

    # ------------------------------------------------------------------ explain

    def explain(
        self,
        images: list[Image.Image],
        rows_fn: Callable[[Context, int], Rows],
        method: str = "gradcam",
        guided: bool = False,
    ) -> list[Explained]:
        """Explain the rows ``rows_fn(context, image_index)`` of every image."""
        return self.explain_prepared(images, [self.prepare(im) for im in images], rows_fn,
                                     method, guided)

    def explain_prepared(
        self,
        images: list[Image.Image | None],
        prepared: list[tuple[Any, Geometry]],
        rows_fn: Callable[[Context, int], Rows],
        method: str = "gradcam",
        guided: bool = False,
    ) -> list[Explained]:
        """As :meth:`explain`, for inputs already prepared (``(inputs, geometry)`` each)."""
        cam = cam_of(method)
        strategy = self._choose(self.requested, method, guided)
        steps = self.steps if method in PATH_METHODS else 0
        batched = self.split or self.stack_inputs
        groups = self._groups(prepared) if batched else [[i] for i in range(len(images))]
        explain_group = self._explain_split if self.split else self._explain_whole
        out: list[Explained | None] = [None] * len(images)
        with eval_mode(self.module):
            for idx in groups:
                done = explain_group([images[i] for i in idx], [prepared[i] for i in idx],
                                     rows_fn, idx, cam, guided, strategy, steps)
                for i, e in zip(idx, done):
                    out[i] = e
        return out  # type: ignore[return-value]

    @staticmethod
    def _groups(prepared: list[tuple[Any, Geometry]]) -> list[list[int]]:
        """Images whose pixel tensors can be stacked into one encoder batch."""
        groups: dict[tuple, list[int]] = {}
        for i, (inp, _) in enumerate(prepared):
            px = pixels_of(inp)
            key = tuple(px.shape) if px is not None else ("single", i)
            groups.setdefault(key, []).append(i)
        return list(groups.values())

    def _score(self, x: Any, ids: torch.Tensor, last: torch.Tensor | None) -> torch.Tensor:
        """The scorer, told each row's last used position when it takes ``last=``."""
        if last is not None and self.takes_last:
            return self.score_fn(x, ids, last=last.to(ids.device))
        return self.score_fn(x, ids)

    def _rnn_context(self) -> Any:
        """cuDNN's RNN backward refuses eval mode: on CUDA, models with recurrent modules
        run their gradient passes with cuDNN off (PyTorch's own kernels, same math)."""
        dev = self._device()
        if dev is not None and dev.type == "cuda" and any(
                isinstance(m, nn.RNNBase) for m in self.module.modules()):
            return torch.backends.cudnn.flags(enabled=False)
        return contextlib.nullcontext()

    def _row_gradients(self, run: engine.Run, rows: list[Rows], n_images: int,
                       strategy: str, readers: engine.Readers | None = None):
        """Gradients of the rows of all images: one engine call when the rows can be stacked
        (equal widths, or causal scores padded at the end, which cannot change the scores
        before the padding), else one call per width."""
        if self.causal:
            groups = [list(range(len(rows)))]
        else:
            by: dict[tuple[int, int], list[int]] = {}
            for b, r in enumerate(rows):
                by.setdefault((r.ids.shape[1], r.coefs.shape[1]), []).append(b)
            groups = list(by.values())
        K = max(r.coefs.shape[1] for r in rows)
        starts = torch.tensor([0] + [r.ids.shape[0] for r in rows]).cumsum(0).tolist()
        N = starts[-1]
        parts, scores, A = [], None, None
        image = torch.cat([torch.full((r.ids.shape[0],), b) for b, r in enumerate(rows)])
        for group in groups:
            T = max(rows[b].ids.shape[1] for b in group)
            ids = torch.cat([F.pad(rows[b].ids, (0, T - rows[b].ids.shape[1])) for b in group])
            coefs = torch.cat([F.pad(rows[b].coefs.float(), (0, K - rows[b].coefs.shape[1]))
                               for b in group])
            img = torch.cat([torch.full((rows[b].ids.shape[0],), b) for b in group])
            with self._rnn_context():
                g = engine.layer_gradients(run, ids, coefs, strategy, self.chunk_size, img,
                                           n_images, self.causal, readers)
            if scores is None:
                A = g.A
                scores = g.scores.new_zeros(N, K)
            at = torch.cat([torch.arange(starts[b], starts[b + 1]) for b in group])
            parts.append((at, g.G))
            scores[at, : g.scores.shape[1]] = g.scores
        return A, _place(parts, N), scores, image

    def _encode_at(self, pixels: torch.Tensor, held: dict[str, torch.Tensor],
                   A0: torch.Tensor | None = None, alpha: float = 1.0) -> torch.Tensor:
        """``encode(pixels)``; with a layer, its output (moved to ``A0 + alpha (A - A0)``
        when ``A0`` is given) is kept as the leaf ``held["A"]``."""
        if self.layer is None:
            with torch.no_grad():
                return self.adapter.encode(pixels)

        def record(a: torch.Tensor) -> torch.Tensor:
            x = a.detach() if A0 is None else A0 + alpha * (a.detach() - A0)
            held["A"] = x.requires_grad_(True)
            return held["A"].clone()

        with tap(self.module, self.layer) as t, t.run(record), torch.enable_grad():
            return self.adapter.encode(pixels)

    def _split_path(self, pixels: torch.Tensor, A: torch.Tensor, rows: list[Rows],
                    strategy: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A - A0, Gbar)``: the mean row gradient at ``A0 + alpha_j (A - A0)``; for a
        layer inside the encoder the encoder's rest runs from each point and the gradients
        are carried back to it (at ``encode``'s output the features are moved directly)."""
        with torch.no_grad():
            if self.layer is None:
                A0 = self.adapter.encode(mean_fill(pixels))
            else:
                A0 = run_to_layer(self._encode_to, mean_fill(pixels)).detach()

        def grad_at(alpha: float) -> torch.Tensor:
            held: dict[str, torch.Tensor] = {}
            if self.layer is None:
                feats = A0 + alpha * (A - A0)
            else:
                feats = self._encode_at(pixels, held, A0, alpha)
            base = feats.detach()

            def run(feed: engine.Feed, row_ids: torch.Tensor, last=None) -> torch.Tensor:
                return self._score(feed(base), row_ids.to(base.device), last)

            _, G, _, image = self._row_gradients(run, rows, pixels.shape[0], strategy)
            return G if self.layer is None else self._carry_back(feats, held["A"], G, image)

        return A - A0, path_mean(grad_at, steps)

    def _explain_split(self, images, prepared, rows_fn, index, cam, guided, strategy,
                       steps=0) -> list[Explained]:
        pixels = torch.cat([self._to_device(pixels_of(p[0])) for p in prepared])
        held: dict[str, torch.Tensor] = {}
        feats = self._encode_at(pixels, held)
        base = feats.detach()
        rows = [rows_fn(Context(lambda ids, b=b: self.score_fn(base[b:b + 1].expand(
            ids.shape[0], *base.shape[1:]), ids.to(base.device)),
            lambda b=b, **kw: self.generate_fn(base[b:b + 1], **kw)), index[b])
            for b in range(len(images))]

        def run(feed: engine.Feed, row_ids: torch.Tensor, last=None) -> torch.Tensor:
            return self._score(feed(base), row_ids.to(base.device), last)

        A_raw, G_raw, scores, image = self._row_gradients(run, rows, len(images), strategy)
        if self.layer is not None:
            A_raw = held["A"].detach()
            G_raw = self._carry_back(feats, held["A"], G_raw, image)
        if steps:
            A_raw, G_raw = self._split_path(pixels, A_raw, rows, strategy, steps)
        return self._finish(images, prepared, rows, A_raw, G_raw, scores, image, cam,
                            guided, lambda px, feed: self._encode_to(px, feed))

    def _encode_to(self, px: torch.Tensor, feed: engine.Feed) -> None:
        if self.layer is None:
            feed(self.adapter.encode(px))
            return
        with tap(self.module, self.layer) as t, t.run(feed):
            self.adapter.encode(px)

    def _carry_back(self, feats, leaf, G_point, image) -> torch.Tensor:
        out = []
        for sl in engine.chunks(G_point.shape[0], self.chunk_size):
            n = sl.stop - sl.start
            cot = torch.zeros(n, *feats.shape, device=feats.device)
            cot[torch.arange(n), image[sl]] = G_point[sl].to(cot.device)
            g = engine.batched_vjp(feats, leaf, cot)
            out.append(engine.at_least_float32(g[torch.arange(n), image[sl]]))
        return torch.cat(out)

    def _explain_whole(self, images, prepared, rows_fn, index, cam, guided, strategy,
                       steps=0) -> list[Explained]:
        """Whole-model path; several images share one pass when ``stack_inputs`` (the
        scorer then takes a batch of pixels), else one image at a time."""
        B = len(images)
        inputs = self._to_device(
            torch.cat([pixels_of(p[0]) for p in prepared]) if B > 1 else prepared[0][0])
        with tap(self.module, self.layer) as t:
            dev = self._device()

            def run(feed: engine.Feed, ids: torch.Tensor, last=None) -> torch.Tensor:
                with t.run(feed):
                    return self._score(inputs, ids if dev is None else ids.to(dev), last)

            first: dict[str, torch.Tensor] = {}

            def score_of(b: int, ids: torch.Tensor) -> torch.Tensor:
                if B == 1:
                    return run(lambda a: a, ids)
                if "s" not in first:  # one forward for all images (scores ignore ids)
                    first["s"] = run(lambda a: a, ids[:1])
                return first["s"][b:b + 1].expand(ids.shape[0], -1)

            rows = [rows_fn(Context(lambda ids, b=b: score_of(b, ids),
                                    None if self.generate_fn is None else
                                    lambda **kw: self.generate_fn(inputs, **kw)), index[b])
                    for b in range(B)]
            readers = None
            if strategy == "readers":
                own = prepared[0][0] if B == 1 else None
                readers = dataclasses.replace(self.readers(), grid=lambda a: self._grid_index(
                    a, own))
            A_raw, G_raw, scores, image = self._row_gradients(run, rows, B, strategy, readers)

            def to_layer(px: torch.Tensor, feed: engine.Feed) -> None:
                with t.run(feed):
                    self.score_fn(with_pixels(prepared[0][0], px), rows[0].ids[:1])

            if steps:
                A_raw, G_raw = self._whole_path(run, to_layer, pixels_of(inputs), A_raw, rows,
                                                strategy, steps)
            return self._finish(images, prepared, rows, A_raw, G_raw, scores, image, cam,
                                guided, to_layer)

    def _whole_path(self, run: engine.Run, to_layer: Callable, px: torch.Tensor | None,
                    A: torch.Tensor, rows: list[Rows], strategy: str, steps: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A - A0, Gbar)``: the mean row gradient with the layer's output moved to
        ``A0 + alpha_j (A - A0)``, A0 the layer's output on the mean-color image
        (:func:`mmcam.evaluation.mean_fill`)."""
        if px is None:
            raise MMCamError("the integrated method needs pixel inputs (its baseline is the "
                             "image filled with its mean color)")
        with torch.no_grad():
            A0 = run_to_layer(to_layer, mean_fill(px)).detach()
        if A0.shape != A.shape:
            raise MMCamError(f"the layer gave {tuple(A0.shape)} for the baseline image and "
                             f"{tuple(A.shape)} for the image: the integrated method needs "
                             "both the same shape")

        def grad_at(alpha: float) -> torch.Tensor:
            def moved(feed: engine.Feed, ids: torch.Tensor, last=None) -> torch.Tensor:
                return run(lambda a: feed(A0 + alpha * (a - A0)), ids, last)

            return self._row_gradients(moved, rows, A.shape[0], strategy)[1]

        return A - A0, path_mean(grad_at, steps)

    def _grid_index(self, A_raw: torch.Tensor, own: Any) -> torch.Tensor:
        """(h,w) the index of the token each grid cell of the layout reads."""
        layout = self.layout or infer_layout(A_raw)
        n = A_raw.shape[1]
        index = torch.arange(n, dtype=torch.float64, device=A_raw.device)
        grid = layout.to_grid(index[None, :, None].expand(1, n, 1), own)[0, 0]
        return grid.round().long()

    def cells(self, to_layer: Callable, px: torch.Tensor, layout: Layout, own: Any) -> Cell | None:
        """Where the layer's grid cells sit on inputs shaped like ``px`` (None for
        ``align="bilinear"``); derived once per model, layer, layout and input size."""
        if self.align == "bilinear":
            return None
        key = (layer_name(self.module, self.layer) if self.layer is not None else None,
               repr(layout), tuple(px.shape))
        if self.module is None:
            store: dict = {}
        else:
            with _CELLS_LOCK:
                store = _CELLS.setdefault(self.module, {})
        if key not in store:
            with eval_mode(self.module):
                store[key] = receptive_cells(
                    lambda x: layout.to_grid(run_to_layer(to_layer, x), own).float(),
                    self._to_device(px))
        return store[key]

    def _finish(self, images, prepared, rows, A_raw, G_raw, scores, image, cam, guided,
                to_layer) -> list[Explained]:
        layout = self.layout or infer_layout(A_raw)
        own = prepared[0][0] if len(prepared) == 1 else None  # inputs, for layouts that read them
        wide = engine.at_least_float32  # a float64 model's grids stay float64 (exact HiResCAM)
        A = wide(layout.to_grid(A_raw, own))
        G = G_raw if isinstance(G_raw, Reduced) else wide(layout.to_grid(G_raw, own))
        scores = scores.cpu()
        out, start = [], 0
        for b, (im, (inputs, geom), r) in enumerate(zip(images, prepared, rows)):
            n = r.ids.shape[0]
            sel = slice(start, start + n)
            start += n
            Gb = G[sel]
            lmaps = cam(A[b:b + 1].expand(n, *A.shape[1:]), Gb)
            px = pixels_of(inputs)
            cell = None if px is None else self.cells(to_layer, px, layout, own)
            gg = None
            if guided:
                if px is None:
                    raise MMCamError("guided-gradcam needs pixel inputs")
                gb = guided_from_layer(self.module, self._to_device(px), G_raw[sel], to_layer,
                                       self.chunk_size)
                gg = guided_gradcam(lmaps, gb, cell).cpu()
            lmaps = lmaps.cpu()
            out.append(Explained(im, inputs, geom, r, A[b].cpu(), Gb.cpu(), lmaps,
                                 PixelMaps(lmaps, geom, cell), scores[sel, : r.coefs.shape[1]],
                                 gg, cell))
        return out


def _place(parts: list[tuple[torch.Tensor, Any]], N: int) -> torch.Tensor | Reduced:
    """Rows ``at`` of each part put together in row order (N rows)."""
    def put(items: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        if len(items) == 1 and items[0][1].shape[0] == N and \
                torch.equal(items[0][0], torch.arange(N)):
            return items[0][1]  # one part, rows already in order: no copy
        out = items[0][1].new_zeros(N, *items[0][1].shape[1:])
        for at, g in items:
            out[at] = g
        return out

    if isinstance(parts[0][1], Reduced):
        return Reduced(put([(at, g.alpha) for at, g in parts]),
                       put([(at, g.hires) for at, g in parts]))
    return put(parts)
