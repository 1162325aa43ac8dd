"""One user's state: what each tab shows, the scene it came from, a folder for files.

A :class:`Session` lives in a ``gr.State``; gradio drops it ``SESSION_TTL_S`` after its last
event, or soon after its page is closed (``build_app`` wires ``unload``), and calls
:meth:`Session.close`, which lets go of every result (maps, images) and removes the folder.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

KEEP_FILES = 4  # images kept per output in a session's folder (gradio has copied older ones)


class Heat(Sequence):
    """A result's display maps in [0,1] at the image's size, made one at a time when read:
    ``heat[i]`` is ``result.heatmap(i, shared)`` (a view keeps no map of the image's size,
    so a session's memory does not grow with the image's size and the number of words)."""

    def __init__(self, result: Any, shared: bool = True) -> None:
        self.result, self.shared = result, shared

    def __len__(self) -> int:
        return len(self.result.panels())

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if isinstance(i, bool) or not isinstance(i, int) or not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.result.heatmap(i, self.shared)


class Guided(Sequence):
    """Guided images (3,Hin,Win each) drawn at ``size`` when read (none kept)."""

    def __init__(self, grads: torch.Tensor, size: tuple[int, int]) -> None:
        self.grads, self.size = grads, size

    def __len__(self) -> int:
        return len(self.grads)

    def __getitem__(self, i: Any) -> Any:
        from mmcam.viz import guided_image

        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return guided_image(self.grads[i]).resize(self.size)


class _Display:
    """``display(own)``: the display maps on the group's shared scale, or each map on its own
    scale (both made when read, :class:`Heat`)."""

    result: Any
    heat: Sequence[torch.Tensor]
    own: Sequence[torch.Tensor] | None

    def display(self, own: bool = False) -> Sequence[torch.Tensor]:
        """Display maps: the group's shared scale, or each map divided by its own max."""
        if not own:
            return self.heat
        if self.own is None:
            self.own = Heat(self.result, shared=False)
        return self.own


@dataclass
class CaptionView(_Display):
    """A caption result and what is needed to re-draw it without recomputing maps."""

    result: Any  # CaptionExplanation
    heat: Sequence[torch.Tensor]  # display maps in [0,1]: one per word, then the whole caption
    boxes: list[tuple[int, int, int, int] | None]  # localization box per panel
    guided: Sequence[Image.Image] | None  # Guided Grad-CAM image per word (guided method only)
    truth: Any = None  # the Scene when the image is a scene sample, else None
    selected: int = 0
    own: Sequence[torch.Tensor] | None = None  # each map on its own scale
    model: str = ""  # the model's name in the app
    layer: str = ""  # the layer picked ("" : the model's default)


@dataclass
class VQAView(_Display):
    """A VQA result: panels are [explained answer, top-1 .. top-k]; ``contrast`` if asked."""

    result: Any  # VQAExplanation
    heat: Sequence[torch.Tensor]
    boxes: list[tuple[int, int, int, int] | None]
    truth: Any = None
    selected: int = 0
    contrast: Any = None  # VQAExplanation with .contrast set
    contrast_heat: torch.Tensor | None = None
    own: Sequence[torch.Tensor] | None = None
    model: str = ""
    layer: str = ""


@dataclass
class ClassView:
    """A classification result with display maps (one shared scale) and guided images."""

    result: Any  # ClassExplanation
    heat: Sequence[torch.Tensor]
    guided: Sequence[Image.Image]
    truth: Any = None
    selected: int = 0

    def display(self, own: bool = False) -> Sequence[torch.Tensor]:
        """Display maps: one scale shared by the classes, or each map its own."""
        return Heat(self.result, shared=False) if own else self.heat


@dataclass
class Compare:
    """The side-by-side view: the shown caption explained again another way (B)."""

    view: CaptionView  # B's caption view (the same caption as A's)
    models: tuple[str, str]  # A's and B's model names


@dataclass
class Session:
    """One user's state: the scene shown per tab, the current results, a download folder."""

    scenes: dict[str, Any] = field(default_factory=dict)
    caption: CaptionView | None = None
    vqa: VQAView | None = None
    classes: ClassView | None = None
    compare: Compare | None = None
    folder: Path | None = None
    written: dict[str, deque] = field(default_factory=dict)

    def workdir(self) -> Path:
        """This session's own temporary folder (made on first use; removed by :meth:`close`,
        or when the session is garbage-collected without it, e.g. evicted by gradio)."""
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="mmcam-app-"))
            weakref.finalize(self, shutil.rmtree, str(self.folder), ignore_errors=True)
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
        """Remove the temporary folder, then let go of every result (the session ended): once
        the results are gone, so are the files (another thread may be watching for it)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        self.written.clear()
        self.caption = self.vqa = self.classes = self.compare = None
        self.scenes.clear()


def close_session(session: Any) -> None:
    """gradio's ``delete_callback`` of the session state."""
    if isinstance(session, Session):
        session.close()
