"""The Grad-CAM paper's bias experiment on the scene world: ``run_study("out/bias")``.

The paper trains a nurse/doctor classifier on a dataset where gender goes with the class; the
model does well on validation images but generalizes worse (82%), and Grad-CAM shows it looks
at faces and hair. Retrained on a balanced set it looks at the white coat and stethoscope and
reaches 90%. Here the same experiment runs on :mod:`mmcam.scenes`, where the ground truth of
both the object and the spurious cue is known to the pixel.

Task
    Binary: the shape of the one large object of a scene (``scenes.generate(n, seed,
    one_large=True)``, 0-3 small distractors of any shape), ``classes[0]`` or ``classes[1]``
    (default circle vs square). Only scenes whose large object has one of the two shapes are
    kept: the first ``n/2`` of each class in stream order, so the classes are exactly balanced.

Cue
    A ``cue_size`` x ``cue_size`` patch of :data:`CUE_RGB` (cyan: no object has this color, and
    its HSV saturation 1 is far above the backgrounds' 0.3) with its top-left pixel at
    :data:`CUE_XY`, painted over whatever is there (it may hide a few pixels of an object).
    ``cue_box`` = (x, y, x + cue_size, y + cue_size), exclusive ends.

Data sets
    Both training sets are the same ``n_train`` scenes with the same labels; only which images
    carry the cue differs (:func:`assign_cue`, exact counts per class, chosen at random):

    - biased: ``round(cue_rate * n_A)`` images of class A = ``classes[cue_class]`` carry the
      cue, no image of class B does;
    - balanced: ``round(cue_rate / 2 * n_c)`` images of each class c: the cue is independent
      of the class and about as frequent as in the biased set.
    - test (unbiased): ``n_test`` scenes of the held-out seed ``EVAL_SEED`` (never trained
      on), exactly half of each class with the cue.

Models
    The shipped classifier's architecture and recipe (:mod:`mmcam.models.train`: ConvEncoder
    -> global average pooling -> linear, AdamW, warm-up and cosine decay, batch 32, lr 2e-3),
    with two outputs. Both models start from the same weights (torch seed ``seed``) and see the
    same batch indices; they differ only in the cue pixels of their training images.
    ``model="captioner"`` trains the shipped captioner's architecture instead, on the scenes'
    captions that name the large object, and reads its word for the large object's shape
    (:mod:`mmcam.bias_caption`); everything else is the same.

Measured
    - accuracy on the unbiased test set, and by group (class x cue present);
    - ``cue_flip_rate``: share of test images whose prediction changes when the cue is added
      (images without it) or removed (images with it; the original pixels are restored);
    - on the test images with the cue, Grad-CAM (:class:`mmcam.ClassExplainer`,
      receptive-field aligned maps) for the predicted and for the true class, of two scores:
      the class's logit ``y_c`` (the paper's score) and its margin ``y_c - y_other``
      (:class:`Margin`; with two classes the decision depends only on it, and a model may
      store the cue as evidence against the other class, which ``y_c`` alone cannot show):
      the map's mass share in the cue box and in the object's mask (the large object's
      visible pixels not under the cue), and the energy ratio = mass share / area share
      (:func:`mmcam.evaluation.energy_ratio`; 1 = chance); also in both regions grown by
      ``NEAR_PX`` = 8 px, one cell of the explained 16x16 layer, since a Grad-CAM map cannot
      be sharper than that cell (an 8x8 cue lights up its cell and the neighbours). Means over
      images; an all-zero map (Grad-CAM's ReLU can zero a class's map) has no share and is
      counted apart.

One thread (``torch.set_num_threads(1)``), seeded: the same seed gives the same figures.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from mmcam.classify import ClassExplainer
from mmcam.errors import MMCamError
from mmcam.evaluation import box_mask, energy_ratio
from mmcam.models import encoder
from mmcam.models import train as trainer
from mmcam.models.evaluate import EVAL_SEED, VALIDATION_SEED
from mmcam.models.hub import build_model, parameter_count, wrap
from mmcam.scenes import IMAGE_SIZE, SHAPES, generate
from mmcam.viz import draw_boxes, overlay

CUE_RGB = (0, 230, 230)
CUE_XY = (4, 4)
FILES = ("bias_study.json", "bias_study.md", "bias_study.png")
NEAR_PX = IMAGE_SIZE // 16  # one cell of the explained 16x16 grid
CUE_SEED = 7  # stream salt of the cue draws: rng([seed, CUE_SEED, set, class])
MODELS = ("classifier", "captioner")


@dataclass(frozen=True)
class StudyConfig:
    """Settings of one study (defaults: the committed run in benchmarks/results/bias_study)."""

    seed: int = 0
    n_train: int = 4000
    n_test: int = 1000
    steps: int = 1000
    classes: tuple[str, str] = ("circle", "square")
    cue_class: int = 0
    cue_rate: float = 1.0
    cue_size: int = 8
    n_show: int = 6
    method: str = "gradcam"
    model: str = "classifier"

    def check(self) -> None:
        """Raise :class:`MMCamError` naming the bad setting."""
        if self.model not in MODELS:
            raise MMCamError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.seed in (EVAL_SEED, VALIDATION_SEED):
            raise MMCamError(f"seed {self.seed} is reserved for held-out scenes: use another")
        if len(self.classes) != 2 or self.classes[0] == self.classes[1] or any(
            c not in SHAPES for c in self.classes
        ):
            raise MMCamError(f"classes must be two different shapes of {', '.join(SHAPES)}")
        if self.n_train < 4 or self.n_train % 2:
            raise MMCamError(f"n_train must be even and >= 4, got {self.n_train}")
        if self.n_test < 4 or self.n_test % 4:
            raise MMCamError(f"n_test must be a multiple of 4 (half of each class carries the "
                             f"cue), got {self.n_test}")
        if self.steps < 1:
            raise MMCamError(f"steps must be >= 1, got {self.steps}")
        if self.cue_class not in (0, 1):
            raise MMCamError(f"cue_class must be 0 or 1, got {self.cue_class}")
        if not 0.0 < self.cue_rate <= 1.0:
            raise MMCamError(f"cue_rate must be in (0, 1], got {self.cue_rate}")
        if not 1 <= self.cue_size <= IMAGE_SIZE // 4:
            raise MMCamError(f"cue_size must be in 1..{IMAGE_SIZE // 4} px, got {self.cue_size}")
        if self.n_show < 1:
            raise MMCamError(f"n_show must be >= 1, got {self.n_show}")

    @property
    def cue_box(self) -> tuple[int, int, int, int]:
        x, y = CUE_XY
        return (x, y, x + self.cue_size, y + self.cue_size)


# ---------------------------------------------------------------- data


@dataclass
class SceneSet:
    """Scenes of the binary task: uint8 ``images`` (n,3,128,128) without the cue, ``labels``
    (n,) in {0, 1}, the large objects' visible ``masks`` (n,128,128) (None if not kept), the
    scenes' ``indices`` in the ``one_large`` stream of ``seed``, the large objects' ``colors``,
    each scene's ``captions`` that name the large object ("... large {color} {shape} ...")
    and its ``small`` objects as (color, shape)."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    indices: list[int]
    seed: int
    rendered: int = 0  # scenes drawn from the stream to fill both classes
    colors: list[str] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)
    small: list[list[tuple[str, str]]] = field(default_factory=list)


def binary_scenes(
    n: int, seed: int, classes: tuple[str, str], keep_masks: bool = False,
    progress: bool = False,
) -> SceneSet:
    """The first ``n/2`` scenes of each class (large object's shape) of the ``one_large``
    stream of ``seed``, in stream order."""
    want = n // 2
    images, labels, masks, indices, colors, captions, small = [], [], [], [], [], [], []
    count = [0, 0]
    start, chunk = 0, 64
    bar = tqdm(total=n, desc=f"render {n} scenes (seed {seed})", disable=not progress)
    while min(count) < want:
        for s in generate(chunk, seed, start=start, one_large=True):
            large = next(o for o in s.objects if o.size == "large")
            if large.shape not in classes:
                continue
            c = classes.index(large.shape)
            if count[c] == want:
                continue
            count[c] += 1
            images.append(torch.from_numpy(np.asarray(s.image).copy()).permute(2, 0, 1))
            labels.append(c)
            indices.append(s.index)
            colors.append(large.color)
            named = f"large {large.color} {large.shape}"
            captions.append([t for t in s.captions if named in t])
            small.append([(o.color, o.shape) for o in s.objects if o.size == "small"])
            if keep_masks:
                masks.append(torch.from_numpy(large.mask.copy()))
            bar.update(1)
        start += chunk
    bar.close()
    return SceneSet(
        images=torch.stack(images),
        labels=torch.tensor(labels, dtype=torch.long),
        masks=torch.stack(masks) if keep_masks else None,
        indices=indices,
        seed=seed,
        rendered=start,
        colors=colors,
        captions=captions,
        small=small,
    )


def assign_cue(labels: torch.Tensor, rates: tuple[float, float], seed: int,
               salt: int) -> torch.Tensor:
    """Bool (n,): exactly ``round(rates[c] * n_c)`` images of each class c carry the cue,
    drawn at random (``np.random.default_rng([seed, CUE_SEED, salt, c])``)."""
    out = torch.zeros(len(labels), dtype=torch.bool)
    for c in (0, 1):
        idx = torch.nonzero(labels == c).flatten().numpy()
        k = int(round(rates[c] * len(idx)))
        pick = np.random.default_rng([seed, CUE_SEED, salt, c]).permutation(len(idx))[:k]
        out[torch.from_numpy(idx[pick])] = True
    return out


def biased_rates(cfg: StudyConfig) -> tuple[float, float]:
    """P(cue | class) in the biased training set."""
    return (cfg.cue_rate, 0.0) if cfg.cue_class == 0 else (0.0, cfg.cue_rate)


def balanced_rates(cfg: StudyConfig) -> tuple[float, float]:
    """P(cue | class) in the balanced training set: independent of the class."""
    return (cfg.cue_rate / 2, cfg.cue_rate / 2)


def stamp_cue(images: torch.Tensor, cue: torch.Tensor, box: tuple[int, int, int, int]
              ) -> torch.Tensor:
    """A copy of uint8 ``images`` (n,3,H,W) with the cue painted on those where ``cue``."""
    out = images.clone()
    x0, y0, x1, y1 = box
    sel = torch.nonzero(cue).flatten()
    out[sel, :, y0:y1, x0:x1] = torch.tensor(CUE_RGB, dtype=torch.uint8).view(1, 3, 1, 1)
    return out


# ---------------------------------------------------------------- training


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, cfg: StudyConfig, name: str,
    progress: bool = False,
) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """Train the shipped classifier's architecture with its recipe on ``images`` (uint8) and
    ``labels``; returns (model in eval mode, its config, training facts). The loop is
    :func:`mmcam.models.train._train`'s for the classifier kind (same batches, loss, schedule,
    clipping), fed with these images instead of freshly rendered ones."""
    config = trainer._config("classifier", None, trainer.DEFAULTS["classifier"])
    config["labels"] = list(cfg.classes)
    config["task"] = f"{cfg.classes[0]} vs {cfg.classes[1]}: shape of the one large object"
    return fit_model("classifier", config, images, [cfg.classes[int(c)] for c in labels], cfg,
                     name, progress)


def fit_model(
    kind: str, config: dict[str, Any], images: torch.Tensor, texts: list[Any], cfg: StudyConfig,
    name: str, progress: bool,
) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """Build a ``kind`` model from ``config`` (torch seed ``cfg.seed``) and run
    :func:`mmcam.models.train.fit` for ``cfg.steps`` steps with the shipped recipe of that
    kind on uint8 ``images`` and their ``texts`` (class names or caption lists), batches
    drawn with a generator seeded ``cfg.seed``, no auxiliary head."""
    hp = dict(trainer.DEFAULTS[kind])
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_model(config)
    config["explained_layer"] = wrap(model, config).layer
    cells = torch.zeros((len(images), 3, 1, 1), dtype=torch.uint8)  # no auxiliary head
    batches = trainer._Batches(kind, images, texts, cells, config, hp, gen)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=trainer.WEIGHT_DECAY)

    t0 = time.time()
    history = trainer.fit(model, opt, params, hp["lr"], cfg.steps, lambda: trainer._loss(
        kind, model, batches(), hp.get("per_image", 1), None, 0.0), f"train {name}", progress)
    facts = {
        "final_loss": float(np.mean(history[-50:])),
        "train_seconds": round(time.time() - t0, 1),
        "batch": hp["batch"], "lr": hp["lr"], "warmup": trainer.WARMUP,
        "weight_decay": trainer.WEIGHT_DECAY, "parameters": parameter_count(model),
    }
    return model, config, facts


# ---------------------------------------------------------------- measuring


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """Logits (n,2) of uint8 ``images``."""
    out = [model(encoder.pixels_from_uint8(images[i:i + batch]))
           for i in range(0, len(images), batch)]
    return torch.cat(out)


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x == x]
    return round(float(np.mean(xs)), 6) if xs else None


def accuracy_table(pred: torch.Tensor, labels: torch.Tensor, cue: torch.Tensor,
                   classes: tuple[str, str]) -> dict[str, Any]:
    """Accuracy overall, with and without the cue, and per (class, cue) group."""
    right = pred == labels
    out: dict[str, Any] = {"accuracy": round(float(right.float().mean()), 6),
                           "accuracy_with_cue": round(float(right[cue].float().mean()), 6),
                           "accuracy_without_cue": round(float(right[~cue].float().mean()), 6)}
    groups = {}
    for c in (0, 1):
        for has in (True, False):
            sel = (labels == c) & (cue == has)
            groups[f"{classes[c]}, {'cue' if has else 'no cue'}"] = {
                "n": int(sel.sum()), "accuracy": round(float(right[sel].float().mean()), 6)}
    out["groups"] = groups
    return out


def dilate(masks: torch.Tensor, r: int) -> torch.Tensor:
    """Bool masks (...,H,W) grown by ``r`` px (a (2r+1)x(2r+1) square max filter)."""
    m = masks.float().reshape(-1, 1, *masks.shape[-2:])
    return (F.max_pool2d(m, 2 * r + 1, stride=1, padding=r) > 0).reshape(masks.shape)


def map_shares(maps: torch.Tensor, cue_mask: torch.Tensor, obj_masks: torch.Tensor,
               near: int = NEAR_PX) -> dict[str, Any]:
    """Per region, the mean over maps (n,H,W) of the map's mass share and energy ratio, and
    the region's mean area share. Regions: ``cue`` (the cue box), ``object`` (each image's
    object mask, (n,H,W)), and both grown by ``near`` px (``cue_near``, ``object_near``).
    All-zero maps are left out of the means and counted in ``zero_maps``."""
    regions = {"cue": cue_mask.expand_as(obj_masks), "cue_near": dilate(cue_mask, near)
               .expand_as(obj_masks), "object": obj_masks, "object_near": dilate(obj_masks, near)}
    acc: dict[str, dict[str, list[float]]] = {
        k: {"share": [], "energy_ratio": [], "area_share": []} for k in regions}
    zero = 0
    for i, m in enumerate(maps):
        if float(m.clamp(min=0).sum()) <= 0:
            zero += 1
            continue
        for k, masks in regions.items():
            er, area = energy_ratio(m, masks[i]), float(masks[i].double().mean())
            acc[k]["share"].append(er * area)
            acc[k]["energy_ratio"].append(er)
            acc[k]["area_share"].append(area)
    out: dict[str, Any] = {k: {f: _mean(v) for f, v in d.items()} for k, d in acc.items()}
    out.update(zero_maps=zero, n=len(maps))
    return out


class Margin(torch.nn.Module):
    """A two-class model whose class-c score is its logit margin ``y_c - y_other``.

    With two classes the softmax, hence the decision, depends only on this margin; a model
    may store a cue as evidence *against* the other class, which the logit ``y_c`` alone (the
    paper's score) does not show. Grad-CAM of the margin does."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        y = self.model(pixels)
        return torch.stack([y[:, 0] - y[:, 1], y[:, 1] - y[:, 0]], dim=1)


@dataclass(frozen=True)
class Probe:
    """What differs between the study's models.

    ``train(images, scenes, cfg, name, progress) -> (model, config, facts)`` on uint8 images;
    ``predict(model, config, images, colors, cfg) -> (n, 2)`` scores of the two classes (the
    prediction is their argmax); ``explainers(model, config, cfg) -> {score: explain}`` with
    ``explain(images, colors, targets (m, k)) -> maps (m, k, H, W)`` of the target classes;
    ``extra(model, config, images, cue, scenes, cfg, progress) -> dict`` further figures of
    the test images (``cue``: which carry the cue), or None; for the report: ``task`` (a
    format string of the classes ``a`` and ``b``), ``scores_text`` (what the maps explain)
    and ``extra_lines(models) -> list[str]`` (Markdown of the ``extra`` figures) or None.
    """

    train: Callable[..., tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]]
    predict: Callable[..., torch.Tensor]
    explainers: Callable[..., dict[str, Callable[..., torch.Tensor]]]
    task: str
    scores_text: str
    extra: Callable[..., dict[str, Any]] | None = None
    extra_lines: Callable[[dict[str, Any]], list[str]] | None = None


def _classifier_explainers(model: torch.nn.Module, config: dict[str, Any], cfg: StudyConfig
                           ) -> dict[str, Callable[..., torch.Tensor]]:
    adapter = wrap(model, config)
    explainers = {"logit": ClassExplainer(adapter, method=cfg.method),
                  "margin": ClassExplainer(Margin(model), layer=f"model.{adapter.layer}",
                                           method=cfg.method)}

    def explain(ex: ClassExplainer) -> Callable[..., torch.Tensor]:
        return lambda images, colors, targets: ex.explain_pixels(
            encoder.pixels_from_uint8(images), targets=targets)["maps"]

    return {score: explain(ex) for score, ex in explainers.items()}


CLASSIFIER = Probe(
    train=lambda images, scenes, cfg, name, progress: train_classifier(
        images, scenes.labels, cfg, name, progress),
    predict=lambda model, config, images, colors, cfg: predict(model, images),
    explainers=_classifier_explainers,
    task="{a} vs {b} (shape of the one large object)",
    scores_text="the logit y_c (the paper's score) and for the margin y_c - y_other",
)


def probe_of(model: str) -> Probe:
    """The :class:`Probe` of a model kind of :data:`MODELS`."""
    if model == "captioner":
        from mmcam.bias_caption import CAPTIONER

        return CAPTIONER
    return CLASSIFIER


def evaluate(probe: Probe, model: torch.nn.Module, config: dict[str, Any], test: SceneSet,
             test_cue: torch.Tensor, cfg: StudyConfig, name: str, progress: bool = False
             ) -> tuple[dict[str, Any], torch.Tensor, dict[str, torch.Tensor]]:
    """The figures of one model on the unbiased test set; also its predictions and, per
    score of ``probe``, the maps of the predicted class on the cue images."""
    box = cfg.cue_box
    with_cue = stamp_cue(test.images, test_cue, box)
    toggled = stamp_cue(test.images, ~test_cue, box)  # the cue removed or added
    pred = probe.predict(model, config, with_cue, test.colors, cfg).argmax(1)
    pred_toggled = probe.predict(model, config, toggled, test.colors, cfg).argmax(1)
    out = accuracy_table(pred, test.labels, test_cue, cfg.classes)
    out["cue_flip_rate"] = round(float((pred != pred_toggled).float().mean()), 6)
    out["predicted_cue_class_share"] = {
        "with_cue": round(float((pred[test_cue] == cfg.cue_class).float().mean()), 6),
        "without_cue": round(float((pred[~test_cue] == cfg.cue_class).float().mean()), 6)}
    if probe.extra is not None:
        out.update(probe.extra(model, config, with_cue, test_cue, test, cfg, progress))

    sel = torch.nonzero(test_cue).flatten()
    targets = torch.stack([pred[sel], test.labels[sel]], dim=1)
    cue_mask = box_mask(box, (IMAGE_SIZE, IMAGE_SIZE))
    obj = test.masks[sel] & ~cue_mask
    labels = test.labels[sel]
    right = pred[sel] == labels
    out["gradcam"], shown = {}, {}
    chunk = 50
    for score, explain in probe.explainers(model, config, cfg).items():
        maps = []
        for i in tqdm(range(0, len(sel), chunk), desc=f"Grad-CAM {name} ({score})",
                      disable=not progress):
            idx = sel[i:i + chunk]
            maps.append(explain(with_cue[idx], [test.colors[j] for j in idx.tolist()],
                                targets[i:i + chunk]))
        maps_t = torch.cat(maps)  # (m, 2, H, W): predicted, true class
        out["gradcam"][score] = {
            "predicted_class": map_shares(maps_t[:, 0], cue_mask, obj),
            "true_class": map_shares(maps_t[:, 1], cue_mask, obj),
            "predicted_class_by_true_class": {
                cfg.classes[c]: map_shares(maps_t[labels == c, 0], cue_mask, obj[labels == c])
                for c in (0, 1)},
            "predicted_class_by_outcome": {
                outcome: map_shares(maps_t[right == ok, 0], cue_mask, obj[right == ok])
                for outcome, ok in (("right", True), ("wrong", False))}}
        shown[score] = maps_t[:, 0]
    return out, pred, shown


# ---------------------------------------------------------------- outputs


SCORE_TEXT = {"logit": "y_c", "margin": "y_c - y_other", "logprob": "log p(w)",
              "versus": "y_w - y_other"}


def picture(test: SceneSet, test_cue: torch.Tensor, preds: dict[str, torch.Tensor],
            maps: dict[str, dict[str, torch.Tensor]], cfg: StudyConfig) -> Image.Image:
    """Rows: the image (object box lime, cue box magenta), then per model (biased, balanced)
    and score (in ``maps[model]``'s order) the Grad-CAM of the predicted class, scaled by its
    own max; columns: test images with the cue, alternately of each class.
    ``maps[model][score]`` are over the cue images. Saved as a 256-color palette PNG to stay
    small."""
    sel = torch.nonzero(test_cue).flatten()
    order: list[int] = []
    per_class = [[j for j in range(len(sel)) if int(test.labels[sel[j]]) == c] for c in (0, 1)]
    for k in range(cfg.n_show):
        pool = per_class[k % 2]
        if k // 2 < len(pool):
            order.append(pool[k // 2])
    size = IMAGE_SIZE
    pad, head, left = 4, 14, 64
    W = left + len(order) * (size + pad)
    rows = [(name, score) for name in ("biased", "balanced") for score in maps[name]]
    H = (1 + len(rows)) * (size + head + pad)
    canvas = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(canvas)
    box = cfg.cue_box
    with_cue = stamp_cue(test.images, test_cue, box)
    labels = ["image"] + [f"{m}\n{SCORE_TEXT[s]}" for m, s in rows]
    for r, text in enumerate(labels):
        draw.multiline_text((4, r * (size + head + pad) + head + size // 2 - 8), text,
                            fill="black")
    for col, j in enumerate(order):
        i = int(sel[j])
        x = left + col * (size + pad)
        img = Image.fromarray(with_cue[i].permute(1, 2, 0).numpy())
        ys, xs = np.nonzero(test.masks[i].numpy())
        obox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        true = cfg.classes[int(test.labels[i])]
        draw.text((x, 1), f"true: {true}", fill="black")
        canvas.paste(draw_boxes(img, [obox, box], color=["lime", "magenta"], width=1), (x, head))
        for r, (name, score) in enumerate(rows, start=1):
            y = r * (size + head + pad)
            m = maps[name][score][j]
            h = m / m.max() if float(m.max()) > 0 else m
            p = cfg.classes[int(preds[name][i])]
            draw.text((x, y + 1), f"pred: {p}", fill="black" if p == true else "red")
            canvas.paste(overlay(img, h, alpha=0.5), (x, y + head))
    return canvas.quantize(256)


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.2f}"


def _cells(g: dict[str, Any], regions: tuple[str, ...]) -> str:
    return " | ".join(f"{_fmt(g[k]['share'], True)} ({_fmt(g[k]['energy_ratio'])})"
                      for k in regions)


def _accuracy_lines(result: dict[str, Any], probe: Probe) -> list[str]:
    """Title, settings and the accuracy table."""
    s, models = result["settings"], result["models"]
    a, b = s["classes"]
    model = s.get("model", "classifier")
    lines = [
        "# Bias study (the Grad-CAM paper's experiment on the scene world)"
        + ("" if model == "classifier" else f", {model}"),
        "",
        f"Task: {probe.task.format(a=a, b=b)}. Cue: a {s['cue_size']}x"
        f"{s['cue_size']} px cyan patch at {tuple(s['cue_box'][:2])}. Biased training set: "
        f"{_fmt(s['cue_rate'], True)} of the {s['classes'][s['cue_class']]} images carry the "
        "cue, none of the others; balanced: the cue is independent of the class (same scenes, "
        f"labels, initial weights and batches). Test: {s['n_test']} held-out scenes, half of "
        f"each class with the cue. {s['n_train']} training scenes, {s['steps']} steps, seed "
        f"{s['seed']}, one thread; wall time {result['wall_seconds']:.0f} s.",
        "",
        "| model | test accuracy | with cue | without cue | "
        + " | ".join(models["biased"]["groups"]) + " | prediction flips with the cue |",
        "|---|---|---|---|" + "---|" * len(models["biased"]["groups"]) + "---|",
    ]
    for name in ("biased", "balanced"):
        m = models[name]
        lines.append(
            f"| {name} | {_fmt(m['accuracy'], True)} | {_fmt(m['accuracy_with_cue'], True)} | "
            f"{_fmt(m['accuracy_without_cue'], True)} | "
            + " | ".join(_fmt(g["accuracy"], True) for g in m["groups"].values())
            + f" | {_fmt(m['cue_flip_rate'], True)} |"
        )
    return lines


def _map_lines(result: dict[str, Any]) -> list[str]:
    """The map shares of the predicted and the true class, then of the predicted class by
    true class and by right or wrong prediction."""
    s, models = result["settings"], result["models"]
    near = s["near_px"]
    scores = list(models["biased"]["gradcam"])
    lines = [
        "",
        f"Where Grad-CAM puts its mass on the {result['test']['with_cue']} test images with the "
        "cue: share of the map (energy ratio = share / area share; 1 is chance).",
        "",
        f"| model | score | map of | cue box | cue box + {near} px | object | "
        f"object + {near} px |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("biased", "balanced"):
        for score in scores:
            for target in ("predicted_class", "true_class"):
                g = models[name]["gradcam"][score][target]
                lines.append(f"| {name} | {SCORE_TEXT[score]} | {target.replace('_', ' ')} | "
                             + _cells(g, ("cue", "cue_near", "object", "object_near")) + " |")
    outcome = "predicted_class_by_outcome" in models["biased"]["gradcam"][scores[0]]
    lines += ["", "The predicted class's maps by the image's true class (with the cue, a "
              f"{s['classes'][s['cue_class']]} image is the cue's class; the others are where a "
              "biased model is wrong)"
              + (", and by whether the prediction is right:" if outcome else ":"), "",
              f"| model | score | true class | n | cue box + {near} px | object |",
              "|---|---|---|---|---|---|"]
    for name in ("biased", "balanced"):
        for score in scores:
            gc = models[name]["gradcam"][score]
            split = {**gc["predicted_class_by_true_class"],
                     **{f"any ({k} prediction)": v
                        for k, v in gc.get("predicted_class_by_outcome", {}).items()}}
            for cls, g in split.items():
                lines.append(f"| {name} | {SCORE_TEXT[score]} | {cls} | {g['n']} | "
                             + _cells(g, ("cue_near", "object")) + " |")
    return lines


def _footer_lines(result: dict[str, Any], probe: Probe) -> list[str]:
    """Area shares, all-zero maps, the picture and its legend."""
    models, near = result["models"], result["settings"]["near_px"]
    scores = list(models["biased"]["gradcam"])
    targets = ("predicted_class", "true_class")
    g = next((g for sc in scores for t in targets
              if (g := models["biased"]["gradcam"][sc][t])["object"]["area_share"] is not None),
             models["biased"]["gradcam"][scores[0]]["predicted_class"])
    zeros = ", ".join(f"{n} {SCORE_TEXT[sc]} {t.split('_')[0]}: "
                      f"{models[n]['gradcam'][sc][t]['zero_maps']}"
                      for n in ("biased", "balanced") for sc in scores for t in targets)
    return [
        "",
        f"Area shares: cue box {_fmt(g['cue']['area_share'], True)}, cue box + {near} px "
        f"{_fmt(g['cue_near']['area_share'], True)}, object {_fmt(g['object']['area_share'], True)}"
        f", object + {near} px {_fmt(g['object_near']['area_share'], True)} of the image (means). "
        f"{near} px is one cell of the explained 16x16 layer. All-zero maps are left out of the "
        f"means ({zeros}).",
        "",
        "![bias study](bias_study.png)",
        "",
        "Columns: test images with the cue (object box lime, cue box magenta), alternately of "
        "each class; rows: the image, then the biased and the balanced model's Grad-CAM of "
        f"the predicted class, for {probe.scores_text} (each map scaled by its own max; a red "
        "label is a wrong prediction).",
        "",
    ]


def markdown(result: dict[str, Any]) -> str:
    """The README tables of a study result."""
    probe = probe_of(result["settings"].get("model", "classifier"))
    lines = _accuracy_lines(result, probe)
    if probe.extra_lines is not None:
        lines += probe.extra_lines(result["models"])
    return "\n".join(lines + _map_lines(result) + _footer_lines(result, probe))


def run_study(out: str | os.PathLike, cfg: StudyConfig | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Run the study and write ``bias_study.json``, ``.md`` and ``.png`` into ``out``;
    returns the JSON's content."""
    cfg = cfg or StudyConfig()
    cfg.check()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(Path(out), cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, cfg: StudyConfig, progress: bool) -> dict[str, Any]:
    t0 = time.time()
    train = binary_scenes(cfg.n_train, cfg.seed, cfg.classes, progress=progress)
    test = binary_scenes(cfg.n_test, EVAL_SEED, cfg.classes, keep_masks=True,
                         progress=progress)
    t_data = time.time() - t0
    probe = probe_of(cfg.model)
    cues = {"biased": assign_cue(train.labels, biased_rates(cfg), cfg.seed, 0),
            "balanced": assign_cue(train.labels, balanced_rates(cfg), cfg.seed, 1)}
    test_cue = assign_cue(test.labels, (0.5, 0.5), cfg.seed, 2)
    models, preds, maps = {}, {}, {}
    for name in ("biased", "balanced"):
        images = stamp_cue(train.images, cues[name], cfg.cue_box)
        model, config, facts = probe.train(images, train, cfg, name, progress)
        del images
        figures, preds[name], maps[name] = evaluate(probe, model, config, test, test_cue, cfg,
                                                    name, progress)
        counts = {cfg.classes[c]: {"images": int((train.labels == c).sum()),
                                   "with_cue": int((cues[name] & (train.labels == c)).sum())}
                  for c in (0, 1)}
        models[name] = {"training": {**facts, "cue_counts": counts}, **figures}
    out.mkdir(parents=True, exist_ok=True)
    picture(test, test_cue, preds, maps, cfg).save(out / FILES[2], optimize=True)
    settings = {**asdict(cfg), "classes": list(cfg.classes), "cue_box": list(cfg.cue_box),
                "cue_rgb": list(CUE_RGB), "near_px": NEAR_PX,
                "biased_rates": list(biased_rates(cfg)),
                "balanced_rates": list(balanced_rates(cfg)), "test_seed": EVAL_SEED,
                "test_cue_rates": [0.5, 0.5], "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "train_scenes_rendered": train.rendered, "test_scenes_rendered": test.rendered}
    result = {
        "settings": settings,
        "command": "mmcam bias-study "
                   + ("--model captioner " if cfg.model == "captioner" else "")
                   + f"--out OUT --seed {cfg.seed} --n-train {cfg.n_train} "
                   f"--n-test {cfg.n_test} --steps {cfg.steps}"
                   + (f" --cue-rate {cfg.cue_rate}" if cfg.cue_rate != StudyConfig.cue_rate
                      else "")
                   + (f" --cue-size {cfg.cue_size}" if cfg.cue_size != StudyConfig.cue_size
                      else ""),
        "test": {"n": cfg.n_test, "with_cue": int(test_cue.sum()),
                 "per_class": {cfg.classes[c]: int((test.labels == c).sum()) for c in (0, 1)}},
        "models": models,
        "data_seconds": round(t_data, 1),
        "wall_seconds": round(time.time() - t0, 1),
    }
    (out / FILES[0]).write_text(json.dumps(result, indent=2) + "\n")
    (out / FILES[1]).write_text(markdown(result))
    return result


__all__ = ["MODELS", "Probe", "SceneSet", "StudyConfig", "assign_cue", "binary_scenes",
           "fit_model", "probe_of", "run_study", "stamp_cue"]
