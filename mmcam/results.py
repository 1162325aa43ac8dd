"""Result dataclasses for captions, VQA and classes, with ``plot``, ``save``, ``to_dict`` and
Jupyter's ``_repr_html_`` / ``_repr_png_``.

Maps are stored un-normalized (words stay comparable), on the explained layer's grid: the
maps on the image's pixels are made on demand (:class:`mmcam.pixelmaps.PixelMaps`), so a
result holds at most :data:`mmcam.pixelmaps.CACHE_BYTES` of pixel maps whatever the image's
size and the number of words. For display, maps of one group
(the words of a caption, the answers of a question) share one scale: ``m / max over group``.

Drawing is bounded: overlays, grids and pages are drawn at :data:`DISPLAY_SIZE` pixels on the
longer side at most (smaller images at their own size); the full-size overlay of one map is
drawn on demand, ``result.overlay(i, full_size=True)``. The page (``to_html``, ``save``'s
``index.html``, a notebook cell) holds the image once and each map once, as an 8-bit grayscale
PNG of ``map / its max``; the browser colors and blends the map that is shown (see
:func:`_page_script`), so a page for 65 maps of a 768 px image stays a few MB.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import os
import re
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mmcam.errors import MMCamError
from mmcam.limits import check_at_least
from mmcam.pixelmaps import PixelMaps
from mmcam.viz import (
    cap_aspect,
    colormap_lut,
    draw_boxes,
    drawable,
    fit_size,
    font_families,
    guided_image,
    one_line,
    overlay,
    png_bytes,
    resize_maps,
    scale_box,
    sheet,
)

Box = tuple[int, int, int, int]

DISPLAY_SIZE = 768
"""Longest side (pixels) of the overlays and pages drawn for display and by ``save``."""
TILE = 240
"""Longest side (pixels) of a tile of the grid (``grid``, ``grid.png``, ``_repr_png_``)."""
MAX_TILE_ASPECT = 3.75
"""A grid tile is at most this many times longer than wide: a longer strip (a 2000x32 text line,
a 4000x8 image) is stretched across, or its tiles would be a few pixels thin (240x1) and its
maps unseen."""
PAGE_BASE_BYTES = 600_000
"""Above this size (bytes) the page holds its image as a JPEG instead of a PNG."""
PAGE_MAP_BYTES = 2_400_000
"""Bytes for all the maps of one page; over it, the maps are held at a smaller size."""
MIN_VIEW = 384
"""Pages show an image smaller than this (pixels, longer side) zoomed by a whole factor."""
SAVE_THREADS = 4
"""Threads that draw and encode ``save``'s files (at most the machine's CPU count)."""
EPS = 1e-12


@dataclass(frozen=True)
class Panel:
    """One map to show: a title, its scale group, a detail line, and (``source[index]``)
    its map (H,W) and box, made on first use."""

    title: str
    source: PixelMaps = field(repr=False)
    index: int
    group: str
    detail: str = ""

    @property
    def map(self) -> torch.Tensor:
        """The map (H,W) on the image's pixels (cached by the source: do not change it in
        place)."""
        return self.source[self.index]

    @property
    def box(self) -> Box | None:
        """The map's 15%-of-max box."""
        return self.source.boxes()[self.index]


# the per-map files a save writes (caption, VQA, classification results); a folder that holds
# an earlier result (its result.json) loses those of them the new result does not write
_OWN_FILES = re.compile(r"(word|guided)_\d+_.*\.png|top_\d+_.*\.png|answer\.png|"
                        r"contrast\.png|sentence\.png|class\d+_.*\.png")


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete the files an earlier result saved in ``out`` (:data:`_OWN_FILES`, only when
    ``out`` holds a ``result.json``) that are not in ``keep``, so that a folder saved into
    twice holds one result, not two mixed."""
    if not (out / "result.json").is_file():
        return
    for f in out.iterdir():
        if f.name not in keep and _OWN_FILES.fullmatch(f.name) and f.is_file():
            f.unlink()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "x"


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


class _Shows:
    """Shared display code; subclasses define ``image``, ``method`` and ``panels()``."""

    image: Image.Image
    method: str
    pixels: PixelMaps | None

    def panels(self) -> list[Panel]:  # pragma: no cover - overridden
        raise NotImplementedError

    def scales(self, shared: bool = True) -> list[float]:
        """The display divisor of each panel's map: its group's max (``shared``) or its own."""
        panels = self.panels()
        top = self.pixels.maxima()
        own = [max(top[p.index], EPS) for p in panels]
        if not shared:
            return own
        top = {g: max(m for m, p in zip(own, panels) if p.group == g) for g in
               dict.fromkeys(p.group for p in panels)}
        return [top[p.group] for p in panels]

    def heatmaps(self, shared: bool = True) -> list[torch.Tensor]:
        """Display maps in [0,1] at the image's size: one shared scale per group, or each map
        by its own max (all of them made now: mind the memory for large images)."""
        return [p.map / s for p, s in zip(self.panels(), self.scales(shared))]

    def heatmap(self, item: int | str, shared: bool = True) -> torch.Tensor:
        """One panel's display map in [0,1] at the image's size (a position or a title, see
        :meth:`index`): ``heatmaps(shared)[i]``, only this one made."""
        i = self.index(item)
        return self.panels()[i].map / self.scales(shared)[i]

    def display_size(self) -> tuple[int, int]:
        """(width, height) at which overlays are drawn: the image's size fitted into
        :data:`DISPLAY_SIZE` pixels on its longer side."""
        return fit_size(self.image.size, DISPLAY_SIZE)

    def index(self, item: int | str) -> int:
        """The position in ``panels()`` of ``item``: a position, or a panel's title (the
        first panel of that title)."""
        titles = [p.title for p in self.panels()]
        if isinstance(item, str):
            if item not in titles:
                raise MMCamError(f"no map titled {item!r}: choose one of {titles}")
            return titles.index(item)
        if isinstance(item, bool) or not isinstance(item, int) or \
                not -len(titles) <= item < len(titles):
            raise MMCamError(f"map {item!r}: give a title or a position below {len(titles)}")
        return item % len(titles)

    def overlay(self, item: int | str, alpha: float = 0.5, shared: bool = True,
                box: bool = True, full_size: bool = False) -> Image.Image:
        """The overlay of one map (a position or a title, see :meth:`index`), with its box:
        at the display size, or at the image's own size with ``full_size`` (drawn now,
        only this one map)."""
        i = self.index(item)
        return self._painter(alpha, box, shared, full_size)(i)

    def overlays(self, alpha: float = 0.5, boxes: bool = False, shared: bool = True,
                 full_size: bool = False) -> list[Image.Image]:
        """One overlay per panel (scale as in ``heatmaps``), optionally with its box, at the
        display size (or the image's own with ``full_size``; mind the memory)."""
        paint = self._painter(alpha, boxes, shared, full_size)
        return [paint(i) for i in range(len(self.panels()))]

    def map_max(self, i: int) -> float:
        """The max of panel ``i``'s map."""
        return self.pixels.maxima()[self.panels()[i].index]

    def display_maps(self) -> torch.Tensor:
        """The panels' maps (N,h,w), un-normalized, at the display size (made a few at a
        time from the pixel maps)."""
        order = [p.index for p in self.panels()]
        small = self.pixels.resized(self.display_size())
        return small if order == list(range(len(self.pixels))) else small[order]

    def _painter(self, alpha: float, boxes: bool, shared: bool, full_size: bool,
                 small: torch.Tensor | None = None) -> Callable[[int], Image.Image]:
        """A function drawing panel ``i``'s overlay (what all panels share computed once;
        ``small``: :meth:`display_maps` if already computed)."""
        panels, scales = self.panels(), self.scales(shared)
        size = self.image.size if full_size else self.display_size()
        base = self.image.convert("RGB")
        if base.size != size:
            base = base.resize(size, Image.BILINEAR, reducing_gap=2.0)
        sx, sy = size[0] / self.image.width, size[1] / self.image.height

        def paint(i: int) -> Image.Image:
            if small is not None and not full_size:
                heat = small[i] / scales[i]
            else:
                heat = resize_maps(panels[i].map[None], size)[0] / scales[i]
            im = overlay(base, heat, alpha)
            return draw_boxes(im, [scale_box(panels[i].box, sx, sy, size)]) if boxes else im

        return paint

    def grid(self, shared: bool = True, alpha: float = 0.5, ncols: int = 6) -> Image.Image:
        """The image and one overlay per panel (with its box, title and map max) in one
        picture, tiles :data:`TILE` pixels on the longer side; drawn with PIL, fast."""
        check_at_least(1, ncols=ncols)
        return self._grids((shared,), alpha, ncols)[0]

    def _grids(self, scales: tuple[bool, ...], alpha: float = 0.5, ncols: int = 6,
               small: torch.Tensor | None = None) -> list[Image.Image]:
        """:meth:`grid` for each of ``scales`` (shared or not), the maps resized once (from
        ``small``, the :meth:`display_maps`)."""
        panels = self.panels()
        tile = cap_aspect(fit_size(self.image.size, TILE), MAX_TILE_ASPECT)
        base = self.image.convert("RGB")
        if base.size != tile:
            base = base.resize(tile, Image.BILINEAR, reducing_gap=2.0)
        heat = resize_maps(self.display_maps() if small is None else small, tile)
        sx, sy = tile[0] / self.image.width, tile[1] / self.image.height
        top = self.pixels.maxima()
        labels = [["image"]] + [[p.title, f"max {top[p.index]:.3g}"] for p in panels]
        out = []
        for shared in scales:
            tiles = [base] + [
                draw_boxes(overlay(base, h / s, alpha), [scale_box(p.box, sx, sy, tile)])
                for p, h, s in zip(panels, heat, self.scales(shared))]
            out.append(sheet(tiles, labels, f"{self._headline()}   ({self._how(shared)})",
                             ncols))
        return out

    def _how(self, shared: bool) -> str:
        scale = "one scale per group" if shared else "each map scaled to its own max"
        score = getattr(self, "score", "logprob")
        how = self.method if score == "logprob" else f"{self.method}, score {score}"
        return f"{how}; {scale}"

    def plot(self, alpha: float = 0.5, ncols: int = 6, shared: bool = True) -> Any:
        """A matplotlib figure: the image, then one overlay per panel with its map's max.

        ``shared=True``: one color scale per group (words comparable); ``False``: each map
        scaled by its own max (shape of weak maps visible). :meth:`grid` draws the same
        faster, as one PIL image.
        """
        import matplotlib.pyplot as plt

        check_at_least(1, ncols=ncols)
        panels = self.panels()
        ims = [self.image] + self.overlays(alpha, boxes=True, shared=shared)
        top = self.pixels.maxima()
        titles = ["image"] + [f"{one_line(p.title)}\nmax {top[p.index]:.3g}" for p in panels]
        n = len(ims)
        cols = min(ncols, n)
        rows = (n + cols - 1) // cols
        families = font_families()  # words of any script: no missing-glyph warnings
        fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, im, t in zip(axes.ravel(), ims, titles):
            ax.imshow(im)
            ax.set_title(drawable(t), fontsize=10, fontfamily=families)
        headline = one_line(f"{self._headline()}   ({self._how(shared)})")
        fig.suptitle(drawable(headline), fontsize=11, fontfamily=families)
        fig.tight_layout()
        return fig

    def _headline(self) -> str:
        return ""

    def _save_common(self, out: Path, names: list[str], full_size: bool = False,
                     extra: Sequence[tuple[str, Callable[[], bytes]]] = ()) -> None:
        """Write the grids, ``names`` (one overlay per panel, with its box), ``extra``
        (file name, bytes to write), result.json and index.html; PNG encoding (which
        releases the GIL) runs on up to :data:`SAVE_THREADS` threads."""
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale(out, set(names) | {name for name, _ in extra})
        small = self.display_maps()
        paint = self._painter(0.5, True, True, full_size, small)
        jobs: list[tuple[str, Callable[[], bytes]]] = [
            (name, functools.partial(lambda i: png_bytes(paint(i)), i))
            for i, name in enumerate(names)]
        jobs += list(extra)
        jobs.append(("index.html", lambda: self._page_html(0.5, small).encode("utf-8")))
        jobs.append(("result.json", lambda: json.dumps(self.to_dict(), indent=2).encode()))

        def grids() -> None:
            for name, im in zip(("grid.png", "grid_per_map_scale.png"),
                                self._grids((True, False), small=small)):
                (out / name).write_bytes(png_bytes(im))

        def write(job: tuple[str, Callable[[], bytes]]) -> None:
            (out / job[0]).write_bytes(job[1]())

        workers = max(1, min(SAVE_THREADS, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            done = [pool.submit(grids)] + [pool.submit(write, job) for job in jobs]
            for f in done:
                f.result()

    def _guided_png(self, grad: torch.Tensor, full_size: bool) -> bytes:
        size = self.image.size if full_size else self.display_size()
        return png_bytes(guided_image(grad).resize(size))

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def page_data(self, alpha: float = 0.5, small: torch.Tensor | None = None
                  ) -> dict[str, Any]:
        """What the page draws from: display ``w``, ``h``; the ``base`` image (PNG, or JPEG
        when its PNG is over :data:`PAGE_BASE_BYTES`) and each map (``maps``: PNG of
        ``round(255 * map / its max)`` at the display size, or smaller when all of them
        together are over :data:`PAGE_MAP_BYTES`) as data URLs; ``scale``: each map's max
        over its group's max; ``boxes`` in display pixels; ``lut``: the colormap's 256 RGB
        colors (base64); ``alpha``."""
        panels = self.panels()
        size = self.display_size()
        base = self.image.convert("RGB")
        if base.size != size:
            base = base.resize(size, Image.BILINEAR, reducing_gap=2.0)
        own, shared = self.scales(shared=False), self.scales(shared=True)
        small = self.display_maps() if small is None else small
        maps = _gray_pngs(small[:4], own[:4])  # the first few tell the bytes of all
        for _ in range(3):
            total = sum(len(m) for m in maps) * len(own) / len(maps)
            if total <= PAGE_MAP_BYTES:
                break
            # many maps of a large image: a smaller map per panel (the browser scales it up)
            longest = int(max(small.shape[1:]) * (PAGE_MAP_BYTES / total) ** 0.5 * 0.9)
            small = resize_maps(small, fit_size(size, max(longest, 16)))
            maps = _gray_pngs(small[:4], own[:4])
        maps += _gray_pngs(small[4:], own[4:])
        sx, sy = size[0] / self.image.width, size[1] / self.image.height
        return {
            "w": size[0], "h": size[1], "alpha": float(alpha),
            "base": _base_url(base),
            "maps": [_data_url(m) for m in maps],
            "scale": [o / s for o, s in zip(own, shared)],
            "boxes": [_box_list(scale_box(p.box, sx, sy, size)) for p in panels],
            "lut": base64.b64encode(colormap_lut().tobytes()).decode(),
        }

    def to_html(self, alpha: float = 0.5) -> str:
        """A self-contained HTML page: hover or click an item to show its map."""
        return self._page_html(alpha)

    def _page_html(self, alpha: float, small: torch.Tensor | None = None) -> str:
        body = self._fragment(alpha, "max-width: 90vw; max-height: 75vh;", small)
        return (f'<!doctype html>\n<html><head><meta charset="utf-8">'
                f"<title>mmcam: {html.escape(self._headline())}</title>"
                f"<style>body {{ margin: 2em; }}</style></head><body>\n{body}\n</body></html>\n")

    def _repr_html_(self) -> str:
        """Jupyter: the interactive page of :meth:`to_html`, sized for a notebook cell."""
        return self._fragment(0.5, "max-width: 100%; max-height: 480px;")

    def _repr_png_(self) -> bytes:
        """Jupyter: the grid (:meth:`grid`) as PNG bytes."""
        return png_bytes(self.grid())

    def _fragment(self, alpha: float, view_css: str, small: torch.Tensor | None = None) -> str:
        """The page as one ``<div>`` with its own style and script; element ids and selectors
        carry a fresh id, so several renderings live in one document. Without scripts (a
        notebook shown by a static viewer) it shows the plain image."""
        uid = "mmcam-" + uuid.uuid4().hex[:12]
        data = self.page_data(alpha, small)
        zoom = max(1, MIN_VIEW // max(data["w"], data["h"]))  # small images: whole pixels up
        items = "\n".join(
            f'<span class="item" data-i="{i + 1}" tabindex="0" title="{html.escape(p.detail)}">'
            f"{html.escape(p.title)}</span>"
            for i, p in enumerate(self.panels())
        )
        # the image is held once, by the <img> that viewers running no script show
        payload = json.dumps({k: v for k, v in data.items() if k != "base"})
        payload = payload.replace("</", "<\\/")
        return f"""<div class="mmcam" id="{uid}" tabindex="-1">
<style>
#{uid} {{ font-family: system-ui, sans-serif; }}
#{uid} .head {{ font-size: 1.2em; font-weight: bold; margin: .3em 0; }}
#{uid} .item {{ display: inline-block; padding: .2em .5em; margin: .15em; border-radius: .3em;
  background: #eef; color: black; cursor: pointer; }}
#{uid} .item.on {{ background: #36c; color: white; }}
#{uid} canvas, #{uid} img.still {{ {view_css} border: 1px solid #ccc;
  width: {zoom * data["w"]}px;
  height: auto;{" image-rendering: pixelated;" if zoom > 1 else ""} }}
#{uid} .info {{ color: #555; min-height: 1.5em; margin: .3em 0; }}
</style>
<div class="head">{html.escape(self._headline())}</div>
<div>method: {html.escape(self.method)}; hover or click an item to see its map
(press Esc for the plain image).</div>
<div><label><input type="checkbox" class="own"> scale each map to its own max
(default: one color scale per group, so maps are comparable)</label></div>
<div class="items">{items}</div>
<div class="info"></div>
<img class="still" alt="the image" src="{data["base"]}">
<canvas class="view" id="{uid}-view" width="{data["w"]}" height="{data["h"]}"
 data-shown="-1" style="display: none"></canvas>
<script>
{_page_script(uid, payload)}
</script></div>"""


def _gray_pngs(maps: torch.Tensor, scales: list[float]) -> list[bytes]:
    """Each map (N,h,w) divided by its scale, as an 8-bit grayscale PNG."""
    q = (maps / torch.tensor(scales, dtype=maps.dtype)[:, None, None] * 255.0).round()
    q = q.clamp(0, 255).to(torch.uint8).numpy()
    return [png_bytes(Image.fromarray(m, "L")) for m in q]


def _base_url(image: Image.Image) -> str:
    """``image`` as a PNG data URL, or a JPEG (quality 92) one if the PNG is too large."""
    data = png_bytes(image)
    if len(data) <= PAGE_BASE_BYTES:
        return _data_url(data)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=92)
    return _data_url(buf.getvalue(), "image/jpeg")


def _page_script(uid: str, payload: str) -> str:
    """The page's script: shows item ``i`` (0: the plain image) on the canvas.

    For map ``i`` and pixel ``p``: ``v = q[p] / 255 * f`` (``q``: the map's gray PNG; ``f``:
    its ``scale`` on the shared scale, 1 with "own max"), color ``c = lut[min(floor(256 v),
    255)]`` as :func:`mmcam.viz.colorize`, shown ``base + alpha * (c - base)`` as
    :func:`mmcam.viz.overlay`, then the box as :func:`mmcam.viz.draw_boxes` (2 px, lime).
    """
    return f"""(function () {{
const root = document.getElementById('{uid}'), D = {payload};
const view = root.querySelector('canvas.view'), ctx = view.getContext('2d');
const still = root.querySelector('img.still');
still.style.display = 'none'; view.style.display = '';
const own = root.querySelector('input.own'), info = root.querySelector('.info');
const lut = Uint8Array.from(atob(D.lut), c => c.charCodeAt(0));
const load = src => new Promise((ok, bad) => {{
  const im = new Image(); im.onload = () => ok(im); im.onerror = bad; im.src = src; }});
const pixels = im => {{
  const c = document.createElement('canvas'); c.width = D.w; c.height = D.h;
  const x = c.getContext('2d'); x.drawImage(im, 0, 0, D.w, D.h);
  return x.getImageData(0, 0, D.w, D.h).data; }};
const base = load(still.getAttribute('src')).then(pixels), maps = {{}};
let pinned = 0, shown = 0, ticket = 0;
async function show(i) {{
  shown = i; const t = ++ticket;
  root.querySelectorAll('.item').forEach(e => e.classList.toggle('on', +e.dataset.i === i));
  const el = root.querySelector('.item[data-i="' + i + '"]');
  info.textContent = el ? el.title : '';
  const b = await base;
  if (i > 0 && !maps[i]) maps[i] = load(D.maps[i - 1]).then(pixels);
  const m = i > 0 ? await maps[i] : null;
  if (t !== ticket) return;
  const img = ctx.createImageData(D.w, D.h), o = img.data;
  if (!m) o.set(b); else {{
    const f = own.checked ? 1 : D.scale[i - 1], a = D.alpha;
    for (let p = 0; p < o.length; p += 4) {{
      const k = Math.min(Math.floor(m[p] / 255 * f * 256), 255) * 3;
      o[p] = b[p] + a * (lut[k] - b[p]); o[p + 1] = b[p + 1] + a * (lut[k + 1] - b[p + 1]);
      o[p + 2] = b[p + 2] + a * (lut[k + 2] - b[p + 2]); o[p + 3] = 255;
    }}
  }}
  ctx.putImageData(img, 0, 0);
  const box = i > 0 ? D.boxes[i - 1] : null;
  if (box) {{
    ctx.strokeStyle = 'lime'; ctx.lineWidth = 2;
    ctx.strokeRect(box[0] + 1, box[1] + 1, box[2] - box[0] - 2, box[3] - box[1] - 2);
  }}
  view.dataset.shown = i;
}}
root.querySelectorAll('.item').forEach(e => {{
  e.addEventListener('mouseenter', () => show(+e.dataset.i));
  e.addEventListener('mouseleave', () => show(pinned));
  e.addEventListener('click', () => {{ pinned = +e.dataset.i; show(pinned); }});
  e.addEventListener('keydown', ev => {{
    if (ev.key === 'Enter' || ev.key === ' ') {{ ev.preventDefault(); pinned = +e.dataset.i;
      show(pinned); }} }});
}});
own.addEventListener('change', () => show(shown));
root.addEventListener('keydown', ev => {{
  if (ev.key === 'Escape') {{ pinned = 0; show(0); ev.stopPropagation(); }} }});
show(0);
}})();"""


def _box_list(box: Box | None) -> list[int] | None:
    return list(box) if box is not None else None


def _pixels(given: PixelMaps | None, maps: Sequence[torch.Tensor | None],
            boxes: Sequence[Box | None] | None, what: str) -> PixelMaps:
    """The result's maps: ``given``, or maps (H,W) made elsewhere (a result built by hand)."""
    if given is not None:
        return given
    if any(m is None for m in maps):
        raise MMCamError(f"{what}: give the maps (or pixels=PixelMaps(...))")
    return PixelMaps.given(maps, boxes)


def _set(obj: Any, **values: Any) -> None:
    for k, v in values.items():
        object.__setattr__(obj, k, v)


@dataclass(frozen=True)
class CaptionExplanation(_Shows):
    """Word-by-word maps for one caption of one image.

    ``maps`` (n_words,H,W): map of each word's explained score (``score``, see
    :mod:`mmcam.scores`; by default ``log p(word_t | words_<t, image)``) at the image's own
    size, ReLU'd and un-normalized; ``values``: those scores; ``logprobs``: each word's log p;
    ``sentence_map`` (H,W): map of the sum of the words' scores; ``boxes``: 15%-of-max boxes
    (image pixels); ``unknown_words``: the words of a given caption that the model does not
    know (it reads them as its unknown token: their maps explain that token, not the word).

    The result keeps ``layer_maps`` (n_words,h,w) and ``pixels`` (:class:`PixelMaps`: the
    words' maps, then the whole caption's); ``maps``, ``sentence_map``, ``boxes`` and
    ``sentence_box`` are made from it when read (boxes once, on first use).
    """

    image: Image.Image
    caption: str
    words: list[str]
    logprobs: list[float]
    maps: InitVar[torch.Tensor | None]
    layer_maps: torch.Tensor
    boxes: InitVar[list[Box | None] | None]
    sentence_map: InitVar[torch.Tensor | None]
    sentence_box: InitVar[Box | None]
    method: str
    generated: bool
    guided: torch.Tensor | None = field(default=None, repr=False)
    layer: str = ""
    score: str = "logprob"
    values: list[float] | None = None
    unknown_words: list[str] = field(default_factory=list)
    pixels: PixelMaps | None = field(default=None, repr=False)

    def __post_init__(self, maps, boxes, sentence_map, sentence_box) -> None:
        _set(self, pixels=_pixels(
            self.pixels, list(maps if maps is not None else [None]) + [sentence_map],
            None if boxes is None else list(boxes) + [sentence_box], "CaptionExplanation"))

    def _maps(self) -> torch.Tensor:
        """The words' maps (n_words,H,W), made now."""
        return self.pixels.stack(0, len(self.words))

    def _boxes(self) -> list[Box | None]:
        """The words' boxes."""
        return self.pixels.boxes()[: len(self.words)]

    def _sentence_map(self) -> torch.Tensor:
        """The whole caption's map (H,W)."""
        return self.pixels[len(self.words)].clone()

    def _sentence_box(self) -> Box | None:
        """The whole caption's box."""
        return self.pixels.boxes()[len(self.words)]

    def panels(self) -> list[Panel]:
        vals = self.values if self.values is not None else self.logprobs
        out = [
            Panel(w, self.pixels, i, "words", f"log p = {lp:.4f}" if self.score == "logprob"
                  else f"{self.score} = {v:.3f}, log p = {lp:.4f}")
            for i, (w, lp, v) in enumerate(zip(self.words, self.logprobs, vals))
        ]
        total = sum(vals)
        out.append(
            Panel("whole caption", self.pixels, len(self.words), "sentence",
                  f"sum of log p = {total:.4f}" if self.score == "logprob"
                  else f"sum of {self.score} = {total:.3f}")
        )
        return out

    def _headline(self) -> str:
        return f"caption: {self.caption}"

    def unknown_notice(self) -> str:
        """One line naming the caption's words the model does not know ("" if none)."""
        if not self.unknown_words:
            return ""
        text = (f"words the model does not know (read as unknown): "
                f"{', '.join(self.unknown_words)}")
        if len(self.unknown_words) >= len(self.words):
            text += " - all of the caption's words: its maps explain the unknown token"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: words, log-probs, boxes, map maxima (no pixel data)."""
        top, boxes, n = self.pixels.maxima(), self.pixels.boxes(), len(self.words)
        return {
            "caption": self.caption,
            "unknown_words": list(self.unknown_words),
            "generated": self.generated,
            "method": self.method,
            "score": self.score,
            "layer": self.layer,
            "image_size": list(self.image.size),
            "words": [
                {"word": w, "logprob": lp, "score": v, "box": _box_list(b), "map_max": m}
                for w, lp, v, b, m in zip(self.words, self.logprobs,
                                          self.values or self.logprobs, boxes, top)
            ],
            "sentence": {
                "logprob": float(sum(self.logprobs)),
                "box": _box_list(boxes[n]),
                "map_max": top[n],
            },
        }

    def save(self, out: str | Path, full_size: bool = False) -> Path:
        """Write grid.png, grid_per_map_scale.png, one PNG per word, sentence.png, result.json
        and index.html (and a guided image per word when computed); overlays at the display
        size (:data:`DISPLAY_SIZE`), or the image's own with ``full_size``."""
        out = Path(out)
        names = [f"word_{i:02d}_{_slug(w)}.png" for i, w in enumerate(self.words)]
        guided = [] if self.guided is None else [
            (f"guided_{i:02d}_{_slug(w)}.png",
             functools.partial(self._guided_png, self.guided[i], full_size))
            for i, w in enumerate(self.words)]
        self._save_common(out, names + ["sentence.png"], full_size, guided)
        return out


CaptionExplanation.maps = property(CaptionExplanation._maps)  # type: ignore[assignment]
CaptionExplanation.boxes = property(CaptionExplanation._boxes)  # type: ignore[assignment]
CaptionExplanation.sentence_map = property(  # type: ignore[assignment]
    CaptionExplanation._sentence_map)
CaptionExplanation.sentence_box = property(  # type: ignore[assignment]
    CaptionExplanation._sentence_box)


@dataclass(frozen=True)
class VQAExplanation(_Shows):
    """Maps for a VQA answer, the top-k answers and an optional contrast.

    ``map``: map of ``log p(answer | question, image)``; ``contrast_map``: map of
    ``log p(answer) - log p(contrast)``; ``top_answers``: (answer, probability, map).
    The result keeps ``pixels`` (:class:`PixelMaps`: the answer's map, the top answers',
    then the contrast's); the maps and boxes are made from it when read. Built by
    :class:`mmcam.VQAExplainer` with ``pixels``, ``top_answers`` may carry None maps.
    """

    image: Image.Image
    question: str
    unknown_words: list[str]
    answer: str
    probability: float
    map: InitVar[torch.Tensor | None]
    box: InitVar[Box | None]
    top_answers: InitVar[list[tuple[str, float, torch.Tensor | None]]]
    method: str
    model_answer: str
    contrast: str | None = None
    contrast_map: InitVar[torch.Tensor | None] = None
    contrast_box: InitVar[Box | None] = None
    top_boxes: InitVar[list[Box | None] | None] = None
    layer: str = ""
    score: str = "logprob"
    pixels: PixelMaps | None = field(default=None, repr=False)

    def __post_init__(self, map, box, top_answers, contrast_map, contrast_box, top_boxes
                      ) -> None:
        _set(self, _top=[(a, float(p)) for a, p, _ in top_answers])
        if self.pixels is not None:
            return
        maps = [map] + [m for _, _, m in top_answers]
        boxes: list[Box | None] | None = None
        if top_boxes is None:  # built by hand without boxes: computed now, as before
            from mmcam.cam import localize

            top_boxes = localize(torch.stack(maps[1:])) if len(maps) > 1 else []
        boxes = [box] + list(top_boxes)
        if self.contrast is not None and contrast_map is not None:
            maps.append(contrast_map)
            boxes.append(contrast_box)
        _set(self, pixels=_pixels(None, maps, boxes, "VQAExplanation"))

    @property
    def top_probabilities(self) -> list[tuple[str, float]]:
        """(answer, probability) of the top answers, without their maps."""
        return list(self._top)

    def _n(self) -> int:
        return 1 + len(self._top)

    def _map(self) -> torch.Tensor:
        """The explained answer's map (H,W)."""
        return self.pixels[0].clone()

    def _box(self) -> Box | None:
        return self.pixels.boxes()[0]

    def _top_answers(self) -> list[tuple[str, float, torch.Tensor]]:
        """(answer, probability, map (H,W)) of the top answers (maps made now)."""
        return [(a, p, self.pixels[1 + i].clone()) for i, (a, p) in enumerate(self._top)]

    def _top_boxes(self) -> list[Box | None]:
        return self.pixels.boxes()[1: self._n()]

    def _has_contrast(self) -> bool:
        return self.contrast is not None and len(self.pixels) > self._n()

    def _contrast_map(self) -> torch.Tensor | None:
        """The map of ``log p(answer) - log p(contrast)`` (H,W), if asked."""
        return self.pixels[self._n()].clone() if self._has_contrast() else None

    def _contrast_box(self) -> Box | None:
        return self.pixels.boxes()[self._n()] if self._has_contrast() else None

    def panels(self) -> list[Panel]:
        out = [Panel(f"{self.answer}", self.pixels, 0, "answers",
                     f"explained answer, p = {self.probability:.4f}")]
        for i, (a, p) in enumerate(self._top):
            out.append(Panel(f"{a} ({p:.2f})", self.pixels, 1 + i, "answers", f"p = {p:.4f}"))
        if self._has_contrast():
            out.append(Panel(f"{self.answer} rather than {self.contrast}", self.pixels,
                             self._n(), "contrast", "log p(answer) - log p(contrast)"))
        return out

    def _headline(self) -> str:
        return f"Q: {self.question}  A: {self.answer}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no pixel data)."""
        top = self.pixels.maxima()
        d: dict[str, Any] = {
            "question": self.question,
            "unknown_words": self.unknown_words,
            "model_answer": self.model_answer,
            "answer": self.answer,
            "probability": self.probability,
            "box": _box_list(self._box()),
            "method": self.method,
            "score": self.score,
            "layer": self.layer,
            "image_size": list(self.image.size),
            "top_answers": [
                {"answer": a, "probability": p, "map_max": top[1 + i]}
                for i, (a, p) in enumerate(self._top)
            ],
        }
        if self.contrast is not None:
            d["contrast"] = {"answer": self.contrast, "box": _box_list(self._contrast_box())}
        return d

    def save(self, out: str | Path, full_size: bool = False) -> Path:
        """Write grid.png, grid_per_map_scale.png, one PNG per map, result.json and
        index.html; overlays at the display size, or the image's own with ``full_size``."""
        out = Path(out)
        names = ["answer.png"] + [f"top_{i}_{_slug(a)}.png" for i, (a, _) in
                                  enumerate(self._top)]
        if self._has_contrast():
            names.append("contrast.png")
        self._save_common(out, names, full_size)
        return out


VQAExplanation.map = property(VQAExplanation._map)  # type: ignore[assignment]
VQAExplanation.box = property(VQAExplanation._box)  # type: ignore[assignment]
VQAExplanation.top_answers = property(VQAExplanation._top_answers)  # type: ignore[assignment]
VQAExplanation.top_boxes = property(VQAExplanation._top_boxes)  # type: ignore[assignment]
VQAExplanation.contrast_map = property(  # type: ignore[assignment]
    VQAExplanation._contrast_map)
VQAExplanation.contrast_box = property(  # type: ignore[assignment]
    VQAExplanation._contrast_box)


@dataclass(frozen=True)
class ClassExplanation(_Shows):
    """Maps for the top (or chosen) classes of one image.

    ``maps`` (k,H,W) are un-normalized and carried onto the image's own pixels (made from
    ``pixels``, :class:`PixelMaps`, when read); ``layer_maps`` (k,h,w) are at the explained
    layer's grid; ``guided_gradcam`` (k,3,Hin,Win) is at the model input's resolution;
    ``boxes`` are 15%-of-max boxes (computed once, on first use).
    """

    image: Image.Image
    classes: list[int]
    labels: list[str]
    scores: list[float]
    probabilities: list[float]
    maps: InitVar[torch.Tensor | None]
    layer_maps: torch.Tensor
    boxes: InitVar[list[Box | None] | None]
    method: str
    layer: str
    guided_gradcam: torch.Tensor | None = field(default=None, repr=False)
    pixels: PixelMaps | None = field(default=None, repr=False)

    def __post_init__(self, maps, boxes) -> None:
        _set(self, pixels=_pixels(self.pixels, list(maps if maps is not None else [None]),
                                  boxes, "ClassExplanation"))

    def _maps(self) -> torch.Tensor:
        """The classes' maps (k,H,W), made now."""
        return self.pixels.stack()

    def _boxes(self) -> list[Box | None]:
        return self.pixels.boxes()

    def panels(self) -> list[Panel]:
        return [
            Panel(f"{lab} ({p:.2f})", self.pixels, i, "classes",
                  f"class {c}: score {s:.4f}, p = {p:.4f}")
            for i, (c, lab, s, p) in enumerate(zip(self.classes, self.labels, self.scores,
                                                   self.probabilities))
        ]

    def _headline(self) -> str:
        return f"classes: {', '.join(self.labels)} (layer {self.layer})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no pixel data)."""
        top, boxes = self.pixels.maxima(), self.pixels.boxes()
        return {
            "method": self.method,
            "layer": self.layer,
            "image_size": list(self.image.size),
            "classes": [
                {"id": c, "label": lab, "score": s, "probability": p, "box": _box_list(b),
                 "map_max": m}
                for c, lab, s, p, b, m in zip(self.classes, self.labels, self.scores,
                                              self.probabilities, boxes, top)
            ],
        }

    def save(self, out: str | Path, full_size: bool = False) -> list[Path]:
        """Write grid.png, grid_per_map_scale.png, per class ``class{i}_{id}_box.png``
        (shared scale, box), ``class{i}_{id}_{method}.png`` (own scale) and the guided
        Grad-CAM image, result.json and index.html; return the files written. Overlays at
        the display size, or the image's own with ``full_size``."""
        out = Path(out)
        names = [f"class{i}_{c}_box.png" for i, c in enumerate(self.classes)]
        own = self._painter(0.5, False, False, full_size)
        extra: list[tuple[str, Callable[[], bytes]]] = []
        for i, c in enumerate(self.classes):
            extra.append((f"class{i}_{c}_{self.method}.png",
                          functools.partial(lambda i: png_bytes(own(i)), i)))
            if self.guided_gradcam is not None:
                extra.append((f"class{i}_{c}_guided_gradcam.png",
                              functools.partial(self._guided_png, self.guided_gradcam[i],
                                                full_size)))
        self._save_common(out, names, full_size, extra)
        return [out / n for n in ("grid.png", "grid_per_map_scale.png", "result.json",
                                  "index.html")] + [out / n for n in names + [e[0] for e in extra]]


ClassExplanation.maps = property(ClassExplanation._maps)  # type: ignore[assignment]
ClassExplanation.boxes = property(ClassExplanation._boxes)  # type: ignore[assignment]
