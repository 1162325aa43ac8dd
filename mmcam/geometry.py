"""What preprocessing did to the image, and maps carried back onto the original pixels.

Resizing, cropping and padding are axis-aligned, so model-input coordinates are an affine
function of original-image coordinates: ``X = sx * x + tx``, ``Y = sy * y + ty``
(continuous coordinates, pixel ``i`` covering ``[i, i+1)``). :class:`Geometry` records that
map, the model input's size and the part of the input that holds image content (not padding).

A map on a layer grid (h,w) is drawn on the original image by sampling it bilinearly at each
original pixel's centre: pixel x lands at input ``X = sx (x + 1/2) + tx`` and at grid
position ``u = (X - c0) / s`` where grid cell j is centred on input coordinate
``c0 + j s`` (by default ``s = W_in / w``, ``c0 = s / 2``: what bilinear upsampling with
``align_corners=False`` assumes). Positions beyond the first/last cell take the edge value
(as upsampling does); pixels whose input position lies outside the model's input (cropped
away) get 0. For a plain resize this equals ``F.interpolate(..., align_corners=False)`` to
the original size.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Geometry:
    """Original image (W,H) -> model input (W_in,H_in): ``X = sx x + tx``, ``Y = sy y + ty``.

    ``content`` (x0, y0, x1, y1) is the region of the input holding image pixels.
    """

    image_size: tuple[int, int]
    input_size: tuple[int, int]
    scale: tuple[float, float] = (1.0, 1.0)
    offset: tuple[float, float] = (0.0, 0.0)
    content: Box | None = None

    @classmethod
    def identity(cls, size: tuple[int, int]) -> Geometry:
        """No change: the model sees the image as it is; ``size=(W,H)``."""
        return cls(tuple(size), tuple(size), content=(0.0, 0.0, float(size[0]), float(size[1])))

    def _box(self) -> Box:
        W, H = self.input_size
        return self.content if self.content is not None else (0.0, 0.0, float(W), float(H))

    def resize(self, size: tuple[int, int]) -> Geometry:
        """The input is resized to ``size=(W,H)`` (every axis scaled on its own)."""
        W, H = self.input_size
        fx, fy = size[0] / W, size[1] / H
        x0, y0, x1, y1 = self._box()
        return replace(
            self, input_size=tuple(size),
            scale=(self.scale[0] * fx, self.scale[1] * fy),
            offset=(self.offset[0] * fx, self.offset[1] * fy),
            content=(x0 * fx, y0 * fy, x1 * fx, y1 * fy),
        )

    def resize_short(self, short: int, max_long: int | None = None) -> Geometry:
        """Aspect-kept resize: the shorter side to ``short`` (the longer capped at
        ``max_long``), each side rounded to the nearest pixel, as PIL/torchvision do."""
        W, H = self.input_size
        f = short / min(W, H)
        if max_long is not None and max(W, H) * f > max_long:
            f = max_long / max(W, H)
        return self.resize((max(1, round(W * f)), max(1, round(H * f))))

    def crop(self, left: int, top: int, width: int, height: int) -> Geometry:
        """The input is cropped to the box at (left, top) of size (width, height)."""
        x0, y0, x1, y1 = self._box()
        return replace(
            self, input_size=(width, height),
            offset=(self.offset[0] - left, self.offset[1] - top),
            content=(max(x0 - left, 0.0), max(y0 - top, 0.0),
                     min(x1 - left, float(width)), min(y1 - top, float(height))),
        )

    def center_crop(self, size: tuple[int, int]) -> Geometry:
        """Centre crop to ``size=(W,H)`` with torchvision's rounding of the corner."""
        W, H = self.input_size
        return self.crop(int(round((W - size[0]) / 2.0)), int(round((H - size[1]) / 2.0)),
                         size[0], size[1])

    def pad(self, left: int, top: int, right: int, bottom: int) -> Geometry:
        """The input is padded by the given number of pixels on each side."""
        W, H = self.input_size
        x0, y0, x1, y1 = self._box()
        return replace(
            self, input_size=(W + left + right, H + top + bottom),
            offset=(self.offset[0] + left, self.offset[1] + top),
            content=(x0 + left, y0 + top, x1 + left, y1 + top),
        )

    def sample_axes(
        self, grid: tuple[int, int], cell: tuple[tuple[float, float], tuple[float, float]] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """For every original pixel column and row: its grid position ``u`` (W,) and ``v``
        (H,) in cells (float64, clamped to ``[0, w-1]`` and ``[0, h-1]``), and whether the
        model saw that column (W,) and row (H,) (bool).

        ``cell = ((c0x, sx), (c0y, sy))``: cell j is centred on input coordinate ``c0 + j s``;
        ``None``: on the centre of the input's j-th of w equal parts. Original pixel x is at
        input coordinate ``scale * (x + 0.5) + offset``.
        """
        h, w = grid
        W, H = self.image_size
        Win, Hin = self.input_size
        if cell is None:
            sxc, syc = Win / w, Hin / h
            cell = ((sxc / 2, sxc), (syc / 2, syc))
        (c0x, stx), (c0y, sty) = cell
        xs = self.scale[0] * (torch.arange(W, dtype=torch.float64) + 0.5) + self.offset[0]
        ys = self.scale[1] * (torch.arange(H, dtype=torch.float64) + 0.5) + self.offset[1]
        x0, y0, x1, y1 = self._box()
        seen_x = (xs >= max(x0, 0.0)) & (xs < min(x1, Win))
        seen_y = (ys >= max(y0, 0.0)) & (ys < min(y1, Hin))
        u = ((xs - c0x) / stx).clamp(0, w - 1)
        v = ((ys - c0y) / sty).clamp(0, h - 1)
        return u, v, seen_x, seen_y

    def to_image(
        self,
        maps: torch.Tensor,
        cell: tuple[tuple[float, float], tuple[float, float]] | None = None,
    ) -> torch.Tensor:
        """Maps (N,h,w) on the layer grid -> (N,H,W) on the original image (see module doc).

        Bilinear between the four cells around each pixel's grid position (:meth:`sample_axes`;
        beyond the outer cell centres, the outer cells' values), zero where the model saw
        nothing. The interpolation is separable: ``out[n] = Wy @ maps[n] @ Wx.T`` with
        :func:`interpolation_matrix` ``Wx`` (W,w) and ``Wy`` (H,h), the same numbers as
        ``grid_sample(bilinear, border, align_corners=True)`` without its float32 coordinates.
        """
        maps = maps.detach().float()
        n, h, w = maps.shape
        W, H = self.image_size
        if self._plain_resize(cell):
            return F.interpolate(maps[:, None], size=(H, W), mode="bilinear",
                                 align_corners=False)[:, 0]
        wy, wx = _weights(self, (h, w), cell)
        return wy.to(maps) @ maps @ wx.to(maps).T

    def _plain_resize(self, cell) -> bool:
        W, H = self.input_size
        return (cell is None and self.offset == (0.0, 0.0) and self._box() == (0.0, 0.0, W, H)
                and abs(self.scale[0] * self.image_size[0] - W) < 1e-9
                and abs(self.scale[1] * self.image_size[1] - H) < 1e-9)


@functools.lru_cache(maxsize=16)
def _weights(geometry: Geometry, grid: tuple[int, int], cell: Any
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`Geometry.to_image`'s ``Wy`` (H,h) and ``Wx`` (W,w), float64, zero on rows and
    columns the model did not see; cached (a result's maps are made in several calls)."""
    u, v, seen_x, seen_y = geometry.sample_axes(grid, cell)
    return (interpolation_matrix(v, grid[0]) * seen_y[:, None],
            interpolation_matrix(u, grid[1]) * seen_x[:, None])


def interpolation_matrix(pos: torch.Tensor, n: int) -> torch.Tensor:
    """(len(pos), n) linear interpolation weights: row i puts ``1 - f`` on cell ``k`` and
    ``f`` on cell ``k + 1``, where ``pos[i] = k + f`` (``pos`` in ``[0, n-1]``, float64)."""
    rows = torch.arange(pos.shape[0])
    out = torch.zeros(pos.shape[0], n, dtype=torch.float64)
    if n == 1:
        out[:, 0] = 1.0
        return out
    k = pos.floor().long().clamp(0, n - 2)
    f = pos - k
    out[rows, k] = 1.0 - f
    out[rows, k + 1] += f
    return out


def resized(image: Image.Image, size: tuple[int, int],
            resample: int = Image.BILINEAR) -> tuple[Image.Image, Geometry]:
    """``image`` resized to ``size=(W,H)`` and its geometry."""
    return image.resize(tuple(size), resample), Geometry.identity(image.size).resize(size)
