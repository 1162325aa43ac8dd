"""The math of class activation maps. Pure tensor functions: no hooks, no models.

Notation: activations ``A`` and gradients ``G = dy/dA`` of shape (N,C,h,w), one row per
explained score y. Every method returns un-normalized maps (N,h,w).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mmcam.errors import MMCamError

Box = tuple[int, int, int, int]


def gradcam(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Grad-CAM: ``alpha_k = mean_ij G_kij``, ``L = ReLU(sum_k alpha_k A_k)``."""
    alpha = G.mean(dim=(-2, -1), keepdim=True)
    return F.relu((alpha * A).sum(dim=1))


def counterfactual(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Counterfactual Grad-CAM: Grad-CAM with negated gradients (regions that lower y)."""
    return gradcam(A, -G)


def hirescam(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """HiResCAM: ``L = ReLU(sum_k G_k * A_k)`` (element-wise, no spatial averaging)."""
    return F.relu((G * A).sum(dim=1))


def gradcam_plus_plus(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al. 2018), with the exponential-score closed form.

    ``a_kij = G^2 / (2 G^2 + sum_ab A_kab * G^3)`` (0 where the denominator is 0),
    ``w_k = sum_ij a_kij ReLU(G_kij)``, ``L = ReLU(sum_k w_k A_k)``.
    """
    g2 = G.pow(2)
    g3 = G.pow(3)
    denom = 2 * g2 + A.sum(dim=(-2, -1), keepdim=True) * g3
    safe = torch.where(denom != 0, denom, torch.ones_like(denom))
    a = torch.where(denom != 0, g2 / safe, torch.zeros_like(g2))
    w = (a * F.relu(G)).sum(dim=(-2, -1), keepdim=True)
    return F.relu((w * A).sum(dim=1))


METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": gradcam,
    "gradcam++": gradcam_plus_plus,
    "hirescam": hirescam,
    "counterfactual": counterfactual,
}


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


def _largest_segment(mask: np.ndarray) -> Box | None:
    """Box of the largest 8-connected segment of a boolean mask (H,W), or None if empty.

    Run-length labelling: horizontal runs are found with numpy, runs of neighbouring rows
    that touch (8-connectivity) are merged with union-find. Ties between equally large
    segments go to the one holding the highest row-major pixel index.
    """
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    rows, x0 = np.nonzero(d == 1)
    _, x1 = np.nonzero(d == -1)  # exclusive ends, same (row, col) order as the starts
    if rows.size == 0:
        return None
    parent = list(range(rows.size))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_start = np.searchsorted(rows, np.arange(h + 1))
    for y in range(1, h):
        a, a_end = int(row_start[y - 1]), int(row_start[y])
        b, b_end = a_end, int(row_start[y + 1])
        while a < a_end and b < b_end:
            if x0[a] <= x1[b] and x0[b] <= x1[a]:  # touching, diagonals included
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[ra] = rb
            if x1[a] < x1[b]:
                a += 1
            else:
                b += 1
    roots = np.array([find(i) for i in range(rows.size)])
    size = np.bincount(roots, weights=x1 - x0, minlength=rows.size)
    last = np.zeros(rows.size, dtype=np.int64)
    np.maximum.at(last, roots, rows.astype(np.int64) * w + x1 - 1)
    cand = np.nonzero(size == size.max())[0]
    best = cand[np.argmax(last[cand])]
    sel = roots == best
    return (int(x0[sel].min()), int(rows[sel].min()), int(x1[sel].max()), int(rows[sel].max()) + 1)


def localize(maps: torch.Tensor, threshold: float = 0.15) -> list[Box | None]:
    """Weakly supervised localization boxes, as in the Grad-CAM paper.

    For each map (N,H,W): keep pixels ``>= threshold * max``, take the largest 8-connected
    segment, return its box ``(x0, y0, x1, y1)`` with x1, y1 exclusive. A map whose max is
    not positive gets ``None``. Ties between equally large segments go to the one holding
    the highest row-major pixel index.
    """
    if maps.dim() == 2:
        maps = maps.unsqueeze(0)
    maps = maps.detach().to(torch.float64).cpu()
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    masks = ((maps >= threshold * peak) & (peak > 0)).numpy()
    return [_largest_segment(m) for m in masks]


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1) with exclusive x1, y1."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0
