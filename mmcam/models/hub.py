"""Loading and saving model folders laid out like a hub repo: config.json + model.safetensors.

``config.json`` holds ``"kind"`` ("captioner" | "vqa" | "classifier"), the architecture
hyper-parameters (``"arch"``), preprocessing (``image_size``, ``mean``, ``std``) and the
vocabularies, so the folder alone rebuilds the model. Weights are safetensors (no pickles).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from mmcam.errors import MMCamError

KNOWN_MODELS = ("shapes-captioner", "shapes-vqa", "shapes-classifier")
KINDS = ("captioner", "vqa", "classifier")


def _shipped_models() -> Path:
    """The folder of the shipped models: ``mmcam/_shipped`` in an installed wheel (setup.py
    packages the repository's ``models/`` there), else the ``models/`` folder of the source
    tree this package runs from (a checkout, or an editable install of one)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "_shipped"
    return installed if installed.is_dir() else package.parent / "models"


SHIPPED_MODELS = _shipped_models()
REPO_MODELS = SHIPPED_MODELS  # the name older code and tests import
CONFIG, WEIGHTS = "config.json", "model.safetensors"


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The model folder: an existing folder path, else ``$MMCAM_MODELS/NAME``, else the
    shipped ``NAME`` (:data:`SHIPPED_MODELS`). Raises :class:`MMCamError` naming the known
    models."""
    if not str(name_or_path).strip():
        raise MMCamError(f"the model name is empty: give a shipped name ({', '.join(model_names())}"
                         "), a model folder or hf:<hub id>")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise MMCamError(f"model path {path} is a file: give a folder with {CONFIG} and {WEIGHTS}")
    name = str(name_or_path)
    if looks_like_path(name):
        raise MMCamError(f"model folder not found: {path}")
    roots = [Path(os.environ["MMCAM_MODELS"])] if os.environ.get("MMCAM_MODELS") else []
    roots.append(SHIPPED_MODELS)
    for root in roots:
        if (root / name).is_dir():
            return root / name
    known = ", ".join(model_names())
    if name in KNOWN_MODELS:
        where = " or ".join(str(r) for r in roots)
        raise MMCamError(
            f"model {name!r} is not in {where}: train it with `mmcam train` or "
            "set MMCAM_MODELS to the folder that holds it"
        )
    raise MMCamError(
        f"unknown model {name!r}: use one of {known}, or a folder with {CONFIG} and {WEIGHTS}"
    )


def model_names() -> list[str]:
    """The models one may name: the shipped reference models (:data:`KNOWN_MODELS`), then the
    Hugging Face folders under ``$MMCAM_MODELS`` and the shipped models (:func:`hf_folders`:
    shapes-blip, shapes-blip-vqa), each once."""
    return list(dict.fromkeys([*KNOWN_MODELS, *(f.name for f in hf_folders())]))


# a hub id: "name" or "owner/name" of letters, digits, '-', '_' and '.'
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?", re.ASCII)


def hub_id(text: str) -> str:
    """``text`` (what follows ``hf:``) checked as a hub id, ``owner/name`` or ``name``; a
    path-like or malformed id raises :class:`MMCamError` (a folder is given as a path, without
    ``hf:``)."""
    given = text.strip()
    shown = given if given.isprintable() else repr(given)
    if not given:
        raise MMCamError("the hub id after hf: is empty: write hf:<owner>/<name>, e.g. "
                         "hf:Salesforce/blip-image-captioning-base")
    if given.startswith(("/", "~", ".")) or ".." in given or "\\" in given \
            or given.count("/") > 1:
        raise MMCamError(f"hf:{shown} is not a hub id (<owner>/<name>): give a model folder as "
                         "a path, without hf:")
    if not _HUB_ID.fullmatch(given) or given.endswith((".", "-")) or "--" in given:
        raise MMCamError(f"hf:{shown} is not a hub id: write hf:<owner>/<name>, of letters, "
                         "digits, '-', '_' and '.'"[:300])
    return given


def looks_like_path(name: str) -> bool:
    """A name written as a path (``./x``, ``~/x``, ``/x``, ``a/b``), not a model name."""
    seps = {os.sep} | ({os.altsep} if os.altsep else set())
    return any(c in name for c in seps) or name.startswith((".", "~"))


_COMMON_KEYS = {"image_size": int, "mean": list, "std": list, "arch": dict}
_KIND_KEYS = {"captioner": {"vocab": list}, "vqa": {"vocab": list, "answers": list},
              "classifier": {"labels": list}}


def read_config(folder: Path) -> dict[str, Any]:
    """Parse ``folder/config.json`` and check its ``kind`` and the keys the model needs."""
    cfg_path = folder / CONFIG
    if not cfg_path.is_file():
        raise MMCamError(f"{folder} holds no {CONFIG}: not a model folder")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise MMCamError(f"{cfg_path} is not valid JSON: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MMCamError(f"cannot read {cfg_path}: {e}") from None
    if not isinstance(config, dict):
        raise MMCamError(f"{cfg_path} must hold a JSON object, got {type(config).__name__}")
    if config.get("kind") not in KINDS:
        raise MMCamError(
            f"{cfg_path}: 'kind' must be one of {', '.join(KINDS)}, got {config.get('kind')!r}"
        )
    for key, typ in {**_COMMON_KEYS, **_KIND_KEYS[config["kind"]]}.items():
        if key not in config:
            raise MMCamError(f"{cfg_path} lacks the key {key!r}: the folder was not written "
                             "by mmcam's save_model, or was edited")
        value = config[key]
        if not isinstance(value, typ) or isinstance(value, bool):
            raise MMCamError(
                f"{cfg_path}: {key!r} must be a JSON {_JSON[typ]}, got {value!r}"[:300])
    if config["image_size"] < 1:
        raise MMCamError(f"{cfg_path}: 'image_size' must be positive, got {config['image_size']}")
    for key in ("mean", "std"):
        v = config[key]
        if len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                  for x in v) or (key == "std" and min(v) <= 0):
            raise MMCamError(f"{cfg_path}: {key!r} must be 3 numbers"
                             f"{' above 0' if key == 'std' else ''}, got {v!r}"[:300])
    return config


_JSON = {int: "integer", list: "list", dict: "object"}


def build_model(config: dict[str, Any]) -> nn.Module:
    """An untrained model for ``config`` (random weights)."""
    from mmcam.models import captioner, classifier, vqa

    return {"captioner": captioner, "vqa": vqa, "classifier": classifier}[config["kind"]].build(
        config
    )


def wrap(model: nn.Module, config: dict[str, Any]) -> Any:
    """The adapter for ``model``: CaptionerAdapter, VQAModelAdapter or ClassifierModelAdapter."""
    from mmcam.models.captioner import CaptionerAdapter
    from mmcam.models.classifier import ClassifierModelAdapter
    from mmcam.models.text import Vocab
    from mmcam.models.vqa import VQAModelAdapter

    kind = config["kind"]
    if kind == "captioner":
        return CaptionerAdapter(model, Vocab(config["vocab"]), config)
    if kind == "vqa":
        return VQAModelAdapter(model, Vocab(config["vocab"]), config["answers"], config)
    return ClassifierModelAdapter(model, config["labels"], config)


def load_model(name_or_path: str | os.PathLike, **hf: Any) -> Any:
    """Load a model and return its adapter, in eval mode.

    ``"hf:<hub id>"`` or a folder holding a transformers ``config.json`` (one with
    ``architectures``) loads a Hugging Face checkpoint (:func:`mmcam.adapters.hf.load_hf`,
    which takes ``prompt``, ``device``, ``dtype``, ``trust_remote_code``). Otherwise a shipped
    reference model by name (shapes-captioner, shapes-vqa, shapes-classifier) or a folder of
    one (see :func:`resolve`); ``device`` and ``dtype`` move any model there. An adapter
    loaded from a folder remembers it as ``adapter.folder``.
    """
    name = str(name_or_path)
    if name.startswith("hf:"):
        from mmcam.adapters.hf import load_hf

        return load_hf(hub_id(name[3:]), **hf)
    folder = resolve(name_or_path)
    if _is_hf_folder(folder):
        from mmcam.adapters.hf import load_hf

        return _from_folder(load_hf(folder, **hf), folder)
    device, dtype = hf.pop("device", None), hf.pop("dtype", None)
    if any(v is not None for v in hf.values()):
        given = [k for k, v in hf.items() if v is not None]
        raise MMCamError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only "
                         "to Hugging Face models (hf:<id> or an HF folder)")
    config = read_config(folder)
    weights = folder / WEIGHTS
    state = read_weights(folder)
    try:
        model = build_model(config)
    except KeyError as e:
        raise MMCamError(f"{folder / CONFIG}: 'arch' lacks the key {e}") from None
    except (TypeError, ValueError, IndexError, ZeroDivisionError) as e:
        raise MMCamError(f"{folder / CONFIG}: a wrong value in 'arch' ({e})"[:300]) from None
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as e:
        raise MMCamError(f"cannot load weights {weights}: they do not fit {CONFIG} "
                         f"({first_line(e, 'size mismatch', 'Missing key', 'Unexpected key')})"
                         ) from None
    model.eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return _from_folder(wrap(model, config), folder)


def _from_folder(adapter: Any, folder: Path) -> Any:
    """``adapter`` with ``adapter.folder`` set to the folder it was loaded from (where the app
    looks for its measured recommendation, :func:`mmcam.registry.read_recommendation`)."""
    adapter.folder = Path(folder)
    return adapter


def read_weights(folder: Path, load: bool = True) -> dict[str, Any] | None:
    """The tensors of ``folder/model.safetensors`` on the CPU, or with ``load=False`` only its
    header read (a Hugging Face folder, whose weights transformers loads). Both model formats
    share it: a missing, truncated, corrupted or pickled file raises one :class:`MMCamError`
    naming the folder or file."""
    weights = Path(folder) / WEIGHTS
    if not weights.is_file():
        raise MMCamError(f"{folder} holds no {WEIGHTS}: the model folder is incomplete")
    try:
        if load:
            return load_file(str(weights), device="cpu")
        with safe_open(str(weights), framework="pt") as f:
            f.keys()
        return None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise MMCamError(
            f"cannot load weights {weights}: not a valid safetensors file, perhaps truncated, "
            f"corrupted or a pickle renamed ({first_line(e)})") from None


def first_line(e: BaseException, *prefer: str) -> str:
    """The most telling line of ``e``'s message: the first holding one of ``prefer``."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    for ln in lines:
        if any(p in ln for p in prefer):
            return ln[:200]
    return lines[0][:200] if lines else type(e).__name__


def hf_folders() -> list[Path]:
    """Hugging Face model folders directly under ``$MMCAM_MODELS``, then the shipped ones
    (:data:`SHIPPED_MODELS`), each name once (the first found wins), sorted by name within a
    root."""
    roots = [Path(os.environ["MMCAM_MODELS"])] if os.environ.get("MMCAM_MODELS") else []
    roots.append(SHIPPED_MODELS)
    found: dict[str, Path] = {}
    for root in roots:
        if root.is_dir():
            for f in sorted(root.iterdir()):
                if f.is_dir() and f.name not in found and _is_hf_folder(f):
                    found[f.name] = f
    return list(found.values())


def is_hf_model(name_or_path: str | os.PathLike) -> bool:
    """Whether :func:`load_model` would load ``name_or_path`` as a Hugging Face checkpoint:
    ``"hf:<hub id>"``, or a model folder holding a transformers ``config.json``. False for a
    name that resolves to no folder (loading it then says why)."""
    if str(name_or_path).startswith("hf:"):
        return True
    try:
        return _is_hf_folder(resolve(name_or_path))
    except MMCamError:
        return False


def _is_hf_folder(folder: Path) -> bool:
    try:
        cfg = json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and "kind" not in cfg and bool(cfg.get("architectures"))


def save_model(model: nn.Module, config: dict[str, Any], out: str | os.PathLike) -> Path:
    """Write ``out/config.json`` and ``out/model.safetensors``; return the folder."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"kind": config["kind"]})
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["KNOWN_MODELS", "SHIPPED_MODELS", "build_model", "load_model", "resolve",
           "save_model"]
