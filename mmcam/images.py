"""Loading images from a path, a PIL image or a tensor, with clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mmcam.errors import MMCamError

ImageInput = str | os.PathLike | Image.Image | torch.Tensor | np.ndarray


def load_image(image: ImageInput) -> Image.Image:
    """Return ``image`` as a fully decoded RGB PIL image.

    Accepts a file path, a PIL image, a float tensor/array (3,H,W) or (H,W,3) in [0,1],
    or a uint8 array (H,W,3). Raises :class:`MMCamError` for a missing, unreadable or
    truncated file and for arrays of the wrong shape.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.exists():
            raise MMCamError(f"image not found: {path}")
        if path.is_dir():
            raise MMCamError(f"image path is a folder, not a file: {path}")
        try:
            with Image.open(path) as im:
                im.load()  # decode now so a truncated file fails here
                return im.convert("RGB")
        except UnidentifiedImageError:
            raise MMCamError(f"not an image file (cannot identify format): {path}") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise MMCamError(f"cannot read image {path}: {e} (is the file truncated?)") from None
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
            arr = arr.transpose(1, 2, 0)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise MMCamError(
                f"image array must have shape (3,H,W) or (H,W,3), got {tuple(image.shape)}"
            )
        if arr.dtype != np.uint8:
            arr = np.clip(np.asarray(arr, dtype=np.float64), 0.0, 1.0) * 255.0
            arr = np.round(arr).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
    raise MMCamError(
        f"unsupported image type {type(image).__name__}: give a path, a PIL image or a tensor"
    )
