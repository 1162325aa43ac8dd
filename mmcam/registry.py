"""The lists the command line and the app offer: CAM methods, explained scores, method choices,
the model directories and the models found in them, and the layers one may explain.

Light on purpose (no torch at import): the CLI reads it to build its parser. A test checks
:data:`METHODS` against :data:`mmcam.cam.METHODS` and :data:`SCORES` against
:data:`mmcam.scores.SCORES`, so a method added there cannot be missing here.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

# name -> label: every CAM formula of mmcam.cam, in its order
METHODS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM",
           "counterfactual": "Counterfactual", "integrated": "Integrated gradients"}
PATH_STEPS = 16  # the integrated method's path points by default (mmcam.cam.integrated)
GUIDED = "guided-gradcam"  # Grad-CAM times guided backprop (captions and classes)
SCORES = {"logprob": "log p", "logit": "logit", "contrast": "contrast", "versus": "versus"}
VQA_SCORES = ("logprob", "logit", "contrast")  # "versus" names caption words
CLASS_SCORES = ("logit", "logprob")
# measured by `mmcam evaluate-explanations` on the shipped models (README, "How good are the
# maps?"): the one-pass setting that passes the sanity check and is never far behind the best;
# first for a model whose folder names no measured best of its own (read_recommendation)
RECOMMENDED = "hirescam:contrast"
NOTES = {RECOMMENDED: "recommended", "gradcam": "the paper",
         "gradcam++": "fails the sanity check",
         "integrated:contrast": "16 gradient passes"}
# (method, score) pairs offered as one choice each, the recommended one first
PAIRS = (("hirescam", "contrast"), ("integrated", "contrast"), ("gradcam", "logprob"),
         ("hirescam", "logprob"), ("integrated", "logprob"), ("gradcam", "contrast"),
         ("gradcam++", "logprob"), ("gradcam++", "contrast"), ("counterfactual", "logprob"))


def method_value(method: str, score: str = "logprob") -> str:
    """The choice value ``"method[:score]"`` (the score left out when it is log p)."""
    return method if score == "logprob" else f"{method}:{score}"


def method_score(value: str | None) -> tuple[str, str]:
    """``"method[:score]"`` -> (method, score); score defaults to logprob."""
    method, _, score = (value or "gradcam").partition(":")
    return method, score or "logprob"


def method_label(value: str, first: str | None = None) -> str:
    """A readable label: ``"hirescam:contrast"`` -> ``"HiResCAM, contrast (recommended)"``.
    ``first``: the model's own measured best choice (see :func:`read_recommendation`), labelled
    "recommended for this model"; the general recommendation is then labelled only when it is
    that choice."""
    if value == GUIDED:
        return "Guided Grad-CAM"
    method, score = method_score(value)
    label = f"{METHODS.get(method, method)}, {SCORES.get(score, score)}"
    if first is not None and value == first:
        return label + " (recommended for this model)"
    note = NOTES.get(value) if first is None or value != RECOMMENDED else "one pass"
    return label + (f" ({note})" if note else "")


def method_choices(task: str, first: str | None = None) -> list[tuple[str, str]]:
    """(label, value) choices for ``task`` ("caption", "vqa" or "classify"): captions and
    answers take every pair of :data:`PAIRS` (captions also Guided Grad-CAM); classes take
    each method alone (their score is the logit). ``first`` (a choice value, the model's
    recommendation, any method with a score other than versus) is put first and labelled so."""
    if task == "classify":
        return [(label, m) for m, label in METHODS.items()]
    if task not in ("caption", "vqa"):
        raise ValueError(f"unknown task {task!r}")
    values = [method_value(m, s) for m, s in PAIRS]
    values += [m for m in METHODS if m not in values]  # every method at least as log p
    if task == "caption":
        values.append(GUIDED)
    if first is not None:
        values = [first] + [v for v in values if v != first]
    return [(method_label(v, first), v) for v in values]


# ----------------------------------------------------------------------------- recommendation


# a model folder's measured best setting, written by `mmcam evaluate-explanations
# --save-recommended` (mmcam.suite.save_recommendation) and read by the app
RECOMMENDATION_FILE = "mmcam_recommended.json"


def read_recommendation(folder: str | os.PathLike | None) -> dict[str, Any] | None:
    """The setting ``folder/``:data:`RECOMMENDATION_FILE` recommends, as {"method", "score",
    "layer" (None: the model's default), "value" (the choice value ``method[:score]``)} plus
    what the file says about how it was measured; None when there is no such file. A file
    that is not a JSON object naming a known method and score raises :class:`MMCamError`."""
    from mmcam.errors import MMCamError

    if folder is None:
        return None
    path = Path(folder) / RECOMMENDATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise MMCamError(f"{path}: not readable JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(data, dict):
        raise MMCamError(f"{path}: not a JSON object")
    method, score, layer = data.get("method"), data.get("score"), data.get("layer")
    if method not in METHODS or score not in VQA_SCORES:
        raise MMCamError(f"{path}: method {method!r} / score {score!r} is not one mmcam "
                         f"offers (methods: {', '.join(METHODS)}; scores: "
                         f"{', '.join(VQA_SCORES)})")
    if layer is not None and (not isinstance(layer, str) or not layer.strip()):
        raise MMCamError(f"{path}: layer must be a dotted path or null, not {layer!r}")
    return {**data, "value": method_value(method, score)}


def cli_methods(task: str) -> list[str]:
    """The ``--method`` choices of a CLI command (``caption`` also takes guided-gradcam)."""
    return list(METHODS) + ([GUIDED] if task == "caption" else [])


def cli_scores(task: str) -> list[str]:
    """The ``--score`` choices of a CLI command."""
    return {"caption": list(SCORES), "vqa": list(VQA_SCORES),
            "classify": list(CLASS_SCORES)}[task]


# ----------------------------------------------------------------------------- models


# the shipped reference model of each kind (models/, or $MMCAM_MODELS): the app's first models
# and the CLI's defaults; mmcam.models.hub.KNOWN_MODELS lists the same names
SHIPPED = {"captioner": "shapes-captioner", "vqa": "shapes-vqa", "classifier": "shapes-classifier"}


def hf_cache() -> Path:
    """The Hugging Face hub cache folder (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or
    ``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def model_roots() -> list[Path]:
    """The model directories, resolved: ``$MMCAM_MODELS`` (when set), the shipped
    ``models/`` and the Hugging Face cache, each once, in that order."""
    from mmcam.models.hub import REPO_MODELS

    roots = [Path(os.environ["MMCAM_MODELS"]).expanduser()] if os.environ.get(
        "MMCAM_MODELS") else []
    roots += [REPO_MODELS, hf_cache()]
    out: list[Path] = []
    for r in roots:
        r = r.resolve()
        if r not in out:
            out.append(r)
    return out


def hf_model_folders() -> list[Path]:
    """Hugging Face model folders directly under ``$MMCAM_MODELS`` and ``models/`` (see
    :func:`mmcam.models.hub.hf_folders`)."""
    from mmcam.models.hub import hf_folders

    return hf_folders()


def kinds_of(adapter: Any) -> tuple[str, ...]:
    """What ``adapter`` explains: ("captioner",), ("vqa",), ("classifier",), or
    ("captioner", "vqa") for LLaVA, PaliGemma and Florence-2 (:class:`HFPromptedVLM`: the
    prompt's reply is a caption or an answer). An adapter may also say so itself with a
    ``tasks`` attribute."""
    declared = getattr(adapter, "tasks", None)
    if declared:
        return tuple(declared)
    hf = sys.modules.get("mmcam.adapters.hf")  # not imported: no adapter can be one of its
    if hf is not None and isinstance(adapter, hf.HFPromptedVLM):
        return ("captioner", "vqa")
    if callable(getattr(adapter, "score_answer_tokens", None)):  # answers generated as text
        return ("vqa",)
    if callable(getattr(adapter, "generate", None)) and callable(
            getattr(adapter, "score_tokens", None)):
        return ("captioner",)
    if callable(getattr(adapter, "score_answers", None)):
        return ("vqa",)
    if hasattr(adapter, "labels") and hasattr(adapter, "layer"):
        return ("classifier",)
    return ()


# ----------------------------------------------------------------------------- layers


def layer_choices(adapter: Any, n: int = 4) -> list[str]:
    """The adapter's default layer, then up to ``n`` earlier layers like it, nearest first:
    the siblings of the same type before it in the same container (the previous blocks of a
    ViT's ``encoder.layers``, the previous ReLUs of a conv stack). Written the way the
    default is (``layers[-2]`` after ``layers[-1]``; ``encoder.11`` after ``encoder.14``).
    A default that is a tower's output (``adapter.layer_before`` names the block it reads)
    is followed by that block and the blocks before it."""
    default = getattr(adapter, "layer", None)
    module = getattr(adapter, "model", None)
    if not isinstance(default, str) or module is None:
        return [default] if isinstance(default, str) else []
    before = getattr(adapter, "layer_before", None)  # a tower's output: its blocks next
    if isinstance(before, str) and _split_last_index(before)[1] is not None:
        return [default] + _siblings(module, before, n - 1)
    return _siblings(module, default, n)


def _siblings(module: Any, default: str, n: int) -> list[str]:
    """``default`` and up to ``n`` earlier modules of its type in its container."""
    from mmcam.layers import resolve_layer

    head, index, bracket = _split_last_index(default)
    if index is None:
        return [default]
    parent = resolve_layer(module, head) if head else module
    children = list(parent.children())
    k = index if index >= 0 else len(children) + index
    if not 0 <= k < len(children):
        return [default]
    kind = type(children[k])
    earlier = [j for j in range(k - 1, -1, -1) if type(children[j]) is kind][:n]
    out = [default]
    for j in earlier:
        i = j if index >= 0 else j - len(children)
        out.append(f"{head}[{i}]" if bracket else (f"{head}.{i}" if head else str(i)))
    return out


def _split_last_index(path: str) -> tuple[str, int | None, bool]:
    """``"a.b[-1]"`` -> ("a.b", -1, True); ``"encoder.14"`` -> ("encoder", 14, False);
    a path that does not end in an index -> (path, None, False)."""
    if path.endswith("]") and "[" in path:
        head, _, idx = path[:-1].rpartition("[")
        try:
            return head, int(idx), True
        except ValueError:
            return path, None, False
    head, _, last = path.rpartition(".")
    try:
        return head, int(last), False
    except ValueError:
        return path, None, False


__all__ = ["METHODS", "RECOMMENDATION_FILE", "RECOMMENDED", "SCORES", "kinds_of", "layer_choices",
           "method_choices", "method_score", "model_roots", "read_recommendation"]
