"""Is a map right? Metrics against ground truth and against the model itself.

Maps are (H,W) non-negative tensors (or numpy arrays) on the image's pixels; masks are bool
(H,W). A map that is empty, not finite, or of another shape than its mask or image is refused
with :class:`~mmcam.errors.MMCamError`.

- :func:`pointing_hit`: the map's peak lies in the object (within ``slack`` pixels).
- :func:`energy_ratio`: the share of the map's mass inside a region, divided by the region's
  share of the image (1 = chance; a uniform map scores 1).
- :func:`localization_correct`: the Grad-CAM paper's weakly supervised localization: the
  15%-of-max box (largest segment) has IoU >= 0.5 with the object's box; the localization
  error is the share of maps where it does not.
- :func:`perturbation_curve`: deletion (remove the most important pixels first) and insertion
  (add them to a blurred image first) curves of a model score, with their areas
  (:func:`curve_area`); :func:`random_map` and :func:`centre_blob` are the baselines.
- :func:`spearman` and :func:`randomization_check`: the cascading model-parameter
  randomization sanity check (Adebayo et al. 2018): re-initialize the layers from the output
  back, stage by stage, and measure the rank correlation of each stage's maps with the trained
  model's. A method whose maps stay correlated does not depend on what the model learned.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mmcam.cam import box_iou, localize
from mmcam.errors import MMCamError

Box = tuple[int, int, int, int]
MapLike = torch.Tensor | np.ndarray


def _as_map(map_: MapLike, shape: Sequence[int] | None = None, of: str = "the mask",
           dims: int | None = 2, name: str = "map") -> torch.Tensor:
    """``map_`` as a detached CPU tensor (integer or bool values as float64), or
    :class:`MMCamError` unless it is ``dims``-D (None: any), of ``shape`` (that of ``of``),
    non-empty and finite."""
    try:
        t = torch.as_tensor(np.asarray(map_) if not torch.is_tensor(map_) else map_)
    except (TypeError, ValueError, RuntimeError):
        raise MMCamError(f"{name} must be a tensor or array of numbers, got "
                         f"{type(map_).__name__}") from None
    t = t.detach().cpu()
    if t.is_complex():
        raise MMCamError(f"{name} must be real, got {t.dtype}")
    if not t.is_floating_point():
        t = t.double()
    if dims is not None and t.dim() != dims:
        raise MMCamError(f"{name} must be {dims}-D (H,W), got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise MMCamError(f"{name} shape {tuple(t.shape)} differs from {of}'s {tuple(shape)}; "
                         "they must be equal")
    if t.numel() == 0:
        raise MMCamError(f"{name} is empty (shape {tuple(t.shape)})")
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise MMCamError(f"{name} has {bad} NaN or infinite value(s); clean it first "
                         "(e.g. torch.nan_to_num)")
    return t


def peak(map_: MapLike) -> tuple[int, int]:
    """(x, y) of the map's first maximum in row-major order."""
    map_ = _as_map(map_)
    y, x = divmod(int(torch.argmax(map_)), map_.shape[-1])
    return x, y


def pointing_hit(map_: MapLike, mask: torch.Tensor | np.ndarray, slack: int = 0) -> bool:
    """Whether the map's peak lies within ``slack`` pixels (Chebyshev distance) of a pixel of
    ``mask``; of tied maxima the first (row-major) counts. A map with no single location
    misses: all pixels equal (it would point at pixel (0, 0)), or its max <= 0."""
    m = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
    map_ = _as_map(map_, m.shape)
    top = float(map_.max())
    if top <= 0 or top == float(map_.min()):
        return False
    x, y = peak(map_)
    H, W = m.shape
    return bool(m[max(y - slack, 0): min(y + slack + 1, H),
                  max(x - slack, 0): min(x + slack + 1, W)].any())


def box_mask(box: Box, size: tuple[int, int]) -> torch.Tensor:
    """Bool (H,W) mask of ``box`` (x0, y0, x1, y1; exclusive ends) on an image of ``size=(W,H)``."""
    W, H = size
    m = torch.zeros(H, W, dtype=torch.bool)
    m[box[1]: box[3], box[0]: box[2]] = True
    return m


def energy_ratio(map_: MapLike, mask: torch.Tensor | np.ndarray) -> float:
    """``(sum(map * mask) / sum(map)) / (area(mask) / area(image))``, negatives counted as 0;
    nan for a map with no positive value or an empty mask."""
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float64)
    a = _as_map(map_, m.shape).double().clamp(min=0)
    total, area = float(a.sum()), float(m.mean())
    if total <= 0 or area <= 0:
        return float("nan")
    return float((a * m).sum()) / total / area


def localization_correct(map_: MapLike, box: Box, threshold: float = 0.15,
                         iou: float = 0.5) -> bool:
    """The paper's criterion: the ``threshold``-of-max box of the largest segment has
    IoU >= ``iou`` with ``box``."""
    found = localize(_as_map(map_)[None], threshold)[0]
    return found is not None and box_iou(found, box) >= iou


def random_map(size: tuple[int, int], seed: int) -> torch.Tensor:
    """A baseline map of i.i.d. uniform values, ``size=(H,W)``."""
    return torch.rand(size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def centre_blob(size: tuple[int, int], sigma: float = 0.25) -> torch.Tensor:
    """A baseline map: a Gaussian at the image centre with std ``sigma`` x the side."""
    H, W = size
    y = (torch.arange(H, dtype=torch.float64) + 0.5 - H / 2) / (sigma * H)
    x = (torch.arange(W, dtype=torch.float64) + 0.5 - W / 2) / (sigma * W)
    return torch.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


def _float_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """``pixels`` with integer (e.g. uint8) values taken as floats of the default dtype."""
    return pixels if pixels.is_floating_point() else pixels.to(torch.get_default_dtype())


def blurred(pixels: torch.Tensor, kernel: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """A Gaussian blur of pixels (3,H,W) (replicate padding): the "absent" image."""
    pixels = _float_pixels(pixels)
    r = torch.arange(kernel, dtype=pixels.dtype) - (kernel - 1) / 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    g = g / g.sum()
    x = F.pad(pixels[None], (kernel // 2,) * 4, mode="replicate")
    c = pixels.shape[0]
    x = F.conv2d(x, g.reshape(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    x = F.conv2d(x, g.reshape(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)
    return x[0]


def mean_fill(pixels: torch.Tensor) -> torch.Tensor:
    """The image's mean color at every pixel of pixels (3,H,W) or of each image of a batch
    (B,3,H,W), the mean taken in float32 or better: the "absent" image of a deletion that
    removes color as well as shape (a blur keeps an object's color), and the integrated
    method's baseline (:func:`mmcam.cam.integrated`)."""
    pixels = _float_pixels(pixels)
    wide = pixels.to(torch.promote_types(pixels.dtype, torch.float32))
    return wide.mean(dim=(-2, -1), keepdim=True).to(pixels.dtype).expand_as(pixels).clone()


FILLS = {"mean": mean_fill, "blur": blurred}
"""How a removed pixel is filled: the image's mean color, or a Gaussian blur of the image."""


def ranking(map_: MapLike) -> torch.Tensor:
    """Pixel indices (row-major) from the most to the least important; ties in index order."""
    flat = _as_map(map_, dims=None).double().reshape(-1)
    return torch.sort(-flat, stable=True).indices


def _fractions(fractions: Iterable[float]) -> list[float]:
    """``fractions`` as a list, or :class:`MMCamError` unless they are numbers in [0, 1], at
    least one."""
    fr = list(fractions) if isinstance(fractions, Iterable) and not isinstance(
        fractions, (str, bytes)) else []
    try:
        a = np.asarray(fr)
    except ValueError:  # ragged
        a = np.empty(0)
    if not (fr and a.ndim == 1 and a.dtype.kind in "iuf" and ((a >= 0) & (a <= 1)).all()):
        raise MMCamError("fractions must be a non-empty sequence of numbers in [0, 1], got "
                         f"{fr if fr else fractions!r}")
    return fr


def perturbation_curve(
    score: Callable[[torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    map_: MapLike,
    mode: str = "deletion",
    fractions: Sequence[float] = tuple(i / 10 for i in range(11)),
    absent: torch.Tensor | None = None,
) -> tuple[list[float], list[float]]:
    """Scores of images with a growing share of pixels changed, most important first.

    ``score(images (B,3,H,W)) -> (B,)``; ``pixels`` (3,H,W) in the space the map (H,W) is
    drawn on, integer values taken as floats; ``absent`` (3,H,W) the values a removed pixel
    takes (default: :func:`blurred`); ``fractions`` in [0, 1], at least one.
    ``mode="deletion"``: start from ``pixels`` and replace the top pixels by ``absent``;
    ``"insertion"``: start from ``absent`` and restore the top pixels. Returns (fractions,
    scores)."""
    if mode not in ("deletion", "insertion"):
        raise MMCamError(f"unknown mode {mode!r}: use 'deletion' or 'insertion'")
    if pixels.dim() != 3:
        raise MMCamError(f"pixels must be (C,H,W), got shape {tuple(pixels.shape)}")
    map_ = _as_map(map_, pixels.shape[-2:], of="the image")
    fractions = _fractions(fractions)
    pixels = _float_pixels(pixels)
    absent = blurred(pixels) if absent is None else absent
    order = ranking(map_)
    n = order.numel()
    batch = []
    for f in fractions:
        keep = torch.zeros(n, dtype=torch.bool)
        keep[order[: int(round(f * n))]] = True
        top = keep.reshape(map_.shape).to(pixels.device)
        src, dst = (absent, pixels) if mode == "deletion" else (pixels, absent)
        batch.append(torch.where(top[None], src, dst))
    with torch.no_grad():
        s = score(torch.stack(batch)).double().reshape(-1)
    return fractions, s.tolist()


def curve_area(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Area under a curve by the trapezoid rule; ``xs`` and ``ys`` of one length."""
    if np.ndim(xs) != 1 or np.shape(xs) != np.shape(ys):
        raise MMCamError(f"curve_area needs xs and ys of one length, got shapes "
                         f"{np.shape(xs)} and {np.shape(ys)}")
    return float(np.trapezoid(ys, xs)) if hasattr(np, "trapezoid") else float(np.trapz(ys, xs))


def spearman(a: MapLike, b: MapLike) -> float:
    """Spearman rank correlation of two maps of one shape (ties get their mean rank); nan if
    either is constant."""
    a = _as_map(a, dims=None, name="first map")
    b = _as_map(b, a.shape, of="the first map", dims=None, name="second map")

    def ranks(x: torch.Tensor) -> torch.Tensor:
        x = x.double().reshape(-1)
        order = torch.sort(x, stable=True).indices
        r = torch.empty_like(x)
        r[order] = torch.arange(x.numel(), dtype=torch.float64)
        # mean rank within ties
        uniq, inv = torch.unique(x, return_inverse=True)
        sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inv, r)
        counts = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(
            0, inv, torch.ones_like(r))
        return (sums / counts)[inv]

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else float("nan")


def parameter_stages(module: nn.Module) -> list[str]:
    """Names of ``module``'s children that hold parameters, in registration order (a
    model's input-to-output order by convention)."""
    return [n for n, m in module.named_children() if any(True for _ in m.parameters())]


def randomization_check(
    model: nn.Module,
    maps_of: Callable[[nn.Module], Any],
    stages: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Any:
    """Cascading randomization: re-initialize the ``stages`` (submodule names, input to
    output; default :func:`parameter_stages` of ``model``) from the last one back, one more
    per step, on a copy of ``model``; for each step the mean Spearman correlation between
    ``maps_of(copy)`` (N,H,W) and ``maps_of(model)``. Returns ``[(stage, rho), ...]`` in the
    order the stages were randomized; if ``maps_of`` returns a dict of map stacks (several
    methods from one pass), a dict of such lists. ``model`` itself is not changed."""
    known = parameter_stages(model)
    stages = list(stages if stages is not None else known)
    if not stages:
        raise MMCamError("no stage with parameters to randomize")
    for name in stages:
        try:
            model.get_submodule(name)
        except (AttributeError, TypeError):
            raise MMCamError(f"unknown stage {name!r}: {type(model).__name__}'s stages are "
                             f"{', '.join(known) or '(none)'}") from None
    ref = maps_of(model)
    many = isinstance(ref, dict)
    refs = ref if many else {None: ref}
    work = copy.deepcopy(model)
    out: dict[Any, list[tuple[str, float]]] = {k: [] for k in refs}
    steps = list(reversed(stages))
    for k, name in enumerate(tqdm(steps, desc="randomization check", disable=not progress)):
        randomize(work.get_submodule(name), seed + k)
        now = maps_of(work)
        for key, maps in (now if many else {None: now}).items():
            rhos = [spearman(a, b) for a, b in zip(refs[key], maps)]
            rhos = [r for r in rhos if r == r]
            out[key].append((name, float(np.mean(rhos)) if rhos else float("nan")))
    return out if many else out[None]


def randomize(module: nn.Module, seed: int) -> None:
    """Re-initialize ``module`` in place: every submodule's ``reset_parameters()`` (its
    default initialization), and parameters no such method covers drawn from
    ``N(0, std(p)^2)``; seeded."""
    covered: set[int] = set()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
                covered |= {id(p) for p in m.parameters(recurse=False)}
        with torch.no_grad():
            for p in module.parameters():
                if id(p) not in covered:
                    std = float(p.float().std()) if p.numel() > 1 else 0.0
                    p.copy_(torch.randn_like(p) * (std if std > 0 else 0.05))
