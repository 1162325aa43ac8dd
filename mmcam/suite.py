"""``mmcam evaluate-explanations``: how good a model's maps are, on fresh scenes with ground truth.

For every word of the model's own captions (and every VQA answer) and every setting
(method x score x alignment), one set of gradients per score gives all methods' maps; each
map is scored with :mod:`mmcam.evaluation` against the object(s) the word names:

- word kinds: color, size and shape words that name exactly one object of the scene (the
  object's mask and box); relation words ("left", "right", "above", "below") and function
  words (all others) against all objects of the scene; VQA answers against the objects the
  question refers to (``Scene.question_objects``; questions that refer to none are skipped);
- pointing (peak within ``slack`` px of the mask) against chance (the share of the image
  within ``slack`` px of the mask), energy ratios in the mask and the box, the paper's
  localization (15% box, IoU >= 0.5 with the box);
- deletion on the first ``n_deletion`` scenes: the word's log-probability (the answer's for
  VQA) after the map's top 10% of input pixels are replaced (``fill``: by the image's mean
  color, the default, or by a blurred copy, which keeps an object's color), against a
  random map's and a centre blob's top 10%, and the deletion curve's area; for the VQA
  answers "yes" and "no" also each kind split by answer (:func:`yes_no_table`), since
  removing the evidence need not lower a "no";
- the cascading randomization sanity check per method and score (layer maps of the first
  ``n_sanity`` scenes' words; stages are the model's top-level children, randomized from the
  output back; a setting passes when its mean Spearman correlation with the trained model's
  maps is below :data:`SANITY_MAX` once every stage after the explained layer is
  randomized: randomizing the layer's own stage changes the activations, which no method
  survives);
- for models with their own attention (``adapter.attention``), the same metrics for the
  attention maps and their rank correlation with each method's maps per word.

Everything is done at the model's default layer, or at each of ``layers`` (a layer is then
part of a setting, with its own sanity check). The recommended setting is the one with the
highest pointing rate over the object words (color and shape words, answers) among those
that pass the sanity check.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mmcam import evaluation as ev
from mmcam.cam import METHODS, PATH_METHODS, PATH_STEPS, REDUCIBLE
from mmcam.caption import CaptionExplainer
from mmcam.geometry import Geometry
from mmcam.pipeline import Explained, cam_of, module_of, pixels_of, with_pixels
from mmcam.scenes import PLURALS, WORD_KINDS, Scene, generate
from mmcam.vqa import VQAExplainer

SANITY_MAX = 0.5
RELATION_WORDS = {"left", "right", "above", "below"}
FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.4)
SEED = 2_000_000  # fresh scenes: neither training (0), validation nor model evaluation seeds
Setting = tuple[str, str, str]  # (method, score, align)


def word_kind(word: str) -> str:
    """color, size, shape, relation or function."""
    w = word.lower().strip(".,;:!?")
    for kind in ("color", "size", "shape"):
        if w in WORD_KINDS[kind] or (kind == "shape" and w in PLURALS.values()):
            return kind
    return "relation" if w in RELATION_WORDS else "function"


def _union(objs: Sequence[Any], size: tuple[int, int]) -> tuple[np.ndarray, tuple]:
    W, H = size
    mask = np.zeros((H, W), dtype=bool)
    for o in objs:
        mask |= o.mask
    ys, xs = np.nonzero(mask)
    return mask, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _chance(mask: np.ndarray, slack: int) -> float:
    """Share of pixels within ``slack`` px (Chebyshev) of the mask: a random point's hit rate."""
    m = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    if slack > 0:
        m = torch.nn.functional.max_pool2d(m, 2 * slack + 1, stride=1, padding=slack)
    return float(m.mean())


class _Scorer:
    """log p of one row (a word's tokens or an answer) for a batch of perturbed inputs."""

    def __init__(self, explainer: Any, e: Explained, row: int, question: Any = None) -> None:
        self.ad, self.e, self.row, self.q = explainer.adapter, e, row, question
        self.pipe = explainer.pipeline

    def __call__(self, px: torch.Tensor) -> torch.Tensor:
        ad, e, B = self.ad, self.e, px.shape[0]
        px = self.pipe._to_device(px)
        ids = e.rows.ids[self.row: self.row + 1].expand(B, -1).to(px.device)
        if self.q is not None and not callable(getattr(ad, "score_answer_tokens", None)):
            q = self.q.reshape(1, -1).expand(B, -1)
            lp = ad.score_answers(ad.encode(px), q)
            return (lp.cpu() * e.rows.coefs[self.row: self.row + 1].clamp(min=0)).sum(1)
        x = ad.encode(px) if self.pipe.split else with_pixels(e.inputs, px)
        if self.q is not None:
            lp = ad.score_answer_tokens(x, self.q, ids)
        else:
            lp = ad.score_tokens(x, ids)
        T = e.rows.ids.shape[1]
        member = (e.rows.coefs[self.row, :T] != 0).float()
        return (lp.float().cpu()[:, :T] * member).sum(1)


def _input_maps(e: Explained, lmaps: torch.Tensor, align: str) -> torch.Tensor:
    px = pixels_of(e.inputs)
    g = Geometry.identity((px.shape[-1], px.shape[-2]))
    return g.to_image(lmaps, e.cell if align == "receptive" else None)


FILL_TEXT = {"mean": "the image's mean color", "blur": "a blurred copy"}


def _deletion(scorer: _Scorer, e: Explained, maps: dict[Setting, torch.Tensor],
              seed: int, fill: str = "mean") -> dict[Any, list[float]]:
    """Deletion curves (log p at :data:`FRACTIONS`) for each setting's input-space map and
    for the random and centre-blob baselines, in one batch; removed pixels take
    ``ev.FILLS[fill]``."""
    px = pixels_of(e.inputs)[0].detach().float().cpu()
    H, W = px.shape[-2:]
    absent = ev.FILLS[fill](px)
    named = dict(maps) | {"random": ev.random_map((H, W), seed), "centre": ev.centre_blob((H, W))}
    batch, keys = [], list(named)
    for k in keys:
        order = ev.ranking(named[k])
        for f in FRACTIONS:
            top = torch.zeros(H * W, dtype=torch.bool)
            top[order[: int(round(f * H * W))]] = True
            batch.append(torch.where(top.reshape(H, W)[None], absent, px))
    with torch.no_grad():
        s = scorer(torch.stack(batch)).double()
    n = len(FRACTIONS)
    return {k: s[i * n:(i + 1) * n].tolist() for i, k in enumerate(keys)}


def _explainers(cls: type, adapter: Any, score: str, methods: Sequence[str],
                layer: str | None = None, steps: int = PATH_STEPS
                ) -> tuple[Any, dict[str, Any]]:
    """(explainer, per method the explainer whose gradients serve it): the "auto" strategy's
    explainer serves every method it can; when that is "readers", a "vjp" one serves the
    methods beyond :data:`mmcam.cam.REDUCIBLE`; each path method (:data:`PATH_METHODS`, its
    gradients are a path's mean, ``steps`` points) has its own. The reducible methods keep
    the readers' exact maps: in front of a LayerNorm, HiResCAM from dense float32 gradients
    is mostly rounding error (README)."""
    ex = cls(adapter, score=score, layer=layer)
    by = {m: ex for m in methods if m not in PATH_METHODS}
    if ex.pipeline.strategy == "readers" and any(m not in REDUCIBLE for m in by):
        full = cls(adapter, score=score, strategy="vjp", layer=layer)
        by |= {m: full for m in by if m not in REDUCIBLE}
    return ex, by | {m: cls(adapter, method=m, score=score, layer=layer, steps=steps)
                     for m in methods if m in PATH_METHODS}


def _sources(by: dict[str, Any], explain: Callable[[Any], Any],
             known: dict[int, Any] | None = None) -> dict[str, Any]:
    """Per method of ``by`` what ``explain(its explainer)`` gives, made once per distinct
    explainer; ``known``: results already made, by ``id(explainer)``."""
    made = dict(known or {})
    out = {}
    for m, x in by.items():
        if id(x) not in made:
            made[id(x)] = explain(x)
        out[m] = made[id(x)]
    return out


def _score_maps(rec: dict, m: torch.Tensor, mask: np.ndarray, box: tuple, slack: int) -> None:
    rec["hit"] = ev.pointing_hit(m, mask, slack)
    rec["energy_mask"] = ev.energy_ratio(m, mask)
    rec["energy_box"] = ev.energy_ratio(m, ev.box_mask(box, (mask.shape[1], mask.shape[0])))
    rec["localized"] = ev.localization_correct(m, box)


def _records_for(rows: list[tuple[Explained, int, str, np.ndarray, tuple, float]],
                 score: str, methods: Sequence[str], aligns: Sequence[str], slack: int,
                 deletion: str | None, scorer_of: Any, seed: int, attention: Any = None,
                 src: dict[str, Explained] | None = None) -> list[dict]:
    """Records for explained rows ``(explained, row, kind, mask, box, chance)``: one per
    setting (and per alignment of the attention map), plus attention correlations;
    ``deletion``: the fill of the deletion curves (None: no curves); ``src``: per method
    the same rows' Explained whose gradients serve it (:func:`_explainers`; default the
    rows' own)."""
    out = []
    for k, (e, row, kind, mask, box, chance) in enumerate(rows):
        base = {"kind": kind, "chance": chance, "score": score}
        got = {m: (src or {}).get(m, e) for m in methods}
        lm = {m: cam_of(m)(got[m].A[None], got[m].G[row: row + 1])[0] for m in methods}
        if attention is not None:
            lm["attention"] = attention(e, row)
        mine, settings = [], {}
        for m, grid in lm.items():
            sc = "-" if m == "attention" else score
            for a in aligns:
                cell = e.cell if a == "receptive" else None
                rec = base | {"method": m, "score": sc, "align": a}
                _score_maps(rec, e.geometry.to_image(grid[None], cell)[0], mask, box, slack)
                mine.append(rec)
                settings[(m, sc, a)] = _input_maps(e, grid[None], a)[0]
        if deletion:
            curves = _deletion(scorer_of(e, row), e, settings, seed + k, deletion)
            i10 = FRACTIONS.index(0.1)
            for rec in mine:
                c = curves[(rec["method"], rec["score"], rec["align"])]
                rec["deletion_drop"] = c[0] - c[i10]
                rec["random_drop"] = curves["random"][0] - curves["random"][i10]
                rec["centre_drop"] = curves["centre"][0] - curves["centre"][i10]
                rec["deletion_curve"] = [v - c[0] for v in c]
                rec["random_curve"] = [v - c[0] for v in curves["random"]]
                rec["centre_curve"] = [v - c[0] for v in curves["centre"]]
        if attention is not None:  # cell by cell: only on the attention's own grid
            mine += [base | {"method": m, "vs_attention": ev.spearman(lm[m], lm["attention"])}
                     for m in methods if lm[m].shape == lm["attention"].shape]
        out += mine
    return out


def caption_records(adapter: Any, scenes: Sequence[Scene], methods: Sequence[str],
                    scores: Sequence[str], aligns: Sequence[str], slack: int = 4,
                    n_deletion: int = 50, progress: bool = True, fill: str = "mean",
                    layer: str | None = None, captions: Sequence[str] | None = None,
                    steps: int = PATH_STEPS) -> tuple[list[dict], list[str]]:
    """Per-word records for the model's own captions (see module doc), and the captions
    (``captions``: the model's captions of ``scenes`` when already known, not generated
    again)."""
    known = captions is not None
    captions = list(captions or [])
    recs: list[dict] = []
    # the model's attention is a map on encode's grid: drawn (receptive cells) and compared
    # cell by cell only where that is the explained layer, the adapter's default
    has_att = callable(getattr(adapter, "attention", None)) and callable(
        getattr(adapter, "encode", None)) and layer in (None, getattr(adapter, "layer", None))
    for s_i, score in enumerate(scores):
        ex, by = _explainers(CaptionExplainer, adapter, score, methods, layer, steps)
        for i, scene in enumerate(tqdm(scenes, desc=f"captions, score {score}",
                                       disable=not progress)):
            text = captions[i] if s_i > 0 or known else None
            e = ex.explained([scene.image], None if text is None else [text])[0]
            words = e.rows.info[1]
            if text is None:
                captions.append(" ".join(words))
            text = e.rows.info[0] or " ".join(words)
            src = _sources(by, lambda x, text=text, scene=scene: x.explained(
                [scene.image], [text])[0], {id(ex): e})
            rows = []
            for r, w in enumerate(words):
                kind = word_kind(w)
                if kind in ("color", "size", "shape"):
                    objs = scene.objects_named(w.strip(".,"))
                    if len(objs) != 1:
                        continue
                else:
                    objs = list(scene.objects)
                mask, box = _union(objs, scene.image.size)
                rows.append((e, r, kind, mask, box, _chance(mask, slack)))

            def scorer(e: Explained, row: int, ex: Any = ex) -> _Scorer:
                return _Scorer(ex, e, row)

            att = None
            if has_att and s_i == 0:
                with torch.no_grad():  # the attention of every token, once per caption
                    tokens = adapter.attention(adapter.encode(pixels_of(e.inputs)),
                                               e.rows.ids[:1])[0].float()  # (T,h,w)

                def att(e: Explained, row: int, tokens: torch.Tensor = tokens) -> torch.Tensor:
                    T = e.rows.ids.shape[1]
                    return (e.rows.coefs[row, :T, None, None] * tokens).sum(0)
            new = _records_for(rows, score, methods, aligns, slack,
                               fill if i < n_deletion else None, scorer,
                               1000 * i, att, src)
            for rec in new:
                rec.update(task="caption", scene=i)
            recs += new
    return recs, captions


def vqa_questions(scene: Scene) -> list[tuple[int, str, str, str, tuple[int, ...]]]:
    """The questions the suite explains on ``scene``: per question type, the first one that
    refers to objects, as (index, question, answer, type, referred objects)."""
    out, seen = [], set()
    for qi, ((q, truth), qtype, objs) in enumerate(zip(
            scene.questions, scene.question_types, scene.question_objects)):
        if objs and qtype not in seen:
            seen.add(qtype)
            out.append((qi, q, truth, qtype, objs))
    return out


def vqa_records(adapter: Any, scenes: Sequence[Scene], methods: Sequence[str],
                scores: Sequence[str], aligns: Sequence[str], slack: int = 4,
                n_deletion: int = 50, progress: bool = True, fill: str = "mean",
                layer: str | None = None, steps: int = PATH_STEPS) -> list[dict]:
    """Per-answer records: per scene the first question of each type that refers to
    objects, the model's own answer (see module doc)."""
    recs: list[dict] = []
    for score in scores:
        ex, by = _explainers(VQAExplainer, adapter, score, methods, layer, steps)
        for i, scene in enumerate(tqdm(scenes, desc=f"VQA, score {score}",
                                       disable=not progress)):
            for qi, q, truth, qtype, objs in vqa_questions(scene):
                e = ex.explained(scene.image, q)
                answer = e.rows.info[0]
                src = _sources(by, lambda x, scene=scene, q=q, answer=answer:
                               x.explained(scene.image, q, answer), {id(ex): e})
                mask, box = _union([scene.objects[j] for j in objs], scene.image.size)
                qids = torch.as_tensor(adapter.tokenize_question(q)[0], dtype=torch.long)

                def scorer(e: Explained, row: int, ex: Any = ex, qids: Any = qids) -> _Scorer:
                    return _Scorer(ex, e, row, qids)

                new = _records_for([(e, 0, qtype, mask, box, _chance(mask, slack))], score,
                                   methods, aligns, slack,
                                   fill if i < n_deletion else None, scorer,
                                   1000 * i + qi, src=src)
                for rec in new:
                    rec.update(task="vqa", scene=i, answer=answer,
                               correct=answer.lower() == truth.lower())
                recs += new
    return recs


def explained_stage(adapter: Any, stages: Sequence[str], layer: str | None = None
                    ) -> str | None:
    """The stage (top-level child of the model) that holds the explained layer (``layer``,
    default the adapter's)."""
    layer = layer or getattr(adapter, "layer", None)
    head = str(layer).split(".")[0].split("[")[0] if isinstance(layer, str) else None
    return head if head in stages else None


def sanity_value(curve: list[tuple[str, float]], stage: str | None) -> float:
    """The check's value: the correlation once every stage after the explained layer (all
    but the one holding it and those before it) is randomized; the last value if unknown."""
    names = [n for n, _ in curve]
    if stage in names and names.index(stage) > 0:
        return curve[names.index(stage) - 1][1]
    return curve[-1][1] if curve else float("nan")


def sanity(adapter: Any, scenes: Sequence[Scene], methods: Sequence[str],
           scores: Sequence[str], task: str, captions: Sequence[str] | None = None,
           progress: bool = True, layer: str | None = None, steps: int = PATH_STEPS
           ) -> dict[str, list[tuple[str, float]]]:
    """Cascading randomization per (method, score): ``"method/score" -> [(stage, rho)]``,
    stages randomized from the output back, one more per step."""
    model = module_of(adapter)
    stages = ev.parameter_stages(model)
    out = {}
    for score in scores:
        def maps_of(m: torch.nn.Module, score: str = score) -> dict[str, torch.Tensor]:
            ad = copy.copy(adapter)
            ad.model = m
            got: dict[str, list] = defaultdict(list)

            def rows_of(ex: Any) -> list[tuple[Explained, slice]]:
                if task == "caption":
                    es = ex.explained([s.image for s in scenes], list(captions or []))
                    return [(e, slice(None)) for e in es]
                return [(ex.explained(s.image, s.questions[0][0], s.questions[0][1]),
                         slice(0, 1)) for s in scenes]

            _, by = _explainers(CaptionExplainer if task == "caption" else VQAExplainer,
                                ad, score, methods, layer, steps)
            rows = _sources(by, rows_of)
            for meth in methods:
                for e, sel in rows[meth]:
                    G = e.G[sel]
                    got[meth] += list(cam_of(meth)(e.A[None].expand(len(G), -1, -1, -1), G))
            return {meth: torch.stack(got[meth]) for meth in methods}

        curves = ev.randomization_check(model, maps_of, stages, seed=0, progress=progress)
        out |= {f"{m}/{score}": curves[m] for m in methods}
    return out


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else float("nan")


def summarize(recs: list[dict]) -> list[dict]:
    """One row per (task, kind, method, score, align, layer)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in recs:
        if "hit" in r:
            groups[(r["task"], r["kind"], r["method"], r["score"], r["align"],
                    r.get("layer", "-"))].append(r)
    rows = []
    for (task, kind, method, score, align, layer), rs in sorted(groups.items()):
        dels = [r for r in rs if "deletion_drop" in r]
        rows.append({
            "task": task, "kind": kind, "method": method, "score": score, "align": align,
            "layer": layer, "n": len(rs),
            "pointing": _mean([float(r["hit"]) for r in rs]),
            "chance": _mean([r["chance"] for r in rs]),
            "energy_mask": _mean([r["energy_mask"] for r in rs]),
            "energy_box": _mean([r["energy_box"] for r in rs]),
            "localization": _mean([float(r["localized"]) for r in rs]),
            "n_deletion": len(dels),
            "deletion_beats_random": _mean([float(r["deletion_drop"] > r["random_drop"])
                                            for r in dels]),
            "deletion_beats_centre": _mean([float(r["deletion_drop"] > r["centre_drop"])
                                            for r in dels]),
            "deletion_raises_score": _mean([float(r["deletion_drop"] < 0) for r in dels]),
            "deletion_auc": _mean([ev.curve_area(FRACTIONS, r["deletion_curve"])
                                   for r in dels]),
            "random_auc": _mean([ev.curve_area(FRACTIONS, r["random_curve"]) for r in dels]),
        })
    return rows


def yes_no_table(recs: list[dict]) -> list[dict]:
    """:func:`summarize` of the VQA answers "yes" and "no" that have deletion curves, each
    kind split by answer (``"relation (no)"``): deletion assumes that removing the evidence
    lowers the answer, which a "no" need not obey (README, "How good are the maps?")."""
    return summarize([r | {"kind": f"{r['kind']} ({r['answer'].lower()})"} for r in recs
                      if r.get("task") == "vqa" and "deletion_drop" in r
                      and str(r.get("answer", "")).lower() in ("yes", "no")])


def sanity_key(method: str, score: str, layer: str | None = None,
               default: str | None = None) -> str:
    """``"method/score"``, with ``"@layer"`` for a layer other than the model's default."""
    return f"{method}/{score}" + ("" if layer in (None, "-", default) else f"@{layer}")


def recommend(rows: list[dict], values: dict[str, float], default: str | None = None
              ) -> dict | None:
    """The setting with the best pointing over object words (color, shape; VQA answers)
    among those whose method/score (at its layer) passes the sanity check (``values``
    below :data:`SANITY_MAX`); ``default`` names the model's default layer."""
    passed = {k for k, v in values.items() if v < SANITY_MAX}
    best: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        layer = r.get("layer", "-")
        if r["method"] == "attention" or sanity_key(r["method"], r["score"], layer,
                                                    default) not in passed:
            continue
        if r["task"] == "vqa" or r["kind"] in ("color", "shape"):
            best[(r["method"], r["score"], r["align"], layer)].append(r["pointing"])
    if not best:
        return None
    (m, s, a, layer), v = max(best.items(), key=lambda kv: _mean(kv[1]))
    return {"method": m, "score": s, "align": a, "layer": layer, "mean_pointing": _mean(v)}


def save_recommendation(report: dict, folder: str | Path, command: str | None = None) -> Path:
    """Write ``report``'s recommended setting to ``folder``/``mmcam_recommended.json``
    (:data:`mmcam.registry.RECOMMENDATION_FILE`, which the app reads to offer it first):
    method, score, layer (None: the model's default), align and the integrated method's steps,
    with its mean pointing, sanity value and how it was measured. Raises ValueError when the
    report recommends nothing (no sanity check, or no setting passed it)."""
    from mmcam.registry import RECOMMENDATION_FILE

    rec = report.get("recommended")
    if not rec:
        raise ValueError("the report recommends nothing (the sanity check was skipped or no "
                         "setting passed it)")
    layer = None if rec["layer"] in (report["default_layer"], "-") else rec["layer"]
    key = sanity_key(rec["method"], rec["score"], rec["layer"], report["default_layer"])
    data = {"method": rec["method"], "score": rec["score"], "layer": layer,
            "align": rec["align"], "mean_pointing": rec["mean_pointing"],
            "sanity_value": report["sanity_value"].get(key),
            "measured": {k: report[k] for k in ("model", "n", "seed", "slack", "methods",
                                                "scores", "aligns", "layers") if k in report}}
    if rec["method"] == "integrated":  # reports before "steps" was recorded ran the default
        data["steps"] = report.get("steps", PATH_STEPS)
    if command:
        data["measured"]["command"] = command
    path = Path(folder) / RECOMMENDATION_FILE
    path.write_text(json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n")
    return path


def _sanity_lines(report: dict) -> list[str]:
    """The sanity check's table (none when it was skipped)."""
    if not report["sanity"]:
        return []
    stages = [s for s, _ in next(iter(report["sanity"].values()))]
    lines = ["", "Sanity check (cascading randomization from the output back, mean Spearman "
             "with the trained model's maps; passes when the value once every stage after "
             f"the explained layer's stage ({report['explained_stage']}) is randomized is < "
             f"{SANITY_MAX}):", "",
             "| method/score | " + " | ".join(f"after {s}" for s in stages) + " |",
             "|---|" + "---:|" * len(stages)]
    for k, v in report["sanity"].items():
        flag = " (passes)" if report["sanity_value"][k] < SANITY_MAX else " (FAILS)"
        lines.append(f"| {k}{flag} | " + " | ".join(f"{r:.2f}" for _, r in v) + " |")
    return lines


def markdown(report: dict) -> str:
    """The report's tables as Markdown."""
    lines = [f"# Explanation evaluation: {report['model']}", "",
             f"{report['n']} fresh scenes (seed {report['seed']}), slack {report['slack']} px, "
             f"deletion on {report['n_deletion']} scenes (removed pixels: "
             f"{FILL_TEXT[report.get('deletion_fill', 'blur')]}); {report['wall_s']:.0f} s."
             + (f" The integrated method with {report['steps']} path points."
                if "integrated" in report.get("methods", []) and "steps" in report else ""), ""]
    rec = report.get("recommended")
    if rec:
        lines += [f"Recommended: **{rec['method']}**, score **{rec['score']}**, align "
                  f"**{rec['align']}**, layer **{rec.get('layer', '-')}** (mean pointing "
                  f"{rec['mean_pointing']:.2f}).", ""]
    elif not report["sanity"]:
        lines += ["Sanity check skipped (0 scenes), so nothing is recommended: only a "
                  "setting that passes it can be.", ""]
    lines += ["| task | kind | method | score | align | layer | n | pointing | chance "
              "| energy in mask | energy in box | loc. (IoU>=0.5) | deletion > random |",
              "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["table"]:
        lines.append(
            f"| {r['task']} | {r['kind']} | {r['method']} | {r['score']} | {r['align']} | "
            f"{r.get('layer', '-')} | "
            f"{r['n']} | {r['pointing']:.2f} | {r['chance']:.2f} | {r['energy_mask']:.2f} | "
            f"{r['energy_box']:.2f} | {r['localization']:.2f} | "
            f"{r['deletion_beats_random']:.2f} |")
    if report.get("yes_no_table"):
        lines += ["", "Deletion on the answers yes and no (removing what the map points at "
                  "need not lower a \"no\"; raised: the deletion raised the score):", "",
                  "| task | kind | method | score | align | layer | n | deletion > random "
                  "| raised |", "|---|---|---|---|---|---|---:|---:|---:|"]
        for r in report["yes_no_table"]:
            lines.append(
                f"| {r['task']} | {r['kind']} | {r['method']} | {r['score']} | {r['align']} "
                f"| {r.get('layer', '-')} | {r['n_deletion']} | "
                f"{r['deletion_beats_random']:.2f} | {r['deletion_raises_score']:.2f} |")
    lines += _sanity_lines(report)
    if report.get("attention_correlation"):
        lines += ["", "Rank correlation of the model's attention with each method's map, per "
                  "word (mean): " + ", ".join(f"{k} {v:.2f}" for k, v in
                                              report["attention_correlation"].items())]
    return "\n".join(lines) + "\n"


def _figure_png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def html_page(report: dict, recs: list[dict]) -> str:
    """A page with the tables and three plots: pointing per setting vs chance, mean
    deletion curves, sanity-check curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    obj = [r for r in report["table"] if r["task"] == "vqa" or r["kind"] in ("color", "shape")]
    if obj:
        fig, ax = plt.subplots(figsize=(10, 0.25 * len(obj) + 1))
        labels = [f"{r['task']} {r['kind']}: {r['method']}/{r['score']}/{r['align']}"
                  f"@{r.get('layer', '-')}" for r in obj]
        ax.barh(labels, [r["pointing"] for r in obj], color="tab:blue", label="pointing")
        ax.scatter([r["chance"] for r in obj], labels, color="k", marker="|", s=200,
                   label="chance", zorder=3)
        ax.set_xlim(0, 1)
        ax.legend(loc="lower right")
        ax.set_title("pointing game per setting (object words and answers)")
        figs.append(_figure_png(fig))
        plt.close(fig)
    curves: dict[str, list] = defaultdict(list)
    for r in recs:
        if "deletion_curve" in r:
            curves[f"{r['method']}/{r['score']}/{r['align']}@{r.get('layer', '-')}"].append(
                r["deletion_curve"])
            curves["random"].append(r["random_curve"])
            curves["centre blob"].append(r["centre_curve"])
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for k, cs in curves.items():
            ax.plot(FRACTIONS, np.mean(cs, axis=0), label=k,
                    lw=3 if k in ("random", "centre blob") else 1)
        ax.set_xlabel("share of input pixels removed (most important first)")
        ax.set_ylabel("change of log p")
        ax.legend(fontsize=6)
        ax.set_title("deletion curves (mean over words and answers)")
        figs.append(_figure_png(fig))
        plt.close(fig)
    if report["sanity"]:
        fig, ax = plt.subplots(figsize=(7, 4))
        for k, v in report["sanity"].items():
            ax.plot(range(1, len(v) + 1), [r for _, r in v], marker="o", label=k)
        stages = [s for s, _ in next(iter(report["sanity"].values()))]
        ax.set_xticks(range(1, len(stages) + 1), stages, rotation=30, fontsize=7)
        ax.axhline(SANITY_MAX, color="k", ls="--", lw=0.8)
        ax.set_ylabel("Spearman with the trained model's maps")
        ax.set_title("cascading randomization (stages re-initialized up to ...)")
        ax.legend(fontsize=6)
        figs.append(_figure_png(fig))
        plt.close(fig)
    import html as _html

    body = "".join(f'<p><img src="data:image/png;base64,{f}"></p>' for f in figs)
    return ("<!doctype html><meta charset='utf-8'><title>mmcam evaluation</title>"
            f"<pre>{_html.escape(markdown(report))}</pre>{body}")


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float as None: standard JSON has no NaN (Python
    writes a bare ``NaN`` that JavaScript's ``JSON.parse`` refuses)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def evaluate_explanations(
    adapter: Any, model_name: str, n: int = 500, seed: int = SEED,
    methods: Sequence[str] = ("gradcam", "gradcam++", "hirescam", "integrated"),
    scores: Sequence[str] = ("logprob", "contrast"),
    aligns: Sequence[str] = ("receptive", "bilinear"), slack: int = 4,
    n_deletion: int = 50, n_sanity: int = 10, out: str | Path | None = None,
    progress: bool = True, fill: str = "mean", layers: Sequence[str] | None = None,
    steps: int = PATH_STEPS,
) -> dict:
    """Run the suite (module doc) on ``n`` fresh scenes, at the model's default layer or at
    each of ``layers``; write ``report.json``, ``report.md`` and ``report.html`` to ``out``
    if given. Returns the report. ``n_sanity=0`` skips the sanity check, and with it the
    recommendation (only settings that pass it are recommended)."""
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}")
    if fill not in ev.FILLS:
        raise ValueError(f"unknown deletion fill {fill!r}: use one of {', '.join(ev.FILLS)}")
    t0 = time.perf_counter()
    scenes = generate(n, seed=seed)
    is_vqa = callable(getattr(adapter, "tokenize_question", None))
    default = str(getattr(adapter, "layer", None) or "default")
    stages = ev.parameter_stages(module_of(adapter))
    recs: list[dict] = []
    checks: dict[str, list] = {}
    values: dict[str, float] = {}
    captions: list[str] = []
    for layer in list(layers or [None]):
        label = str(layer or default)
        if is_vqa:
            new = vqa_records(adapter, scenes, methods, scores, aligns, slack, n_deletion,
                              progress, fill, layer, steps)
            got = sanity(adapter, scenes[:n_sanity], methods, scores, "vqa",
                         progress=progress, layer=layer, steps=steps) if n_sanity > 0 else {}
        else:
            new, captions = caption_records(adapter, scenes, methods, scores, aligns, slack,
                                            n_deletion, progress, fill, layer,
                                            captions or None, steps)
            got = sanity(adapter, scenes[:n_sanity], methods, scores, "caption",
                         captions[:n_sanity], progress, layer, steps) if n_sanity > 0 else {}
        recs += [r | {"layer": label} for r in new]
        stage = explained_stage(adapter, stages, layer)
        for k, curve in got.items():
            key = sanity_key(*k.split("/"), label, default)
            checks[key], values[key] = curve, sanity_value(curve, stage)
    table = summarize(recs)
    att = defaultdict(list)
    for r in recs:
        if "vs_attention" in r:
            att[r["method"]].append(r["vs_attention"])
    report = {
        "model": model_name, "n": n, "seed": seed, "slack": slack, "n_deletion":
        min(n_deletion, n), "deletion_fill": fill, "n_sanity": min(n_sanity, n), "steps": steps,
        "methods": list(methods), "default_layer": default,
        "layers": [str(x) for x in layers] if layers else [default],
        "scores": list(scores), "aligns": list(aligns), "table": table,
        "yes_no_table": yes_no_table(recs), "sanity": checks,
        "explained_stage": explained_stage(adapter, stages), "sanity_value": values,
        "recommended": recommend(table, values, default),
        "attention_correlation": {k: _mean(v) for k, v in att.items()},
        "captions": captions[:20], "wall_s": time.perf_counter() - t0,
    }
    if out is not None:
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        (d / "report.json").write_text(json.dumps(json_safe(report), indent=1,
                                                  allow_nan=False))
        (d / "report.md").write_text(markdown(report))
        (d / "report.html").write_text(html_page(report, recs))
    return report
