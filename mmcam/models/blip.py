"""shapes-blip: a small ``BlipForConditionalGeneration`` trained here on the scene world, saved
exactly as ``save_pretrained`` writes a hub checkpoint (safetensors, config, processor and a
WordPiece tokenizer built offline), so ``mmcam.load_model`` opens it through the same code
path as a downloaded BLIP.

Architecture (``ARCH``): ViT vision tower on 128x128 pixels with 16x16 patches (an 8x8 grid
plus CLS, the explained layer ``vision_model.encoder.layers[-1]``) and a BERT-style text
decoder with cross-attention. Training: teacher forcing, cross-entropy of every caption token
and the final ``[SEP]`` given ``[DEC]`` and the tokens before it; one random reference caption
per scene and step; AdamW with the reference models' warm-up and cosine schedule
(:mod:`mmcam.models.train`); one thread, deterministic for a seed on a given machine.
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


def caption_words(captions: list[list[str]]) -> list[str]:
    """Every token of the captions (Treebank, lowercased), sorted: the vocabulary."""
    return sorted({w for cs in captions for c in cs for w in tokenize(c)})


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


def build_model(vocab_size: int, ids: dict[str, int]) -> Any:
    """An untrained BlipForConditionalGeneration with ``ARCH`` and the tokenizer's ids."""
    import transformers

    cfg = transformers.BlipConfig(
        vision_config=dict(ARCH["vision"]),
        text_config=dict(ARCH["text"], vocab_size=vocab_size, bos_token_id=ids["[DEC]"],
                         pad_token_id=ids["[PAD]"], sep_token_id=ids["[SEP]"],
                         eos_token_id=ids["[SEP]"]))
    return transformers.BlipForConditionalGeneration(cfg)


def _lr(step: int, steps: int, hp: dict[str, Any]) -> float:
    warm = min(1.0, (step + 1) / hp["warmup"])
    return hp["lr"] * warm * (0.05 + 0.95 * (1 + math.cos(math.pi * step / steps)) / 2)


def train_blip_captioner(out: str | os.PathLike, seed: int = 0, steps: int | None = None,
                         n_train: int | None = None, progress: bool = True,
                         n_eval: int = 500) -> dict[str, Any]:
    """Train shapes-blip into ``out`` and measure it on ``n_eval`` held-out scenes."""
    if seed in (EVAL_SEED, VALIDATION_SEED):
        raise MMCamError(f"seed {seed} is reserved for held-out scenes: use another seed")
    hp = dict(DEFAULTS)
    steps = int(hp["steps"] if steps is None else steps)
    n_train = int(hp["n_train"] if n_train is None else n_train)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(Path(out), seed, steps, n_train, progress, n_eval, hp)
    finally:
        torch.set_num_threads(threads)


def _render(n: int, seed: int, progress: bool) -> tuple[torch.Tensor, list[list[str]]]:
    images = torch.empty((n, 3, encoder.IMAGE_SIZE, encoder.IMAGE_SIZE), dtype=torch.uint8)
    caps: list[list[str]] = []
    bar = tqdm(total=n, desc=f"render {n} scenes (seed {seed})", disable=not progress)
    for start in range(0, n, 256):
        for k, s in enumerate(generate(min(256, n - start), seed, start=start)):
            images[start + k] = torch.from_numpy(np.asarray(s.image).copy()).permute(2, 0, 1)
            caps.append(list(s.captions))
        bar.update(min(256, n - start))
    bar.close()
    return images, caps


def _train(out: Path, seed: int, steps: int, n_train: int, progress: bool, n_eval: int,
           hp: dict[str, Any]) -> dict[str, Any]:
    t0 = time.time()
    images, caps = _render(n_train, seed, progress)
    processor = build_processor(caption_words(caps))
    tok = processor.tokenizer
    ids = tok.get_vocab()
    torch.manual_seed(seed)
    model = build_model(len(ids), ids)
    enc = [[tok(" ".join(tokenize(c)), add_special_tokens=False)["input_ids"] for c in cs]
           for cs in caps]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="train shapes-blip", disable=not progress)
    for step in bar:
        idx = torch.randint(n_train, (hp["batch"],), generator=gen).tolist()
        seqs = []
        for i in idx:
            j = int(torch.randint(len(enc[i]), (1,), generator=gen))
            seqs.append([ids["[DEC]"]] + enc[i][j] + [ids["[SEP]"]])
        T = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), T), ids["[PAD]"], dtype=torch.long)
        for r, s in enumerate(seqs):
            input_ids[r, : len(s)] = torch.tensor(s)
        mask = (input_ids != ids["[PAD]"]).long()
        pixels = encoder.pixels_from_uint8(images[idx])
        logits = model(pixel_values=pixels, input_ids=input_ids, attention_mask=mask,
                       use_cache=False).logits
        target = input_ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                               target.reshape(-1), ignore_index=-100)
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, hp)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # training our own model, not explaining a user's
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    train_seconds = time.time() - t0
    from mmcam.adapters.hf import load_hf

    metrics = evaluate_blip_captioner(load_hf(out), n_eval, progress=progress)
    facts = {"steps": steps, "n_train": n_train, "seed": seed, "batch": hp["batch"],
             "lr": hp["lr"], "train_seconds": round(train_seconds),
             "final_loss": float(np.mean(losses[-50:])), "arch": ARCH}
    write_card(out, metrics, facts)
    return {**facts, **metrics, "loss_history": losses}


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
    ex = "\n".join(f"- {e}" for e in metrics["examples"])
    (out / "README.md").write_text(f"""---
library_name: transformers
pipeline_tag: image-to-text
---
# shapes-blip

A small `BlipForConditionalGeneration` (vision: ViT {ARCH['vision']['num_hidden_layers']} layers,
width {ARCH['vision']['hidden_size']}, 128x128 pixels in 16x16 patches = an 8x8 grid + CLS; text:
{ARCH['text']['num_hidden_layers']}-layer BERT decoder with cross-attention, width
{ARCH['text']['hidden_size']}) trained from scratch on mmcam's synthetic scene world, so that
mmcam's Hugging Face path can be tried offline with maps that can be checked against ground truth.

Trained with `mmcam train blip-captioner --out DIR --seed {facts['seed']}`: {facts['steps']} AdamW
steps of batch {facts['batch']} on {facts['n_train']} scenes, {facts['train_seconds']} s on one CPU
thread; final training loss {facts['final_loss']:.3f}.

Held-out ({metrics['n_scenes']} fresh scenes, seed {metrics['eval_seed']}, greedy decoding):
BLEU-4 **{metrics['bleu4']:.3f}**, exact match {metrics['exact']:.3f}. First captions:
{ex}

Load: `mmcam.load_model("shapes-blip")` or `BlipForConditionalGeneration.from_pretrained(DIR)`.
""")
