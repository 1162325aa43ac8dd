"""Maps of bounded memory: held on the explained layer's grid, drawn on the image's pixels on
demand.

A result's maps at the image's own size would take ``n x H x W x 4`` bytes: 537 MB for the
word limit's 64 words (65 maps with the whole caption) on a 2-megapixel image. A
:class:`PixelMaps` holds instead the layer maps (n,h,w), the preprocessing
:class:`~mmcam.geometry.Geometry` and where the grid's cells sit (``cell``), and makes pixel
maps when asked, by the same call as the explain path always made,
``geometry.to_image(layer_maps, cell)`` (one map at a time, or a few: every map is computed on
its own, so a map made alone equals the same map made in a stack). What it keeps:

- the layer maps (a few KB: 65 maps of 24x24 are 150 KB);
- each map's max and its box (15%-of-max box, :func:`mmcam.cam.localize`), computed together
  in one pass over the maps, :data:`CHUNK_BYTES` of pixel maps at a time, on the first
  question about either (explaining alone never computes them);
- recently made pixel maps, at most :data:`CACHE_BYTES` bytes (least recently used dropped).

So a result holds at most :data:`CACHE_BYTES` of pixel maps plus its layer maps, whatever the
image size and the number of words. :meth:`PixelMaps.given` wraps maps made elsewhere (a
result built by hand): those are held as given.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from mmcam.cam import localize
from mmcam.geometry import Geometry

Box = tuple[int, int, int, int]
Cell = tuple[tuple[float, float], tuple[float, float]]

CHUNK_BYTES = 64 * 2**20
"""Pixel maps made at once when every map is needed (maxima, boxes, display maps)."""
CACHE_BYTES = 32 * 2**20
"""Pixel maps kept for reuse by one :class:`PixelMaps` (least recently used dropped)."""


class PixelMaps:
    """n maps on the image's pixels, kept as layer maps (n,h,w) + geometry + cell.

    ``maps[i]`` is map i (H,W) and ``maps.stack()`` all of them (n,H,W), both equal to
    ``geometry.to_image(layer_maps, cell)``; ``maxima()`` and ``boxes()`` are computed once.
    ``boxes``: the boxes if already known (else computed on first use, ``threshold`` of
    each map's max).
    """

    def __init__(self, layer_maps: torch.Tensor, geometry: Geometry, cell: Cell | None = None,
                 boxes: Sequence[Box | None] | None = None, threshold: float = 0.15) -> None:
        self.layer_maps = layer_maps.detach().float().cpu()
        self.geometry, self.cell, self.threshold = geometry, cell, threshold
        self._given: list[torch.Tensor] | None = None
        self._init(boxes)

    @classmethod
    def given(cls, maps: Sequence[torch.Tensor], boxes: Sequence[Box | None] | None = None,
              threshold: float = 0.15) -> PixelMaps:
        """Maps (H,W) made elsewhere, held as they are (no layer maps)."""
        self = cls.__new__(cls)
        self._given = [m.detach() for m in maps]
        self.layer_maps = torch.zeros(len(self._given), 0, 0)
        self.geometry, self.cell, self.threshold = None, None, threshold
        self._init(boxes)
        return self

    def _init(self, boxes: Sequence[Box | None] | None) -> None:
        self._boxes = None if boxes is None else list(boxes)
        if self._boxes is not None and len(self._boxes) != len(self):
            raise ValueError(f"{len(self._boxes)} boxes for {len(self)} maps")
        self._maxima: list[float] | None = None
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"], state["_lock"] = OrderedDict(), None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ shape

    def __len__(self) -> int:
        return len(self._given) if self._given is not None else self.layer_maps.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of every pixel map."""
        if self._given is not None:
            return tuple(self._given[0].shape[-2:]) if self._given else (0, 0)
        W, H = self.geometry.image_size
        return (H, W)

    @property
    def shape(self) -> torch.Size:
        """(n, H, W)."""
        return torch.Size((len(self), *self.size))

    # ------------------------------------------------------------------ pixel maps

    def _make(self, start: int, stop: int) -> torch.Tensor:
        if self._given is not None:
            if stop <= start:
                return torch.zeros(0, *self.size)
            return torch.stack(self._given[start:stop])
        return self.geometry.to_image(self.layer_maps[start:stop], self.cell).cpu()

    def __getitem__(self, i: int) -> torch.Tensor:
        """Map ``i`` (H,W). Kept in the cache: do not change it in place (``.clone()``)."""
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
            raise IndexError(f"map {i!r} of {n}")
        i %= n
        if self._given is not None:
            return self._given[i]
        with self._lock:
            if i in self._cache:
                self._cache.move_to_end(i)
                return self._cache[i]
        m = self._make(i, i + 1)[0]
        self._keep(i, m)
        return m

    def _keep(self, i: int, m: torch.Tensor) -> None:
        size = m.numel() * m.element_size()
        if size > CACHE_BYTES:
            return
        with self._lock:
            self._cache[i] = m
            self._cache.move_to_end(i)
            while sum(t.numel() * t.element_size() for t in self._cache.values()) > CACHE_BYTES:
                self._cache.popitem(last=False)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(len(self)))

    def stack(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Maps ``start:stop`` (k,H,W) in one new tensor (mind the memory: k x H x W x 4
        bytes)."""
        stop = len(self) if stop is None else stop
        return self._make(start, stop)

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, maps (k,H,W)) over all maps, at most :data:`CHUNK_BYTES` at a time."""
        H, W = self.size
        k = max(1, CHUNK_BYTES // max(1, H * W * 4))
        for start in range(0, len(self), k):
            yield start, self._make(start, min(start + k, len(self)))

    # ------------------------------------------------------------------ summaries

    def _summarize(self, size: tuple[int, int] | None = None) -> torch.Tensor | None:
        """Each map's max and (if not known) box, in one pass over the maps; with ``size``
        (width, height) also every map resized to it, :func:`mmcam.viz.resize_maps`."""
        from mmcam.viz import resize_maps

        maxima: list[float] = []
        boxes: list[Box | None] = []
        small: list[torch.Tensor] = []
        need_boxes = self._boxes is None
        for _, maps in self.chunks():
            maxima += [float(v) for v in maps.amax(dim=(-2, -1))] if maps.numel() else \
                [0.0] * maps.shape[0]
            if need_boxes:
                boxes += localize(maps, self.threshold)
            if size is not None:
                small.append(resize_maps(maps, size))
        with self._lock:
            self._maxima = maxima
            if need_boxes and self._boxes is None:
                self._boxes = boxes
        if size is None:
            return None
        return torch.cat(small) if small else torch.zeros(0, size[1], size[0])

    def maxima(self) -> list[float]:
        """Each map's max (computed once)."""
        if self._maxima is None:
            self._summarize()
        return list(self._maxima)

    def boxes(self) -> list[Box | None]:
        """Each map's box (given, or computed once): the largest 8-connected segment of the
        pixels at or above ``threshold`` of its max, :func:`mmcam.cam.localize`."""
        if self._boxes is None:
            self._summarize()
        return list(self._boxes)

    def resized(self, size: tuple[int, int]) -> torch.Tensor:
        """All maps resized to ``size`` (width, height), :func:`mmcam.viz.resize_maps` of
        each chunk of pixel maps (n,h,w); the maxima and boxes are computed in the same pass
        if not yet known."""
        from mmcam.viz import resize_maps

        if self._maxima is None or self._boxes is None:
            return self._summarize(size)
        w, h = size
        parts = [resize_maps(m, size) for _, m in self.chunks()]
        return torch.cat(parts) if parts else torch.zeros(0, h, w)

    def nbytes(self) -> int:
        """Bytes of tensor data this object holds (layer maps, cached or given maps)."""
        held = [self.layer_maps] + list(self._cache.values()) + list(self._given or [])
        return sum(t.numel() * t.element_size() for t in held)
