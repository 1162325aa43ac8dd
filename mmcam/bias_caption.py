"""The bias study with a captioner: ``run_study(out, StudyConfig(model="captioner"))``.

The scenes, the cue, the biased and balanced training sets, the unbiased test set and the
map measures are those of :mod:`mmcam.bias`; only the model differs.

Model
    The shipped captioner's architecture and recipe (:mod:`mmcam.models.train`: conv
    encoder, LSTM decoder with soft attention, AdamW, batch 32 images x 1 caption), trained
    for ``cfg.steps`` steps on the scenes' captions that name the large object as
    ``"large {color} {shape}"`` (the world's captions that name no shape, such as "one large
    shape", are left out, so every training caption says the large object's shape). The
    vocabulary comes from those captions; both models get the same one and the same initial
    weights.

Prediction
    With ``"a large {color}"`` teacher-forced (the large object's true color), the class whose
    word has the larger logit at the next position: the decision the classifier makes, read
    from the caption model (:func:`shape_logits`). Also reported: what the greedy caption says
    after ``"large"`` (:func:`greedy_figures`): the right shape, the other class, another
    shape, or no shape word.

Maps
    Grad-CAM (``cfg.method``) at the captioner's default layer (``encoder.14``, 16x16,
    receptive-field aligned) of the shape word in ``"a large {color} {class}"`` for the
    predicted and the true class, two scores: ``"logprob"``, ``log p(word)`` (the paper's
    score for captions), and ``"versus"`` the other class's word, ``y_w - y_other`` (the
    logit margin at that position, the classifier study's "margin").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from mmcam.bias import Probe, SceneSet, StudyConfig, fit_model
from mmcam.caption import CaptionExplainer
from mmcam.models import encoder
from mmcam.models import train as trainer
from mmcam.models.hub import wrap
from mmcam.models.text import Vocab
from mmcam.scenes import COLORS, SHAPES

PREFIX = "a large {color}"
SHAPE_WORD = 3  # the shape word's index in "a large {color} {shape}"
GREEDY = ("right", "other_class", "other_shape", "unnamed")


def train_captioner(images: torch.Tensor, scenes: SceneSet, cfg: StudyConfig, name: str,
                    progress: bool = False
                    ) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """The shipped captioner's architecture and recipe on uint8 ``images`` and the scenes'
    captions that name the large object; returns (model in eval mode, config, facts)."""
    vocab = Vocab.build(c for caps in scenes.captions for c in caps)
    config = trainer._config("captioner", vocab, trainer.DEFAULTS["captioner"])
    config["task"] = ("captions of one-large-object scenes that name the large object "
                      f"({cfg.classes[0]} or {cfg.classes[1]})")
    return fit_model("captioner", config, images, scenes.captions, cfg, name, progress)


def _prefix_ids(vocab: Vocab, colors: list[str]) -> torch.Tensor:
    """(n, 4) decoder inputs ``<bos> a large {color}``."""
    return torch.tensor([[vocab.bos] + vocab.encode(PREFIX.format(color=c))[0] for c in colors])


@torch.no_grad()
def shape_logits(model: torch.nn.Module, config: dict[str, Any], images: torch.Tensor,
                 colors: list[str], cfg: StudyConfig, batch: int = 128) -> torch.Tensor:
    """(n, 2): the logits of the two classes' words after ``"a large {color}"``."""
    vocab = Vocab(config["vocab"])
    words = [vocab.stoi[c] for c in cfg.classes]
    inputs = _prefix_ids(vocab, colors)
    out = []
    for i in range(0, len(images), batch):
        feats = model.encoder(encoder.pixels_from_uint8(images[i:i + batch]))
        logits, _ = model.decode(feats, inputs[i:i + batch])
        out.append(logits[:, -1, words])
    return torch.cat(out)


def _named_after(words: list[str], i: int) -> tuple[str | None, str | None]:
    """(last color, shape) of the words after index ``i``: color words, then a shape word
    (None where missing)."""
    color = None
    i += 1
    while i < len(words) and words[i] in COLORS:
        color, i = words[i], i + 1
    return color, (words[i] if i < len(words) and words[i] in SHAPES else None)


def large_shape_word(words: list[str]) -> str | None:
    """The shape a caption gives the large object: the first word after ``"large"`` and its
    color words if it is a shape, else None (also when there is no ``"large"``)."""
    return _named_after(words, words.index("large"))[1] if "large" in words else None


def small_mentions(words: list[str], small: list[tuple[str, str]], classes: tuple[str, str]
                   ) -> list[bool]:
    """For each ``"small {color} {shape}"`` of a caption whose color is that of exactly one
    small object of the scene (``small``: (color, shape) pairs), and that object's shape is
    one of ``classes``: whether the caption's shape word is the object's shape."""
    out = []
    for i, w in enumerate(words):
        if w != "small":
            continue
        color, shape = _named_after(words, i)
        same = [sh for c, sh in small if c == color]
        if shape is not None and len(same) == 1 and same[0] in classes:
            out.append(shape == same[0])
    return out


@torch.no_grad()
def greedy_figures(model: torch.nn.Module, config: dict[str, Any], images: torch.Tensor,
                   cue: torch.Tensor, scenes: SceneSet, cfg: StudyConfig, progress: bool
                   ) -> dict[str, Any]:
    """What the greedy caption calls the large object, as shares of :data:`GREEDY` for the
    test images with and without the cue; how often it names small circles and squares right
    (:func:`small_mentions`); the first captions of each (class, cue)."""
    adapter = wrap(model, config)
    counts = {has: dict.fromkeys(GREEDY, 0) for has in (True, False)}
    smalls: dict[bool, list[bool]] = {True: [], False: []}
    examples: dict[str, list[str]] = {}
    for i in tqdm(range(len(images)), desc="greedy captions", disable=not progress):
        feats = model.encoder(encoder.pixels_from_uint8(images[i:i + 1]))
        words = adapter.words(adapter.generate(feats)[0])
        said, true = large_shape_word(words), cfg.classes[int(scenes.labels[i])]
        kind = ("unnamed" if said is None else "right" if said == true else
                "other_class" if said in cfg.classes else "other_shape")
        has = bool(cue[i])
        counts[has][kind] += 1
        smalls[has] += small_mentions(words, scenes.small[i], cfg.classes)
        group = examples.setdefault(f"{true}, {'cue' if has else 'no cue'}", [])
        if len(group) < 3:
            group.append(" ".join(words))
    shares = {("with_cue" if has else "without_cue"): {
        k: round(v / max(1, sum(c.values())), 6) for k, v in c.items()}
        for has, c in counts.items()}
    small = {("with_cue" if has else "without_cue"): {
        "n": len(v), "right": round(sum(v) / len(v), 6) if v else None}
        for has, v in smalls.items()}
    return {"greedy": {**shares, "small_named_right": small, "examples": examples}}


def _explainers(model: torch.nn.Module, config: dict[str, Any], cfg: StudyConfig
                ) -> dict[str, Callable[..., torch.Tensor]]:
    adapter = wrap(model, config)
    a, b = cfg.classes
    explainers = {
        "logprob": CaptionExplainer(adapter, method=cfg.method, score="logprob"),
        "versus": CaptionExplainer(adapter, method=cfg.method, score="versus",
                                   versus={a: b, b: a}),
    }

    def explain(ex: CaptionExplainer) -> Callable[..., torch.Tensor]:
        def run(images: torch.Tensor, colors: list[str], targets: torch.Tensor) -> torch.Tensor:
            m, k = targets.shape
            pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]
            # each (image, class) once: the predicted class is usually the true one
            pairs = list(dict.fromkeys((i, int(t)) for i in range(m) for t in targets[i]))
            results = ex.explain_batch(
                [pil[i] for i, _ in pairs],
                [f"{PREFIX.format(color=colors[i])} {cfg.classes[c]}" for i, c in pairs])
            drawn = {}
            for (i, c), r in zip(pairs, results):
                assert r.words[SHAPE_WORD] == cfg.classes[c], (r.words, c)
                drawn[i, c] = r.maps[SHAPE_WORD]
            maps = torch.stack([drawn[i, int(t)] for i in range(m) for t in targets[i]])
            return maps.reshape(m, k, *maps.shape[-2:])
        return run

    return {score: explain(ex) for score, ex in explainers.items()}


def greedy_lines(models: dict[str, Any]) -> list[str]:
    """Markdown: the greedy captions' word for the large object, per model and cue, and how
    often they name small circles and squares right."""
    lines = ["", "What the greedy caption calls the large object (share of the test images):",
             "", "| model | test images | right shape | the other class | another shape | "
             "no shape word | small circles and squares named right (mentions) |",
             "|---|---|---|---|---|---|---|"]
    for name in ("biased", "balanced"):
        for part in ("with_cue", "without_cue"):
            g = models[name]["greedy"][part]
            small = models[name]["greedy"]["small_named_right"][part]
            right = "n/a" if small["right"] is None else f"{100 * small['right']:.1f}%"
            lines.append(f"| {name} | {part.replace('_', ' ')} | "
                         + " | ".join(f"{100 * g[k]:.1f}%" for k in GREEDY)
                         + f" | {right} ({small['n']}) |")
    return lines


CAPTIONER = Probe(
    train=train_captioner, predict=shape_logits, explainers=_explainers,
    task="the captioner's word for the shape of the one large object, {a} vs {b} (the larger "
    "of the two words' logits after \"a large {{color}}\", the object's color, teacher-forced); "
    "the model is trained on the scenes' captions that name the large object",
    scores_text="the shape word's log p(w) (the paper's score for captions) and for its logit "
    "against the other class's word, y_w - y_other",
    extra=greedy_figures, extra_lines=greedy_lines)

__all__ = ["CAPTIONER", "greedy_figures", "large_shape_word", "shape_logits",
           "small_mentions", "train_captioner"]
