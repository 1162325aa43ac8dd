"""Drawing: heat-map overlays, guided-backprop images, boxes and text labels (PIL).

Drawing what ``save`` writes imports no matplotlib: the default colormap (jet) is computed
here as matplotlib computes it (:data:`JET`), and printable ASCII (:data:`PLAIN`) is drawn
with matplotlib's bundled DejaVu Sans, found on disk (:func:`bundled_font`); other colormaps
and characters ask matplotlib (its colormaps, its font list).

Words from any script are drawn without font warnings: each character is drawn with the first
installed font of :data:`FONT_FAMILIES` that has its glyph (DejaVu Sans, then Noto CJK, Noto
Emoji, ... when installed); a character no installed font has becomes ``?`` (an invisible
format or combining mark such as an emoji variation selector is dropped), see
:func:`drawable`.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import re
import unicodedata
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

Box = tuple[int, int, int, int]


JET = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
"""matplotlib's ``jet``: per channel, the (x, value) points it interpolates linearly."""


def _segments_lut(points: tuple[tuple[float, float], ...], n: int = 256) -> np.ndarray:
    """``n`` samples at ``linspace(0, 1, n)`` of the piecewise-linear function through
    ``points``, in matplotlib's arithmetic (``colors._create_lookup_table``, gamma 1)."""
    x = np.array([p[0] for p in points]) * (n - 1)
    y = np.array([p[1] for p in points])
    xind = (n - 1) * np.linspace(0, 1, n)
    ind = np.searchsorted(x, xind)[1:-1]
    distance = (xind[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1])
    lut = np.concatenate([[y[0]], distance * (y[ind] - y[ind - 1]) + y[ind - 1], [y[-1]]])
    return np.clip(lut, 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def colormap_lut(cmap: str = "jet") -> np.ndarray:
    """The 256 colors of a matplotlib colormap as RGB uint8 (256,3): ``round(255 * rgb)``
    (``jet`` computed here without importing matplotlib, equal to matplotlib's)."""
    if cmap == "jet":
        lut = np.stack([_segments_lut(JET[c]) for c in ("red", "green", "blue")], axis=1)
    else:
        from matplotlib import colormaps

        lut = colormaps[cmap].resampled(256)(np.arange(256))[:, :3]
    out = (lut * 255).round().astype(np.uint8)
    out.flags.writeable = False
    return out


def colorize(heat: np.ndarray | torch.Tensor, cmap: str = "jet") -> np.ndarray:
    """Map values in [0,1] (H,W) to RGB uint8 (H,W,3) with a matplotlib colormap.

    A table look-up equal to ``round(255 * colormap(clip(heat, 0, 1)))``: the value ``v``
    takes color ``min(floor(256 v), 255)`` of the 256, as matplotlib indexes (NaN reads 0).
    """
    return np.asarray(colorize_image(heat, cmap))


def colorize_image(heat: np.ndarray | torch.Tensor, cmap: str = "jet") -> Image.Image:
    """:func:`colorize` as an RGB image: the color indices as a palette image, converted by
    PIL (the same colors, several times faster than indexing the table in numpy)."""
    h = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat)
    if h.dtype.kind != "f":
        h = h.astype(np.float64)
    # 256 v is exact in floating point, so clipping it to [0, 255] and truncating gives
    # min(floor(256 clip(v, 0, 1)), 255) for every v (huge ones overflow to inf: 255)
    with np.errstate(over="ignore", invalid="ignore"):
        idx = np.clip(np.nan_to_num(h, nan=0.0) * h.dtype.type(256), 0, 255).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(idx), "P")
    image.putpalette(colormap_lut(cmap).tobytes())
    return image.convert("RGB")


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
    colored = colorize_image(heat, cmap)
    if colored.size != rgb.size:
        colored = colored.resize(rgb.size, Image.BILINEAR)
    return Image.blend(rgb, colored, float(alpha))


def fit_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """``size`` (width, height) scaled down to fit ``longest`` pixels on its longer side,
    keeping the aspect ratio (at least 1 pixel a side); unchanged if it already fits."""
    w, h = size
    s = longest / max(w, h)
    if s >= 1.0:
        return w, h
    return max(1, round(w * s)), max(1, round(h * s))


def cap_aspect(size: tuple[int, int], ratio: float) -> tuple[int, int]:
    """``size`` (width, height) with its shorter side raised, where needed, to
    ``round(longer / ratio)`` (a stretch across), so that longer / shorter <= ``ratio`` about."""
    w, h = size
    short = round(max(w, h) / ratio)
    return (max(w, short), h) if w < h else (w, max(h, short))


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maps (N,H,W) resized to ``size`` (width, height): bilinear, antialiased when shrinking
    (each output pixel averages the input pixels it covers); unchanged at the same size."""
    w, h = size
    if tuple(maps.shape[-2:]) == (h, w):
        return maps
    return torch.nn.functional.interpolate(
        maps[:, None].float(), size=(h, w), mode="bilinear", align_corners=False,
        antialias=True)[:, 0]


def png_bytes(image: Image.Image, level: int = 1, strategy: int = zlib.Z_RLE) -> bytes:
    """``image`` as PNG bytes (lossless), compressed with zlib ``level`` and ``strategy``.

    8-bit RGB and grayscale images without transparency are written here (:func:`_png_up`:
    every row "Up"-filtered, one vectorized subtraction; an ICC profile kept as an iCCP
    chunk), about twice as fast as PIL, which tries five filters on each row; files are
    5-10% larger. Other images are written by PIL. Level 1 with the run-length strategy
    writes a 512 px overlay several times faster than PIL's default (level 6) and, after the
    row filter, about as small.
    """
    if image.mode in _PNG_COLOR and not {"transparency", "default_image"} & set(image.info):
        return _png_up(np.asarray(image), _PNG_COLOR[image.mode], level, strategy,
                       image.info.get("icc_profile"))
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=level, compress_type=strategy)
    return buf.getvalue()


_PNG_COLOR = {"L": 0, "RGB": 2}  # PIL mode -> PNG color type (8 bits a sample)


def _png_up(pixels: np.ndarray, color: int, level: int, strategy: int,
            icc_profile: bytes | None = None) -> bytes:
    """A PNG (signature, IHDR, an iCCP chunk when ``icc_profile`` is given, one IDAT, IEND)
    of ``pixels`` (H,W) or (H,W,3) uint8, each row stored as its difference to the row above
    (PNG filter 2; the first row's "above" is zeros)."""
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    data = np.empty((h, rows.shape[1] + 1), np.uint8)
    data[:, 0] = 2
    data[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=data[1:, 1:])  # modulo 256, as PNG defines it
    z = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
    idat = z.compress(data.tobytes()) + z.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + kind + body
                + zlib.crc32(body, zlib.crc32(kind)).to_bytes(4, "big"))

    header = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, color, 0, 0, 0])
    # iCCP: a profile name, a null, compression method 0 (zlib), the compressed profile
    icc = (chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc_profile))
           if icc_profile else b"")
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + icc + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def scale_box(box: Box | None, sx: float, sy: float,
              size: tuple[int, int] | None = None) -> Box | None:
    """A box (x0, y0, x1, y1; exclusive ends) scaled by ``sx``, ``sy`` (None stays None),
    each end rounded; the result stays a valid box of at least one pixel a side
    (``0 <= x0 < x1``, ``0 <= y0 < y1``), inside ``size`` (width, height) when given.

    A box scaled to a much smaller picture (a 4000x10 image drawn 768x2) can round to no
    pixel at all (``round(0.6) == round(0.9)``): it keeps the pixel it rounds to, moved
    back onto the picture if that is past its far edge."""
    if box is None:
        return None
    w, h = size if size is not None else (None, None)
    x0, x1 = _scale_span(box[0], box[2], sx, w)
    y0, y1 = _scale_span(box[1], box[3], sy, h)
    return x0, y0, x1, y1


def _scale_span(a: float, b: float, s: float, n: int | None) -> tuple[int, int]:
    """The span [a, b) scaled by ``s`` and rounded, at least one pixel, inside [0, n)."""
    lo, hi = round(a * s), round(b * s)
    lo = max(lo, 0) if n is None else min(max(lo, 0), max(n, 1) - 1)
    hi = max(hi, lo + 1)
    return lo, hi if n is None else min(hi, max(n, 1))


def one_line(text: str) -> str:
    """``text`` with every run of white space (line breaks, carriage returns, tabs, Unicode
    line and paragraph separators, ...: ``str.isspace``) made one space: a label is drawn
    and measured on one line."""
    return _SPACE_RUN.sub(" ", text)


_SPACE_RUN = re.compile(r"\s+")  # for str patterns, \s is what str.isspace() is true of


def fit_text(draw: ImageDraw.ImageDraw, text: str, width: float, size: int = 13) -> str:
    """``text`` on one line (:func:`one_line`), cut (with an ellipsis) to at most ``width``
    pixels as :func:`draw_text` draws it."""
    text = drawable(one_line(text))
    if _text_width(draw, text, size) <= width:
        return text
    lo, hi = 0, len(text)  # the longest prefix that fits with "…": binary search, since a
    while lo < hi:  # 5000-letter word cut one letter at a time took 25 s
        mid = (lo + hi + 1) // 2
        if _text_width(draw, text[:mid] + "…", size) <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "…"


def _text_width(draw: ImageDraw.ImageDraw, text: str, size: int) -> float:
    """Width in pixels of ``text`` drawn by :func:`draw_text` (on one line)."""
    text = one_line(text)
    return sum(draw.textlength(run, font=_pil_font(k, size)) for k, run in _runs(text))


def sheet(
    tiles: Sequence[Image.Image],
    labels: Sequence[Sequence[str]],
    title: str = "",
    cols: int = 6,
    pad: int = 6,
    line: int = 16,
) -> Image.Image:
    """Tiles of one size in a grid, ``cols`` a row, each with its lines of ``labels`` under it
    (cut to the tile's width), and ``title`` on top; drawn with PIL (any script)."""
    tw, th = tiles[0].size
    n = len(tiles)
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    nlines = max((len(lab) for lab in labels), default=0)
    top = line + 2 * pad if title else pad
    cell_h = th + nlines * line + pad
    out = Image.new("RGB", (cols * (tw + pad) + pad, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(out)
    if title:
        draw_text(draw, (pad, pad), fit_text(draw, title, out.width - 2 * pad, 14), size=14)
    for i, (tile, lab) in enumerate(zip(tiles, labels)):
        x = pad + (i % cols) * (tw + pad)
        y = top + (i // cols) * cell_h
        out.paste(tile, (x, y))
        for k, text in enumerate(lab):
            draw_text(draw, (x + 1, y + th + 1 + k * line), fit_text(draw, text, tw - 2))
    return out


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
    """Return a copy of ``image`` with boxes (x0, y0, x1, y1; exclusive ends) drawn on it
    (an empty box, ``x1 <= x0`` or ``y1 <= y0``, as one pixel wide or high; see
    :func:`scale_box` for boxes scaled to a smaller picture)."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    colors = [color] * len(boxes) if isinstance(color, str) else list(color)
    for box, c in zip(boxes, colors):
        if box is not None:  # an empty box (x1 <= x0) is drawn one pixel wide
            draw.rectangle((box[0], box[1], max(box[2] - 1, box[0]), max(box[3] - 1, box[1])),
                           outline=c, width=width)
    return out


# Outline fonts tried in order for each character (colour-bitmap emoji fonts are left out:
# neither matplotlib nor PIL draws them at an arbitrary size).
FONT_FAMILIES = (
    "DejaVu Sans", "Noto Sans", "Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC",
    "Noto Sans JP", "Noto Sans Arabic", "Noto Sans Hebrew", "Noto Sans Devanagari",
    "Noto Sans Thai", "Noto Emoji", "Noto Sans Symbols", "Noto Sans Symbols 2", "Symbola",
    "Droid Sans Fallback", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Unifont",
)
MISSING = "?"


@functools.lru_cache(maxsize=1)
def fonts() -> tuple[tuple[str, str, frozenset[int]], ...]:
    """The installed fonts of :data:`FONT_FAMILIES`, in that order: (family, file, the code
    points it has glyphs for). Found through matplotlib's font list (no font look-up that
    could log a warning)."""
    from matplotlib import font_manager, ft2font

    out = []
    for family in FONT_FAMILIES:
        entries = [e for e in font_manager.fontManager.ttflist
                   if e.name == family and e.fname.lower().endswith((".ttf", ".otf", ".ttc"))]
        if not entries:
            continue
        best = min(entries, key=lambda e: (e.style != "normal", abs(_weight(e.weight) - 400),
                                           e.stretch != "normal"))
        try:
            charmap = frozenset(ft2font.FT2Font(best.fname).get_charmap())
        except (OSError, RuntimeError, ValueError):
            continue
        out.append((family, best.fname, charmap))
    return tuple(out)


def _weight(w: int | str) -> int:
    return w if isinstance(w, int) else {"normal": 400, "regular": 400, "bold": 700}.get(
        str(w).lower(), 400)


def font_families() -> list[str]:
    """The installed families of :data:`FONT_FAMILIES`, for matplotlib's per-glyph fallback
    (``fontfamily=font_families()``)."""
    return [f for f, _, _ in fonts()] or ["DejaVu Sans"]


PLAIN = frozenset(map(chr, range(0x20, 0x7F))) | {"…"}
"""Printable ASCII and the ellipsis of :func:`fit_text`: drawn with :func:`bundled_font`
(font 0) without reading :func:`fonts`."""


@functools.lru_cache(maxsize=1)
def bundled_font() -> str | None:
    """matplotlib's own DejaVu Sans file, found without importing matplotlib (None if it is
    not there). matplotlib lists its bundled fonts first, so this is ``fonts()[0]``'s file."""
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return str(path)
    return None


def _which(ch: str) -> int | None:
    """Index in :func:`fonts` of the first font with a glyph for ``ch`` (None: none has)."""
    if ch in PLAIN and bundled_font() is not None:
        return 0  # DejaVu Sans, first of FONT_FAMILIES, has each of these glyphs
    cp = ord(ch)
    return next((i for i, (_, _, cmap) in enumerate(fonts()) if cp in cmap), None)


def drawable(text: str) -> str:
    """``text`` with every character no installed font can draw replaced by ``?`` (invisible
    format and combining marks without a glyph, such as emoji variation selectors and
    zero-width joiners, are dropped); white space is kept."""
    out = []
    for ch in text:
        if ch.isspace() or _which(ch) is not None:
            out.append(ch)
        elif unicodedata.category(ch) not in ("Mn", "Me", "Cf", "Cc"):
            out.append(MISSING)
    return "".join(out)


@functools.lru_cache(maxsize=32)
def _pil_font(index: int | None, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    if index is not None:
        try:
            path = bundled_font() if index == 0 else None
            return ImageFont.truetype(path or fonts()[index][1], size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str,
              size: int = 13, fill: str = "black") -> None:
    """Draw ``text`` at ``xy`` (top left), each run of characters with the first installed
    font that has their glyphs (PIL has no font fallback of its own); characters no font has
    are drawn as ``?`` (see :func:`drawable`); white space is drawn as one space, on one line
    (:func:`one_line`)."""
    runs = _runs(drawable(one_line(text)))
    x, y = xy
    for k, run in runs:
        font = _pil_font(k, size)
        draw.text((x, y), run, fill=fill, font=font)
        x += draw.textlength(run, font=font)


def _runs(text: str) -> list[tuple[int | None, str]]:
    """``text`` (already :func:`drawable`) split into runs of (font index, characters)."""
    runs: list[tuple[int | None, str]] = []
    for ch in text:
        k = _which(ch)
        if runs and (k is None or ch.isspace()):  # spaces stay in the run they are in
            k = runs[-1][0]
        if runs and runs[-1][0] == k:
            runs[-1] = (k, runs[-1][1] + ch)
        else:
            runs.append((k, ch))
    return runs
