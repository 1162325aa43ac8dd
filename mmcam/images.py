"""Loading images from a path, a PIL image or a tensor, with clear errors.

Limits (documented in the README):

- an image over :data:`MAX_PIXELS` pixels (default 2**21, about 1448x1448; set
  ``MMCAM_MAX_PIXELS`` to change it) is downscaled, keeping its aspect ratio, before it is
  explained, with an :class:`ImageDownscaled` warning: maps are drawn on the image's pixels,
  so one map per word at 100 megapixels would exhaust memory;
- a file over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS`` x 2, about
  179 M pixels) is refused with :class:`MMCamError` before it is decoded.

High bit depths are scaled to 8 bits rather than clipped: 16-bit grey (modes ``I;16*`` and
``I``, read as 0..65535) becomes ``value >> 8``; 32-bit float (mode ``F``, or a float array)
in [0, 1] becomes ``round(255 * value)``, in [0, 255] is rounded, any other range is
stretched linearly from its min..max to 0..255. 16-bit colour (48- and 64-bit PNGs and TIFFs,
which PIL decodes to 8 bits itself) is ``value >> 8`` per channel too. Integer arrays other
than uint8: values in 0..255 are taken as they are, in 0..65535 as ``value >> 8`` (as a 16-bit
PNG), any other range stretched. NaN or infinite pixels are refused.

An animated GIF, WebP or PNG, or a multi-page TIFF, gives its first frame, as a still viewer
shows it, with an :class:`ImageFirstFrame` notice.

A file or PIL image with an EXIF orientation (phone photos taken upright are often stored
sideways, with a tag saying how to turn them) is turned upright first, as image viewers,
browsers and transformers' ``load_image`` show it: the model sees it upright, and maps and
boxes are in the upright image's pixels.

Transparent pixels (an alpha channel, a palette's or a PNG's transparent colour) are shown over
white, ``a/255 * value + (1 - a/255) * 255`` for alpha ``a``, as a browser shows the image on a
white page: dropping alpha (PIL's and transformers' ``convert("RGB")``) shows whatever colour
lies under alpha 0, often black, so a logo on a transparent background became a black image.

Colours are converted from an embedded ICC profile (RGB or grey; Display P3, Adobe RGB, a
grey gamma) to sRGB, relative colorimetric, as browsers and viewers show them; the result is
untagged sRGB. The stored pixels are kept under an sRGB profile (one that moves no colour by
more than one level) and under a profile that cannot be read or does not fit the image (a
CMYK profile: CMYK is converted with PIL's plain formula, ``(255 - C) * (255 - K) / 255``).
"""

from __future__ import annotations

import functools
import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from mmcam.errors import MMCamError

ImageInput = str | os.PathLike | Image.Image | torch.Tensor | np.ndarray

MAX_PIXELS = 2**21
"""Default pixel limit above which an image is downscaled for explaining."""


class ImageNotice(UserWarning):
    """Something was done to the image before explaining it; the message is one line (the CLI
    prints it as a note)."""


class ImageDownscaled(ImageNotice):
    """An image was over the pixel limit and was downscaled."""


class ImageFirstFrame(ImageNotice):
    """An image had several frames (an animation, a multi-page file); the first is explained."""


def max_pixels() -> int:
    """The pixel limit in force: ``$MMCAM_MAX_PIXELS`` if set, else :data:`MAX_PIXELS`."""
    raw = os.environ.get("MMCAM_MAX_PIXELS", "").strip()
    if not raw:
        return MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value < 1:
        raise MMCamError(f"MMCAM_MAX_PIXELS={raw!r}: give a positive number of pixels")
    return value


def load_image(image: ImageInput) -> Image.Image:
    """Return ``image`` as a fully decoded RGB PIL image of at most :func:`max_pixels` pixels.

    Accepts a file path, a PIL image, a float tensor/array (3,H,W) or (H,W,3) in [0,1],
    or a uint8 array (H,W,3). Raises :class:`MMCamError` for a missing, unreadable or
    truncated file, a decompression bomb, an empty image, NaN pixels and arrays of the
    wrong shape. See the module docstring for bit depths and the pixel limit.
    """
    if isinstance(image, Image.Image):
        return _finish(image, "the image")
    if isinstance(image, (str, os.PathLike)):
        return _load_path(Path(image))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype == torch.bfloat16:
            image = image.float()
        image = image.numpy()
    if isinstance(image, np.ndarray):
        return _finish(_from_array(image), "the image array")
    raise MMCamError(
        f"unsupported image type {type(image).__name__}: give a path, a PIL image or a tensor"
    )


def _load_path(path: Path) -> Image.Image:
    if not path.exists():
        link = (f" (a link to {os.readlink(path)}, which does not exist)"
                if path.is_symlink() else "")
        raise MMCamError(f"image not found: {path}{link}")
    if path.is_dir():
        raise MMCamError(f"image path is a folder, not a file: {path}")
    try:
        with warnings.catch_warnings():
            # between Pillow's two limits: we downscale it ourselves, with our own notice
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", "Corrupt EXIF data", UserWarning)  # see _upright
            with Image.open(path) as im:
                im.draft("RGB", _fit(im.size, max_pixels()))  # JPEG: decode at a lower scale
                im.load()  # decode now so a truncated file fails here
                return _finish(im, str(path))
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise MMCamError(
            f"image {path} is too large to decode safely (over Pillow's limit of "
            f"{limit / 1e6:.0f} M pixels): shrink it first"
        ) from None
    except UnidentifiedImageError:
        raise MMCamError(f"not an image file (cannot identify format): {path}") from None
    except MemoryError:
        raise MMCamError(f"not enough memory to decode image {path}: shrink it first") from None
    except PermissionError:
        raise MMCamError(f"cannot read image {path}: permission denied") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, MMCamError):
            raise
        raise MMCamError(f"cannot read image {path}: {e} (is the file truncated?)") from None


def _from_array(image: np.ndarray) -> Image.Image:
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
    _check_size(arr.shape[1], arr.shape[0], "the image array")
    if arr.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number) or \
            np.issubdtype(arr.dtype, np.complexfloating):
        raise MMCamError(f"image array has dtype {arr.dtype}: give uint8, integers or floats")
    a = np.asarray(arr, dtype=np.float64)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and 255.0 < hi <= 65535.0:  # 16-bit data, as a 16-bit PNG is read
            a = np.floor(a / 256.0)
        elif lo < 0.0 or hi > 255.0:
            a = _stretch(a, lo, hi)
        return Image.fromarray(a.astype(np.uint8), mode="RGB")
    return Image.fromarray(_float_to_8bit(a, "the image array"), mode="RGB")


def _check_size(width: int, height: int, what: str) -> None:
    if width < 1 or height < 1:
        raise MMCamError(f"{what} is empty ({width}x{height} pixels): give a non-empty image")


def _check_finite(a: np.ndarray, what: str) -> None:
    if not np.isfinite(a).all():
        raise MMCamError(f"{what} has NaN or infinite pixels: replace them before explaining")


def _to_8bit(im: Image.Image, what: str) -> Image.Image:
    """16-bit and float images scaled to 8 bits (Pillow's convert clips them instead); a
    16-bit transparent value (PNG tRNS) becomes alpha 0 for exactly that value."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        grey = Image.fromarray((np.clip(a, 0, 65535) >> 8).astype(np.uint8), mode="L")
        key = im.info.get("transparency")
        if not isinstance(key, int):
            return grey
        alpha = Image.fromarray(np.where(a == key, 0, 255).astype(np.uint8), mode="L")
        return Image.merge("LA", (grey, alpha))
    if im.mode == "F":
        return Image.fromarray(_float_to_8bit(np.asarray(im, dtype=np.float64), what),
                               mode="L")
    return im


def _stretch(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``lo..hi`` mapped linearly onto 0..255, rounded (all 0 when ``hi == lo``)."""
    return np.round((a - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(a)


def _float_to_8bit(a: np.ndarray, what: str) -> np.ndarray:
    """Float pixels as uint8: in [0, 1] ``round(255 * a)``, in [0, 255] rounded, any other
    range stretched from its min..max; NaN or infinite pixels refused."""
    _check_finite(a, what)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif lo < 0.0 or hi > 255.0:
        a = _stretch(a, lo, hi)
    return np.round(np.clip(a, 0, 255)).astype(np.uint8)


def _fit(size: tuple[int, int], limit: int) -> tuple[int, int]:
    """The largest size with ``size``'s aspect ratio and at most ``limit`` pixels."""
    w, h = size
    if w * h <= limit:
        return w, h
    s = math.sqrt(limit / (w * h))
    w2, h2 = max(1, int(w * s + 1e-6)), max(1, int(h * s + 1e-6))
    while w2 * h2 > limit:  # rounding
        w2, h2 = max(1, w2 - (w2 >= h2)), max(1, h2 - (h2 > w2))
    return w2, h2


def _upright(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF orientation tag (0x0112, values 2-8) says, the tag dropped;
    ``im`` itself when it has no such tag or its EXIF block is broken (PIL's warning about
    it silenced: the pixels are still good)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Corrupt EXIF data", UserWarning)
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:
            return im
        if orientation not in range(2, 9):
            return im
        return ImageOps.exif_transpose(im)


def _over_white(im: Image.Image) -> Image.Image:
    """``im`` (LA or RGBA, straight alpha) over a white background, each pixel
    ``a/255 * value + (1 - a/255) * 255`` for alpha ``a``: in mode L or RGB."""
    base = im.mode[:-1]
    white = Image.new(base, im.size, "white")
    white.paste(im.convert(base), mask=im.getchannel("A"))
    return white


@functools.lru_cache(maxsize=8)
def _srgb_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """A transform from the ICC profile ``icc`` to sRGB (relative colorimetric) for images in
    ``mode`` (L or RGB); ``None`` when the profile cannot be read, is not of ``mode``'s colour
    space, or moves no 8-bit colour by more than one level (sRGB itself)."""
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if src.profile.xcolor_space.strip() != ("GRAY" if mode == "L" else "RGB"):
            return None
        transform = ImageCms.buildTransform(src, ImageCms.createProfile("sRGB"), mode, "RGB",
                                            ImageCms.Intent.RELATIVE_COLORIMETRIC)
    except (OSError, ValueError, ImageCms.PyCMSError):
        return None
    if mode == "L":  # every grey, then every 17th level of each channel
        probe = np.arange(256, dtype=np.uint8)[None]
    else:
        probe = (np.indices((16, 16, 16)).reshape(3, 1, -1).transpose(1, 2, 0) * 17)
    probe = probe.astype(np.uint8)
    out = np.asarray(transform.apply(Image.fromarray(probe, mode)), dtype=np.int64)
    moved = np.abs(out - (probe[..., None] if mode == "L" else probe)).max()
    return transform if moved > 1 else None


def _to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """``im`` (L or RGB) as RGB, converted from its ICC profile ``icc`` to sRGB where
    :func:`_srgb_transform` gives a transform; untagged (sRGB) either way."""
    transform = _srgb_transform(icc, im.mode) if icc else None
    im = im.convert("RGB") if transform is None else transform.apply(im)
    im.info.pop("icc_profile", None)
    return im


def _finish(im: Image.Image, what: str) -> Image.Image:
    """Upright (EXIF orientation), 8 bits, over white where transparent, at most
    :func:`max_pixels` pixels (with a notice), then sRGB (from an ICC profile) in RGB."""
    _check_size(*im.size, what)
    frames = getattr(im, "n_frames", 1)
    if isinstance(frames, int) and frames > 1:
        warnings.warn(ImageFirstFrame(
            f"{what} has {frames} frames (an animation or a multi-page file): explained the "
            f"first"), stacklevel=3)
    icc = im.info.get("icc_profile")
    im = _upright(im)
    limit = max_pixels()
    im = _to_8bit(im, what)
    if "transparency" in im.info or im.mode not in ("L", "RGB", "LA", "RGBA"):
        # a transparent colour or premultiplied alpha (La, RGBa) as straight alpha, else RGB
        alpha = "transparency" in im.info or {"A", "a"} & set(im.getbands())
        grey = im.mode in ("L", "LA", "La")
        im = im.convert(("LA" if grey else "RGBA") if alpha else "RGB")
    w, h = im.size
    if w * h > limit:
        size = _fit((w, h), limit)
        warnings.warn(ImageDownscaled(
            f"{what} is {w}x{h} ({w * h:,} pixels), over the limit of {limit:,} pixels "
            f"(MMCAM_MAX_PIXELS): explained at {size[0]}x{size[1]}"),
            stacklevel=3)
        im = im.resize(size, Image.Resampling.BOX if im.mode in ("L", "RGB") else
                       Image.Resampling.BILINEAR, reducing_gap=3.0)
    if im.mode in ("LA", "RGBA"):  # after the downscale: a huge image is flattened small
        im = _over_white(im)
    return _to_srgb(im, icc)


__all__ = ["MAX_PIXELS", "ImageDownscaled", "ImageFirstFrame", "ImageInput", "ImageNotice",
           "load_image", "max_pixels"]
