"""shapes-blip and shapes-blip-vqa: a small ``BlipForConditionalGeneration`` and a small
``BlipForQuestionAnswering`` trained here on the scene world, each saved
exactly as ``save_pretrained`` writes a hub checkpoint (safetensors, config, processor and a
WordPiece tokenizer built offline), so ``mmcam.load_model`` opens it through the same code
path as a downloaded BLIP.

Architecture (``ARCH``): ViT vision tower on 128x128 pixels with 16x16 patches (an 8x8 grid
plus CLS, explained by default at ``vision_model``, the tower's post-LayerNorm tokens;
weights drawn with std 0.02: transformers' BLIP vision default, 1e-10, is meant for loading
pretrained weights) and a BERT-style text decoder with cross-attention.

Training has two phases (``DEFAULTS``, ``VQA_DEFAULTS``), one thread, deterministic for a seed
on a given machine:

1. The vision tower alone (:func:`_pretrain_vision`): ``vision_steps`` small-batch steps on
   training-only attribute terms of its patch tokens (:func:`_attribute_loss`: per cell the
   color, shape and size of the object covering it, and per object its shape from its tokens
   pooled over its cells; the linear heads are discarded). Trained jointly with the text from
   the start, the ViT never encoded shape (probe on its patch tokens ~0.2, chance ~0.17; a
   4-layer CNN with the same heads reaches 0.78 in 600 steps of 32): alone, its per-object shape
   accuracy stays near chance for ~3000 steps of 8 scenes, then climbs (0.77 on 500 held-out
   scenes after 7200 steps).
2. Joint: teacher forcing, cross-entropy of every caption token and the final ``[SEP]`` given
   ``[DEC]`` and the tokens before it, one random reference caption per scene and step, plus
   the attribute terms (weight ``aux``); AdamW with the reference models' warm-up and cosine
   schedule (:mod:`mmcam.models.train`). The VQA model is trained the same way on (question,
   answer) pairs: the text encoder reads ``[CLS] question [SEP]`` cross-attending the image,
   the decoder ``[DEC] answer`` cross-attending the question, and the loss is the answer
   tokens' and ``[SEP]``'s cross-entropy; ``per_image`` questions per scene and step (a type
   drawn uniformly, then a question of that type), the vision tower run once per scene and its
   states repeated; plus cross-attention supervision (:func:`_attention_loss`).

Where it stands (500 held-out scenes, one thread): the VQA model trained jointly from the
start reached 0.617 (shape questions 0.289); with the vision-only phase (7000 + 1600 steps)
0.775 (shape 0.826, relation 0.516); with the per-object position term in both phases and 2000
joint steps (``VQA_DEFAULTS``, shipped as shapes-blip-vqa) 0.806 (color 0.903, count 0.761,
exists 0.918, relation 0.538, shape 0.879). Relation questions stay at chance: asking about
relations more often (a relation question 40% of the time instead of 20%) gave 0.786 overall
and 0.495 on relations. shapes-blip (``DEFAULTS``: 7000 + 2000 steps, 1302 s): BLEU-4 0.748
(was 0.613 jointly from the start); with HiResCAM and the contrast score at its default layer
its shape words point at the named object 0.84 (was 0.27) and its color words 0.95 (``mmcam
evaluate-explanations shapes-blip``, 200 scenes).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from nltk.translate.bleu_score import corpus_bleu
from tqdm.auto import tqdm

from mmcam.errors import MMCamError
from mmcam.models import encoder
from mmcam.models.evaluate import EVAL_SEED, VALIDATION_SEED
from mmcam.models.text import tokenize
from mmcam.models.train import _cover, cell_labels
from mmcam.scenes import COLORS, RELATION_MARGIN, SHAPES, generate

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
ARCH = {
    "vision": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
               "intermediate_size": 256, "image_size": 128, "patch_size": 16,
               "initializer_range": 0.02},
    "text": {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
             "intermediate_size": 256, "max_position_embeddings": 48},
}
# ``vision_*``: the vision-only phase run first (:func:`_pretrain_vision`); ``aux`` weighs the
# same attribute terms during the joint phase (0: none).
DEFAULTS = {"steps": 2000, "n_train": 8000, "batch": 32, "lr": 7e-4, "warmup": 150,
            "weight_decay": 1e-4, "vision_steps": 7000, "vision_batch": 8, "vision_lr": 1.5e-3,
            "aux": 1.0, "position": 0.0}
# shapes-blip-vqa: ``per_image`` questions per scene and step share one vision forward;
# ``aux`` weighs the training-only per-cell attribute loss (see :func:`_aux_loss`),
# ``attention`` the cross-attention supervision (see :func:`_attention_loss`).
# ``position``: the per-object position term (:func:`_position_loss`) in both phases.
# ``att_heads``: how many heads (0..att_heads-1) the attention term supervises;
# ``att_tokens``: 0 = the question's ``[CLS]`` query only, 1 = every question token.
VQA_DEFAULTS = {**DEFAULTS, "steps": 2000, "batch": 16, "per_image": 8, "lr": 1.5e-3,
                "warmup": 100, "aux": 1.0, "attention": 1.0, "position": 1.0,
                "att_heads": 2, "att_tokens": 0, "relpos": 0.0, "relans": 0.0}
# ``relpos``: weight of the training-only relation geometry term on the text encoder's
# ``[CLS]`` states (:func:`_relation_geometry_loss`; 0: none). ``relans``: weight of the
# training-only relation answer term on its final ``[CLS]`` state (:func:`_relation_answer_loss`;
# 0: none).
GRID = ARCH["vision"]["image_size"] // ARCH["vision"]["patch_size"]
AUX_CLASSES = (len(COLORS) + 1, len(SHAPES) + 1, 3)  # color, shape, size; 0 = background


def scene_words(texts: list[Any]) -> list[str]:
    """Every token of the captions, questions and answers (Treebank, lowercased), sorted."""
    words: set[str] = set()
    for caps, by_type, *_ in texts:
        for c in caps:
            words.update(tokenize(c))
        for pairs in by_type.values():
            for q, a, *_ in pairs:
                words.update(tokenize(q))
                words.update(tokenize(a))
    return sorted(words)


def build_processor(words: list[str]) -> Any:
    """A BlipProcessor: 128x128 resize, mean 0.5 / std 0.25 (the reference models'), and a
    BERT WordPiece tokenizer whose vocabulary is the caption words (one token each)."""
    import transformers

    vocab = {w: i for i, w in enumerate(SPECIALS + [w for w in words if w not in SPECIALS])}
    tok = transformers.BertTokenizer(vocab=vocab, do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    ip = transformers.BlipImageProcessor(
        size={"height": encoder.IMAGE_SIZE, "width": encoder.IMAGE_SIZE},
        image_mean=list(encoder.MEAN), image_std=list(encoder.STD), resample=2)
    return transformers.BlipProcessor(image_processor=ip, tokenizer=tok)


def build_model(vocab_size: int, ids: dict[str, int], task: str = "caption") -> Any:
    """An untrained BlipForConditionalGeneration (``task="caption"``) or
    BlipForQuestionAnswering (``"vqa"``) with ``ARCH`` and the tokenizer's ids."""
    import transformers

    cls = (transformers.BlipForConditionalGeneration if task == "caption"
           else transformers.BlipForQuestionAnswering)
    cfg = transformers.BlipConfig(
        vision_config=dict(ARCH["vision"]),
        text_config=dict(ARCH["text"], vocab_size=vocab_size, bos_token_id=ids["[DEC]"],
                         pad_token_id=ids["[PAD]"], sep_token_id=ids["[SEP]"],
                         eos_token_id=ids["[SEP]"]))
    return cls(cfg)


def _lr(step: int, steps: int, hp: dict[str, Any]) -> float:
    warm = min(1.0, (step + 1) / hp["warmup"])
    return hp["lr"] * warm * (0.05 + 0.95 * (1 + math.cos(math.pi * step / steps)) / 2)


def train_blip_captioner(out: str | os.PathLike, seed: int = 0, steps: int | None = None,
                         n_train: int | None = None, progress: bool = True,
                         n_eval: int = 500, hp: dict[str, Any] | None = None
                         ) -> dict[str, Any]:
    """Train shapes-blip into ``out`` and measure it on ``n_eval`` held-out scenes."""
    return train_blip("caption", out, seed, steps, n_train, progress, n_eval, None, hp)


def train_blip_vqa(out: str | os.PathLike, seed: int = 0, steps: int | None = None,
                   n_train: int | None = None, progress: bool = True, n_eval: int = 500,
                   init_from: str | os.PathLike | None = None,
                   hp: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train shapes-blip-vqa into ``out`` and measure it on ``n_eval`` held-out scenes."""
    return train_blip("vqa", out, seed, steps, n_train, progress, n_eval, init_from, hp)


def train_blip(task: str, out: str | os.PathLike, seed: int = 0, steps: int | None = None,
               n_train: int | None = None, progress: bool = True,
               n_eval: int = 500, init_from: str | os.PathLike | None = None,
               hp: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a BLIP model for ``task`` ("caption" or "vqa"); see the module docstring.

    ``init_from``: a shapes-blip folder whose weights start every parameter of the same
    name and shape (vision tower, text blocks; the VQA text encoder from the captioner's
    decoder blocks); vocabulary-sized ones start at random. ``hp``: hyper-parameters that
    replace the task's defaults (``DEFAULTS``, ``VQA_DEFAULTS``)."""
    if task not in ("caption", "vqa"):
        raise MMCamError(f"unknown BLIP task {task!r}: use caption or vqa")
    if seed in (EVAL_SEED, VALIDATION_SEED):
        raise MMCamError(f"seed {seed} is reserved for held-out scenes: use another seed")
    base = DEFAULTS if task == "caption" else VQA_DEFAULTS
    unknown = set(hp or {}) - set(base)
    if unknown:
        raise MMCamError(f"unknown hyper-parameter(s) {sorted(unknown)}: use {sorted(base)}")
    set_by_user = {k: v for k, v in (hp or {}).items() if k != "steps"}
    hp = {**base, **(hp or {})}
    steps = int(hp["steps"] if steps is None else steps)
    n_train = int(hp["n_train"] if n_train is None else n_train)
    if steps < 1 or n_train < 1:
        raise MMCamError("steps and n_train must be >= 1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(task, Path(out), seed, steps, n_train, progress, n_eval,
                      {**hp, "init_from": None if init_from is None else str(init_from),
                       "set": dict(set_by_user)})
    finally:
        torch.set_num_threads(threads)


def _render(n: int, seed: int, progress: bool
            ) -> tuple[torch.Tensor, list[Any], torch.Tensor]:
    """uint8 images (n,3,128,128), per scene (captions, {type: [(question, answer, referred
    objects)]}, the objects' cell coverage (n_objects,GRID,GRID), their shape indices), and
    per-cell attribute
    labels (n,3,GRID,GRID) of the patch grid (``cell_labels``)."""
    images = torch.empty((n, 3, encoder.IMAGE_SIZE, encoder.IMAGE_SIZE), dtype=torch.uint8)
    cells = torch.empty((n, 3, GRID, GRID), dtype=torch.uint8)
    texts: list[Any] = []
    bar = tqdm(total=n, desc=f"render {n} scenes (seed {seed})", disable=not progress)
    for start in range(0, n, 256):
        for k, s in enumerate(generate(min(256, n - start), seed, start=start)):
            images[start + k] = torch.from_numpy(np.asarray(s.image).copy()).permute(2, 0, 1)
            cells[start + k] = torch.from_numpy(cell_labels(s, GRID))
            by_type: dict[str, list[tuple[str, str, tuple[int, ...]]]] = {}
            for qa, t, refs in zip(s.questions, s.question_types, s.question_objects):
                by_type.setdefault(t, []).append((*qa, refs))
            covers = torch.from_numpy(np.stack([_cover(o.mask, GRID) for o in s.objects]))
            shapes = torch.tensor([SHAPES.index(o.shape) for o in s.objects])
            centres = torch.tensor([o.center for o in s.objects],
                                   dtype=torch.float32) / encoder.IMAGE_SIZE
            texts.append((list(s.captions), by_type, covers, shapes, centres))
        bar.update(min(256, n - start))
    bar.close()
    return images, texts, cells


def _warm_start(model: Any, folder: Path) -> int:
    """Copy every tensor of ``folder``'s model.safetensors whose name and shape match (a VQA
    model's text encoder reads a captioner's ``text_decoder.bert`` when ``folder`` has no
    ``text_encoder``, i.e. holds a shapes-blip captioner); return how many."""
    from safetensors.torch import load_file

    src = load_file(str(folder / "model.safetensors"))
    state = model.state_dict()
    copied = 0
    with torch.no_grad():
        for name, t in state.items():
            key = name
            if name not in src and name.startswith("text_encoder."):
                key = "text_decoder.bert." + name[len("text_encoder."):]
            if key in src and src[key].shape == t.shape:
                t.copy_(src[key])
                copied += 1
    if copied == 0:
        raise MMCamError(f"nothing in {folder} fits this model: not a shapes-blip folder?")
    return copied


def _pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    for r, x in enumerate(seqs):
        ids[r, : len(x)] = torch.tensor(x)
    return ids, (ids != pad).long()


def _decoder_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of tokens 1.. of ``ids`` given the logits of the tokens before them."""
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1),
                           ignore_index=-100)


def _aux_loss(head: torch.nn.Module, patches: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Mean over color, shape and size of the per-cell cross-entropy of ``head`` (a linear
    layer on each patch token, (B, GRID*GRID, width), row-major, CLS dropped) against the
    attribute of the object covering the cell, 0 = background (``cells``: (B,3,GRID,GRID))."""
    logits = head(patches).split(AUX_CLASSES, dim=-1)
    target = cells.flatten(2).long()
    return sum(F.cross_entropy(lg.flatten(0, 1), target[:, j].flatten())
               for j, lg in enumerate(logits)) / len(AUX_CLASSES)


def _object_loss(head: torch.nn.Module, patches: torch.Tensor, covers: list[torch.Tensor],
                 shapes: list[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of ``head`` (linear, width -> len(SHAPES)) on every object's pooled patch
    tokens (the mean of its scene's ``patches`` (B, GRID*GRID, width) weighted by the object's
    cell coverage, ``covers[b]``: (n_objects, GRID, GRID)) against its shape (``shapes[b]``)."""
    pooled = []
    for b, cover in enumerate(covers):
        w = cover.flatten(1)
        pooled.append((w / w.sum(1, keepdim=True).clamp(min=1e-8)) @ patches[b])
    return F.cross_entropy(head(torch.cat(pooled)), torch.cat(shapes).long())


def _position_loss(head: torch.nn.Module, patches: torch.Tensor,
                   covers: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared error of ``head`` (linear, width -> 2) on every object's pooled patch
    tokens (as in :func:`_object_loss`) against the coverage-weighted mean (x, y) of its
    cells' centres, in units of the image's width."""
    pooled, target = [], []
    centre = (torch.arange(GRID, dtype=torch.float32) + 0.5) / GRID
    for b, cover in enumerate(covers):
        w = cover.flatten(1)
        w = w / w.sum(1, keepdim=True).clamp(min=1e-8)
        pooled.append(w @ patches[b])
        c = w.view(-1, GRID, GRID)
        target.append(torch.stack([(c.sum(1) * centre).sum(1), (c.sum(2) * centre).sum(1)], 1))
    return F.mse_loss(head(torch.cat(pooled)), torch.cat(target))


def _aux_heads(position: bool = False) -> torch.nn.ModuleDict:
    """The training-only linear heads on the patch tokens (not part of the saved model)."""
    width = ARCH["vision"]["hidden_size"]
    heads = torch.nn.ModuleDict({"cells": torch.nn.Linear(width, sum(AUX_CLASSES)),
                                 "objects": torch.nn.Linear(width, len(SHAPES))})
    if position:
        heads["position"] = torch.nn.Linear(width, 2)
    return heads


def _attribute_loss(heads: torch.nn.ModuleDict, patches: torch.Tensor, idx: list[int],
                    cells: torch.Tensor, texts: list[Any], position: float = 0.0
                    ) -> torch.Tensor:
    """Per-cell attributes (:func:`_aux_loss`) plus per-object shape (:func:`_object_loss`)
    of scenes ``idx`` read from their patch tokens ``patches``, plus ``position`` times the
    objects' position term (:func:`_position_loss`) when the heads have one."""
    covers = [texts[i][2] for i in idx]
    loss = (_aux_loss(heads["cells"], patches, cells[idx])
            + _object_loss(heads["objects"], patches, covers, [texts[i][3] for i in idx]))
    if "position" in heads:
        loss = loss + position * _position_loss(heads["position"], patches, covers)
    return loss


def _pretrain_vision(vision: Any, heads: torch.nn.ModuleDict, images: torch.Tensor,
                     texts: list[Any], cells: torch.Tensor, hp: dict[str, Any], seed: int,
                     progress: bool) -> list[float]:
    """The vision-only phase: ``hp["vision_steps"]`` AdamW steps of ``hp["vision_batch"]``
    scenes on :func:`_attribute_loss` of the tower's patch tokens (no text), warm-up 100
    steps and cosine decay from ``hp["vision_lr"]``. Trained jointly from the start, the ViT
    never learned shape (probe ~0.2, chance ~0.17); alone, its per-object shape accuracy
    stays near chance for ~3000 steps of 8 scenes, then rises past 0.7 by ~5000."""
    steps = int(hp["vision_steps"])
    if steps < 1:
        return []
    params = list(vision.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=hp["vision_lr"], weight_decay=hp["weight_decay"])
    gen = torch.Generator().manual_seed(seed + 1)
    sched = {"lr": hp["vision_lr"], "warmup": 100}
    losses: list[float] = []
    bar = tqdm(range(steps), desc="train the vision tower alone", disable=not progress)
    for step in bar:
        idx = torch.randint(len(images), (int(hp["vision_batch"]),), generator=gen).tolist()
        patches = vision(pixel_values=encoder.pixels_from_uint8(images[idx]))[0][:, 1:]
        loss = _attribute_loss(heads, patches, idx, cells, texts, float(hp["position"]))
        losses.append(_step(opt, params, loss, _lr(step, steps, sched)))
        if step % 100 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.3f}")
    bar.close()
    return losses


SUPERVISED_HEADS = 2


def _attention_target(covers: torch.Tensor, refs: tuple[int, ...], qtype: str,
                      heads: int = SUPERVISED_HEADS) -> torch.Tensor:
    """(heads, 1 + GRID*GRID) target cross-attention of a question token: the referred
    objects' cell coverage made a distribution, CLS key 0 (relation: head 0 on the subject,
    head 1 on the reference object, further heads on both; other types: every head on all
    the referred objects); all zeros (no loss) when the question refers to no object."""
    out = torch.zeros(heads, 1 + GRID * GRID)
    if not refs:
        return out
    groups = [(r,) for r in refs] if qtype == "relation" else []
    groups += [tuple(refs)] * (heads - len(groups))
    for j in range(heads):
        m = covers[list(groups[j])].sum(0).flatten()
        out[j, 1:] = m / m.sum()
    return out


def _attention_loss(cross: tuple[torch.Tensor, ...], target: torch.Tensor,
                    tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy between the cross-attention over the image tokens in heads 0..H-1 of
    every text-encoder layer (``cross``: per layer (N, heads, T, 1 + GRID*GRID)) and
    ``target`` (N, H, 1 + GRID*GRID), over the questions that refer to an object, of every
    query whose ``tokens`` (N, T) entry is 1 (the question's non-padding tokens; None: the
    ``[CLS]`` query alone), averaged over them; the other heads (and tokens) are free. The
    mean over layers."""
    H = target.shape[1]
    T = cross[0].shape[2]
    if tokens is None:
        tokens = torch.zeros(target.shape[0], T, dtype=torch.bool, device=target.device)
        tokens[:, 0] = True
    valid = (target.sum(-1) > 0)[:, :, None] & tokens[:, None, :].bool()  # (N, H, T)
    total = target.new_zeros(())
    for a in cross:
        ce = -(target[:, :, None] * torch.log(a[:, :H] + 1e-8)).sum(-1)  # (N, H, T)
        total = total + ce[valid].sum() / valid.sum().clamp(min=1)
    return total / len(cross)


RELATION_BITS_MARGIN = RELATION_MARGIN / encoder.IMAGE_SIZE  # in units of the image's width


def _relation_target(centres: torch.Tensor, refs: tuple[int, ...]) -> torch.Tensor:
    """(8,) target of :func:`_relation_geometry_loss` for a relation question on objects
    ``refs`` = (subject, reference): their centres (sx, sy, rx, ry; units of the image's width),
    whether the subject is left of / above the reference, and whether each of those two
    orders is clear (centres apart by the scene's relation margin; else no loss on it)."""
    (sx, sy), (rx, ry) = centres[refs[0]].tolist(), centres[refs[1]].tolist()
    return torch.tensor([sx, sy, rx, ry, float(sx < rx), float(sy < ry),
                         float(abs(rx - sx) >= RELATION_BITS_MARGIN),
                         float(abs(ry - sy) >= RELATION_BITS_MARGIN)])


def _relation_heads(layers: int) -> torch.nn.ModuleList:
    """Training-only linear heads (one per text-encoder layer, width -> 6), not saved."""
    width = ARCH["text"]["hidden_size"]
    return torch.nn.ModuleList(torch.nn.Linear(width, 6) for _ in range(layers))


def _relation_geometry_loss(heads: torch.nn.ModuleList, states: tuple[torch.Tensor, ...],
                            targets: list[torch.Tensor | None]) -> torch.Tensor:
    """For the relation questions (``targets`` not None), from the text encoder's ``[CLS]``
    state after every layer (``states``: per layer (N, T, width)), a linear head predicts the
    subject's and reference's centres (squared error, x10) and whether the subject is left of
    and above the reference (binary cross-entropy, where clear): the image tokens carry the
    objects' positions (probe R^2 ~0.96 on their pooled patch tokens) but the shipped text
    encoder's states carried none (R^2 ~0), so relation answers stayed at chance. The mean over
    layers; zero when the batch has no relation question."""
    rows = [n for n, t in enumerate(targets) if t is not None]
    if not rows:
        return states[0].new_zeros(())
    tgt = torch.stack([targets[n] for n in rows]).to(states[0].device)
    total = states[0].new_zeros(())
    for head, h in zip(heads, states):
        out = head(h[rows, 0])
        bits = F.binary_cross_entropy_with_logits(out[:, 4:6], tgt[:, 4:6], reduction="none")
        total = total + 10 * F.mse_loss(out[:, :4], tgt[:, :4]) + \
            (bits * tgt[:, 6:8]).sum() / tgt[:, 6:8].sum().clamp(min=1)
    return total / len(states)


def _relation_answer_loss(head: torch.nn.Linear, cls: torch.Tensor,
                          answers: list[int | None]) -> torch.Tensor:
    """For the relation questions (``answers`` not None: 1 = yes, 0 = no), a training-only
    linear head (width -> 2, not saved) on the text encoder's final ``[CLS]`` state (``cls``:
    (N, width)) predicts the gold answer (cross-entropy). Linear on purpose: the answer is the
    XOR of the relation word and the geometry, so a linear read-out forces the encoder layers
    themselves to compute it into the states the decoder cross-attends to (an MLP head could do
    the XOR itself and leave the encoder as it is). Zero when the batch has no relation
    question."""
    rows = [n for n, a in enumerate(answers) if a is not None]
    if not rows:
        return cls.new_zeros(())
    gold = torch.tensor([answers[n] for n in rows], device=cls.device)
    return F.cross_entropy(head(cls[rows]), gold)


def _tokenized(task: str, texts: list, tok: Any) -> list:
    """Per scene: its captions' ids, or for VQA ``{type: [(question ids, answer ids,
    objects)]}``; each distinct text tokenized once (the scenes' texts repeat)."""
    memo: dict[str, list[int]] = {}

    def words(text: str) -> list[int]:
        if text not in memo:
            memo[text] = tok(" ".join(tokenize(text)), add_special_tokens=False)["input_ids"]
        return memo[text]

    if task == "caption":
        return [[words(c) for c in cs] for cs, *_ in texts]
    return [{t: [(words(q), words(a), refs) for q, a, refs in pairs]
             for t, pairs in by_type.items()} for _, by_type, *_ in texts]


def _step(opt: torch.optim.Optimizer, params: list, loss: torch.Tensor, lr: float) -> float:
    """One AdamW step at ``lr`` with the gradient norm clipped at 1; the loss as a float."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()  # training our own model, not explaining a user's
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.item()


def _facts(task: str, steps: int, n_train: int, seed: int, hp: dict[str, Any], k: int,
           att_weight: float, aux_weight: float, losses: list[float],
           vision_losses: list[float], seconds: dict[str, int]) -> dict[str, Any]:
    """What the model card and ``mmcam_training.json`` record about a run."""
    facts = {**seconds, "task": task, "steps": steps, "n_train": n_train, "seed": seed,
             "batch": hp["batch"], "lr": hp["lr"], "warmup": hp["warmup"],
             "weight_decay": hp["weight_decay"], "init_from": hp.get("init_from"),
             "set": hp.get("set", {}),
             "vision_steps": int(hp["vision_steps"]), "vision_batch": int(hp["vision_batch"]),
             "vision_lr": hp["vision_lr"], "aux": aux_weight, "position": hp["position"],
             "vision_final_loss": float(np.mean(vision_losses[-100:])) if vision_losses else None,
             "threads": torch.get_num_threads(),
             "final_loss": float(np.mean(losses[-50:])), "arch": ARCH}
    if task == "vqa":
        facts.update(per_image=k, attention=att_weight, att_heads=int(hp["att_heads"]),
                     att_tokens=int(hp["att_tokens"]), relpos=float(hp.get("relpos", 0.0)),
                     relans=float(hp.get("relans", 0.0)))
    parent = Path(hp["init_from"]) / "mmcam_training.json" if hp.get("init_from") else None
    if parent is not None and parent.is_file():  # the run this one continues, and its own
        facts["init_facts"] = json.loads(parent.read_text())
    return facts


def _train(task: str, out: Path, seed: int, steps: int, n_train: int, progress: bool,
           n_eval: int, hp: dict[str, Any]) -> dict[str, Any]:
    t0 = time.time()
    images, texts, cells = _render(n_train, seed, progress)
    processor = build_processor(scene_words(texts))
    tok = processor.tokenizer
    ids = tok.get_vocab()
    pad, dec, sep = ids["[PAD]"], ids["[DEC]"], ids["[SEP]"]
    t_data = time.time() - t0
    torch.manual_seed(seed)
    model = build_model(len(ids), ids, task)
    if hp.get("init_from"):
        _warm_start(model, Path(hp["init_from"]))
    aux_weight = float(hp.get("aux", 0.0))
    att_weight = float(hp.get("attention", 0.0))
    # training only: per patch token, the attributes of the object under it, and per object
    # its shape from its pooled tokens; trains the vision tower, not part of the saved model
    heads = _aux_heads(position=float(hp["position"]) > 0)
    vision_losses = _pretrain_vision(model.vision_model, heads, images, texts, cells, hp,
                                     seed, progress)
    t_vision = time.time() - t0 - t_data
    if not aux_weight:
        heads = None

    caps = qas = _tokenized(task, texts, tok)  # captions, or questions by type
    gen = torch.Generator().manual_seed(seed)

    def pick(n: int) -> int:
        return int(torch.randint(n, (1,), generator=gen))

    rel_weight, ans_weight = ((float(hp.get("relpos", 0.0)), float(hp.get("relans", 0.0)))
                              if task == "vqa" else (0.0, 0.0))
    rel_heads = (_relation_heads(model.config.text_config.num_hidden_layers)
                 if rel_weight else None)
    ans_head = torch.nn.Linear(ARCH["text"]["hidden_size"], 2) if ans_weight else None
    params = list(model.parameters())
    for extra in (heads, rel_heads, ans_head):
        params += list(extra.parameters()) if extra is not None else []
    yes_no = [tok(w, add_special_tokens=False)["input_ids"] for w in ("yes", "no")]
    opt = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
    model.train()
    losses = []
    k = int(hp.get("per_image", 1))
    name = "shapes-blip" if task == "caption" else "shapes-blip-vqa"
    bar = tqdm(range(steps), desc=f"train {name}", disable=not progress)
    for step in bar:
        idx = torch.randint(n_train, (hp["batch"],), generator=gen).tolist()
        pixels = encoder.pixels_from_uint8(images[idx])
        if task == "caption":
            tgt, mask = _pad([[dec] + caps[i][pick(len(caps[i]))] + [sep] for i in idx], pad)
            img = model.vision_model(pixel_values=pixels)[0]  # as the HF forward runs it
            logits = model.text_decoder(input_ids=tgt, attention_mask=mask,
                                        encoder_hidden_states=img, use_cache=False).logits
            loss = _decoder_loss(logits, tgt, mask)
            if heads is not None:
                loss = loss + aux_weight * _attribute_loss(heads, img[:, 1:], idx, cells, texts)
        else:
            qs, ans, att, rel, yes = _vqa_batch(
                idx, qas, texts, k, pick, (tok.cls_token_id, dec, sep), hp, yes_no,
                (att_weight, rel_weight, ans_weight))
            loss = _vqa_loss(model, pixels, _pad(qs, pad), _pad(ans, pad), k,
                             (aux_weight, heads, idx, cells, texts, float(hp["position"])),
                             (att_weight, att, bool(hp["att_tokens"])),
                             (rel_weight, rel_heads, rel), (ans_weight, ans_head, yes))
        losses.append(_step(opt, params, loss, _lr(step, steps, hp)))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    bar.close()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    facts = _facts(task, steps, n_train, seed, hp, k, att_weight, aux_weight, losses,
                   vision_losses, {"vision_seconds": round(t_vision),
                                   "train_seconds": round(time.time() - t0),
                                   "data_seconds": round(t_data)})
    return _evaluate_and_card(out, facts, n_eval, progress) | {"loss_history": losses}


def _vqa_batch(idx: list[int], qas: list, texts: list, k: int, pick: Any,
               specials: tuple[int, int, int], hp: dict[str, Any], yes_no: list[list[int]],
               weights: tuple[float, float, float]) -> tuple[list, ...]:
    """One VQA step's questions: ``k`` per scene of ``idx``, each a uniformly drawn type, then
    a question of that type (``pick(n)``: the trainer's seeded draw in range(n)). Returns the
    question ids (``[CLS] q [SEP]``), answer ids (``[DEC] a [SEP]``) and, for each term whose
    weight (attention, relpos, relans) is not 0, its per-question targets (None: not a
    relation question)."""
    cls, dec, sep = specials
    att_weight, rel_weight, ans_weight = weights
    qs, ans, att, rel, yes = [], [], [], [], []
    for i in idx:
        types = sorted(qas[i])
        for _ in range(k):
            t = types[pick(len(types))]
            pool = qas[i][t]
            q, a, refs = pool[pick(len(pool))]
            qs.append([cls] + q + [sep])
            ans.append([dec] + a + [sep])
            if att_weight:
                att.append(_attention_target(texts[i][2], refs, t, int(hp["att_heads"])))
            if rel_weight:
                rel.append(_relation_target(texts[i][4], refs) if t == "relation" else None)
            if ans_weight:
                if t == "relation" and a not in yes_no:
                    raise MMCamError(f"relation answer {a} is not yes or no")
                yes.append(int(a == yes_no[0]) if t == "relation" else None)
    return qs, ans, att, rel, yes


def _evaluate_and_card(out: Path, facts: dict[str, Any], n_eval: int, progress: bool
                       ) -> dict[str, Any]:
    """Measure the saved model on ``n_eval`` held-out scenes and write its card."""
    from mmcam.adapters.hf import load_hf

    evaluate = evaluate_blip_captioner if facts["task"] == "caption" else evaluate_blip_vqa
    metrics = evaluate(load_hf(out), n_eval, progress=progress)
    write_card(out, metrics, facts)
    return {**facts, **metrics}


def _vqa_loss(model: Any, pixels: torch.Tensor, questions: tuple, answers: tuple, k: int,
              aux: tuple[float, Any, list[int], torch.Tensor, list[Any], float],
              attention: tuple[float, list, bool],
              relation: tuple[float, Any, list] = (0.0, None, []),
              answer: tuple[float, Any, list] = (0.0, None, [])) -> torch.Tensor:
    """One VQA step's loss: the answer tokens given ``[DEC]``, the decoder reading the text
    encoder's question states over one vision forward per scene (``k`` questions each), plus
    the training-only attribute (``aux``: weight, heads or None, the scenes' indices, cell
    labels, texts; see :func:`_attribute_loss`) and attention terms."""
    (q_ids, q_mask), (tgt, mask) = questions, answers
    vis = model.vision_model(pixel_values=pixels)
    img = vis[0].repeat_interleave(k, dim=0)  # one vision forward for k questions
    enc = model.text_encoder(input_ids=q_ids, attention_mask=q_mask,
                             encoder_hidden_states=img, output_attentions=bool(attention[0]),
                             output_hidden_states=bool(relation[0]))
    logits = model.text_decoder(input_ids=tgt, attention_mask=mask,
                                encoder_hidden_states=enc[0],
                                encoder_attention_mask=q_mask, use_cache=False).logits
    loss = _decoder_loss(logits, tgt, mask)
    if aux[1] is not None:  # the patch tokens the text side reads
        loss = loss + aux[0] * _attribute_loss(aux[1], vis[0][:, 1:], *aux[2:])
    if attention[0]:
        loss = loss + attention[0] * _attention_loss(
            enc.cross_attentions, torch.stack(attention[1]), q_mask if attention[2] else None)
    if relation[0]:  # relation geometry on the [CLS] states (:func:`_relation_geometry_loss`)
        loss = loss + relation[0] * _relation_geometry_loss(relation[1], enc.hidden_states[1:],
                                                            relation[2])
    if answer[0]:  # relation yes/no from the final [CLS] state (:func:`_relation_answer_loss`)
        loss = loss + answer[0] * _relation_answer_loss(answer[1], enc[0][:, 0], answer[2])
    return loss


@torch.no_grad()
def evaluate_blip_vqa(adapter: Any, n: int = 500, seed: int = EVAL_SEED,
                      progress: bool = False) -> dict[str, Any]:
    """Accuracy of the greedy generated answer (Treebank tokens equal to the gold answer's)
    over every (scene, question) pair of ``n`` fresh scenes, overall and per type."""
    right: dict[str, int] = {}
    total: dict[str, int] = {}
    for s in tqdm(generate(n, seed), desc="evaluate shapes-blip-vqa", disable=not progress):
        inputs, _ = adapter.prepare(s.image)
        for (q, a), t in zip(s.questions, s.question_types):
            got = adapter.generate_answers(inputs, adapter.tokenize_question(q)[0], k=1)
            said = adapter.decode_answer(got[0]) if got else ""
            total[t] = total.get(t, 0) + 1
            right[t] = right.get(t, 0) + (tokenize(said) == tokenize(a))
    n_q = sum(total.values())
    return {"accuracy": sum(right.values()) / n_q,
            "per_type": {t: right[t] / total[t] for t in sorted(total)},
            "n_questions_per_type": {t: total[t] for t in sorted(total)},
            "n_questions": n_q, "n_scenes": n, "eval_seed": seed}


@torch.no_grad()
def evaluate_blip_captioner(adapter: Any, n: int = 500, seed: int = EVAL_SEED,
                            progress: bool = False) -> dict[str, Any]:
    """BLEU-4 (nltk corpus_bleu, Treebank tokens) of greedy captions on ``n`` fresh scenes,
    and the fraction equal to one of the references."""
    scenes = generate(n, seed)
    hyps, refs, exact = [], [], 0
    for s in tqdm(scenes, desc="evaluate shapes-blip", disable=not progress):
        inputs, _ = adapter.prepare(s.image)
        words = tokenize(" ".join(adapter.words(adapter.generate(inputs, max_len=30)[0])))
        ref = [tokenize(c) for c in s.captions]
        exact += words in ref
        hyps.append(words)
        refs.append(ref)
    return {"bleu4": float(corpus_bleu(refs, hyps)), "exact": exact / n, "n_scenes": n,
            "eval_seed": seed, "examples": [" ".join(h) for h in hyps[:5]]}


def _vision_card_text(facts: dict[str, Any], cls: str) -> str:
    """The card's lines on the vision-only phase and the training-only attribute terms."""
    text = ""
    if facts.get("vision_steps"):
        text += (f"\n- First, the vision tower alone (no text): {facts['vision_steps']} AdamW "
                 f"steps of {facts['vision_batch']} scenes, lr {facts['vision_lr']} (warm-up "
                 "100 steps, cosine decay to 5%), on the attribute terms below "
                 f"({facts['vision_seconds']} s; final loss {facts['vision_final_loss']:.3f}). "
                 "Trained jointly from the start, the ViT's patch tokens never carried the "
                 "objects' shape (linear probe ~0.2, chance ~0.17).")
    if facts.get("vision_steps") or facts.get("aux"):
        weight = facts.get("aux") or 0
        text += (f"\n- Auxiliary attribute terms, training only (weight {weight} in the "
                 f"joint phase): on the vision tower's {GRID}x{GRID} patch tokens (its "
                 "output, the states the text side reads, CLS dropped) a linear layer "
                 "predicts per cell the color, shape and size of the object covering it (at "
                 "least a quarter of the cell; else background; `mmcam.models.train."
                 "cell_labels`), and another the shape of every object from its tokens "
                 "averaged with its cell coverage as weights; cross-entropy"
                 + (f"; plus (weight {facts['position']}) the squared error of a third "
                    "predicting each object's position (its cells' coverage-weighted centre) "
                    "from the same pooled tokens" if facts.get("position") else "")
                 + ". The heads are "
                 f"discarded, not shipped: the saved model is a plain `{cls}`.")
    return text


def _vqa_card_text(metrics: dict[str, Any], facts: dict[str, Any], command: str, cls: str
                   ) -> tuple[str, str]:
    """The VQA model card's held-out result and training recipe (markdown)."""
    counts = metrics.get("n_questions_per_type", {})
    rows = "\n".join(f"| {t} | {counts.get(t, '')} | {v:.3f} |"
                     for t, v in metrics["per_type"].items())
    result = (f"accuracy **{metrics['accuracy']:.3f}** over {metrics['n_questions']} "
              "questions (greedy generated answer equal to the gold one, "
              "`mmcam.models.train_blip.evaluate_blip_vqa`).\n\n"
              f"| question type | questions | accuracy |\n|---|---|---|\n{rows}")
    vision = _vision_card_text(facts, cls)
    aux = ""
    if facts.get("attention"):
        heads = int(facts.get("att_heads", SUPERVISED_HEADS))
        every = bool(facts.get("att_tokens"))
        aux += (f"\n- Attention supervision during training (weight {facts['attention']}): "
                f"in every text-encoder layer, heads 0-{heads - 1} of "
                + ("every question token's" if every else "the question's `[CLS]`")
                + " cross-attention over the image tokens are pulled "
                "(cross-entropy) towards the cell coverage of the object(s) the question "
                "refers to (`Scene.question_objects`; relation: head 0 on the subject, head 1 "
                "on the reference object"
                + (", the others on both" if heads > 2 else "")
                + "; questions naming no object: no term). "
                + ("The other heads are free." if every else
                   "The other heads and tokens are free.")
                + " So the model is grounded partly by construction.")
    if facts.get("relpos"):
        aux += (f"\n- Relation geometry term during training (weight {facts['relpos']}; "
                "relation questions only): after every text-encoder layer a linear head on "
                "the question's `[CLS]` state predicts the subject's and the reference's "
                "centres (squared error) and whether the subject is left of / above the "
                "reference (binary cross-entropy, where their centres are at least "
                f"{RELATION_MARGIN} px apart).")
    if facts.get("relans"):
        aux += (f"\n- Relation answer term during training (weight {facts['relans']}; "
                "relation questions only): a linear head on the text encoder's final `[CLS]` "
                "state predicts the answer yes/no (cross-entropy); linear, so that the "
                "encoder's own layers compute the answer into the states the decoder reads.")
    if facts.get("relpos") or facts.get("relans"):
        aux += " These heads are discarded too."
    recipe = (
        f"Trained with `{command}`:\n\n"
        f"- Data: `mmcam.scenes.generate({facts['n_train']}, seed={facts['seed']})`."
        f"{vision}\n"
        f"- Then {facts['steps']} AdamW steps; each step {facts['batch']} scenes x "
        f"{facts['per_image']} questions each (a question type drawn uniformly, then a "
        "question of that type; the vision tower runs once per scene, its states repeated "
        "for the scene's questions); loss: cross-entropy of the answer tokens and the final "
        "`[SEP]` given `[DEC]`, the decoder cross-attending the text encoder's question "
        f"states. lr {facts['lr']} (linear warm-up {facts['warmup']} steps, cosine decay to "
        f"5%), weight decay {facts['weight_decay']}, gradient norm clipped at 1, torch "
        f"seed {facts['seed']}."
        f"{aux}\n"
        f"- Wall time: {facts['train_seconds']} s in all ({facts['data_seconds']} s of it "
        f"rendering and tokenizing the scenes) on {facts['threads']} CPU thread of a shared "
        f"2-core machine; final training loss {facts['final_loss']:.3f}"
        + (" (answer loss plus the training-only terms above)."
           if facts.get("aux") or facts.get("attention") else "."))
    if facts.get("init_from"):
        recipe += (f"\n- Every tensor started from {_start_name(facts)}'s of the same name and "
                   "shape (same world, same architecture; a captioner's decoder blocks start "
                   "the text encoder); the others at random.")
    return result, recipe


def _stages(facts: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs that made a model, first to last: ``facts`` and the ``init_facts`` it holds
    (the training facts of the ``--init-from`` folder, recorded when it had them)."""
    chain = [facts]
    while chain[-1].get("init_facts"):
        chain.append(chain[-1]["init_facts"])
    return chain[::-1]


def _command(facts: dict[str, Any], out: str, start: str | None) -> str:
    """The ``mmcam train`` command line of one run (``out``, ``--init-from start``)."""
    caption = facts["task"] == "caption"
    kind = "blip-captioner" if caption else "blip-vqa"
    command = f"mmcam train {kind} --out {out} --seed {facts['seed']}"
    command += f" --init-from {start}" if start else ""
    if facts["steps"] != (DEFAULTS if caption else VQA_DEFAULTS)["steps"]:
        command += f" --steps {facts['steps']}"
    return command + "".join(f" --set {k}={v}" for k, v in sorted(facts.get("set", {}).items()))


def _stages_text(facts: dict[str, Any], name: str) -> str:
    """The card's list of stages when the model continues earlier recorded runs ("" if not)."""
    chain = _stages(facts)
    if len(chain) == 1:
        return ""
    lines = []
    for n, f in enumerate(chain, 1):
        out = f"models/{name}" if n == len(chain) else f"stage{n}"
        start = f"stage{n - 1}" if n > 1 else _init_name(f)
        lines.append(f"{n}. `{_command(f, out, start)}`: {f['steps']} steps, lr {f['lr']}, "
                     f"{f['train_seconds']} s, final training loss {f['final_loss']:.3f}")
    return (f"Trained in {len(chain)} stages, each run starting from the weights the one "
            "before saved (`--init-from`); the settings of each are in "
            "`mmcam_training.json` (`init_facts`, nested):\n\n" + "\n".join(lines)
            + "\n\nThe last stage in detail. ")


def _start_name(facts: dict[str, Any]) -> str | None:
    """What the card calls the run's ``--init-from`` folder: ``stageN`` when it continues a
    recorded run (:func:`_stages_text`), else :func:`_init_name`."""
    n = len(_stages(facts))
    return f"stage{n - 1}" if n > 1 else _init_name(facts)


def _init_name(facts: dict[str, Any]) -> str | None:
    """The ``--init-from`` folder as the card names it: ``models/NAME`` for a shipped one."""
    init = facts.get("init_from")
    if not init:
        return None
    path = Path(init)
    return f"models/{path.name}" if path.parent.name == "models" else str(path)


def write_card(out: Path, metrics: dict[str, Any], facts: dict[str, Any]) -> None:
    """The model card: what it is, how it was trained, what it scores on held-out scenes."""
    (out / "mmcam_training.json").write_text(json.dumps(facts, indent=2) + "\n")
    caption = facts["task"] == "caption"
    name = "shapes-blip" if caption else "shapes-blip-vqa"
    cls = "BlipForConditionalGeneration" if caption else "BlipForQuestionAnswering"
    chain = _stages(facts)
    start = _start_name(facts)
    command = _command(facts, f"models/{name}", start)
    if caption:
        ex = "\n".join(f"- {e}" for e in metrics["examples"])
        result = (f"BLEU-4 **{metrics['bleu4']:.3f}**, exact match {metrics['exact']:.3f} "
                  f"(greedy decoding). First captions:\n{ex}")
        recipe = (f"Trained with `{command}` on `mmcam.scenes.generate({facts['n_train']}, "
                  f"seed={facts['seed']})`:\n"
                  f"{_vision_card_text(facts, cls)}\n- Then {facts['steps']} AdamW steps "
                  f"of batch {facts['batch']} (one random reference caption per scene), lr "
                  f"{facts['lr']} (warm-up {facts['warmup']} steps, cosine decay to 5%), "
                  "cross-entropy of the caption tokens and the final `[SEP]` given `[DEC]`"
                  + (" plus the attribute terms." if facts.get("aux") else ".")
                  + f"\n- Wall time: {facts['train_seconds']} s in all "
                  f"({facts['data_seconds']} s of it rendering the scenes) on "
                  f"{facts['threads']} CPU thread of a shared 2-core machine; final training "
                  f"loss {facts['final_loss']:.3f}.")
    else:
        result, recipe = _vqa_card_text(metrics, facts, command, cls)
    if caption and start:
        result += (f"\n\nThe vision tower and text blocks started from {start}'s weights "
                   "(same world, same architecture); vocabulary-sized layers started at random.")
    origin = (f"from {start}'s weights" if start and len(chain) == 1 else
              f"in {len(chain)} stages" if len(chain) > 1 else "from scratch")
    recipe = _stages_text(facts, name) + recipe
    (out / "README.md").write_text(f"""---
library_name: transformers
pipeline_tag: {"image-to-text" if caption else "visual-question-answering"}
---
# {name}

A small `{cls}` (vision: ViT {ARCH['vision']['num_hidden_layers']} layers, width
{ARCH['vision']['hidden_size']}, 128x128 pixels in 16x16 patches = an 8x8 grid + CLS; text:
{ARCH['text']['num_hidden_layers']}-layer BERT blocks with cross-attention, width
{ARCH['text']['hidden_size']}) trained {origin} on mmcam's synthetic scene world, so that
mmcam's Hugging Face path can be tried offline with maps that can be checked against ground truth.

{recipe}

Held-out ({metrics['n_scenes']} fresh scenes, seed {metrics['eval_seed']}): {result}

Load: `mmcam.load_model("{name}")` or `{cls}.from_pretrained(DIR)`.
""")
