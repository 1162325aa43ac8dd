"""The math of class activation maps. Pure tensor functions: no hooks, no models.

Notation: activations ``A`` and gradients ``G = dy/dA`` of shape (N,C,h,w), one row per
explained score y. Every method returns un-normalized maps (N,h,w).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmcam.errors import MMCamError
from mmcam.registry import PATH_STEPS  # noqa: F401  (re-exported: the default steps)

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Reduced:
    """The two things Grad-CAM and HiResCAM read of row gradients G (n,C,h,w), without G:
    ``alpha = mean_ij G`` (n,C) and ``hires = sum_k G_k * A_k`` (n,h,w).

    Both are linear in G, so rows index, sum and subtract as G's rows would
    (``R[i]``, ``R[None]``, ``R.sum(dim=0)``, ``R1 - R2``, ``-R``).
    Made by the "readers" strategy (:mod:`mmcam.engine`).
    """

    alpha: torch.Tensor
    hires: torch.Tensor

    def __len__(self) -> int:
        return self.alpha.shape[0]

    def __getitem__(self, index: Any) -> Reduced:
        return Reduced(self.alpha[index], self.hires[index])

    def __sub__(self, other: Reduced) -> Reduced:
        return Reduced(self.alpha - other.alpha, self.hires - other.hires)

    def __neg__(self) -> Reduced:
        return Reduced(-self.alpha, -self.hires)

    def sum(self, dim: int = 0) -> Reduced:
        if dim != 0:
            raise ValueError("Reduced rows sum over dim 0 only")
        return Reduced(self.alpha.sum(dim=0), self.hires.sum(dim=0))

    def cpu(self) -> Reduced:
        return Reduced(self.alpha.cpu(), self.hires.cpu())

    def float(self) -> Reduced:
        return Reduced(self.alpha.float(), self.hires.float())

    @property
    def shape(self) -> torch.Size:
        """The shape G would have: (n, C, h, w)."""
        return torch.Size((*self.alpha.shape, *self.hires.shape[-2:]))


def _needs_full(G: Any, method: str) -> None:
    if isinstance(G, Reduced):
        raise MMCamError(f"{method} needs the full gradients, which the 'readers' strategy does "
                         "not form: use strategy='vjp' (or 'auto')")


def gradcam(A: torch.Tensor, G: torch.Tensor | Reduced) -> torch.Tensor:
    """Grad-CAM: ``alpha_k = mean_ij G_kij``, ``L = ReLU(sum_k alpha_k A_k)``."""
    if isinstance(G, Reduced):
        alpha = G.alpha[..., None, None]
    else:
        alpha = G.mean(dim=(-2, -1), keepdim=True)
    return F.relu((alpha * A).sum(dim=1))


def counterfactual(A: torch.Tensor, G: torch.Tensor | Reduced) -> torch.Tensor:
    """Counterfactual Grad-CAM: Grad-CAM with negated gradients (regions that lower y)."""
    return gradcam(A, -G)


def hirescam(A: torch.Tensor, G: torch.Tensor | Reduced) -> torch.Tensor:
    """HiResCAM: ``L = ReLU(sum_k G_k * A_k)`` (element-wise, no spatial averaging)."""
    if isinstance(G, Reduced):
        return F.relu(G.hires)
    return F.relu((G * A).sum(dim=1))


def gradcam_plus_plus(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al. 2018), with the exponential-score closed form.

    ``a_kij = G^2 / (2 G^2 + sum_ab A_kab * G^3)`` (0 where the denominator is 0),
    ``w_k = sum_ij a_kij ReLU(G_kij)``, ``L = ReLU(sum_k w_k A_k)``.
    """
    _needs_full(G, "gradcam++")
    g2 = G.pow(2)
    g3 = G.pow(3)
    denom = 2 * g2 + A.sum(dim=(-2, -1), keepdim=True) * g3
    safe = torch.where(denom != 0, denom, torch.ones_like(denom))
    a = torch.where(denom != 0, g2 / safe, torch.zeros_like(g2))
    w = (a * F.relu(G)).sum(dim=(-2, -1), keepdim=True)
    return F.relu((w * A).sum(dim=1))


def integrated(D: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Integrated gradients at the layer (Sundararajan et al. 2017), summed over channels:
    ``L = ReLU(sum_k D_k * Gbar_k)`` with ``D = A - A0`` the layer's activation minus its
    activation on the baseline image (every pixel its image's mean color) and ``Gbar`` the
    mean of ``dy/dA`` at ``A0 + alpha_j D``, ``alpha_j = (j - 1/2) / m``, j = 1..m (midpoint
    rule, :data:`PATH_STEPS`). The pipeline hands this function ``D`` and ``Gbar`` as
    ``A`` and ``G`` (:data:`PATH_METHODS`). Before the ReLU the map sums to
    ``y(A) - y(A0)`` up to the midpoint rule's error (completeness)."""
    _needs_full(G, "integrated")
    return F.relu((G * D).sum(dim=1))


METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": gradcam,
    "gradcam++": gradcam_plus_plus,
    "hirescam": hirescam,
    "counterfactual": counterfactual,
    "integrated": integrated,
}

# methods whose A and G are a path's: A - A0 and the mean gradient along the straight path
# from the baseline's activation A0 to A (:func:`integrated`), in PATH_STEPS gradient passes
PATH_METHODS = ("integrated",)


# methods computed from :class:`Reduced` gradients (the "readers" strategy)
REDUCIBLE = ("gradcam", "hirescam", "counterfactual")


def get_method(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Return the map function registered under ``name`` (see :data:`METHODS`)."""
    try:
        return METHODS[name]
    except KeyError:
        raise MMCamError(
            f"unknown method {name!r}: choose one of {', '.join(METHODS)}"
        ) from None


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling (align_corners=False) of maps (N,h,w) to (N,H,W), ``size=(H,W)``."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[
        :, 0
    ]


def normalize(maps: torch.Tensor, shared: bool = True, eps: float = 1e-12) -> torch.Tensor:
    """Scale non-negative maps (N,H,W) to [0,1] for display: ``m / max``.

    ``shared=True`` divides every map by the largest value over all maps (maps stay
    comparable); ``shared=False`` divides each map by its own max. All-zero maps stay zero.
    """
    if shared:
        scale = maps.amax()
        return maps / scale.clamp_min(eps)
    scale = maps.amax(dim=(-2, -1), keepdim=True)
    return maps / scale.clamp_min(eps)


def _largest_segments(masks: np.ndarray) -> list[Box | None]:
    """Box of the largest 8-connected segment of each boolean mask (N,H,W), None if empty.

    Run-length labelling, vectorized over all masks (stacked with a blank row between them):
    horizontal runs are found with numpy; a run touches the runs of the next row whose
    ``x0 <= its x1`` and ``x1 >= its x0`` (exclusive ends, so diagonals count); components
    are found by min-label propagation with pointer jumping. Ties between equally large
    segments go to the one holding the highest row-major pixel index.
    """
    n, h, w = masks.shape
    m = w + 2
    padded = np.zeros((n, h + 1, m), dtype=np.int8)
    padded[:, :h, 1:-1] = masks
    d = np.diff(padded.reshape(n * (h + 1), m), axis=1)
    edges = np.flatnonzero(d != 0)  # run starts (+1), exclusive ends (-1); bool: 6x faster
    up = d.ravel()[edges] == 1
    rows, x0 = np.divmod(edges[up], m - 1)
    x1 = edges[~up] % (m - 1)  # same (row, col) order as the starts
    out: list[Box | None] = [None] * n
    r = rows.size
    if r == 0:
        return out
    key0, key1 = rows * m + x0, rows * m + x1  # sorted: runs in row-major order
    lo = np.searchsorted(key1, (rows + 1) * m + x0, "left")
    hi = np.searchsorted(key0, (rows + 1) * m + x1, "right")
    cnt = np.maximum(hi - lo, 0)  # runs of the next row touching each run
    src = np.repeat(np.arange(r), cnt)
    dst = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt) + np.arange(int(cnt.sum()))
    label = np.arange(r)
    while src.size:
        la, lb = label[src], label[dst]
        if np.array_equal(la, lb):
            break
        low = np.minimum(la, lb)
        np.minimum.at(label, la, low)
        np.minimum.at(label, lb, low)
        while True:  # labels point to a smaller run of the same segment: jump to the root
            nxt = label[label]
            if np.array_equal(nxt, label):
                break
            label = nxt
    img, y = rows // (h + 1), rows % (h + 1)
    size = np.bincount(label, weights=x1 - x0, minlength=r)
    last = np.full(r, -1, dtype=np.int64)
    np.maximum.at(last, label, y.astype(np.int64) * w + x1 - 1)
    roots = np.nonzero(label == np.arange(r))[0]
    ranked = roots[np.lexsort((last[roots], size[roots], img[roots]))]
    best = ranked[np.r_[img[ranked][1:] != img[ranked][:-1], True]]
    for b in best:
        sel = label == b
        out[int(img[b])] = (int(x0[sel].min()), int(y[sel].min()), int(x1[sel].max()),
                            int(y[sel].max()) + 1)
    return out


def localize(maps: torch.Tensor, threshold: float = 0.15) -> list[Box | None]:
    """Weakly supervised localization boxes, as in the Grad-CAM paper.

    For each map (N,H,W): keep pixels ``>= threshold * max``, take the largest 8-connected
    segment, return its box ``(x0, y0, x1, y1)`` with x1, y1 exclusive. A map whose max is
    not positive gets ``None``. Ties between equally large segments go to the one holding
    the highest row-major pixel index.
    """
    if maps.dim() == 2:
        maps = maps.unsqueeze(0)
    maps = maps.detach().cpu()
    if maps.dtype != torch.float32:
        maps = maps.to(torch.float64)
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    masks = ((maps >= _cut(threshold * peak.double(), maps.dtype)) & (peak > 0)).numpy()
    return _largest_segments(masks)


def _cut(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The smallest value of ``dtype`` >= ``t`` (float64): ``x >= _cut(t)`` equals ``x >= t``
    for every ``x`` of ``dtype``, compared without converting the maps to float64."""
    c = t.to(dtype)
    return torch.where(c.double() < t, torch.nextafter(c, torch.full_like(c, float("inf"))), c)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1) with exclusive x1, y1."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0
