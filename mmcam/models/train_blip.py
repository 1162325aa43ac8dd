"""shapes-blip and shapes-blip-vqa: a small ``BlipForConditionalGeneration`` and a small
``BlipForQuestionAnswering`` trained here on the scene world, each saved
exactly as ``save_pretrained`` writes a hub checkpoint (safetensors, config, processor and a
WordPiece tokenizer built offline), so ``mmcam.load_model`` opens it through the same code
path as a downloaded BLIP.

Architecture (``ARCH``): ViT vision tower on 128x128 pixels with 16x16 patches (an 8x8 grid
plus CLS, the explained layer ``vision_model.encoder.layers[-1]``) and a BERT-style text
decoder with cross-attention. Training: teacher forcing, cross-entropy of every caption token
and the final ``[SEP]`` given ``[DEC]`` and the tokens before it; one random reference caption
per scene and step; AdamW with the reference models' warm-up and cosine schedule
(:mod:`mmcam.models.train`); one thread, deterministic for a seed on a given machine.
The VQA model is trained the same way on (question, answer) pairs: the text encoder reads
``[CLS] question [SEP]`` cross-attending the image, the decoder ``[DEC] answer`` cross-attending
the question, and the loss is the answer tokens' and ``[SEP]``'s cross-entropy; one question per
scene and step, its type drawn uniformly.
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
from mmcam.scenes import generate

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
ARCH = {
    "vision": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
               "intermediate_size": 256, "image_size": 128, "patch_size": 16},
    "text": {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
             "intermediate_size": 256, "max_position_embeddings": 48},
}
DEFAULTS = {"steps": 3000, "n_train": 8000, "batch": 32, "lr": 7e-4, "warmup": 150,
            "weight_decay": 1e-4}


def scene_words(texts: list[Any]) -> list[str]:
    """Every token of the captions, questions and answers (Treebank, lowercased), sorted."""
    words: set[str] = set()
    for caps, by_type in texts:
        for c in caps:
            words.update(tokenize(c))
        for pairs in by_type.values():
            for q, a in pairs:
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
                         n_eval: int = 500) -> dict[str, Any]:
    """Train shapes-blip into ``out`` and measure it on ``n_eval`` held-out scenes."""
    return train_blip("caption", out, seed, steps, n_train, progress, n_eval)


def train_blip_vqa(out: str | os.PathLike, seed: int = 0, steps: int | None = None,
                   n_train: int | None = None, progress: bool = True,
                   n_eval: int = 500) -> dict[str, Any]:
    """Train shapes-blip-vqa into ``out`` and measure it on ``n_eval`` held-out scenes."""
    return train_blip("vqa", out, seed, steps, n_train, progress, n_eval)


def train_blip(task: str, out: str | os.PathLike, seed: int = 0, steps: int | None = None,
               n_train: int | None = None, progress: bool = True,
               n_eval: int = 500, init_from: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train a BLIP model for ``task`` ("caption" or "vqa"); see the module docstring.

    ``init_from``: a shapes-blip folder whose weights start every parameter of the same
    name and shape (vision tower, text blocks; the VQA text encoder from the captioner's
    decoder blocks); vocabulary-sized ones start at random."""
    if task not in ("caption", "vqa"):
        raise MMCamError(f"unknown BLIP task {task!r}: use caption or vqa")
    if seed in (EVAL_SEED, VALIDATION_SEED):
        raise MMCamError(f"seed {seed} is reserved for held-out scenes: use another seed")
    hp = dict(DEFAULTS)
    steps = int(hp["steps"] if steps is None else steps)
    n_train = int(hp["n_train"] if n_train is None else n_train)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(task, Path(out), seed, steps, n_train, progress, n_eval,
                      {**hp, "init_from": None if init_from is None else str(init_from)})
    finally:
        torch.set_num_threads(threads)


def _render(n: int, seed: int, progress: bool) -> tuple[torch.Tensor, list[Any]]:
    """uint8 images (n,3,128,128) and per scene (captions, {type: [(question, answer)]})."""
    images = torch.empty((n, 3, encoder.IMAGE_SIZE, encoder.IMAGE_SIZE), dtype=torch.uint8)
    texts: list[Any] = []
    bar = tqdm(total=n, desc=f"render {n} scenes (seed {seed})", disable=not progress)
    for start in range(0, n, 256):
        for k, s in enumerate(generate(min(256, n - start), seed, start=start)):
            images[start + k] = torch.from_numpy(np.asarray(s.image).copy()).permute(2, 0, 1)
            by_type: dict[str, list[tuple[str, str]]] = {}
            for qa, t in zip(s.questions, s.question_types):
                by_type.setdefault(t, []).append(qa)
            texts.append((list(s.captions), by_type))
        bar.update(min(256, n - start))
    bar.close()
    return images, texts


def _warm_start(model: Any, folder: Path) -> int:
    """Copy every tensor of ``folder``'s model.safetensors whose name and shape match (the
    VQA text encoder reads the captioner's ``text_decoder.bert``); return how many."""
    from safetensors.torch import load_file

    src = load_file(str(folder / "model.safetensors"))
    state = model.state_dict()
    copied = 0
    with torch.no_grad():
        for name, t in state.items():
            key = "text_decoder.bert." + name[len("text_encoder."):] \
                if name.startswith("text_encoder.") else name
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


def _train(task: str, out: Path, seed: int, steps: int, n_train: int, progress: bool,
           n_eval: int, hp: dict[str, Any]) -> dict[str, Any]:
    t0 = time.time()
    images, texts = _render(n_train, seed, progress)
    processor = build_processor(scene_words(texts))
    tok = processor.tokenizer
    ids = tok.get_vocab()
    pad, dec, sep = ids["[PAD]"], ids["[DEC]"], ids["[SEP]"]
    torch.manual_seed(seed)
    model = build_model(len(ids), ids, task)
    if hp.get("init_from"):
        _warm_start(model, Path(hp["init_from"]))

    def words(text: str) -> list[int]:
        return tok(" ".join(tokenize(text)), add_special_tokens=False)["input_ids"]

    caps = [[words(c) for c in cs] for cs, _ in texts]
    qas = [{t: [(words(q), words(a)) for q, a in pairs] for t, pairs in by_type.items()}
           for _, by_type in texts]
    gen = torch.Generator().manual_seed(seed)

    def pick(n: int) -> int:
        return int(torch.randint(n, (1,), generator=gen))

    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    model.train()
    losses = []
    name = "shapes-blip" if task == "caption" else "shapes-blip-vqa"
    bar = tqdm(range(steps), desc=f"train {name}", disable=not progress)
    for step in bar:
        idx = torch.randint(n_train, (hp["batch"],), generator=gen).tolist()
        pixels = encoder.pixels_from_uint8(images[idx])
        if task == "caption":
            tgt, mask = _pad([[dec] + caps[i][pick(len(caps[i]))] + [sep] for i in idx], pad)
            logits = model(pixel_values=pixels, input_ids=tgt, attention_mask=mask,
                           use_cache=False).logits
        else:
            qs, ans = [], []
            for i in idx:
                types = sorted(qas[i])
                pool = qas[i][types[pick(len(types))]]
                q, a = pool[pick(len(pool))]
                qs.append([tok.cls_token_id] + q + [sep])
                ans.append([dec] + a + [sep])
            q_ids, q_mask = _pad(qs, pad)
            tgt, mask = _pad(ans, pad)
            img = model.vision_model(pixel_values=pixels)[0]
            q_states = model.text_encoder(input_ids=q_ids, attention_mask=q_mask,
                                          encoder_hidden_states=img)[0]
            logits = model.text_decoder(input_ids=tgt, attention_mask=mask,
                                        encoder_hidden_states=q_states,
                                        encoder_attention_mask=q_mask, use_cache=False).logits
        loss = _decoder_loss(logits, tgt, mask)
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, hp)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # training our own model, not explaining a user's
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    train_seconds = time.time() - t0
    from mmcam.adapters.hf import load_hf

    evaluate = evaluate_blip_captioner if task == "caption" else evaluate_blip_vqa
    metrics = evaluate(load_hf(out), n_eval, progress=progress)
    facts = {"task": task, "steps": steps, "n_train": n_train, "seed": seed,
             "batch": hp["batch"], "lr": hp["lr"], "init_from": hp.get("init_from"),
             "train_seconds": round(train_seconds),
             "final_loss": float(np.mean(losses[-50:])), "arch": ARCH}
    write_card(out, metrics, facts)
    return {**facts, **metrics, "loss_history": losses}


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


def write_card(out: Path, metrics: dict[str, Any], facts: dict[str, Any]) -> None:
    """The model card: what it is, how it was trained, what it scores on held-out scenes."""
    (out / "mmcam_training.json").write_text(json.dumps(facts, indent=2) + "\n")
    caption = facts["task"] == "caption"
    name = "shapes-blip" if caption else "shapes-blip-vqa"
    cls = "BlipForConditionalGeneration" if caption else "BlipForQuestionAnswering"
    kind = "blip-captioner" if caption else "blip-vqa"
    if caption:
        ex = "\n".join(f"- {e}" for e in metrics["examples"])
        result = (f"BLEU-4 **{metrics['bleu4']:.3f}**, exact match {metrics['exact']:.3f} "
                  f"(greedy decoding). First captions:\n{ex}")
    else:
        per = ", ".join(f"{t} {v:.3f}" for t, v in metrics["per_type"].items())
        result = (f"accuracy **{metrics['accuracy']:.3f}** over {metrics['n_questions']} "
                  f"questions (greedy answer equal to the gold one); per type: {per}.")
    init = ""
    if facts.get("init_from"):
        init = " --init-from models/shapes-blip"
        result += ("\n\nThe vision tower and text blocks started from shapes-blip's weights "
                   "(same world, same architecture); vocabulary-sized layers started at random.")
    (out / "README.md").write_text(f"""---
library_name: transformers
pipeline_tag: {"image-to-text" if caption else "visual-question-answering"}
---
# {name}

A small `{cls}` (vision: ViT {ARCH['vision']['num_hidden_layers']} layers, width
{ARCH['vision']['hidden_size']}, 128x128 pixels in 16x16 patches = an 8x8 grid + CLS; text:
{ARCH['text']['num_hidden_layers']}-layer BERT blocks with cross-attention, width
{ARCH['text']['hidden_size']}) trained from scratch on mmcam's synthetic scene world, so that
mmcam's Hugging Face path can be tried offline with maps that can be checked against ground truth.

Trained with `mmcam train {kind} --out DIR --seed {facts['seed']}{init}`: {facts['steps']} AdamW
steps of batch {facts['batch']} on {facts['n_train']} scenes, {facts['train_seconds']} s on one CPU
thread (rendering included); final training loss {facts['final_loss']:.3f}.

Held-out ({metrics['n_scenes']} fresh scenes, seed {metrics['eval_seed']}): {result}

Load: `mmcam.load_model("{name}")` or `{cls}.from_pretrained(DIR)`.
""")
