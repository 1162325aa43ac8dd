"""Train a reference model from scratch on CPU: ``train("captioner", "out/cap")``.

One loop for the three kinds (minGPT style): render ``n_train`` scenes of the data seed once,
then ``steps`` AdamW steps on random batches, with linear warm-up and cosine decay,

    lr(s) = lr_max * min(1, (s + 1) / warmup) * (0.05 + 0.95 * (1 + cos(pi * s / steps)) / 2).

Bit-for-bit deterministic for a seed on a given machine and torch version: data =
generate(n_train, seed), torch and batch sampling seeded with ``seed``, one thread.
The VQA model adds two training-only losses (see :func:`_loss`); nothing else differs.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mmcam.errors import MMCamError
from mmcam.models import encoder
from mmcam.models.evaluate import (
    EVAL_SEED,
    VALIDATION_SEED,
    evaluate_adapter,
    large_object_shape,
)
from mmcam.models.hub import build_model, parameter_count, save_model, wrap
from mmcam.models.text import Vocab, pad_batch
from mmcam.scenes import COLORS, NUMBERS, QUESTION_TYPES, SHAPES, Scene, generate

KINDS = ("captioner", "vqa", "classifier")

# Defaults of the shipped models. Measured on one thread of a busy shared 2-core machine:
# classifier 6-10 min, captioner and VQA 20-25 min (rendering included).
DEFAULTS: dict[str, dict[str, Any]] = {
    "captioner": {
        "steps": 2000, "n_train": 8000, "batch": 32, "per_image": 1, "lr": 2e-3,
        "arch": {"grid": 16, "embed": 64, "hidden": 160, "attn": 64, "dropout": 0.1},
    },
    "vqa": {
        "steps": 2000, "n_train": 8000, "batch": 32, "per_image": 8, "lr": 2e-3, "unk_p": 0.02,
        "aux": 1.0, "attention": 1.0,
        "arch": {"embed": 64, "hidden": 128, "cell": 128, "attn": 64, "glimpses": 2,
                 "mlp": 256},
    },
    "classifier": {
        "steps": 1500, "n_train": 6000, "batch": 32, "lr": 2e-3,
        "arch": {},
    },
}  # fmt: skip
WARMUP = 100
# One thread: bit-for-bit reproducible runs, and on a shared 2-core machine a single thread is
# several times faster than two (OpenMP threads spin-wait for a busy core).
TRAIN_THREADS = 1
WEIGHT_DECAY = 1e-4
AUX_CLASSES = (len(COLORS) + 1, len(SHAPES) + 1, 3)  # + background
ANSWERS = list(COLORS) + list(SHAPES) + list(NUMBERS) + ["yes", "no"]


def _cover(mask: np.ndarray, grid: int = 16) -> np.ndarray:
    """Fraction of each cell of the grid covered by ``mask``: float32 (grid, grid)."""
    k = mask.shape[0] // grid
    return mask.reshape(grid, k, grid, k).mean((1, 3)).astype(np.float32)


def cell_labels(scene: Scene, grid: int = 16) -> np.ndarray:
    """(3, grid, grid) uint8: per cell 1 + the index of the color, shape and size of the object
    covering most of the cell (at least a quarter of it), 0 for background."""
    out = np.zeros((3, grid, grid), np.uint8)
    best = np.full((grid, grid), 0.25)
    for o in scene.objects:
        cover = _cover(o.mask, grid)
        sel = cover > best
        out[0][sel] = list(COLORS).index(o.color) + 1
        out[1][sel] = SHAPES.index(o.shape) + 1
        out[2][sel] = ("small", "large").index(o.size) + 1
        best = np.maximum(best, cover)
    return out


def _render(
    kind: str, n: int, seed: int, progress: bool
) -> tuple[torch.Tensor, list[Any], torch.Tensor]:
    """uint8 images (n,3,128,128), per scene the text ground truth needed by ``kind``, and
    per-cell attribute labels (n,3,16,16) (see :func:`cell_labels`)."""
    images = torch.empty((n, 3, encoder.IMAGE_SIZE, encoder.IMAGE_SIZE), dtype=torch.uint8)
    cells = torch.empty((n, 3, 16, 16), dtype=torch.uint8)
    texts: list[Any] = []
    bar = tqdm(total=n, desc=f"render {n} scenes (seed {seed})", disable=not progress)
    for start in range(0, n, 256):
        chunk = generate(min(256, n - start), seed, start=start, one_large=kind == "classifier")
        for k, s in enumerate(chunk):
            images[start + k] = torch.from_numpy(np.asarray(s.image).copy()).permute(2, 0, 1)
            cells[start + k] = torch.from_numpy(cell_labels(s))
            if kind == "captioner":
                texts.append(list(s.captions))
            elif kind == "vqa":
                covers = [_cover(o.mask) for o in s.objects]
                texts.append(
                    (
                        list(zip(s.questions, s.question_types, s.question_objects)),
                        torch.from_numpy(np.stack(covers)),
                    )
                )
            else:
                texts.append(large_object_shape(s))
        bar.update(len(chunk))
    bar.close()
    return images, texts, cells


def _config(kind: str, vocab: Vocab | None, hp: dict[str, Any]) -> dict[str, Any]:
    arch = {"channels": list(encoder.CHANNELS), "strides": list(encoder.STRIDES), **hp["arch"]}
    config: dict[str, Any] = {
        "kind": kind,
        "format_version": 1,
        "image_size": encoder.IMAGE_SIZE,
        "mean": list(encoder.MEAN),
        "std": list(encoder.STD),
        "arch": arch,
        "explained_layer": None,
    }
    if kind == "captioner":
        config["vocab"] = vocab.to_json()
    elif kind == "vqa":
        config["vocab"] = vocab.to_json()
        config["answers"] = list(ANSWERS)
    else:
        config["labels"] = list(SHAPES)
        config["task"] = "shape of the one large object (scenes.generate(..., one_large=True))"
    return config


class _Batches:
    """Draws training batches (pixels, inputs, targets) for one kind."""

    def __init__(
        self,
        kind: str,
        images: torch.Tensor,
        texts: list[Any],
        cells: torch.Tensor,
        config: dict,
        hp: dict,
        gen: torch.Generator,
    ) -> None:
        self.kind, self.images, self.cells, self.hp, self.gen = kind, images, cells, hp, gen
        if kind in ("captioner", "vqa"):
            self.vocab = Vocab(config["vocab"])
        if kind == "captioner":
            self.caps = [[self.vocab.encode(c)[0] for c in caps] for caps in texts]
        elif kind == "vqa":
            index = {a: i for i, a in enumerate(config["answers"])}
            # per scene: {type: [(question ids, answer id, referred objects)]}, object covers
            self.qa, self.covers = [], []
            for items, covers in texts:
                by_type: dict[str, list] = {}
                for (q, a), t, refs in items:
                    by_type.setdefault(t, []).append((self.vocab.encode(q)[0], index[a], refs))
                self.qa.append(by_type)
                self.covers.append(covers)
        else:
            index = {lab: i for i, lab in enumerate(config["labels"])}
            self.labels = torch.tensor([index[t] for t in texts])

    def _randint(self, n: int, size: int = 1) -> list[int]:
        return torch.randint(n, (size,), generator=self.gen).tolist()

    def __call__(self) -> tuple[torch.Tensor, ...]:
        """(pixels, cell labels, targets) or (pixels, cell labels, inputs, targets)."""
        idx = torch.randint(len(self.images), (self.hp["batch"],), generator=self.gen)
        pixels = encoder.pixels_from_uint8(self.images[idx])
        cells = self.cells[idx].long()
        if self.kind == "classifier":
            return pixels, cells, self.labels[idx]
        k = self.hp["per_image"]
        ins, outs, att = [], [], []
        for i in idx.tolist():
            if self.kind == "captioner":
                caps = self.caps[i]
                for j in self._randint(len(caps), k):
                    ins.append([self.vocab.bos] + caps[j])
                    outs.append(caps[j] + [self.vocab.eos])
            else:  # vqa: a uniformly drawn question type, then a question of that type
                by_type = self.qa[i]
                types = [t for t in QUESTION_TYPES if t in by_type]
                for t in self._randint(len(types), k):
                    pool = by_type[types[t]]
                    q, a, refs = pool[self._randint(len(pool))[0]]
                    drop = torch.rand(len(q), generator=self.gen) < self.hp["unk_p"]
                    ins.append([self.vocab.unk if d else w for w, d in zip(q, drop.tolist())])
                    outs.append(a)
                    att.append(self._attention_target(self.covers[i], refs, types[t]))
        if self.kind == "captioner":
            return pixels, cells, pad_batch(ins), pad_batch(outs)
        return pixels, cells, pad_batch(ins), torch.tensor(outs), torch.stack(att)

    def _attention_target(
        self, covers: torch.Tensor, refs: tuple[int, ...], qtype: str
    ) -> torch.Tensor:
        """(G, h*w) target attention of the glimpses: the named object's cell coverage, made a
        distribution (relation: glimpse 0 on the subject, glimpse 1 on the reference object;
        other types: every glimpse on all referred objects); all zeros (no attention loss)
        when the question refers to no object."""
        g = self.hp["arch"]["glimpses"]
        out = torch.zeros(g, covers.shape[1] * covers.shape[2])
        if not refs:
            return out
        groups = [(r,) for r in refs] if qtype == "relation" else [refs] * g
        for j in range(g):
            m = covers[list(groups[min(j, len(groups) - 1)])].sum(0).flatten()
            out[j] = m / m.sum()
        return out


def _loss(
    kind: str,
    model: torch.nn.Module,
    batch: tuple[torch.Tensor, ...],
    k: int,
    aux: torch.nn.Module | None,
    aux_weight: float,
    att_weight: float = 0.0,
) -> torch.Tensor:
    """Task cross-entropy, plus ``aux_weight`` x the mean per-cell cross-entropy of the
    auxiliary attribute head (color, shape, size of the object in each cell) if ``aux``, plus
    (vqa) ``att_weight`` x the cross-entropy of each glimpse's attention against the referred
    objects' cell coverage."""
    if kind == "classifier":
        pixels, cells, labels = batch
        feats = model.features(pixels)
        loss = F.cross_entropy(model.fc(model.pool(feats).flatten(1)), labels)
    else:
        pixels, cells, inputs, targets = batch[:4]
        feats = model.encoder(pixels)
        if kind == "captioner":
            logits, _ = model.decode(feats.repeat_interleave(k, dim=0), inputs)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0)
        else:
            logits, alpha = model.answer(feats, inputs, repeats=k, return_attention=True)
            loss = F.cross_entropy(logits, targets)
            if att_weight:  # cross-entropy of the attention against the target distribution
                target = batch[4]
                has = target.sum(-1) > 0
                ce = -(target * torch.log(alpha + 1e-8)).sum(-1)
                loss = loss + att_weight * ce[has].sum() / has.sum().clamp(min=1)
    if aux is not None:
        logits = aux(feats).split(AUX_CLASSES, dim=1)
        dense = sum(F.cross_entropy(lg, cells[:, j]) for j, lg in enumerate(logits))
        loss = loss + aux_weight * dense / len(AUX_CLASSES)
    return loss


def model_channels(model: torch.nn.Module) -> int:
    """Channels of the explained layer (the encoder's output)."""
    enc = model.features if hasattr(model, "features") else model.encoder
    return enc.out_channels



def fit(model: nn.Module, opt: torch.optim.Optimizer, params: list[torch.Tensor], lr: float,
        steps: int, step_loss: Callable[[], torch.Tensor], desc: str, progress: bool
        ) -> list[float]:
    """The reference models' loop: ``steps`` optimizer steps on ``step_loss()`` with a linear
    warm-up over :data:`WARMUP` steps and a cosine decay to 5% of ``lr``, gradients clipped
    to norm 5; the model is in train mode during the loop and in eval mode after. Returns
    the loss of every step."""
    def lr_at(s: int) -> float:
        warm = min(1.0, (s + 1) / WARMUP)
        return lr * warm * (0.05 + 0.95 * (1 + math.cos(math.pi * s / steps)) / 2)

    history: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for s in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(s)
        loss = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        history.append(loss.item())
        if s % 20 == 0 or s == steps - 1:
            bar.set_postfix(loss=f"{np.mean(history[-20:]):.4f}")
    bar.close()
    model.eval()
    return history

def train(
    kind: str,
    out: str | os.PathLike,
    seed: int = 0,
    steps: int | None = None,
    n_train: int | None = None,
    progress: bool = True,
    n_val: int = 200,
) -> dict[str, Any]:
    """Train a ``kind`` model ("captioner" | "vqa" | "classifier") from scratch into ``out``.

    Writes ``out/config.json``, ``out/model.safetensors`` and ``out/README.md`` (a model card
    with the training facts; held-out metrics come from ``mmcam evaluate-model``). Returns
    ``{"loss_history": [...per step], "final_loss", "steps", "n_train", "seed",
    "train_seconds", "val": metrics on n_val validation scenes (seed VALIDATION_SEED)}``.
    """
    if kind not in KINDS:
        raise MMCamError(f"unknown model kind {kind!r}: use one of {', '.join(KINDS)}")
    if seed in (EVAL_SEED, VALIDATION_SEED):
        raise MMCamError(f"seed {seed} is reserved for held-out scenes: use another seed")
    hp = dict(DEFAULTS[kind])
    steps = int(hp["steps"] if steps is None else steps)
    n_train = int(hp["n_train"] if n_train is None else n_train)
    if steps < 1 or n_train < 1:
        raise MMCamError("steps and n_train must be >= 1")
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        return _train(kind, Path(out), seed, steps, n_train, progress, n_val, hp)
    finally:
        torch.set_num_threads(threads)


def _train(
    kind: str, out: Path, seed: int, steps: int, n_train: int, progress: bool, n_val: int,
    hp: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    t0 = time.time()
    images, texts, cells = _render(kind, n_train, seed, progress)
    vocab = None
    if kind == "captioner":
        vocab = Vocab.build(c for caps in texts for c in caps)
    elif kind == "vqa":
        vocab = Vocab.build(q for items, _ in texts for (q, _), _, _ in items)
    config = _config(kind, vocab, hp)
    t_data = time.time() - t0

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(config)
    config["explained_layer"] = wrap(model, config).layer
    batches = _Batches(kind, images, texts, cells, config, hp, gen)
    aux_weight = float(hp.get("aux", 0.0))
    att_weight = float(hp.get("attention", 0.0))
    # the auxiliary head trains the encoder only; it is not part of the saved model
    aux = torch.nn.Conv2d(model_channels(model), sum(AUX_CLASSES), 1) if aux_weight else None
    params = list(model.parameters()) + (list(aux.parameters()) if aux is not None else [])
    opt = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=WEIGHT_DECAY)

    history = fit(model, opt, params, hp["lr"], steps, lambda: _loss(
        kind, model, batches(), hp.get("per_image", 1), aux, aux_weight, att_weight),
        f"train {kind}", progress)
    t_train = time.time() - t0 - t_data

    val: dict[str, Any] = {}
    if n_val > 0:
        val_scenes = generate(n_val, VALIDATION_SEED, one_large=kind == "classifier")
        val = evaluate_adapter(wrap(model, config), kind, val_scenes, progress=progress)
    config["training"] = {
        "seed": seed,
        "steps": steps,
        "n_train": n_train,
        "batch": hp["batch"],
        "per_image": hp.get("per_image", 1),
        "lr": hp["lr"],
        "weight_decay": WEIGHT_DECAY,
        "warmup": WARMUP,
        "aux_weight": aux_weight,
        "attention_weight": att_weight,
        "data": f"mmcam.scenes.generate({n_train}, seed={seed}"
        + (", one_large=True)" if kind == "classifier" else ")"),
        "command": f"mmcam train {kind} --out OUT --seed {seed} --steps {steps}",
        "final_loss": float(np.mean(history[-50:])),
        "train_seconds": round(t_train, 1),
        "data_seconds": round(t_data, 1),
        "threads": torch.get_num_threads(),
        "parameters": parameter_count(model),
    }
    save_model(model, config, out)
    (out / "README.md").write_text(model_card(config))
    return {
        "kind": kind,
        "out": str(out),
        "seed": seed,
        "steps": steps,
        "n_train": n_train,
        "loss_history": history,
        "final_loss": config["training"]["final_loss"],
        "train_seconds": t_train,
        "data_seconds": t_data,
        "val": val,
    }


_ARCH_TEXT = {
    "captioner": "Conv encoder (5 blocks of Conv3x3-BN-ReLU, channels {channels}, strides "
    "{strides}) -> features (96,16,16); LSTM decoder (hidden {hidden}, embedding {embed}) "
    "with soft attention (scaled dot-product, dim {attn}) over the 16x16 grid plus a learned "
    "position embedding, the context fed back into the LSTM (Show, Attend and Tell). "
    "`adapter.attention(features, ids)` returns the attention weights used for each token.",
    "vqa": "Conv encoder (5 blocks of Conv3x3-BN-ReLU, channels {channels}, strides {strides}) "
    "-> features (96,16,16); LSTM question encoder (hidden {hidden}, embedding {embed}); fusion "
    "by question-guided attention after the explained layer: per-cell embedding (width {cell}, "
    "with x/y coordinates), {glimpses} glimpses of scaled dot-product attention (dim {attn}) "
    "plus sigmoid-gated sums for counting, MLP ({mlp}) over the answers plus a bilinear term "
    "(question x difference of the attended positions) for spatial relations.",
    "classifier": "Conv encoder (5 blocks of Conv3x3-BN-ReLU, channels {channels}, strides "
    "{strides}) -> features (96,16,16) -> global average pooling -> linear (6 shapes).",
}

_TASK_TEXT = {
    "captioner": "Generate a caption of a scene from `mmcam.scenes` (greedy or beam search).",
    "vqa": "Answer a question about a scene (color, shape, count, exists, relation); answers: "
    "{answers}.",
    "classifier": "Name the shape of the one large object in a scene with 0-3 small "
    "distractors (`mmcam.scenes.generate(n, seed, one_large=True)`); labels: {labels}.",
}


def model_card(
    config: dict[str, Any], metrics: dict[str, Any] | None = None, eval_command: str | None = None
) -> str:
    """A README.md model card from ``config`` (and held-out ``metrics`` if given)."""
    kind, tr, arch = config["kind"], config["training"], config["arch"]
    name = f"shapes-{kind}"
    lines = [
        f"# {name}",
        "",
        "A small reference model of mmcam, trained from scratch on the synthetic scene world "
        "`mmcam.scenes` (128x128 RGB, 1-4 objects, 6 shapes x 6 colors x 2 sizes).",
        "",
        "## Task",
        "",
        _TASK_TEXT[kind].format(
            answers=", ".join(config.get("answers", [])), labels=", ".join(config.get("labels", []))
        ),
        "",
        "## Architecture",
        "",
        _ARCH_TEXT[kind].format(**arch),
        f"Explained layer: `{config['explained_layer']}` (the last conv block's ReLU output, "
        "16x16 grid)"
        + (
            "." if kind == "classifier" else "; the adapter's `encode` returns exactly this tensor."
        ),
        f"Parameters: {tr['parameters']:,}. Input: bilinear resize to 128x128, "
        f"(x/255 - {config['mean'][0]}) / {config['std'][0]}.",
        "",
        "## Training",
        "",
        f"- Data: `{tr['data']}` ({tr['n_train']} scenes, data seed {tr['seed']}).",
        f"- {tr['steps']} AdamW steps, batch {tr['batch']} images"
        + {
            "captioner": f" x {tr['per_image']} caption(s) each",
            "classifier": "",
            "vqa": f" x {tr['per_image']} questions each (type drawn uniformly)",
        }[kind]
        + f", lr {tr['lr']} (warm-up {tr['warmup']}, cosine decay), weight decay "
        f"{tr['weight_decay']}, torch seed {tr['seed']}.",
        *(
            [
                f"- Auxiliary loss during training only (weight {tr['aux_weight']}): a 1x1 conv "
                "on the explained layer predicts, per cell of the 16x16 grid, the color, shape "
                "and size of the object covering it (or background), from the scene masks. It "
                "speeds up learning object attributes; the head is discarded, not shipped."
            ]
            if tr.get("aux_weight")
            else []
        ),
        *(
            [
                f"- Attention supervision during training (weight {tr['attention_weight']}): "
                "cross-entropy between each glimpse's attention and the cell coverage of the "
                "object(s) the question refers to (`Scene.question_objects`; relation: glimpse 1 "
                "on the subject, glimpse 2 on the reference object). So this model is grounded "
                "by construction: a positive control for localization checks."
            ]
            if tr.get("attention_weight")
            else []
        ),
        f"- Command: `{tr['command'].replace('OUT', 'models/' + name)}`",
        f"- Wall time: {tr['train_seconds']:.0f} s training + {tr['data_seconds']:.0f} s "
        f"rendering on {tr['threads']} CPU thread(s) of a shared 2-core machine; final training "
        f"loss {tr['final_loss']:.4f}"
        + (" (sum of all the loss terms above)." if tr.get("aux_weight") else "."),
        "",
        "## Metrics on held-out scenes",
        "",
    ]
    return "\n".join(lines + _card_metrics(kind, name, metrics, eval_command) + [""])


def _card_metrics(kind: str, name: str, metrics: dict[str, Any] | None,
                  eval_command: str | None) -> list[str]:
    """The model card's held-out metrics lines (or how to measure them)."""
    lines: list[str] = []
    if metrics is None:
        lines.append(f"Not measured yet: run `mmcam evaluate-model {name}`.")
    else:
        lines.append(
            f"Measured on {metrics['n_scenes']} fresh scenes "
            f"(`mmcam.scenes.generate({metrics['n_scenes']}, seed={metrics['seed']}"
            + (", one_large=True" if kind == "classifier" else "")
            + ")`), never seen in training"
            + (f", with `{eval_command}`" if eval_command else "")
            + ":"
        )
        lines.append("")
        if kind == "captioner":
            lines.append(
                f"- BLEU-4 (nltk corpus_bleu, greedy captions against all the "
                f"scene's captions): **{metrics['bleu4']:.4f}** (floor 0.5)"
            )
            lines.append(f"- Greedy caption equal to one of the references: {metrics['exact']:.1%}")
            examples = "; ".join(f'"{e}"' for e in metrics.get("examples", [])[:3])
            lines.append(f"- First greedy captions: {examples}")
        elif kind == "vqa":
            lines.append(
                f"- Accuracy over {metrics['n_questions']} questions: "
                f"**{metrics['accuracy']:.4f}** (floor 0.85)"
            )
            lines.append("")
            lines.append("| question type | questions | accuracy |")
            lines.append("|---|---|---|")
            for t, acc in metrics["per_type"].items():
                lines.append(f"| {t} | {metrics['n_questions_per_type'][t]} | {acc:.4f} |")
        else:
            lines.append(f"- Accuracy: **{metrics['accuracy']:.4f}** (floor 0.95)")
    return lines
