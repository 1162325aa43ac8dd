"""Where each cell of the explained layer looks: grid-to-pixel mapping derived from the model.

Bilinear upsampling with ``align_corners=False`` draws grid cell ``j`` at input coordinate
``s/2 + j s`` (``s = W_in / w``). A convolution stack centres cell ``j``'s receptive field
elsewhere: stride-2, padding-1 3x3 convolutions put it on pixel ``8j`` (continuous
coordinate ``8j + 1/2``), a ResNet's layer4 on pixel ``32j``. :func:`receptive_cells` finds
the mapping ``centre(j) = c0 + j s`` per axis from the model itself:

1. Probe cells near the middle of the grid; for each, the gradient of the sum of its
   channels with respect to the input pixels, ``|d sum_c A[c,i,j] / d x|`` summed over colour
   channels, marginalized onto each axis.
2. A probe's gradient support (entries above ``1e-6`` of its max) is its receptive field,
   whatever the weights (a cell sees exactly its support), clipped by the input's border.
   Every bound that does not lie on the border is an equation ``c0 + s j -/+ r = bound``
   (one receptive-field width ``2r`` for all cells, as in any convolution stack), solved
   for ``(c0, s, r)`` by least squares (:func:`fit_edges`).
3. When the bounds do not determine them (large receptive fields such as ResNet-50 layer4
   at 224 px), the probe is repeated on a larger input of noise (2x, then 4x, at most
   1024 px), if the model accepts one: a convolution stack's cell centres do not depend on
   the input size (padding is anchored at the top-left corner).
4. Where the support still covers the whole input (attention: every token sees every
   pixel; or a receptive field wider than 4x the input), the cells are taken to sit where
   their grid was made, the uniform patch grid ``s/2 + j s``: what a ViT's patch embedding
   does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Cell = tuple[tuple[float, float], tuple[float, float]]  # ((c0x, sx), (c0y, sy))
ALIGNS = ("receptive", "bilinear")
MAX_PROBE = 1024  # longest side of a probe canvas, px
MAX_SCALE = 4  # largest canvas, as a multiple of the input


class _Stop(Exception):
    """Raised inside the layer hook to end a probe's forward pass early."""


def support_edges(profile: torch.Tensor, rel: float = 1e-6) -> tuple[float | None, float | None]:
    """(lo, hi): the continuous bounds (pixel i covers [i, i+1)) of the entries of a 1-D
    non-negative ``profile`` above ``rel * max``; a bound that lies on the profile's end is
    None (it may be clipped by the input's border), both None for an all-zero profile."""
    top = float(profile.max())
    if top <= 0:
        return None, None
    nz = (profile > rel * top).nonzero()[:, 0]
    lo, hi = int(nz.min()), int(nz.max()) + 1
    return (float(lo) if lo > 0 else None), (float(hi) if hi < profile.shape[0] else None)


def fit_edges(edges: list[tuple[int, float | None, float | None]]) -> tuple[float, float] | None:
    """``(c0, s)`` from receptive-field bounds of cells ``(j, lo, hi)`` on one axis.

    A convolution stack's receptive field has one width ``2r`` for every cell, so each known
    bound is one linear equation: ``lo = c0 + s j - r``, ``hi = c0 + s j + r``; solved by
    least squares when the equations determine ``(c0, s, r)``, else None."""
    rows, rhs = [], []
    for j, lo, hi in edges:
        if lo is not None:
            rows.append([1.0, float(j), -1.0])
            rhs.append(lo)
        if hi is not None:
            rows.append([1.0, float(j), 1.0])
            rhs.append(hi)
    if not rows:
        return None
    M = torch.tensor(rows, dtype=torch.float64)
    if int(torch.linalg.matrix_rank(M)) < 3:
        return None
    sol = torch.linalg.lstsq(M, torch.tensor(rhs, dtype=torch.float64)[:, None]).solution[:, 0]
    return float(sol[0]), float(sol[1])


def probe_cells(h: int, w: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Three cells on the grid's diagonal: the middle one and its two neighbours (their
    far bounds are the least likely to be clipped by the border)."""
    i, j = h // 2, w // 2
    return ((max(i - 1, 0), max(j - 1, 0)), (i, j), (min(i + 1, h - 1), min(j + 1, w - 1)))


def _probe(to_grid: Callable[[torch.Tensor], torch.Tensor], px: torch.Tensor
           ) -> tuple[tuple[int, int], list[list[tuple[int, float | None, float | None]]]]:
    """Grid (h,w) and, per axis (x, y), receptive-field bounds ``(j, lo, hi)`` of probe
    cells, from two gradients with respect to ``px``: of the middle cell's channel sum (both
    its bounds), and of the two outer cells' together (the first one's lower bound and the
    last one's upper bound, as bounds grow with the cell index)."""
    x = px.detach().clone().requires_grad_(True)
    axes: list[list] = [[], []]
    with torch.enable_grad():
        A = to_grid(x)  # (1,C,h,w)
        h, w = A.shape[-2:]
        first, mid, last = probe_cells(h, w)
        for k, cells in enumerate(((mid,), (first, last))):
            y = sum(A[0, :, i, j].sum() for i, j in cells)
            g, = torch.autograd.grad(y, x, retain_graph=k == 0)
            p = g[0].abs().sum(0).double()  # (H,W)
            for axis, prof in enumerate((p.sum(0), p.sum(1))):
                lo, hi = support_edges(prof)
                a, b = cells[0][1 - axis], cells[-1][1 - axis]
                axes[axis] += [(a, lo, hi)] if a == b else [(a, lo, None), (b, None, hi)]
    return (h, w), axes


def receptive_cells(to_grid: Callable[[torch.Tensor], torch.Tensor], px: torch.Tensor) -> Cell:
    """``((c0x, sx), (c0y, sy))`` for the layer read by ``to_grid(pixels) -> (1,C,h,w)`` on
    inputs shaped like ``px`` (1,3,H,W), in input pixel coordinates (see module doc)."""
    H, W = px.shape[-2:]
    (h, w), axes = _probe(to_grid, px)
    found = [fit_edges(axes[0]), fit_edges(axes[1])]
    scale = 2
    while (found[0] is None or found[1] is None) and scale <= MAX_SCALE and \
            max(H, W) * scale <= MAX_PROBE:
        big = torch.randn(1, px.shape[1], H * scale, W * scale,
                          generator=torch.Generator().manual_seed(0)).to(px.device, px.dtype)
        try:
            _, axes = _probe(to_grid, big)
        except Exception:  # the model takes one input size only (e.g. fixed position tables)
            break
        found = [f if f is not None else fit_edges(e) for f, e in zip(found, axes)]
        scale *= 2
    sx, sy = W / w, H / h
    return (found[0] or (sx / 2, sx), found[1] or (sy / 2, sy))


def run_to_layer(to_layer: Callable[[torch.Tensor, Callable], None], px: torch.Tensor
                 ) -> torch.Tensor:
    """The explained layer's raw output for pixels ``px``; the forward pass stops there.

    ``to_layer(pixels, feed)`` runs the model on ``pixels`` and calls ``feed`` with the
    layer's output."""
    store: dict[str, torch.Tensor] = {}

    def feed(a: torch.Tensor) -> torch.Tensor:
        store["a"] = a
        raise _Stop

    try:
        to_layer(px, feed)
    except _Stop:
        pass
    if "a" not in store:
        raise RuntimeError("the explained layer did not run")
    return store["a"]
