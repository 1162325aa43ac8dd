"""Is a word's map where its object is? The pointing game on scenes with ground truth."""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from mmcam.caption import CaptionExplainer
from mmcam.scenes import COLORS, SHAPES, Scene


def _inside(box: tuple[int, int, int, int], x: int, y: int) -> bool:
    return box[0] <= x < box[2] and box[1] <= y < box[3]


def pointing_game(
    explainer: CaptionExplainer,
    scenes: Sequence[Scene],
    caption: str = "reference",
    progress: bool = True,
) -> dict[str, Any]:
    """Share of color/shape words whose map peak lies inside the named object's box.

    For every word of the caption (``caption="reference"``: the scene's first caption,
    which names every object; ``"generated"``: the model's own caption) that names the
    color or the shape of exactly one object in the scene, the word's map argmax (first
    maximum, row-major) is a hit if it falls inside that object's box. ``chance`` is the
    mean of box area / image area over the same words: the hit rate of a uniformly random
    point. All-zero maps count as misses.
    """
    names = {w: "color" for w in COLORS} | {w: "shape" for w in SHAPES}
    stats = {k: {"words": 0, "hits": 0, "chance": 0.0} for k in ("color", "shape")}
    for scene in tqdm(scenes, desc="pointing game", disable=not progress):
        text = scene.captions[0] if caption == "reference" else None
        res = explainer.explain(scene.image, text)
        W, H = scene.image.size
        for label, m in zip(res.words, res.maps):
            word = label.lower().strip(string.punctuation)  # "star," is the word star
            kind = names.get(word)
            objs = [o for o in scene.objects if word in (o.color, o.shape)]
            if kind is None or len(objs) != 1:
                continue
            box = objs[0].box
            flat = int(torch.argmax(m))
            y, x = divmod(flat, W)
            hit = bool(m.max() > 0) and _inside(box, x, y)
            s = stats[kind]
            s["words"] += 1
            s["hits"] += int(hit)
            s["chance"] += (box[2] - box[0]) * (box[3] - box[1]) / (W * H)
    total = {"words": 0, "hits": 0, "chance": 0.0}
    for s in stats.values():
        for k in total:
            total[k] += s[k]
    out: dict[str, Any] = {}
    for name, s in [("all", total), *stats.items()]:
        n = max(s["words"], 1)
        out[name] = {"words": s["words"], "hit_rate": s["hits"] / n, "chance": s["chance"] / n}
    out["scenes"] = len(scenes)
    out["caption"] = caption
    out["method"] = explainer.method_name
    return out
