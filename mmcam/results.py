"""Result dataclasses for captions and VQA, with ``plot``, ``save`` and ``to_dict``.

Maps are stored un-normalized (words stay comparable). For display, maps of one group
(the words of a caption, the answers of a question) share one scale: ``m / max over group``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mmcam.cam import normalize
from mmcam.viz import draw_boxes, drawable, font_families, guided_image, overlay

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Panel:
    """One map to show: a title, its map (H,W), its box and its scale group."""

    title: str
    map: torch.Tensor
    box: Box | None
    group: str
    detail: str = ""


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "x"


class _Shows:
    """Shared display code; subclasses define ``image``, ``method`` and ``panels()``."""

    image: Image.Image
    method: str

    def panels(self) -> list[Panel]:  # pragma: no cover - overridden
        raise NotImplementedError

    def heatmaps(self, shared: bool = True) -> list[torch.Tensor]:
        """Display maps in [0,1]: one shared scale per group, or each map by its own max."""
        panels = self.panels()
        out: list[torch.Tensor] = [torch.empty(0)] * len(panels)
        for group in dict.fromkeys(p.group for p in panels):
            idx = [i for i, p in enumerate(panels) if p.group == group]
            stacked = normalize(torch.stack([panels[i].map for i in idx]), shared=shared)
            for i, m in zip(idx, stacked):
                out[i] = m
        return out

    def overlays(
        self, alpha: float = 0.5, boxes: bool = False, shared: bool = True
    ) -> list[Image.Image]:
        """One overlay image per panel, optionally with its box (scale as in ``heatmaps``)."""
        out = []
        for p, h in zip(self.panels(), self.heatmaps(shared)):
            im = overlay(self.image, h, alpha)
            out.append(draw_boxes(im, [p.box]) if boxes else im)
        return out

    def plot(self, alpha: float = 0.5, ncols: int = 6, shared: bool = True) -> Any:
        """A matplotlib figure: the image, then one overlay per panel with its map's max.

        ``shared=True``: one color scale per group (words comparable); ``False``: each map
        scaled by its own max (shape of weak maps visible).
        """
        import matplotlib.pyplot as plt

        panels = self.panels()
        ims = [self.image] + self.overlays(alpha, boxes=True, shared=shared)
        titles = ["image"] + [f"{p.title}\nmax {float(p.map.max()):.3g}" for p in panels]
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
        scale = "one scale per group" if shared else "each map scaled to its own max"
        score = getattr(self, "score", "logprob")
        how = self.method if score == "logprob" else f"{self.method}, score {score}"
        fig.suptitle(drawable(f"{self._headline()}   ({how}; {scale})"), fontsize=11,
                     fontfamily=families)
        fig.tight_layout()
        return fig

    def _headline(self) -> str:
        return ""

    def _save_common(self, out: Path, names: list[str]) -> None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        out.mkdir(parents=True, exist_ok=True)
        for name, shared in (("grid.png", True), ("grid_per_map_scale.png", False)):
            fig = self.plot(shared=shared)
            fig.savefig(out / name, dpi=100)
            plt.close(fig)
        for name, im in zip(names, self.overlays(boxes=True)):
            im.save(out / name)
        (out / "result.json").write_text(json.dumps(self.to_dict(), indent=2))
        (out / "index.html").write_text(self.to_html())

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_html(self, alpha: float = 0.5) -> str:
        """A self-contained HTML page: hover or click an item to show its map."""
        panels = self.panels()
        srcs = [
            [
                "data:image/png;base64," + base64.b64encode(_png(im)).decode()
                for im in [self.image] + self.overlays(alpha, boxes=True, shared=shared)
            ]
            for shared in (True, False)
        ]
        items = "\n".join(
            f'<span class="item" data-i="{i + 1}" tabindex="0" title="{html.escape(p.detail)}">'
            f"{html.escape(p.title)}</span>"
            for i, p in enumerate(panels)
        )
        data = json.dumps(srcs)
        return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mmcam: {html.escape(self._headline())}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
.item {{ display: inline-block; padding: .2em .5em; margin: .15em; border-radius: .3em;
  background: #eef; cursor: pointer; }}
.item.on {{ background: #36c; color: white; }}
#view {{ max-width: 90vw; max-height: 70vh; image-rendering: auto; border: 1px solid #ccc; }}
#info {{ color: #555; min-height: 1.5em; }}
</style></head><body>
<h2>{html.escape(self._headline())}</h2>
<p>method: {html.escape(self.method)}; hover or click an item to see its map
(press Esc for the plain image).</p>
<p><label><input type="checkbox" id="own"> scale each map to its own max
(default: one color scale per group, so maps are comparable)</label></p>
<div id="items">{items}</div>
<p id="info"></p>
<img id="view" alt="heat map" src="{srcs[0][0]}">
<script>
const SRC = {data};
const view = document.getElementById('view'), info = document.getElementById('info');
const own = document.getElementById('own');
let pinned = 0, shown = 0;
function show(i) {{
  shown = i;
  view.src = SRC[own.checked ? 1 : 0][i];
  view.dataset.shown = i;
  document.querySelectorAll('.item').forEach(e => e.classList.toggle('on', +e.dataset.i === i));
  const el = document.querySelector('.item[data-i="' + i + '"]');
  info.textContent = el ? el.title : '';
}}
document.querySelectorAll('.item').forEach(e => {{
  e.addEventListener('mouseenter', () => show(+e.dataset.i));
  e.addEventListener('mouseleave', () => show(pinned));
  e.addEventListener('click', () => {{ pinned = +e.dataset.i; show(pinned); }});
}});
own.addEventListener('change', () => show(shown));
document.addEventListener('keydown', ev => {{
  if (ev.key === 'Escape') {{ pinned = 0; show(0); }}
}});
</script></body></html>
"""


def _box_list(box: Box | None) -> list[int] | None:
    return list(box) if box is not None else None


@dataclass(frozen=True)
class CaptionExplanation(_Shows):
    """Word-by-word maps for one caption of one image.

    ``maps`` (n_words,H,W): map of each word's explained score (``score``, see
    :mod:`mmcam.scores`; by default ``log p(word_t | words_<t, image)``) at the image's own
    size, ReLU'd and un-normalized; ``values``: those scores; ``logprobs``: each word's log p;
    ``sentence_map`` (H,W): map of the sum of the words' scores; ``boxes``: 15%-of-max boxes
    (image pixels); ``unknown_words``: the words of a given caption that the model does not
    know (it reads them as its unknown token: their maps explain that token, not the word).
    """

    image: Image.Image
    caption: str
    words: list[str]
    logprobs: list[float]
    maps: torch.Tensor
    layer_maps: torch.Tensor
    boxes: list[Box | None]
    sentence_map: torch.Tensor
    sentence_box: Box | None
    method: str
    generated: bool
    guided: torch.Tensor | None = field(default=None, repr=False)
    layer: str = ""
    score: str = "logprob"
    values: list[float] | None = None
    unknown_words: list[str] = field(default_factory=list)

    def panels(self) -> list[Panel]:
        vals = self.values if self.values is not None else self.logprobs
        out = [
            Panel(w, m, b, "words", f"log p = {lp:.4f}" if self.score == "logprob"
                  else f"{self.score} = {v:.3f}, log p = {lp:.4f}")
            for w, m, b, lp, v in zip(self.words, self.maps, self.boxes, self.logprobs, vals)
        ]
        total = sum(vals)
        out.append(
            Panel("whole caption", self.sentence_map, self.sentence_box, "sentence",
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
        return {
            "caption": self.caption,
            "unknown_words": list(self.unknown_words),
            "generated": self.generated,
            "method": self.method,
            "score": self.score,
            "layer": self.layer,
            "image_size": list(self.image.size),
            "words": [
                {"word": w, "logprob": lp, "score": v, "box": _box_list(b),
                 "map_max": float(m.max())}
                for w, lp, v, b, m in zip(self.words, self.logprobs,
                                          self.values or self.logprobs, self.boxes, self.maps)
            ],
            "sentence": {
                "logprob": float(sum(self.logprobs)),
                "box": _box_list(self.sentence_box),
                "map_max": float(self.sentence_map.max()),
            },
        }

    def save(self, out: str | Path) -> Path:
        """Write grid.png, one PNG per word, sentence.png, result.json and index.html."""
        out = Path(out)
        names = [f"word_{i:02d}_{_slug(w)}.png" for i, w in enumerate(self.words)]
        self._save_common(out, names + ["sentence.png"])
        if self.guided is not None:
            for i, w in enumerate(self.words):
                guided_image(self.guided[i]).resize(self.image.size).save(
                    out / f"guided_{i:02d}_{_slug(w)}.png"
                )
        return out


@dataclass(frozen=True)
class VQAExplanation(_Shows):
    """Maps for a VQA answer, the top-k answers and an optional contrast.

    ``map``: map of ``log p(answer | question, image)``; ``contrast_map``: map of
    ``log p(answer) - log p(contrast)``; ``top_answers``: (answer, probability, map).
    """

    image: Image.Image
    question: str
    unknown_words: list[str]
    answer: str
    probability: float
    map: torch.Tensor
    box: Box | None
    top_answers: list[tuple[str, float, torch.Tensor]]
    method: str
    model_answer: str
    contrast: str | None = None
    contrast_map: torch.Tensor | None = None
    contrast_box: Box | None = None
    top_boxes: list[Box | None] | None = None
    layer: str = ""
    score: str = "logprob"

    def panels(self) -> list[Panel]:
        out = [Panel(f"{self.answer}", self.map, self.box, "answers",
                     f"explained answer, p = {self.probability:.4f}")]
        boxes = self.top_boxes
        if boxes is None:  # built by hand without boxes: compute them once here
            from mmcam.cam import localize

            boxes = localize(torch.stack([m for _, _, m in self.top_answers]))
        for (a, p, m), b in zip(self.top_answers, boxes):
            out.append(Panel(f"{a} ({p:.2f})", m, b, "answers", f"p = {p:.4f}"))
        if self.contrast is not None and self.contrast_map is not None:
            out.append(Panel(f"{self.answer} rather than {self.contrast}", self.contrast_map,
                             self.contrast_box, "contrast",
                             "log p(answer) - log p(contrast)"))
        return out

    def _headline(self) -> str:
        return f"Q: {self.question}  A: {self.answer}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no pixel data)."""
        d: dict[str, Any] = {
            "question": self.question,
            "unknown_words": self.unknown_words,
            "model_answer": self.model_answer,
            "answer": self.answer,
            "probability": self.probability,
            "box": _box_list(self.box),
            "method": self.method,
            "layer": self.layer,
            "image_size": list(self.image.size),
            "top_answers": [
                {"answer": a, "probability": p, "map_max": float(m.max())}
                for a, p, m in self.top_answers
            ],
        }
        if self.contrast is not None:
            d["contrast"] = {"answer": self.contrast, "box": _box_list(self.contrast_box)}
        return d

    def save(self, out: str | Path) -> Path:
        """Write grid.png, one PNG per map, result.json and index.html."""
        out = Path(out)
        names = ["answer.png"] + [f"top_{i}_{_slug(a)}.png" for i, (a, _, _) in
                                  enumerate(self.top_answers)]
        if self.contrast is not None:
            names.append("contrast.png")
        self._save_common(out, names)
        return out


@dataclass(frozen=True)
class ClassExplanation(_Shows):
    """Maps for the top (or chosen) classes of one image.

    ``maps`` (k,H,W) are un-normalized and carried onto the image's own pixels;
    ``layer_maps`` (k,h,w) are at the explained layer's grid; ``guided_gradcam``
    (k,3,Hin,Win) is at the model input's resolution; ``boxes`` are 15%-of-max boxes.
    """

    image: Image.Image
    classes: list[int]
    labels: list[str]
    scores: list[float]
    probabilities: list[float]
    maps: torch.Tensor
    layer_maps: torch.Tensor
    boxes: list[Box | None]
    method: str
    layer: str
    guided_gradcam: torch.Tensor | None = field(default=None, repr=False)

    def panels(self) -> list[Panel]:
        return [
            Panel(f"{lab} ({p:.2f})", m, b, "classes", f"class {c}: score {s:.4f}, p = {p:.4f}")
            for c, lab, s, p, m, b in zip(self.classes, self.labels, self.scores,
                                          self.probabilities, self.maps, self.boxes)
        ]

    def _headline(self) -> str:
        return f"classes: {', '.join(self.labels)} (layer {self.layer})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no pixel data)."""
        return {
            "method": self.method,
            "layer": self.layer,
            "image_size": list(self.image.size),
            "classes": [
                {"id": c, "label": lab, "score": s, "probability": p, "box": _box_list(b),
                 "map_max": float(m.max())}
                for c, lab, s, p, b, m in zip(self.classes, self.labels, self.scores,
                                              self.probabilities, self.boxes, self.maps)
            ],
        }

    def save(self, out: str | Path) -> list[Path]:
        """Write grid.png, per class ``class{i}_{id}_box.png`` (shared scale, box),
        ``class{i}_{id}_{method}.png`` (own scale) and the guided Grad-CAM image,
        result.json and index.html; return the files written."""
        out = Path(out)
        names = [f"class{i}_{c}_box.png" for i, c in enumerate(self.classes)]
        self._save_common(out, names)
        written = [out / n for n in ("grid.png", "grid_per_map_scale.png", "result.json",
                                     "index.html")] + [out / n for n in names]
        for i, (c, ov) in enumerate(zip(self.classes, self.overlays(shared=False))):
            p = out / f"class{i}_{c}_{self.method}.png"
            ov.save(p)
            written.append(p)
            if self.guided_gradcam is not None:
                p = out / f"class{i}_{c}_guided_gradcam.png"
                guided_image(self.guided_gradcam[i]).resize(self.image.size).save(p)
                written.append(p)
        return written
