"""The models the app serves, shared read-only by all sessions, and which model folders a
page may load.

A page may load a folder only from under the model directories the server started with
(``$MMCAM_MODELS``, the shipped ``models/``, the Hugging Face cache: :func:`mmcam.registry.
model_roots`), after resolving links; any other path, existing or not, gets the same message,
so the page learns nothing about the server's other files. Loading is off altogether when
the server is reachable from other machines unless the operator turned it on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mmcam.errors import MMCamError
from mmcam.registry import kinds_of, layer_choices, model_roots, read_recommendation

_log = logging.getLogger(__name__)
KINDS = ("captioner", "vqa", "classifier")
NOT_FOUND = ("no model folder {path!r} under the app's model directories ($MMCAM_MODELS, the "
             "shipped models, the Hugging Face cache)")
OFF = ("loading model folders from the page is off on this server (it listens beyond this "
       "machine): restart it with --allow-model-folders to allow it")
EMPTY = "give the path of a model folder (with config.json and model.safetensors)"


def kind_of(adapter: Any) -> str:
    """The first of "captioner", "vqa", "classifier" that ``adapter`` explains."""
    kinds = kinds_of(adapter)
    if not kinds:
        raise MMCamError(f"{type(adapter).__name__} is not a captioning, VQA or classifier "
                         "adapter")
    return kinds[0]


class FolderPolicy:
    """Which folders a page may load: resolved folders strictly under ``roots``."""

    def __init__(self, roots: list[Path] | None = None, allowed: bool = True) -> None:
        self.roots = [Path(r).resolve() for r in (model_roots() if roots is None else roots)]
        self.allowed = allowed

    def find(self, path: str) -> Path:
        """The resolved folder ``path`` names (absolute, or relative to a root); one message
        for every path that is not such a folder, whether it exists or not."""
        if not self.allowed:
            raise MMCamError(OFF)
        text = (path or "").strip()
        if not text:
            raise MMCamError(EMPTY)
        given = Path(text).expanduser()
        for candidate in [given] if given.is_absolute() else [r / given for r in self.roots]:
            try:
                real = candidate.resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if any(root in real.parents for root in self.roots) and real.is_dir():
                return real
        raise MMCamError(NOT_FOUND.format(path=text))


class Models:
    """Loaded models by name, shared read-only by all sessions."""

    def __init__(self, policy: FolderPolicy | None = None) -> None:
        self.adapters: dict[str, Any] = {}
        self.kinds: dict[str, tuple[str, ...]] = {}
        self.recommended: dict[str, dict[str, Any] | None] = {}
        self.policy = policy or FolderPolicy()

    def add(self, name: str, adapter: Any) -> str:
        """Register ``adapter`` under ``name``, with the setting its folder recommends (a
        file that cannot be read is logged and ignored); return its (first) kind."""
        kind = kind_of(adapter)
        try:
            rec = read_recommendation(getattr(adapter, "folder", None))
        except MMCamError as e:
            _log.warning("recommendation ignored: %s", e)
            rec = None
        self.adapters[name] = adapter
        self.kinds[name] = kinds_of(adapter)
        self.recommended[name] = rec
        return kind

    def recommendation(self, name: str | None, kind: str) -> dict[str, Any] | None:
        """The measured best setting of model ``name`` (the first of ``kind`` if None) for
        captions and answers (see :func:`mmcam.registry.read_recommendation`); None for
        classifiers and for models without one."""
        try:
            self.get(name, kind)
        except MMCamError:
            return None
        if kind == "classifier":
            return None
        return self.recommended.get(name or self.names(kind)[0])

    def names(self, kind: str) -> list[str]:
        """Names of the loaded models that explain ``kind``, in loading order."""
        return [n for n, ks in self.kinds.items() if kind in ks]

    def get(self, name: str | None, kind: str) -> Any:
        """The adapter called ``name`` (the first one of ``kind`` if None)."""
        if not name:
            names = self.names(kind)
            if not names:
                raise MMCamError(f"no {kind} model is loaded: load a model folder first")
            name = names[0]
        if name not in self.adapters or kind not in self.kinds[name]:
            raise MMCamError(f"{name!r} is not a loaded {kind} model")
        return self.adapters[name]

    def layers(self, name: str | None, kind: str) -> list[str]:
        """The layers offered for model ``name``: its default first (see
        :func:`mmcam.registry.layer_choices`); [] when none is loaded."""
        try:
            return layer_choices(self.get(name, kind))
        except MMCamError:
            return []

    def layer_of(self, name: str | None, kind: str, layer: str | None) -> str:
        """The layer a picker value means: ``layer`` itself, or for "" (and None) the
        model's recommended layer, or "" (its default) when it has none."""
        layer = (layer or "").strip()
        return layer or (self.recommendation(name, kind) or {}).get("layer") or ""

    def add_hf_folders(self) -> list[str]:
        """Load the Hugging Face model folders under ``$MMCAM_MODELS`` and ``models/`` (named
        by folder); return one line per folder that could not be loaded (the app starts
        without it)."""
        from mmcam import load_model
        from mmcam.registry import hf_model_folders

        problems = []
        for folder in hf_model_folders():
            if folder.name in self.adapters:
                continue
            try:
                self.add(folder.name, load_model(folder))
            except MMCamError as e:
                problems.append(f"{folder}: {e}")
        return problems

    def load_folder(self, path: str) -> tuple[str, str]:
        """Load a model folder the policy allows with :func:`mmcam.load_model`; return
        (name, first kind). The name is the resolved path."""
        from mmcam import load_model

        folder = self.policy.find(path)
        name = str(folder)
        if name not in self.adapters:
            self.add(name, load_model(folder))
        return name, self.kinds[name][0]
