"""Measure a reference model on fresh scenes it never saw.

Held-out scenes come from ``mmcam.scenes.generate(n, EVAL_SEED)`` (``one_large=True`` for the
classifier). Training refuses this seed, so the test scenes are never trained on.

- captioner: ``bleu4`` = nltk ``corpus_bleu`` (uniform 1-4-gram weights, no smoothing) of the
  greedy caption against all the scene's captions, all tokenized by ``mmcam.models.text``;
  also ``exact`` = fraction of greedy captions equal to one of the references.
- vqa: ``accuracy`` over every (scene, question) pair, and ``per_type`` accuracy.
- classifier: ``accuracy`` of argmax logits against the shape of the large object.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from nltk.translate.bleu_score import corpus_bleu
from tqdm.auto import tqdm

from mmcam.errors import MMCamError
from mmcam.models.hub import load_model
from mmcam.models.text import pad_batch, tokenize
from mmcam.scenes import Scene, generate

EVAL_SEED = 1_000_000
VALIDATION_SEED = 999_999


def large_object_shape(scene: Scene) -> str:
    """The classification label: shape of the scene's large object (there is exactly one)."""
    large = [o for o in scene.objects if o.size == "large"]
    if len(large) != 1:
        raise ValueError("classification scenes hold exactly one large object")
    return large[0].shape


def _encode_all(adapter: Any, scenes: Sequence[Scene], batch: int = 64) -> torch.Tensor:
    feats = []
    for i in range(0, len(scenes), batch):
        pixels = torch.cat([adapter.prepare(s.image) for s in scenes[i : i + batch]])
        feats.append(adapter.encode(pixels))
    return torch.cat(feats)


@torch.no_grad()
def evaluate_adapter(
    adapter: Any, kind: str, scenes: Sequence[Scene], progress: bool = False
) -> dict[str, Any]:
    """Metrics of ``adapter`` (of ``kind``) on ``scenes``; see the module docstring."""
    was_training = adapter.model.training
    adapter.model.eval()
    try:
        bar = tqdm(total=len(scenes), desc=f"evaluate {kind}", disable=not progress)
        if kind == "classifier":
            correct = 0
            for i in range(0, len(scenes), 64):
                chunk = scenes[i : i + 64]
                pixels = torch.cat([adapter.prepare(s.image) for s in chunk])
                pred = adapter.model(pixels).argmax(1).tolist()
                correct += sum(
                    adapter.labels[p] == large_object_shape(s) for p, s in zip(pred, chunk)
                )
                bar.update(len(chunk))
            return {"accuracy": correct / len(scenes), "n_scenes": len(scenes)}
        feats = _encode_all(adapter, scenes)
        if kind == "captioner":
            hyps, refs, exact = [], [], 0
            for s, f in zip(scenes, feats):
                words = adapter.words(adapter.generate(f[None], max_len=20)[0])
                ref = [tokenize(c) for c in s.captions]
                exact += words in ref
                hyps.append(words)
                refs.append(ref)
                bar.update(1)
            return {
                "bleu4": float(corpus_bleu(refs, hyps)),
                "exact": exact / len(scenes),
                "n_scenes": len(scenes),
                "examples": [" ".join(h) for h in hyps[:5]],
            }
        if kind == "vqa":
            right: dict[str, int] = defaultdict(int)
            total: dict[str, int] = defaultdict(int)
            for s, f in zip(scenes, feats):
                q_ids = pad_batch(
                    [adapter.tokenize_question(q)[0].tolist() for q, _ in s.questions]
                )
                logp = adapter.score_answers(f[None].expand(len(q_ids), -1, -1, -1), q_ids)
                for (_, a), t, p in zip(s.questions, s.question_types, logp.argmax(1).tolist()):
                    total[t] += 1
                    right[t] += adapter.answers[p] == a
                bar.update(1)
            n_q = sum(total.values())
            return {
                "accuracy": sum(right.values()) / n_q,
                "per_type": {t: right[t] / total[t] for t in sorted(total)},
                "n_questions_per_type": {t: total[t] for t in sorted(total)},
                "n_questions": n_q,
                "n_scenes": len(scenes),
            }
        raise ValueError(f"unknown kind {kind!r}")
    finally:
        bar.close()
        adapter.model.train(was_training)


def evaluate(
    name_or_path: str | os.PathLike,
    n: int = 500,
    seed: int = EVAL_SEED,
    progress: bool = True,
) -> dict[str, Any]:
    """Load a model (name or folder) and measure it on ``n`` fresh scenes of ``seed``.

    Returns ``{"bleu4", "exact"}`` (captioner), ``{"accuracy", "per_type"}`` (vqa) or
    ``{"accuracy"}`` (classifier), plus ``kind``, ``n_scenes`` and ``seed``.
    """
    from mmcam.limits import check_at_least

    check_at_least(1, n=n)  # the seed is checked by generate()
    adapter = load_model(name_or_path)
    config = getattr(adapter, "config", None)
    if not isinstance(config, dict) or "kind" not in config:
        return _evaluate_hf(adapter, name_or_path, n, seed, progress)
    kind = config["kind"]
    scenes = generate(n, seed, one_large=kind == "classifier")
    out = {"kind": kind, "seed": seed}
    out.update(evaluate_adapter(adapter, kind, scenes, progress=progress))
    return out


def _evaluate_hf(adapter: Any, name: str | os.PathLike, n: int, seed: int,
                 progress: bool) -> dict[str, Any]:
    """A Hugging Face BLIP captioner or VQA model trained on the scenes (shapes-blip,
    shapes-blip-vqa): BLEU-4 or answer accuracy, as their trainer measures them."""
    from mmcam.models.train_blip import evaluate_blip_captioner, evaluate_blip_vqa

    arch = type(getattr(adapter, "model", None)).__name__
    if arch == "BlipForConditionalGeneration":
        kind, run = "captioner", evaluate_blip_captioner
    elif arch == "BlipForQuestionAnswering":
        kind, run = "vqa", evaluate_blip_vqa
    else:
        raise MMCamError(f"{name}: evaluate-model measures models trained on mmcam's scenes "
                         f"(mmcam's own formats and BLIP), not a {arch}")
    return {"kind": kind, "seed": seed, **run(adapter, n=n, seed=seed, progress=progress)}


def write_card(folder: str | os.PathLike, metrics: dict[str, Any], command: str) -> None:
    """Rewrite ``folder/README.md`` with the held-out ``metrics`` measured by ``command``."""
    from pathlib import Path

    from mmcam.models.hub import read_config
    from mmcam.models.train import model_card

    folder = Path(folder)
    card = model_card(read_config(folder), metrics, eval_command=command)
    (folder / "README.md").write_text(card)
