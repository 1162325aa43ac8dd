"""Drawing: heat-map overlays, guided-backprop images and boxes (PIL; matplotlib colormaps)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

Box = tuple[int, int, int, int]


def colorize(heat: np.ndarray | torch.Tensor, cmap: str = "jet") -> np.ndarray:
    """Map values in [0,1] (H,W) to RGB uint8 (H,W,3) with a matplotlib colormap."""
    from matplotlib import colormaps

    h = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat)
    rgba = colormaps[cmap](np.clip(h, 0.0, 1.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def overlay(
    image: Image.Image,
    heat: np.ndarray | torch.Tensor,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Image.Image:
    """Blend a [0,1] heat map (H,W) over ``image``: ``(1-alpha)*image + alpha*color(heat)``.

    The map is resized (bilinear) to the image if their sizes differ.
    """
    rgb = image.convert("RGB")
    colored = Image.fromarray(colorize(heat, cmap))
    if colored.size != rgb.size:
        colored = colored.resize(rgb.size, Image.BILINEAR)
    return Image.blend(rgb, colored, float(alpha))


def guided_image(grad: torch.Tensor) -> Image.Image:
    """Render a guided-backprop map (3,H,W) as in the paper: ``clip(0.5 + 0.1 * g / std(g))``."""
    g = grad.detach().cpu().to(torch.float64)
    g = g - g.mean()
    std = g.std()
    g = g / std if std > 0 else g
    arr = (0.5 + 0.1 * g).clamp(0, 1).permute(1, 2, 0).numpy()
    return Image.fromarray((arr * 255).round().astype(np.uint8))


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[Box | None],
    color: str | Sequence[str] = "lime",
    width: int = 2,
) -> Image.Image:
    """Return a copy of ``image`` with boxes (x0, y0, x1, y1; exclusive ends) drawn on it."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    colors = [color] * len(boxes) if isinstance(color, str) else list(color)
    for box, c in zip(boxes, colors):
        if box is not None:
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=c, width=width)
    return out
