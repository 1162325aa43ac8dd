"""The Gradio app: explain captions word by word, VQA answers and classes in the browser.

``build_app()`` returns the ``gr.Blocks``; ``launch()`` serves it on 127.0.0.1 (``mmcam demo``).
Models are loaded once at start-up and shared read-only; everything a user computes lives in
that user's own ``gr.State`` (a :class:`Session`), so users never see each other's results.
All maps of a caption (or of a question's top answers, or of an image's top classes) are
computed in one explainer call; clicking a word, an answer or a class, moving the opacity
slider or toggling boxes only re-draws from the stored display maps.

Every event has an ``api_name`` (``/caption``, ``/show_word``, ``/vqa``, ...) and every
component a stable ``elem_id``, so the app can be driven by ``gradio_client`` and by a
browser alike.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from mmcam.cam import normalize
from mmcam.errors import MMCamError
from mmcam.images import load_image
from mmcam.viz import draw_boxes, draw_text, guided_image, overlay

_log = logging.getLogger(__name__)

SHIPPED = {"captioner": "shapes-captioner", "vqa": "shapes-vqa", "classifier": "shapes-classifier"}
# method[:score] choices, the recommended one first (measured by `mmcam evaluate-explanations`
# on the shipped models: README, "How good are the maps?")
RECOMMENDED = "hirescam:contrast"
CAPTION_METHODS = [
    ("HiResCAM, contrast (recommended)", RECOMMENDED),
    ("Grad-CAM, log p (the paper)", "gradcam"),
    ("HiResCAM, log p", "hirescam"),
    ("Grad-CAM, contrast", "gradcam:contrast"),
    ("Grad-CAM++, log p (fails the sanity check)", "gradcam++"),
    ("Counterfactual", "counterfactual"),
    ("Guided Grad-CAM", "guided-gradcam"),
]
METHODS = [m for m in CAPTION_METHODS if m[1] != "guided-gradcam"]
CLASS_METHODS = [("Grad-CAM", "gradcam"), ("Grad-CAM++", "gradcam++"), ("HiResCAM", "hirescam"),
                 ("Counterfactual", "counterfactual")]
SANITY_NOTE = (
    "Sanity check (decoder re-initialized, Adebayo et al. 2018): Grad-CAM and HiResCAM maps "
    "change (they depend on what the model learned); Grad-CAM++ maps barely change, so they "
    "show the image more than the model. Contrast: the word's logit minus the mean of the "
    "other words of its kind (or the model's top 5 alternatives).")


def method_score(value: str | None) -> tuple[str, str]:
    """``"method[:score]"`` (a method choice) -> (method, score); score defaults to logprob."""
    method, _, score = (value or "gradcam").partition(":")
    return method, score or "logprob"


def _label(value: str) -> str:
    return dict((v, k) for k, v in CAPTION_METHODS).get(value, value)
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
SCENE_SEED = 777  # the app's scene stream; scene indices are drawn at random (fresh scenes)
MAX_SIDE = 512  # larger images are shrunk: the models see 128x128, and a session keeps
# every map at the image's size (n_words x H x W floats)
SESSION_TTL_S = 1800  # a session's results are dropped this long after its last event
MAX_SESSIONS = 100
N_SCENES = 5
TOP_ANSWERS = 5
TOP_CLASSES = 3
BOX_COLOR, TRUTH_COLOR = "lime", "magenta"
KEEP_FILES = 4  # images kept per output in a session's folder (gradio has copied older ones)
TILE = 160  # longest side of a tile in the grid of all words

CSS = """
#cap_words .wrap, #vqa_top .wrap, #cls_top .wrap { gap: 6px; }
.mmcam-map img, .mmcam-input img { width: 100% !important; height: 100% !important;
  object-fit: contain; }
.mmcam-file .empty { min-height: 48px !important; height: 48px !important; }
#cap_status p, #vqa_answer p, #cls_status p { margin: 0.2em 0; }
"""


# ----------------------------------------------------------------------------- session state


class _Display:
    """``display(own)``: the stored shared-scale maps, or each map on its own scale (cached)."""

    result: Any
    heat: list[torch.Tensor]
    own: list[torch.Tensor] | None

    def display(self, own: bool = False) -> list[torch.Tensor]:
        """Display maps: the group's shared scale, or each map divided by its own max."""
        if not own:
            return self.heat
        if self.own is None:
            self.own = self.result.heatmaps(shared=False)
        return self.own


@dataclass
class CaptionView(_Display):
    """A caption result and what is needed to re-draw it without recomputing maps."""

    result: Any  # CaptionExplanation
    heat: list[torch.Tensor]  # display maps in [0,1]: one per word, then the whole caption
    boxes: list[tuple[int, int, int, int] | None]  # localization box per panel
    guided: list[Image.Image] | None  # Guided Grad-CAM image per word (guided method only)
    truth: Any = None  # the Scene when the image is a scene sample, else None
    selected: int = 0
    own: list[torch.Tensor] | None = None  # each map on its own scale (made on first use)


@dataclass
class VQAView(_Display):
    """A VQA result: panels are [explained answer, top-1 .. top-k]; ``contrast`` if asked."""

    result: Any  # VQAExplanation
    heat: list[torch.Tensor]
    boxes: list[tuple[int, int, int, int] | None]
    truth: Any = None
    selected: int = 0
    contrast: Any = None  # VQAExplanation with .contrast set
    contrast_heat: torch.Tensor | None = None
    own: list[torch.Tensor] | None = None


@dataclass
class ClassView:
    """A classification result with display maps (one shared scale) and guided images."""

    result: Any  # ClassExplanation
    heat: torch.Tensor
    guided: list[Image.Image]
    selected: int = 0

    def display(self, own: bool = False) -> torch.Tensor:
        """Display maps: one scale shared by the classes, or each map its own."""
        return normalize(self.result.maps, shared=False) if own else self.heat


@dataclass
class Session:
    """One user's state: the scene shown per tab, the current results, a download folder."""

    scenes: dict[str, Any] = field(default_factory=dict)
    caption: CaptionView | None = None
    vqa: VQAView | None = None
    classes: ClassView | None = None
    folder: Path | None = None
    written: dict[str, deque] = field(default_factory=dict)

    def workdir(self) -> Path:
        """This session's own temporary folder (made on first use)."""
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="mmcam-app-"))
        return self.folder

    def png(self, image: Image.Image | None, tag: str) -> str | None:
        """Write ``image`` as a fast PNG (zlib level 1: lossless, ~4x faster to write than
        PIL's default) in the session folder and return its path; gradio copies it to its
        cache. Only the last few files of each ``tag`` are kept."""
        if image is None:
            return None
        recent = self.written.setdefault(tag, deque())
        path = self.workdir() / f"{tag}-{uuid.uuid4().hex[:12]}.png"
        image.save(path, format="PNG", compress_level=1)
        recent.append(path)
        while len(recent) > KEEP_FILES:
            recent.popleft().unlink(missing_ok=True)
        return str(path)

    def close(self) -> None:
        """Remove the temporary folder; called by gradio when the session ends."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _close_session(session: Session) -> None:
    if isinstance(session, Session):
        session.close()


# ----------------------------------------------------------------------------- models


def kind_of(adapter: Any) -> str:
    """"captioner", "vqa" or "classifier", from the methods ``adapter`` has."""
    if callable(getattr(adapter, "score_answer_tokens", None)):  # answers generated as text
        return "vqa"
    if callable(getattr(adapter, "generate", None)) and callable(
        getattr(adapter, "score_tokens", None)
    ):
        return "captioner"
    if callable(getattr(adapter, "score_answers", None)):
        return "vqa"
    if hasattr(adapter, "labels") and hasattr(adapter, "layer"):
        return "classifier"
    raise MMCamError(
        f"{type(adapter).__name__} is not a captioning, VQA or classifier adapter"
    )


class Models:
    """Loaded models by name, shared read-only by all sessions."""

    def __init__(self) -> None:
        self.adapters: dict[str, Any] = {}
        self.kinds: dict[str, str] = {}

    def add(self, name: str, adapter: Any) -> str:
        """Register ``adapter`` under ``name``; return its kind."""
        kind = kind_of(adapter)
        self.adapters[name] = adapter
        self.kinds[name] = kind
        return kind

    def names(self, kind: str) -> list[str]:
        """Names of the loaded models of ``kind``, in loading order."""
        return [n for n, k in self.kinds.items() if k == kind]

    def get(self, name: str | None, kind: str) -> Any:
        """The adapter called ``name`` (the first one of ``kind`` if None)."""
        if not name:
            names = self.names(kind)
            if not names:
                raise MMCamError(f"no {kind} model is loaded: load a model folder first")
            name = names[0]
        if name not in self.adapters or self.kinds[name] != kind:
            raise MMCamError(f"{name!r} is not a loaded {kind} model")
        return self.adapters[name]

    def add_hf_folders(self) -> list[str]:
        """Load the Hugging Face model folders under ``$MMCAM_MODELS`` and ``models/`` (named
        by folder); return one line per folder that could not be loaded (the app starts
        without it)."""
        from mmcam import load_model
        from mmcam.models.hub import hf_folders

        problems = []
        for folder in hf_folders():
            if folder.name in self.adapters:
                continue
            try:
                self.add(folder.name, load_model(folder))
            except MMCamError as e:
                problems.append(f"{folder}: {e}")
        return problems

    def load_folder(self, path: str) -> tuple[str, str]:
        """Load a local model folder with :func:`mmcam.load_model`; return (name, kind)."""
        from mmcam import load_model

        path = (path or "").strip()
        if not path:
            raise MMCamError("give the path of a model folder (with config.json and "
                             "model.safetensors)")
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise MMCamError(f"no such folder: {path}")
        name = str(folder.resolve())
        if name not in self.adapters:
            self.add(name, load_model(name))
        return name, self.kinds[name]


# ----------------------------------------------------------------------------- samples


def photos() -> dict[str, Path]:
    """Real photos shipped with scikit-image (an optional dependency): name -> path."""
    try:
        import skimage
    except ImportError:
        return {}
    data = Path(os.path.dirname(skimage.__file__)) / "data"
    return {Path(f).stem: data / f for f in PHOTOS if (data / f).is_file()}


def scene_label(index: int) -> str:
    """Dropdown label of scene ``index`` of the app's scene stream."""
    return f"scene {index}"


def make_scene(index: int, one_large: bool = False) -> Any:
    """Scene ``index`` of the app's stream (``one_large``: the classifier's kind of scene)."""
    from mmcam import scenes

    return scenes.generate(1, SCENE_SEED, start=index, one_large=one_large)[0]


def fresh_indices(n: int = N_SCENES) -> list[int]:
    """``n`` random scene indices: scenes no one has seen before, with high probability."""
    return [random.randrange(10**6, 10**9) for _ in range(n)]


def sample_choices(indices: list[int]) -> list[str]:
    """Sample dropdown entries: scenes first, then the photos that exist."""
    return [scene_label(i) for i in indices] + [f"photo: {p}" for p in photos()]


def load_sample(label: str, one_large: bool = False) -> tuple[Image.Image, Any]:
    """(image, scene or None) for a sample dropdown entry."""
    if label and label.startswith("scene "):
        try:
            index = int(label.split()[1])
        except (IndexError, ValueError):
            index = -1
        if index < 0:
            raise MMCamError(f"unknown sample {label!r}: scenes are 'scene N' with N >= 0")
        scene = make_scene(index, one_large)
        return scene.image, scene
    if label and label.startswith("photo: "):
        path = photos().get(label[len("photo: "):])
        if path is None:
            raise MMCamError(f"the photo {label!r} is not installed (scikit-image's data)")
        return _fit(load_image(path)), None
    raise MMCamError("pick a sample from the list")


def _fit(image: Image.Image) -> Image.Image:
    """Shrink an image whose longest side exceeds MAX_SIDE (aspect kept)."""
    if max(image.size) <= MAX_SIDE:
        return image
    s = MAX_SIDE / max(image.size)
    return image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))),
                        Image.BILINEAR)


def read_image(path: Any) -> Image.Image:
    """The image given to an event (a file path from gr.Image), checked and fitted."""
    if path is None or (isinstance(path, str) and not path):
        raise MMCamError("no image: upload one or pick a sample first")
    try:
        image = load_image(path)
    except MMCamError as e:
        name = Path(str(path)).name
        reason = str(e).replace(f": {path}", "").replace(str(path), name)
        raise MMCamError(f"cannot read the uploaded file {name!r} ({reason}): upload a PNG "
                         "or JPEG image") from None
    return _fit(image)


def _truth(session: Session, tab: str, image: Image.Image) -> Any:
    """The scene shown in ``tab`` if ``image`` is exactly its picture, else None."""
    scene = session.scenes.get(tab)
    if scene is None or scene.image.size != image.size:
        return None
    return scene if np.array_equal(np.asarray(scene.image), np.asarray(image)) else None


def _box_width(image: Image.Image) -> int:
    return max(1, min(image.size) // 128)


def tolerant(component: gr.Image) -> gr.Image:
    """Make an image input pass an undecodable upload to the event as its file path (instead
    of failing inside gradio), so the event answers with its own one-line message.

    (An instance patch: subclassing ``gr.Image`` makes gradio write a .pyi next to this file.)
    """
    original = component.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return original(payload)
        except Exception:  # noqa: BLE001 - the event reports the unreadable file itself
            path = getattr(payload, "path", None)
            if path is None:
                raise
            return str(path)

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


# ----------------------------------------------------------------------------- errors


def _guarded(fn: Callable[..., Any], n_out: int, status: int | None, touch: bool = True
             ) -> Callable[..., Any]:
    """Wrap an event: an error becomes a message (gr.Warning and output ``status``); the
    other outputs are left as they were, and the app keeps running.

    With ``touch`` the event's last input, the session, is also returned as a last output:
    gradio re-stores it, which restarts its time-to-live (in-place changes do not).
    """

    def run(*args: Any) -> Any:
        try:
            out = fn(*args)
            out = list(out) if n_out != 1 else [out]
        except MMCamError as e:
            out, message = None, str(e)
        except Exception as e:  # noqa: BLE001 - a user's model may fail in any way
            _log.exception("mmcam app: event %s failed", fn.__name__)
            out = None
            message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if out is None:
            gr.Warning(message)
            out = [gr.skip()] * n_out
            if status is not None:
                out[status] = f"**Error:** {message}"
        if touch:
            out.append(args[-1])
        return tuple(out) if len(out) != 1 else out[0]

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def _zip(result: Any, session: Session, name: str) -> str:
    """Save ``result`` (``result.save(dir)``) in the session folder and zip it; return the
    zip's path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    root = session.workdir()
    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    result.save(out)
    return shutil.make_archive(str(root / name), "zip", root_dir=out)


# ----------------------------------------------------------------------------- captioning


def caption_view(result: Any, truth: Any = None) -> CaptionView:
    """Display maps (one scale per group, as ``result.heatmaps()``), boxes, guided images."""
    panels = result.panels()
    guided = None
    if result.guided is not None:
        guided = [guided_image(g).resize(result.image.size) for g in result.guided]
    return CaptionView(result, result.heatmaps(), [p.box for p in panels], guided, truth)


def caption_image(view: CaptionView, i: int, alpha: float, box: bool, truth: bool,
                  own: bool = False) -> Image.Image:
    """Overlay of panel ``i`` (a word, or the whole caption for i = n_words), with its
    localization box and the ground-truth boxes of the objects it names if asked; ``own``:
    the map on its own color scale instead of the caption's shared one."""
    r = view.result
    im = overlay(r.image, view.display(own)[i], alpha)
    width = _box_width(r.image)
    if truth and view.truth is not None:
        objs = view.truth.objects if i >= len(r.words) else view.truth.objects_named(r.words[i])
        im = draw_boxes(im, [o.box for o in objs], TRUTH_COLOR, width)
    if box:
        im = draw_boxes(im, [view.boxes[i]], BOX_COLOR, width)
    return im


def _word_info(view: CaptionView, i: int, own: bool = False) -> str:
    r = view.result
    box = view.boxes[i]
    where = f"box (x0, y0, x1, y1) = {tuple(box)}" if box is not None else "no box (empty map)"
    text = (f"**{r.words[i]}** (word {i + 1} of {len(r.words)}): log p = {r.logprobs[i]:.3f}, "
            f"p = {float(np.exp(r.logprobs[i])):.3f}; {where}")
    if r.score != "logprob" and r.values is not None:
        text += f"; explained score ({r.score}) = {r.values[i]:.3f}"
    if view.truth is not None:
        named = [o.name for o in view.truth.objects_named(r.words[i])]
        text += f"; names in this scene: {', '.join(named) if named else 'no object'}"
    return text + _peak(r.maps[i], r.maps, "the words'", own)


def _peak(m: torch.Tensor, group: torch.Tensor | list[torch.Tensor], whose: str,
          own: bool = False) -> str:
    """How strong a map is next to its group: its peak as a share of the group's largest
    (with a hint to use per-map scales when it is faint on the shared one)."""
    top = max(float(g.max()) for g in group)
    share = float(m.max()) / top if top > 0 else 0.0
    hint = " (faint on the shared scale: tick 'each map on its own color scale')" if (
        share < 0.2 and not own) else ""
    return f"; peak = {share:.0%} of {whose} largest{hint}"


def _caption_status(view: CaptionView) -> str:
    r = view.result
    how = "generated by the model" if r.generated else "your caption, explained as given"
    method = _label(r.method if r.score == "logprob" else f"{r.method}:{r.score}")
    text = (f"**Caption:** {r.caption}  \n{how}; {method}; sum of log p = "
            f"{sum(r.logprobs):.3f}. Click a word to see its map.")
    if r.unknown_words:
        text += "  \n" + r.unknown_notice()
    if view.truth is not None:
        text += "  \nScene captions (ground truth): " + "; ".join(view.truth.captions[:3])
    return text


def grid_image(view: CaptionView, alpha: float, box: bool, truth: bool, own: bool = False,
               cols: int = 7) -> Image.Image:
    """All words and the whole caption in one picture: a tile per panel (the overlay drawn
    at tile size, on the caption's shared scale unless ``own``) with the word and its log p
    under it."""
    r = view.result
    scale = min(1.0, TILE / max(r.image.size))
    tw, th = max(1, round(r.image.width * scale)), max(1, round(r.image.height * scale))
    small = r.image if scale == 1.0 else r.image.resize((tw, th), Image.BILINEAR)
    heat = torch.stack(view.display(own))
    if scale != 1.0:
        heat = F.interpolate(heat[:, None], size=(th, tw), mode="bilinear",
                             align_corners=False, antialias=True)[:, 0]
    labels = [f"{w}  {lp:.2f}" for w, lp in zip(r.words, r.logprobs)] + ["whole caption"]
    n = len(labels)
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    pad, text_h = 6, 18
    sheet = Image.new("RGB", (cols * (tw + pad) + pad, rows * (th + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, label in enumerate(labels):
        tile = overlay(small, heat[i], alpha)
        boxes = []
        if truth and view.truth is not None:
            objs = view.truth.objects if i >= len(r.words) else view.truth.objects_named(
                r.words[i])
            tile = draw_boxes(tile, [_scaled(o.box, scale) for o in objs], TRUTH_COLOR, 1)
        if box:
            boxes = [_scaled(view.boxes[i], scale)]
            tile = draw_boxes(tile, boxes, BOX_COLOR, 1)
        x = pad + (i % cols) * (tw + pad)
        y = pad + (i // cols) * (th + text_h + pad)
        sheet.paste(tile, (x, y))
        draw_text(draw, (x + 2, y + th + 2), label, size=13)  # any script, no tofu
    return sheet


def _scaled(box: tuple[int, int, int, int] | None, s: float
            ) -> tuple[int, int, int, int] | None:
    if box is None:
        return None
    return (round(box[0] * s), round(box[1] * s), round(box[2] * s), round(box[3] * s))


def _word_choices(view: CaptionView) -> list[tuple[str, int]]:
    return [(w, i) for i, w in enumerate(view.result.words)]


# ----------------------------------------------------------------------------- VQA


def vqa_view(result: Any, truth: Any = None) -> VQAView:
    """Display maps of [explained answer, top answers] on one shared scale, and boxes."""
    panels = result.panels()
    return VQAView(result, result.heatmaps(), [p.box for p in panels], truth)


def vqa_image(view: VQAView, i: int, alpha: float, box: bool, own: bool = False
              ) -> Image.Image:
    """Overlay of top answer ``i`` (on the answers' shared scale unless ``own``)."""
    r = view.result
    im = overlay(r.image, view.display(own)[1 + i], alpha)
    if box:
        im = draw_boxes(im, [view.boxes[1 + i]], BOX_COLOR, _box_width(r.image))
    return im


def contrast_image(view: VQAView, alpha: float, box: bool) -> Image.Image | None:
    """Overlay of the last "A rather than B" map, or None."""
    c = view.contrast
    if c is None or view.contrast_heat is None:
        return None
    im = overlay(c.image, view.contrast_heat, alpha)
    if box:
        im = draw_boxes(im, [c.contrast_box], BOX_COLOR, _box_width(c.image))
    return im


def _answer_choices(view: VQAView) -> list[tuple[str, int]]:
    return [(f"{a}  {p:.1%}", i) for i, (a, p, _) in enumerate(view.result.top_answers)]


def _vqa_status(view: VQAView) -> str:
    r = view.result
    text = f"**Answer: {r.answer}** (p = {r.probability:.3f})"
    if r.unknown_words:
        text += f"  \nwords the model does not know (read as unknown): {', '.join(r.unknown_words)}"
    if view.truth is not None:
        truth = dict(view.truth.questions).get(r.question.strip())
        if truth is not None:
            ok = "correct" if truth.lower() == r.answer.lower() else "wrong"
            text += f"  \nground truth for this scene: **{truth}** ({ok})"
    return text + "  \nClick an answer to see its map."


def _answer_info(view: VQAView, i: int, own: bool = False) -> str:
    a, p, _ = view.result.top_answers[i]
    box = view.boxes[1 + i]
    where = f"box = {tuple(box)}" if box is not None else "no box (empty map)"
    maps = [m for _, _, m in view.result.top_answers]
    what = (f"log p({a})" if view.result.score == "logprob" else
            f"the logit of {a} minus the mean of its alternatives'"
            if view.result.score == "contrast" else f"the logit of {a}")
    return (f"map of **{a}** (p = {p:.3f}): where the image raises {what}; {where}"
            + _peak(maps[i], maps, "the answers'", own))


# ----------------------------------------------------------------------------- classification


def class_view(result: Any) -> ClassView:
    """Display maps on one shared scale (as ``result.overlays()``) and guided images."""
    guided = []
    if result.guided_gradcam is not None:
        guided = [guided_image(g).resize(result.image.size) for g in result.guided_gradcam]
    return ClassView(result, normalize(result.maps, shared=True), guided)


def class_image(view: ClassView, i: int, alpha: float, box: bool, own: bool = False
                ) -> Image.Image:
    """Overlay of class ``i`` (shared scale unless ``own``) with its box if asked."""
    r = view.result
    im = overlay(r.image, view.display(own)[i], alpha)
    if box:
        im = draw_boxes(im, [r.boxes[i]], BOX_COLOR, _box_width(r.image))
    return im


def _class_choices(view: ClassView) -> list[tuple[str, int]]:
    r = view.result
    return [(f"{lab}  {p:.1%}", i) for i, (lab, p) in enumerate(zip(r.labels, r.probabilities))]


def _class_info(view: ClassView, i: int, own: bool = False) -> str:
    r = view.result
    box = r.boxes[i]
    where = f"box = {tuple(box)}" if box is not None else "no box (empty map)"
    return (f"**{r.labels[i]}**: p = {r.probabilities[i]:.3f}, score = {r.scores[i]:.3f}; "
            f"{where}; layer {r.layer}" + _peak(r.maps[i], r.maps, "the classes'", own))


# ----------------------------------------------------------------------------- the app


def _image_input(elem_id: str) -> gr.Image:
    return tolerant(gr.Image(label="Image", type="filepath", format="png", image_mode=None,
                             sources=["upload", "clipboard"], height=300, elem_id=elem_id,
                             elem_classes="mmcam-input"))


def _map_output(label: str, elem_id: str, visible: bool = True) -> gr.Image:
    return gr.Image(label=label, type="pil", format="png", interactive=False, height=300,
                    visible=visible, elem_id=elem_id, elem_classes="mmcam-map")


def build_app(captioner: Any = None, vqa: Any = None, classifier: Any = None) -> gr.Blocks:
    """The app. Adapters left as None are the shipped models, loaded once here."""
    from mmcam import load_model
    from mmcam.caption import CaptionExplainer
    from mmcam.classify import ClassExplainer
    from mmcam.vqa import VQAExplainer, check_contrast

    models = Models()
    for kind, adapter in (("captioner", captioner), ("vqa", vqa), ("classifier", classifier)):
        if adapter is None:
            models.add(SHIPPED[kind], load_model(SHIPPED[kind]))
        else:
            name = getattr(adapter, "name", None) or f"{type(adapter).__name__} (given)"
            got = models.add(str(name), adapter)
            if got != kind:
                raise MMCamError(f"the {kind} given to build_app is a {got} adapter")
    for problem in models.add_hf_folders():
        _log.warning("model folder not loaded: %s", problem)

    model_events = {"concurrency_id": "model", "concurrency_limit": 1}
    # drawing from stored maps is cheap: served at once, outside the queue, without a spinner;
    # a click made while one is pending is not dropped but served after it ("always_last")
    draw_events = {"queue": False, "show_progress": "hidden", "trigger_mode": "always_last"}

    # ---- captioning handlers

    def caption_sample(label: str, session: Session) -> tuple:
        if not (label or "").strip():  # the sample box was left empty: nothing to do
            return gr.skip(), gr.skip()
        image, scene = load_sample(label)
        session.scenes["caption"] = scene
        return session.png(image, "cap_sample"), ""

    def caption_new_scene(session: Session) -> tuple:
        index = fresh_indices(1)[0]
        scene = make_scene(index)
        session.scenes["caption"] = scene
        choices = sample_choices([index] + fresh_indices(N_SCENES - 1))
        return (session.png(scene.image, "cap_sample"),
                gr.update(choices=choices, value=scene_label(index)), "")

    def explain_caption(image_path: Any, text: str, model: str, method: str, alpha: float,
                        box: bool, truth: bool, own: bool, session: Session) -> tuple:
        """Caption the image (or explain your caption) and compute every word's map."""
        image = read_image(image_path)
        m, score = method_score(method)
        explainer = CaptionExplainer(models.get(model, "captioner"), method=m, score=score)
        text = (text or "").strip()
        result = explainer.explain(image, caption=text or None)
        view = caption_view(result, _truth(session, "caption", image))
        session.caption = view
        return _caption_outputs(view, alpha, box, truth, own, session)

    def _caption_outputs(view: CaptionView, alpha: float, box: bool, truth: bool, own: bool,
                         session: Session) -> tuple:
        n = len(view.result.words)
        return (
            _caption_status(view),
            gr.update(choices=_word_choices(view), value=0),
            session.png(caption_image(view, 0, alpha, box, truth, own), "word"),
            _word_info(view, 0, own),
            session.png(caption_image(view, n, alpha, box, truth, own), "sentence"),
            session.png(view.guided[0] if view.guided else None, "guided"),
            session.png(grid_image(view, alpha, box, truth, own), "grid"),
            gr.update(interactive=view.truth is not None),
        )

    def rerun_caption(method: str, alpha: float, box: bool, truth: bool, own: bool, model: str,
                      session: Session) -> tuple:
        """Explain the shown caption again with another method (same image and words)."""
        if session.caption is None:
            return tuple([gr.skip()] * 8)
        r = session.caption.result
        m, score = method_score(method)
        explainer = CaptionExplainer(models.get(model, "captioner"), method=m, score=score)
        result = explainer.explain(r.image, caption=None if r.generated else r.caption)
        session.caption = caption_view(result, session.caption.truth)
        return _caption_outputs(session.caption, alpha, box, truth, own, session)

    def show_word(word: int | None, alpha: float, box: bool, truth: bool, own: bool,
                  session: Session) -> tuple:
        """The map of word number ``word`` (0-based), from the maps already computed."""
        view = session.caption
        if view is None:
            raise MMCamError("make a caption first")
        n = len(view.result.words)
        if word is None or not 0 <= int(word) < n:
            raise MMCamError(f"word index {word} is out of range: the caption has {n} words")
        i = view.selected = int(word)
        return (session.png(caption_image(view, i, alpha, box, truth, own), "word"),
                _word_info(view, i, own),
                session.png(view.guided[i] if view.guided else None, "guided"))

    def render_caption(alpha: float, box: bool, truth: bool, own: bool, session: Session
                       ) -> tuple:
        """Re-draw the shown maps with new display settings (no recomputation)."""
        view = session.caption
        if view is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        n = len(view.result.words)
        return (session.png(caption_image(view, view.selected, alpha, box, truth, own), "word"),
                session.png(caption_image(view, n, alpha, box, truth, own), "sentence"),
                session.png(grid_image(view, alpha, box, truth, own), "grid"),
                _word_info(view, view.selected, own))

    def download_caption(session: Session) -> tuple:
        if session.caption is None:
            raise MMCamError("make a caption first")
        return _zip(session.caption.result, session, "caption"), "saved the caption's bundle"

    # ---- VQA handlers

    def vqa_sample(label: str, session: Session) -> tuple:
        if not (label or "").strip():
            return gr.skip(), gr.skip(), gr.skip()
        image, scene = load_sample(label)
        session.scenes["vqa"] = scene
        question = scene.questions[0][0] if scene is not None else ""
        qs = [q for q, _ in scene.questions] if scene is not None else []
        return session.png(image, "vqa_sample"), question, gr.update(choices=qs, value=None)

    def vqa_new_scene(session: Session) -> tuple:
        index = fresh_indices(1)[0]
        scene = make_scene(index)
        session.scenes["vqa"] = scene
        choices = sample_choices([index] + fresh_indices(N_SCENES - 1))
        qs = [q for q, _ in scene.questions]
        return (session.png(scene.image, "vqa_sample"),
                gr.update(choices=choices, value=scene_label(index)),
                qs[0], gr.update(choices=qs, value=None))

    def ask(image_path: Any, question: str, model: str, method: str, alpha: float, box: bool,
            own: bool, session: Session) -> tuple:
        """Answer the question; maps of the top-5 answers."""
        if not isinstance(question, str) or not question.strip():
            raise MMCamError("the question is empty: ask something about the image")
        image = read_image(image_path)
        adapter = models.get(model, "vqa")
        m, score = method_score(method)
        result = VQAExplainer(adapter, method=m, score=score).explain(
            image, question.strip(), top_k=TOP_ANSWERS
        )
        view = vqa_view(result, _truth(session, "vqa", image))
        session.vqa = view
        second = next((a for a, _, _ in result.top_answers if a != result.answer), None)
        return (
            _vqa_status(view),
            gr.update(choices=_answer_choices(view), value=0),
            session.png(vqa_image(view, 0, alpha, box, own), "answer"),
            _answer_info(view, 0, own),
            gr.update(choices=list(getattr(adapter, "answers", None)
                                   or [a for a, _, _ in result.top_answers]), value=second),
            None,
            "",
        )

    def reask(image_path: Any, question: str, model: str, method: str, alpha: float, box: bool,
              own: bool, session: Session) -> tuple:
        """Ask the shown question again with another method (nothing asked yet: no-op)."""
        if session.vqa is None:
            return tuple([gr.skip()] * 7)
        return ask(image_path, question, model, method, alpha, box, own, session)

    def show_answer(index: int | None, alpha: float, box: bool, own: bool, session: Session
                    ) -> tuple:
        """The map of top answer number ``index`` (0-based), from the maps already computed."""
        view = session.vqa
        if view is None:
            raise MMCamError("ask a question first")
        n = len(view.result.top_answers)
        if index is None or not 0 <= int(index) < n:
            raise MMCamError(f"answer index {index} is out of range: there are {n} answers")
        view.selected = int(index)
        return (session.png(vqa_image(view, view.selected, alpha, box, own), "answer"),
                _answer_info(view, view.selected, own))

    def contrast(other: str, method: str, alpha: float, box: bool, model: str,
                 session: Session) -> tuple:
        """Why the selected answer rather than ``other``: map of log p(A) - log p(B)."""
        view = session.vqa
        if view is None:
            raise MMCamError("ask a question first")
        a = view.result.top_answers[view.selected][0]
        if not other:
            raise MMCamError("pick an answer B to compare with")
        check_contrast(a, other)  # the message the library and the CLI give
        r = view.result
        c = VQAExplainer(models.get(model, "vqa"), method=method_score(method)[0]).explain(
            r.image, r.question, answer=a, contrast=other, top_k=TOP_ANSWERS
        )
        view.contrast = c
        view.contrast_heat = c.heatmaps()[-1]
        text = (f"**Why {a} rather than {c.contrast}:** where the image raises "
                f"log p({a}) − log p({c.contrast}).")
        return session.png(contrast_image(view, alpha, box), "contrast"), text

    def render_vqa(alpha: float, box: bool, own: bool, session: Session) -> tuple:
        view = session.vqa
        if view is None:
            return gr.skip(), gr.skip(), gr.skip()
        return (session.png(vqa_image(view, view.selected, alpha, box, own), "answer"),
                session.png(contrast_image(view, alpha, box), "contrast"),
                _answer_info(view, view.selected, own))

    def download_vqa(session: Session) -> tuple:
        if session.vqa is None:
            raise MMCamError("ask a question first")
        result = session.vqa.contrast or session.vqa.result
        return _zip(result, session, "vqa"), "saved the answer's bundle"

    # ---- classification handlers

    def class_sample(label: str, session: Session) -> Any:
        if not (label or "").strip():
            return gr.skip()
        image, scene = load_sample(label, one_large=True)
        session.scenes["classify"] = scene
        return session.png(image, "cls_sample")

    def class_new_scene(session: Session) -> tuple:
        index = fresh_indices(1)[0]
        scene = make_scene(index, one_large=True)
        session.scenes["classify"] = scene
        choices = sample_choices([index] + fresh_indices(N_SCENES - 1))
        return (session.png(scene.image, "cls_sample"),
                gr.update(choices=choices, value=scene_label(index)))

    def classify(image_path: Any, model: str, method: str, alpha: float, box: bool, own: bool,
                 session: Session) -> tuple:
        """Top classes, their maps, Guided Grad-CAM and localization boxes."""
        image = read_image(image_path)
        adapter = models.get(model, "classifier")
        top = min(TOP_CLASSES, len(adapter.labels))
        result = ClassExplainer(adapter, method=method or "gradcam").explain(
            image, top=top, guided=True
        )
        view = class_view(result)
        session.classes = view
        status = f"**{result.labels[0]}** (p = {result.probabilities[0]:.3f})"
        scene = _truth(session, "classify", image)
        if scene is not None:
            large = [o.shape for o in scene.objects if o.size == "large"]
            if large:
                ok = "correct" if large[0] == result.labels[0] else "wrong"
                status += f"; ground truth: the large object is a **{large[0]}** ({ok})"
        return (status + "  \nClick a class to see its map.",
                gr.update(choices=_class_choices(view), value=0),
                session.png(class_image(view, 0, alpha, box, own), "class"),
                session.png(view.guided[0] if view.guided else None, "class_guided"),
                _class_info(view, 0, own))

    def reclassify(image_path: Any, model: str, method: str, alpha: float, box: bool,
                   own: bool, session: Session) -> tuple:
        """Classify again with another method (nothing classified yet: no-op)."""
        if session.classes is None:
            return tuple([gr.skip()] * 5)
        return classify(image_path, model, method, alpha, box, own, session)

    def show_class(index: int | None, alpha: float, box: bool, own: bool, session: Session
                   ) -> tuple:
        """The map and Guided Grad-CAM of class number ``index`` (0-based)."""
        view = session.classes
        if view is None:
            raise MMCamError("classify an image first")
        n = len(view.result.classes)
        if index is None or not 0 <= int(index) < n:
            raise MMCamError(f"class index {index} is out of range: there are {n} classes")
        i = view.selected = int(index)
        return (session.png(class_image(view, i, alpha, box, own), "class"),
                session.png(view.guided[i] if view.guided else None, "class_guided"),
                _class_info(view, i, own))

    def render_class(alpha: float, box: bool, own: bool, session: Session) -> tuple:
        view = session.classes
        if view is None:
            return gr.skip(), gr.skip()
        return (session.png(class_image(view, view.selected, alpha, box, own), "class"),
                _class_info(view, view.selected, own))

    def download_class(session: Session) -> tuple:
        if session.classes is None:
            raise MMCamError("classify an image first")
        root = session.workdir()
        out = root / "classify"
        shutil.rmtree(out, ignore_errors=True)
        session.classes.result.save(out)
        return shutil.make_archive(str(out), "zip", root_dir=out), "saved the classes' bundle"

    # ---- model folder

    def load_folder(path: str) -> tuple:
        """Load a local model folder and select it in the tab of its kind."""
        name, kind = models.load_folder(path)
        ups = {
            k: gr.update(choices=models.names(k), value=name) if k == kind else gr.skip()
            for k in ("captioner", "vqa", "classifier")
        }
        tab = {"captioner": "Captioning", "vqa": "VQA", "classifier": "Classification"}[kind]
        return (f"loaded {kind} model from `{name}`: selected in the {tab} tab",
                ups["captioner"], ups["vqa"], ups["classifier"])

    # ---- layout

    first = fresh_indices()
    with gr.Blocks(title="mmcam: word-by-word Grad-CAM", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as app:
        session = gr.State(Session(), time_to_live=SESSION_TTL_S,
                           delete_callback=_close_session)
        gr.Markdown(
            "# mmcam: where each word comes from\n"
            "Grad-CAM maps for every word of a caption, every VQA answer and every class, "
            "computed together in one backward pass. Pick a sample or upload an image "
            f"(larger than {MAX_SIDE} px: shrunk)."
        )
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Captioning", id="captioning", elem_id="tab_captioning"):
                with gr.Row():
                    with gr.Column(scale=2):
                        cap_image = _image_input("cap_image")
                        with gr.Row():
                            cap_sample = gr.Dropdown(sample_choices(first), value=None,
                                                     label="Sample", elem_id="cap_sample",
                                                     allow_custom_value=True, scale=3)
                            cap_new = gr.Button("New scene", elem_id="cap_new_scene", scale=1)
                        cap_text = gr.Textbox(label="Your own caption (leave empty: the model "
                                                    "writes one)", elem_id="cap_text")
                        cap_model = gr.Dropdown(models.names("captioner"),
                                                value=models.names("captioner")[0],
                                                label="Model", elem_id="cap_model")
                        cap_method = gr.Radio(CAPTION_METHODS, value=RECOMMENDED,
                                              label="Method and explained score",
                                              elem_id="cap_method")
                        gr.Markdown(SANITY_NOTE)
                        cap_run = gr.Button("Explain caption", variant="primary",
                                            elem_id="cap_run")
                    with gr.Column(scale=3):
                        cap_status = gr.Markdown("", elem_id="cap_status")
                        cap_words = gr.Radio([], label="Caption: click a word",
                                             elem_id="cap_words")
                        with gr.Row():
                            cap_map = _map_output("Map of the word", "cap_word_map")
                            cap_sentence = _map_output("Whole caption", "cap_sentence_map")
                            cap_guided = _map_output("Guided Grad-CAM of the word",
                                                     "cap_guided", visible=False)
                        cap_info = gr.Markdown("", elem_id="cap_word_info")
                        with gr.Row():
                            cap_alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05,
                                                  label="Overlay opacity", elem_id="cap_alpha")
                            cap_box = gr.Checkbox(False, label="Localization box",
                                                  elem_id="cap_box")
                            cap_gt = gr.Checkbox(False, label="Ground-truth boxes (scenes)",
                                                 interactive=False, elem_id="cap_gt")
                            cap_own = gr.Checkbox(False, label="Each map on its own color "
                                                  "scale", elem_id="cap_own")
                cap_grid = gr.Image(label="All words and the whole caption", type="filepath",
                                    format="png", interactive=False, elem_id="cap_grid")
                with gr.Row():
                    cap_save = gr.Button("Download result (zip)", elem_id="cap_save")
                    cap_file = gr.File(label="Result bundle", elem_id="cap_file",
                                       elem_classes="mmcam-file")

            with gr.Tab("VQA", id="vqa", elem_id="tab_vqa"):
                with gr.Row():
                    with gr.Column(scale=2):
                        vqa_image_in = _image_input("vqa_image")
                        with gr.Row():
                            vqa_sample_dd = gr.Dropdown(sample_choices(first), value=None,
                                                        label="Sample", elem_id="vqa_sample",
                                                        allow_custom_value=True, scale=3)
                            vqa_new = gr.Button("New scene", elem_id="vqa_new_scene", scale=1)
                        vqa_question = gr.Textbox(label="Question", elem_id="vqa_question",
                                                  placeholder="what color is the circle?")
                        vqa_suggest = gr.Dropdown([], value=None, label="Questions about "
                                                  "this scene", elem_id="vqa_suggest")
                        vqa_model = gr.Dropdown(models.names("vqa"),
                                                value=models.names("vqa")[0], label="Model",
                                                elem_id="vqa_model")
                        vqa_method = gr.Radio(METHODS, value=RECOMMENDED,
                                              label="Method and explained score",
                                              elem_id="vqa_method")
                        gr.Markdown(SANITY_NOTE)
                        vqa_run = gr.Button("Ask", variant="primary", elem_id="vqa_run")
                    with gr.Column(scale=3):
                        vqa_answer = gr.Markdown("", elem_id="vqa_answer")
                        vqa_top = gr.Radio([], label="Top answers: click one",
                                           elem_id="vqa_top")
                        with gr.Row():
                            vqa_map = _map_output("Map of the answer", "vqa_map")
                            vqa_cmap = _map_output("A rather than B", "vqa_contrast_map")
                        vqa_info = gr.Markdown("", elem_id="vqa_answer_info")
                        with gr.Row():
                            vqa_other = gr.Dropdown([], value=None, label="B (rather than)",
                                                    elem_id="vqa_contrast", scale=2)
                            vqa_crun = gr.Button("Why the selected answer rather than B?",
                                                 elem_id="vqa_contrast_run", scale=1)
                        vqa_cinfo = gr.Markdown("", elem_id="vqa_contrast_info")
                        with gr.Row():
                            vqa_alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05,
                                                  label="Overlay opacity", elem_id="vqa_alpha")
                            vqa_box = gr.Checkbox(False, label="Localization box",
                                                  elem_id="vqa_box")
                            vqa_own = gr.Checkbox(False, label="Each map on its own color "
                                                  "scale", elem_id="vqa_own")
                with gr.Row():
                    vqa_save = gr.Button("Download result (zip)", elem_id="vqa_save")
                    vqa_file = gr.File(label="Result bundle", elem_id="vqa_file",
                                       elem_classes="mmcam-file")

            with gr.Tab("Classification", id="classify", elem_id="tab_classify"):
                with gr.Row():
                    with gr.Column(scale=2):
                        cls_image = _image_input("cls_image")
                        with gr.Row():
                            cls_sample = gr.Dropdown(sample_choices(first), value=None,
                                                     label="Sample", elem_id="cls_sample",
                                                     allow_custom_value=True, scale=3)
                            cls_new = gr.Button("New scene", elem_id="cls_new_scene", scale=1)
                        cls_model = gr.Dropdown(models.names("classifier"),
                                                value=models.names("classifier")[0],
                                                label="Model", elem_id="cls_model")
                        cls_method = gr.Radio(CLASS_METHODS, value="gradcam", label="Method",
                                              elem_id="cls_method")
                        cls_run = gr.Button("Classify", variant="primary", elem_id="cls_run")
                    with gr.Column(scale=3):
                        cls_status = gr.Markdown("", elem_id="cls_status")
                        cls_top = gr.Radio([], label="Top classes: click one",
                                           elem_id="cls_top")
                        with gr.Row():
                            cls_map = _map_output("Map of the class", "cls_map")
                            cls_guided = _map_output("Guided Grad-CAM", "cls_guided")
                        cls_info = gr.Markdown("", elem_id="cls_info")
                        with gr.Row():
                            cls_alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05,
                                                  label="Overlay opacity", elem_id="cls_alpha")
                            cls_box = gr.Checkbox(True, label="Localization box",
                                                  elem_id="cls_box")
                            cls_own = gr.Checkbox(False, label="Each map on its own color "
                                                  "scale", elem_id="cls_own")
                with gr.Row():
                    cls_save = gr.Button("Download result (zip)", elem_id="cls_save")
                    cls_file = gr.File(label="Result bundle", elem_id="cls_file",
                                       elem_classes="mmcam-file")

        with gr.Accordion("Load a local model folder", open=False, elem_id="model_folder"):
            with gr.Row():
                folder = gr.Textbox(label="Model folder (config.json + model.safetensors)",
                                    elem_id="model_path", scale=4)
                folder_run = gr.Button("Load", elem_id="model_load", scale=1)
            folder_status = gr.Markdown("", elem_id="model_status")

        def on(trigger: Callable[..., Any], fn: Callable[..., Any], inputs: list[Any],
               outputs: list[Any], status: int | None = None, **kw: Any) -> None:
            """Wire ``fn``: errors become messages (output ``status``) and the session, when
            it is an input, is stored back (restarting its time-to-live)."""
            touch = inputs[-1] is session
            trigger(_guarded(fn, len(outputs), status, touch), inputs,
                    outputs + [session] if touch else outputs, **kw)

        private = {"api_visibility": "private"}

        # ---- events: captioning
        cap_outputs = [cap_status, cap_words, cap_map, cap_info, cap_sentence, cap_guided,
                       cap_grid, cap_gt]
        cap_inputs = [cap_image, cap_text, cap_model, cap_method, cap_alpha, cap_box, cap_gt,
                      cap_own, session]
        on(cap_sample.input, caption_sample, [cap_sample, session], [cap_image, cap_text],
           api_name="caption_sample", **draw_events)
        on(cap_new.click, caption_new_scene, [session], [cap_image, cap_sample, cap_text],
           api_name="caption_new_scene", **draw_events)
        on(cap_run.click, explain_caption, cap_inputs, cap_outputs, 0, api_name="caption",
           **model_events)
        on(cap_text.submit, explain_caption, cap_inputs, cap_outputs, 0, **private,
           **model_events)
        on(cap_method.input, rerun_caption,
           [cap_method, cap_alpha, cap_box, cap_gt, cap_own, cap_model, session], cap_outputs, 0,
           api_name="caption_method", **model_events)
        cap_method.change(lambda m: gr.update(visible=m == "guided-gradcam"), [cap_method],
                          [cap_guided], queue=False, **private)
        on(cap_words.input, show_word,
           [cap_words, cap_alpha, cap_box, cap_gt, cap_own, session],
           [cap_map, cap_info, cap_guided], 1, api_name="show_word", **draw_events)
        render_in = [cap_alpha, cap_box, cap_gt, cap_own, session]
        render_out = [cap_map, cap_sentence, cap_grid, cap_info]
        on(cap_alpha.change, render_caption, render_in, render_out, api_name="render_caption",
           **draw_events)
        for c in (cap_box, cap_gt, cap_own):
            on(c.input, render_caption, render_in, render_out, **private, **draw_events)
        on(cap_save.click, download_caption, [session], [cap_file, cap_status], 1,
           api_name="download_caption", **model_events)

        # ---- events: VQA
        on(vqa_sample_dd.input, vqa_sample, [vqa_sample_dd, session],
           [vqa_image_in, vqa_question, vqa_suggest], api_name="vqa_sample", **draw_events)
        on(vqa_new.click, vqa_new_scene, [session],
           [vqa_image_in, vqa_sample_dd, vqa_question, vqa_suggest], api_name="vqa_new_scene",
           **draw_events)
        vqa_suggest.input(lambda q: q or gr.skip(), [vqa_suggest], [vqa_question], queue=False,
                          **private)
        ask_inputs = [vqa_image_in, vqa_question, vqa_model, vqa_method, vqa_alpha, vqa_box,
                      vqa_own, session]
        ask_outputs = [vqa_answer, vqa_top, vqa_map, vqa_info, vqa_other, vqa_cmap, vqa_cinfo]
        on(vqa_run.click, ask, ask_inputs, ask_outputs, 0, api_name="vqa", **model_events)
        on(vqa_question.submit, ask, ask_inputs, ask_outputs, 0, **private, **model_events)
        on(vqa_method.input, reask, ask_inputs, ask_outputs, 0, **private, **model_events)
        on(vqa_top.input, show_answer, [vqa_top, vqa_alpha, vqa_box, vqa_own, session],
           [vqa_map, vqa_info], 1, api_name="show_answer", **draw_events)
        on(vqa_crun.click, contrast,
           [vqa_other, vqa_method, vqa_alpha, vqa_box, vqa_model, session],
           [vqa_cmap, vqa_cinfo], 1, api_name="vqa_contrast", **model_events)
        vqa_render_in = [vqa_alpha, vqa_box, vqa_own, session]
        on(vqa_alpha.change, render_vqa, vqa_render_in, [vqa_map, vqa_cmap, vqa_info],
           api_name="render_vqa", **draw_events)
        for c in (vqa_box, vqa_own):
            on(c.input, render_vqa, vqa_render_in, [vqa_map, vqa_cmap, vqa_info], **private,
               **draw_events)
        on(vqa_save.click, download_vqa, [session], [vqa_file, vqa_answer], 1,
           api_name="download_vqa", **model_events)

        # ---- events: classification
        on(cls_sample.input, class_sample, [cls_sample, session], [cls_image],
           api_name="classify_sample", **draw_events)
        on(cls_new.click, class_new_scene, [session], [cls_image, cls_sample],
           api_name="classify_new_scene", **draw_events)
        cls_inputs = [cls_image, cls_model, cls_method, cls_alpha, cls_box, cls_own, session]
        cls_outputs = [cls_status, cls_top, cls_map, cls_guided, cls_info]
        on(cls_run.click, classify, cls_inputs, cls_outputs, 0, api_name="classify",
           **model_events)
        on(cls_method.input, reclassify, cls_inputs, cls_outputs, 0, **private,
           **model_events)
        on(cls_top.input, show_class, [cls_top, cls_alpha, cls_box, cls_own, session],
           [cls_map, cls_guided, cls_info], 2, api_name="show_class", **draw_events)
        cls_render_in = [cls_alpha, cls_box, cls_own, session]
        on(cls_alpha.change, render_class, cls_render_in, [cls_map, cls_info],
           api_name="render_class",
           **draw_events)
        for c in (cls_box, cls_own):
            on(c.input, render_class, cls_render_in, [cls_map, cls_info], **private,
               **draw_events)
        on(cls_save.click, download_class, [session], [cls_file, cls_status], 1,
           api_name="download_classify", **model_events)

        on(folder_run.click, load_folder, [folder],
           [folder_status, cap_model, vqa_model, cls_model], 0, api_name="load_model",
           **model_events)
    return app


def launch(
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    app: gr.Blocks | None = None,
    block: bool = True,
    threads: int | None = 1,
) -> gr.Blocks:
    """Serve the app (built with the shipped models unless ``app`` is given) on host:port.

    Offline: no analytics, no share link unless ``share=True``. ``block=False`` returns at
    once with the server running (tests, benchmarks); stop it with ``app.close()``.
    ``threads`` sets torch's intra-op threads for this process (None: leave as is); one
    thread is the default because on a small shared CPU it is several times faster and
    steadier than two (idle OpenMP threads spin waiting for a busy core).
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    if threads is not None:
        torch.set_num_threads(threads)
    app = app or build_app()
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
               inbrowser=False, quiet=not block, css=CSS, show_error=True,
               state_session_capacity=MAX_SESSIONS)
    return app


__all__ = ["Session", "build_app", "launch"]
