"""Hugging Face captioning models through mmcam's whole-model contract.

One generic adapter, configured per family by the explained layer, the token layout and a
teacher-forcing recipe. Scores are computed from logits (never from ``outputs.loss``):
the model reads ``prefix + caption`` once, and caption token j is predicted by the logits at
position ``shift + len(prefix) + j - 1`` where ``shift`` counts image tokens the model puts
inside its text sequence (GIT). Families:

- ``BlipForConditionalGeneration``: prefix ``[DEC] + prompt``; layer ``vision_model``: the
  tower's output, its ``post_layernorm`` tokens (CLS first) that the text reads (the norm
  itself cannot be tapped: BLIP calls it twice, on the tokens and on the pooled CLS).
- ``GitForCausalLM``: prefix ``[CLS] + prompt``; layer ``git.image_encoder``: its output,
  the ``post_layernorm`` tokens (CLS first) that ``visual_projection`` reads; image tokens
  come first in the language model's sequence.
- ``VisionEncoderDecoderModel`` (ViT + GPT-2 and similar): prefix ``[decoder start]``; layer
  ``encoder.layers[-1]`` (ViT, CLS first) or the last Swin stage (no CLS).
- ``LlavaForConditionalGeneration``, ``PaliGemmaForConditionalGeneration``,
  ``Florence2ForConditionalGeneration``: a prompt or question laid out by the checkpoint's
  processor, then the reply (:class:`HFPromptedVLM`).

The adapter keeps no state between calls; the prompt is context, not explained.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from mmcam.engine import Readers
from mmcam.errors import MMCamError
from mmcam.geometry import Geometry
from mmcam.layers import Conv, Layout, Tokens, resolve_layer
from mmcam.models.hub import CONFIG, WEIGHTS, first_line, read_weights


@dataclass(frozen=True)
class Family:
    """Where a family's explained layer is and how it reads text."""

    layer: str
    layout: Layout
    text_kwarg: str  # the forward argument that takes the text ids
    before: str | None = None  # the block the default layer reads (first of the earlier ones)
    image: str | None = None  # the image encoder: an explained layer must be it or inside it


def _ved_family(model: nn.Module) -> Family:
    enc = model.encoder
    if hasattr(enc, "layers") and isinstance(enc.layers, nn.ModuleList):  # ViT-like (v5)
        prefix = 2 if "deit" in type(enc).__name__.lower() else 1
        return Family("encoder.layers[-1]", Tokens(prefix=prefix), "decoder_input_ids",
                      image="encoder")
    if hasattr(enc, "encoder") and hasattr(enc.encoder, "layers"):  # Swin: last stage
        return Family("encoder.encoder.layers[-1]", Tokens(prefix=0), "decoder_input_ids",
                      image="encoder")
    raise MMCamError(f"no default layer known for a {type(enc).__name__} encoder: pass layer=")


# BLIP: the vision tower's output, the post-LayerNorm tokens (CLS first) that the text
# reads. HiResCAM at the last block, in front of that LayerNorm, is only its eps term (README).
BLIP_FAMILY = Family("vision_model", Tokens(prefix=1), "input_ids",
                     "vision_model.encoder.layers[-1]", image="vision_model")
# GIT: the same, the image encoder's output (its post_layernorm tokens, CLS first).
GIT_FAMILY = Family("git.image_encoder", Tokens(prefix=1), "input_ids",
                    "git.image_encoder.vision_model.encoder.layers[-1]",
                    image="git.image_encoder")


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of a transformers captioning model."""
    name = arch(model)
    if name == "BlipForConditionalGeneration":
        return BLIP_FAMILY
    if name == "GitForCausalLM":
        return GIT_FAMILY
    if name == "VisionEncoderDecoderModel":
        return _ved_family(model)
    if name in PROMPTED:
        return _prompted_family(model)
    raise MMCamError(f"{name} is not a captioning family mmcam knows (BLIP, GIT, "
                     "VisionEncoderDecoder, LLaVA, PaliGemma, Florence-2)")


LLAVA = "LlavaForConditionalGeneration"
PALIGEMMA = "PaliGemmaForConditionalGeneration"
FLORENCE2 = "Florence2ForConditionalGeneration"
PROMPTED = (LLAVA, PALIGEMMA, FLORENCE2)
KNOWN = ("BlipForConditionalGeneration", "BlipForQuestionAnswering", "GitForCausalLM",
         "VisionEncoderDecoderModel", "ViltForQuestionAnswering", *PROMPTED)


def arch(model: nn.Module) -> str:
    """The model's class name, or the first class mmcam knows that it derives from (a
    checkpoint's own code, ``trust_remote_code``, subclassing e.g. BLIP is explained as
    BLIP)."""
    for c in type(model).__mro__:
        if c.__name__ in KNOWN:
            return c.__name__
    return type(model).__name__


def _llava_layer_index(config: Any, n_layers: int) -> int:
    """The tower block whose output LLaVA reads: ``hidden_states[k]`` is block ``k - 1``'s
    output for k > 0 and block ``k``'s for k < 0 (kept negative, as the config writes it).
    A list of layers is read at its earliest one: every listed layer depends on it, so its
    gradient holds all paths."""
    ks = config.vision_feature_layer
    ks = [int(k) for k in (ks if isinstance(ks, (list, tuple)) else [ks])]
    k = min(ks, key=lambda k: k if k >= 0 else n_layers + 1 + k)  # as hidden_states index
    h = k if k >= 0 else n_layers + 1 + k
    if not 1 <= h <= n_layers:
        raise MMCamError(f"vision_feature_layer {config.vision_feature_layer} reads no tower "
                         "block: pass layer=")
    return h - 1 if k > 0 else h - 1 - n_layers


def _prompted_family(model: nn.Module) -> Family:
    """LLaVA: the tower block ``vision_feature_layer`` names, CLS dropped when the tower has
    one (CLIP; with the "full" strategy the LM also reads CLS, but it is no grid cell);
    PaliGemma: the SigLIP tower's output, its post_layernorm tokens, no CLS (its last block
    feeds only that norm, where HiResCAM from float32 gradients is rounding noise);
    Florence-2: DaViT's last block, (B,C,h,w)."""
    name = arch(model)
    if name == FLORENCE2:
        return Family("model.vision_tower.blocks[-1][-1]", Conv(), "decoder_input_ids",
                      image="model.vision_tower")
    tower = model.model.vision_tower
    inner = "" if hasattr(tower, "encoder") else ".vision_model"
    vm = getattr(tower, "vision_model", tower)
    n = len(vm.encoder.layers)
    prefix = 1 if hasattr(vm.embeddings, "class_embedding") else 0
    if name == PALIGEMMA:  # the tower's output: SigLIP's post_layernorm tokens (as BLIP)
        return Family("model.vision_tower", Tokens(prefix=prefix), "input_ids",
                      f"model.vision_tower{inner}.encoder.layers[-1]",
                      image="model.vision_tower")
    index = _llava_layer_index(model.config, n)
    return Family(f"model.vision_tower{inner}.encoder.layers[{index}]", Tokens(prefix=prefix),
                  "input_ids", image="model.vision_tower")


def processor_geometry(image_processor: Any, size: tuple[int, int]) -> Geometry:
    """What a transformers image processor does to an image of ``size=(W,H)``: a resize to
    ``size={"height","width"}``, or the shorter side to ``shortest_edge`` (longer side
    truncated, as transformers computes it) followed by a centre crop to ``crop_size``."""
    g = Geometry.identity(size)
    s = getattr(image_processor, "size", None) or {}
    get = s.get if isinstance(s, dict) else (lambda k, d=None: getattr(s, k, d))
    if getattr(image_processor, "do_resize", True):
        if get("height") and get("width"):
            g = g.resize((int(get("width")), int(get("height"))))
        elif get("shortest_edge"):
            short = int(get("shortest_edge"))
            W, H = size
            if W <= H:
                g = g.resize((short, int(short * H / W)))
            else:
                g = g.resize((int(short * W / H), short))
    if getattr(image_processor, "do_center_crop", False):
        c = getattr(image_processor, "crop_size", None) or {}
        cget = c.get if isinstance(c, dict) else (lambda k, d=None: getattr(c, k, d))
        if cget("height") and cget("width"):
            g = g.center_crop((int(cget("width")), int(cget("height"))))
    return g


def pixels_geometry(image_processor: Any, size: tuple[int, int],
                    pixel_values: torch.Tensor) -> Geometry:
    """:func:`processor_geometry`, or a plain resize when it does not give the processed
    pixels' size."""
    geom = processor_geometry(image_processor, size)
    wh = (pixel_values.shape[-1], pixel_values.shape[-2])
    return geom if geom.input_size == wh else Geometry.identity(size).resize(wh)


def is_wordpiece(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` is WordPiece (``##`` continues a word) rather than a BPE or
    SentencePiece one (``Ġ`` / ``▁`` starts a word): its backend model, else its vocabulary."""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if model is not None:
        return type(model).__name__ == "WordPiece"
    return any(t.startswith("##") for t in tokenizer.get_vocab())


def unknown_words(tokenizer: Any, text: str) -> list[str]:
    """The whitespace words of ``text`` that the tokenizer reads as its unknown token."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", text)]
    unk = tokenizer.unk_token_id
    return sorted({w for (a, _), t in zip(enc["offset_mapping"], enc["input_ids"]) if t == unk
                   for s, e, w in spans if s <= a < e})


def pad_positions(logits: torch.Tensor, T: int) -> torch.Tensor:
    """(N,t,V) -> (N,T,V), positions t.. T-1 (not computed) filled with zeros."""
    n, t, v = logits.shape
    return logits if t == T else torch.cat([logits, logits.new_zeros(n, T - t, v)], dim=1)


def gather_logprobs(logits: torch.Tensor, ids: torch.Tensor,
                    last: torch.Tensor | None = None) -> torch.Tensor:
    """(N,T,V) logits, (N,T) ids -> (N,T) ``log_softmax(logits)[ids]``; 0 after ``max(last)``."""
    lp = logits.float().log_softmax(-1).gather(2, ids[..., None])[..., 0]
    if last is not None:
        lp = lp * (torch.arange(ids.shape[1], device=lp.device) <= int(last.max()))
    return lp


def _tower_readers(layer: nn.Module, tower: nn.Module, vm: nn.Module,
                   mods: tuple[nn.Module, ...]) -> Readers | None:
    """Readers of a vision tower whose last block ``vm.encoder.layers[-1]`` feeds only
    ``vm.post_layernorm``, whose output (the tower's, ``tower``) only ``mods`` read: at the
    tower's output no norm term, at the last block that norm; None at any other layer."""
    if not mods:
        return None
    if layer is tower:
        return Readers(tuple(mods), None)
    if layer is vm.encoder.layers[-1]:
        return Readers(tuple(mods), vm.post_layernorm)
    return None


def _cross_readers(text: nn.Module) -> tuple[nn.Module, ...]:
    """The key/value projections of every cross-attention of a BERT-like (``crossattention.
    self.key/value``) or GPT-2 (``crossattention.c_attn``) text model, in layer order."""
    out: list[nn.Module] = []
    for m in text.modules():
        cross = getattr(m, "crossattention", None)
        if cross is None:
            continue
        if hasattr(cross, "c_attn"):
            out.append(cross.c_attn)
        elif hasattr(cross, "self") and hasattr(cross.self, "key"):
            out += [cross.self.key, cross.self.value]
    return tuple(out)


class HFCaptioner:
    """A transformers captioning model (:func:`family_of`) with its processor.

    ``prompt`` (e.g. "a picture of") is read before the caption as context; it is not
    explained and is removed from generated captions.
    """

    def __init__(self, model: nn.Module, processor: Any, prompt: str | None = None,
                 family: Family | None = None) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", None) or processor
        self.family = family or family_of(model)
        self.layer, self.layout = self.family.layer, self.family.layout
        self.layer_before = self.family.before
        self.image_module = self.family.image
        self.prompt = prompt or ""
        self._wordpiece = is_wordpiece(self.tokenizer)

    # ------------------------------------------------------------------ inputs

    def prepare(self, image: Image.Image) -> tuple[dict[str, torch.Tensor], Geometry]:
        """RGB image -> ({"pixel_values"}, geometry) with the checkpoint's own processor."""
        ip = getattr(self.processor, "image_processor", self.processor)
        pv = ip(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        p = next(self.model.parameters())
        return {"pixel_values": pv.to(p.device, p.dtype)}, pixels_geometry(ip, image.size, pv)

    def _special(self, name: str) -> int | None:
        for src in (getattr(self.model.config, "text_config", None), self.model.config,
                    getattr(self.model.config, "decoder", None), self.tokenizer):
            v = getattr(src, name, None) if src is not None else None
            if isinstance(v, int):
                return v
        return None

    def _prefix(self) -> list[int]:
        name = arch(self.model)
        if name == "BlipForConditionalGeneration":
            start = self._special("bos_token_id")
        elif name == "GitForCausalLM":
            start = self.tokenizer.cls_token_id
        else:
            start = self._special("decoder_start_token_id")
        if start is None:
            raise MMCamError(f"{name}: no start token id in the config or tokenizer")
        prompt = self.tokenizer(self.prompt, add_special_tokens=False)["input_ids"] \
            if self.prompt.strip() else []
        return [int(start)] + list(prompt)

    def _ends(self) -> set[int]:
        ids = {self._special(n) for n in ("eos_token_id", "sep_token_id", "pad_token_id")}
        ids |= {self.tokenizer.sep_token_id, self.tokenizer.eos_token_id,
                self.tokenizer.pad_token_id}
        return {int(i) for i in ids if i is not None}

    # ------------------------------------------------------------------ scoring

    def token_logits(self, inputs: dict[str, torch.Tensor], token_ids: torch.Tensor,
                     last: torch.Tensor | None = None) -> torch.Tensor:
        """(N,T) -> (N,T,V): the logits (float32) that predict token t from the prefix and
        tokens_<t. ``last``: positions after ``max(last)`` are not computed (zeros)."""
        N, T = token_ids.shape
        t_used = T if last is None else int(last.max()) + 1
        prefix = torch.tensor(self._prefix(), device=token_ids.device)
        full = torch.cat([prefix.expand(N, -1), token_ids[:, :t_used]], dim=1)
        kw = {self.family.text_kwarg: full, "use_cache": False}
        logits = self.model(pixel_values=inputs["pixel_values"], **kw).logits
        shift = logits.shape[1] - full.shape[1]
        k = prefix.shape[0]
        return pad_positions(logits[:, shift + k - 1: shift + k - 1 + t_used].float(), T)

    def score_tokens(self, inputs: dict[str, torch.Tensor], token_ids: torch.Tensor,
                     last: torch.Tensor | None = None) -> torch.Tensor:
        """(N,T) -> (N,T): log p(token_t | prefix, tokens_<t, image), in float32.

        ``last``: positions after ``max(last)`` are not computed (returned as 0).
        """
        return gather_logprobs(self.token_logits(inputs, token_ids, last), token_ids, last)

    def word_ids(self, word: str) -> list[int]:
        """The ids of ``word`` as it reads inside a sentence (after a space)."""
        text = word if self._wordpiece else " " + word
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def generate(self, inputs: dict[str, torch.Tensor], max_len: int = 20,
                 beam_size: int = 1, min_len: int = 0) -> torch.Tensor:
        """Caption ids (1,T): the model's own ``generate`` (greedy or beam search, at least
        ``min_len`` new tokens), with the start token and prompt removed and cut at the first
        end/padding token."""
        prefix = self._prefix()
        dev = inputs["pixel_values"].device
        kw: dict[str, Any] = {"max_new_tokens": max_len, "num_beams": beam_size,
                              "do_sample": False, "min_new_tokens": min_len}
        name = arch(self.model)
        if name == "BlipForConditionalGeneration":  # BLIP's generate drops a trailing [SEP]
            sep = self.tokenizer.sep_token_id
            kw["input_ids"] = torch.tensor([prefix + [sep if sep is not None else 0]], device=dev)
        elif name == "GitForCausalLM":
            kw["input_ids"] = torch.tensor([prefix], device=dev)
        out = self.model.generate(pixel_values=inputs["pixel_values"], **kw)[0].tolist()
        if out[: len(prefix)] == prefix:
            out = out[len(prefix):]
        elif out[:1] == prefix[:1]:
            out = out[1:]
        ends = self._ends()
        ids = []
        for t in out:
            if t in ends:
                break
            ids.append(t)
        return torch.tensor([ids], dtype=torch.long)

    def readers(self, layer: nn.Module) -> Readers | None:
        """The modules through which alone ``layer`` reaches the text (the "readers"
        strategy, :mod:`mmcam.engine`): for BLIP's default (the vision tower's output), each
        text layer's cross-attention key and value projections, and for its last vision block
        ``post_layernorm`` then those; for GIT's default (the image encoder's output), the
        first linear layer of ``visual_projection``, and for its last vision block
        ``post_layernorm`` then that; the same for PaliGemma with its projector's linear
        layer; for VisionEncoderDecoder's default (the last encoder
        block), the encoder's final ``layernorm`` then ``enc_to_dec_proj`` or each decoder
        layer's cross-attention key/value projections (BERT-like or GPT-2). None for other
        families and layers."""
        name = arch(self.model)
        if name in ("BlipForConditionalGeneration", "BlipForQuestionAnswering"):
            text = (self.model.text_decoder.bert if name == "BlipForConditionalGeneration"
                    else self.model.text_encoder)
            vm = self.model.vision_model
            return _tower_readers(layer, vm, vm, _cross_readers(text))
        if name == PALIGEMMA:
            tower = self.model.model.vision_tower
            return _tower_readers(layer, tower, getattr(tower, "vision_model", tower),
                                  (self.model.model.multi_modal_projector.linear,))
        if name == "GitForCausalLM":
            enc = self.model.git.image_encoder
            return _tower_readers(layer, enc, enc.vision_model,
                                  (self.model.git.visual_projection.visual_projection[0],))
        if name == "VisionEncoderDecoderModel":
            norm = getattr(self.model.encoder, "layernorm", None)
            if not isinstance(norm, nn.LayerNorm) or layer is not resolve_layer(
                    self.model, self.family.layer):
                return None
            proj = getattr(self.model, "enc_to_dec_proj", None)
            mods = (proj,) if isinstance(proj, nn.Linear) else _cross_readers(self.model.decoder)
            return Readers(mods, norm) if mods else None
        return None

    # ------------------------------------------------------------------ words

    def tokenize(self, text: str) -> torch.Tensor:
        """Caption text -> ids (T,), no special tokens."""
        return torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"],
                            dtype=torch.long)

    def unknown_words(self, text: str) -> list[str]:
        """The whitespace words of a caption that the tokenizer reads as its unknown token."""
        if getattr(self.tokenizer, "unk_token_id", None) is None:
            return []
        return unknown_words(self.tokenizer, text)

    def word_groups(self, token_ids: torch.Tensor, text: str | None = None
                    ) -> tuple[list[str], list[int]]:
        """(word labels, word index of every token).

        With the caption's ``text``: each token belongs to the whitespace word holding its
        first non-space character (offsets), and labels are the text's words. Without it
        (generated captions): a WordPiece ``##`` token continues a word; a byte-level BPE or
        SentencePiece token starts one when it begins with ``Ġ`` or ``▁``; labels are the
        decoded tokens of each word.
        """
        ids = [int(i) for i in token_ids.reshape(-1)]
        if text is not None:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            if list(enc["input_ids"]) == ids:
                spans = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", text)]
                index, prev = [], 0
                for a, b in enc["offset_mapping"]:
                    piece = text[a:b]
                    first = a + (len(piece) - len(piece.lstrip())) if b > a else None
                    w = prev if first is None else next(
                        (k for k, (s, e, _) in enumerate(spans) if s <= first < e), prev)
                    index.append(w)
                    prev = w
                used = sorted(set(index))
                remap = {w: k for k, w in enumerate(used)}
                return [spans[w][2] for w in used], [remap[w] for w in index]
        toks = self.tokenizer.convert_ids_to_tokens(ids)
        index, w = [], -1
        for k, t in enumerate(toks):
            starts = (not t.startswith("##")) if self._wordpiece else (
                k == 0 or t.startswith(("Ġ", "▁")))
            w += 1 if (starts or w < 0) else 0
            index.append(w)
        labels = []
        for g in range(w + 1):
            part = [i for i, x in zip(ids, index) if x == g]
            labels.append(self.tokenizer.decode(part).strip() or "?")
        return labels, index

    def words(self, token_ids: torch.Tensor) -> list[str]:
        """Word labels of ``token_ids`` (sub-tokens merged)."""
        return self.word_groups(token_ids)[0]

    def word_index(self, token_ids: torch.Tensor) -> list[int]:
        """Word index of every token."""
        return self.word_groups(token_ids)[1]


class HFAnswerer(HFCaptioner):
    """Answers generated as text and explained as text: ``BlipForQuestionAnswering`` and
    ``GitForCausalLM`` (VQA checkpoints).

    An answer's score is ``log p(answer tokens + [SEP] | question, image)``.
    BLIP: the vision tower, then the text encoder reads ``[CLS] question [SEP]``
    cross-attending the image, then the text decoder reads ``[DEC] + answer`` cross-attending
    the question's encoding (the model's ``forward`` returns no logits, so the parts are run in
    that order). GIT: one causal sequence ``[image tokens] [CLS] question answer``.
    """

    def __init__(self, model: nn.Module, processor: Any) -> None:
        name = arch(model)
        if name not in ("BlipForQuestionAnswering", "GitForCausalLM"):
            raise MMCamError(f"{name} does not answer questions: mmcam's VQA families are "
                             "BlipForQuestionAnswering, GIT VQA checkpoints (GitForCausalLM), "
                             "ViLT, LLaVA, PaliGemma and Florence-2")
        self.git = name == "GitForCausalLM"
        super().__init__(model, processor,
                         family=family_of(model) if self.git else BLIP_FAMILY)

    def tokenize_question(self, question: str) -> tuple[torch.Tensor, list[str]]:
        """BLIP ``[CLS] question [SEP]``, GIT ``[CLS] question`` ids, and the question words
        the vocabulary lacks."""
        ids = self.tokenizer(question)["input_ids"]
        return (torch.tensor(ids[:-1] if self.git else ids, dtype=torch.long),
                unknown_words(self.tokenizer, question))

    def tokenize_answer(self, text: str) -> torch.Tensor:
        """Answer text -> ids (T+1,) ending with the end token ([SEP])."""
        return torch.cat([self.tokenize(text), torch.tensor([self.tokenizer.sep_token_id])])

    def decode_answer(self, ids: torch.Tensor) -> str:
        """Answer ids -> text (special tokens dropped)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()

    def _question_states(self, inputs: dict[str, torch.Tensor], question_ids: torch.Tensor,
                         n: int) -> torch.Tensor:
        img = self.model.vision_model(pixel_values=inputs["pixel_values"])[0]
        q = question_ids.reshape(1, -1).to(img.device).expand(img.shape[0], -1)
        enc = self.model.text_encoder(
            input_ids=q, encoder_hidden_states=img,
            encoder_attention_mask=torch.ones(img.shape[:2], dtype=torch.long,
                                              device=img.device))[0]
        return enc.expand(n, -1, -1) if enc.shape[0] == 1 and n > 1 else enc

    def answer_token_logits(self, inputs: dict[str, torch.Tensor], question_ids: torch.Tensor,
                            answer_ids: torch.Tensor, last: torch.Tensor | None = None
                            ) -> torch.Tensor:
        """(N,T) answer ids (each ending with [SEP], then padding) -> (N,T,V) logits
        (float32) predicting each answer token."""
        N, T = answer_ids.shape
        if self.git:
            q = question_ids.reshape(1, -1).to(answer_ids.device)
            full = torch.cat([q.expand(N, -1), answer_ids], dim=1)
            logits = self.model(pixel_values=inputs["pixel_values"], input_ids=full,
                                use_cache=False).logits
            first = logits.shape[1] - full.shape[1] + q.shape[1] - 1
            return logits[:, first: first + T].float()
        qs = self._question_states(inputs, question_ids, N)
        start = torch.full((N, 1), self._special("bos_token_id"), dtype=torch.long,
                           device=answer_ids.device)
        dec_in = torch.cat([start, answer_ids[:, :-1]], dim=1)
        return self.model.text_decoder(
            input_ids=dec_in, encoder_hidden_states=qs,
            encoder_attention_mask=torch.ones(qs.shape[:2], dtype=torch.long, device=qs.device),
            use_cache=False).logits.float()

    def score_answer_tokens(self, inputs: dict[str, torch.Tensor], question_ids: torch.Tensor,
                            answer_ids: torch.Tensor, last: torch.Tensor | None = None
                            ) -> torch.Tensor:
        """(N,T) answer ids (each ending with [SEP], then padding) -> (N,T) log-probs."""
        return gather_logprobs(self.answer_token_logits(inputs, question_ids, answer_ids),
                               answer_ids)

    @torch.no_grad()
    def generate_answers(self, inputs: dict[str, torch.Tensor], question_ids: torch.Tensor,
                         k: int = 5, max_len: int = 10) -> list[torch.Tensor]:
        """Up to ``k`` distinct answers by beam search, best first, each ending with [SEP]."""
        ends, sep = self._ends(), self.tokenizer.sep_token_id
        # answers are words: no special token but the end may be generated
        specials = sorted(set(self.tokenizer.all_special_ids) - {sep})
        out = self.model.generate(
            input_ids=question_ids.reshape(1, -1).to(inputs["pixel_values"].device),
            pixel_values=inputs["pixel_values"], max_new_tokens=max_len, num_beams=max(k, 1),
            num_return_sequences=max(k, 1), do_sample=False, suppress_tokens=specials)
        answers, seen = [], set()
        q = question_ids.tolist()
        for row in out.tolist():
            if self.git:
                row = row[len(q):] if row[: len(q)] == q else row
            row = row[1:] if row[:1] == [self._special("bos_token_id")] and not self.git else row
            ids = []
            for t in row:
                if t in ends:
                    break
                ids.append(t)
            if ids and tuple(ids) not in seen:
                seen.add(tuple(ids))
                answers.append(torch.tensor(ids + [sep], dtype=torch.long))
        return answers


class HFPromptedVLM(HFCaptioner):
    """LLaVA, PaliGemma and Florence-2: a prompt (an instruction or a question) laid out by
    the checkpoint's own processor, then the reply, explained as a caption (every word, with
    :class:`mmcam.CaptionExplainer`; ``prompt`` is the instruction) or as an answer
    (:class:`mmcam.VQAExplainer`; the question is the prompt).

    - LLaVA: the processor's chat template (llava-1.5: ``USER: <image>\\n{q} ASSISTANT:``, else
      that text), ``<s>`` and the ``<image>`` placeholders expanded; the reply follows, ends
      with ``</s>``. Layer: the tower block ``vision_feature_layer`` names (the last block is
      computed but never read).
    - PaliGemma: ``<image>``x n + ``<bos>`` + prompt + ``\\n``, then the reply + ``<eos>``
      (the processor's ``suffix=`` layout); ``token_type_ids`` 0 on the prompt (attended both
      ways), 1 on the reply (causal).
    - Florence-2: encoder ids ``<image>``x(h*w+1) + ``<s>`` + prompt + ``</s>`` (the processor
      maps task tokens such as "<CAPTION>" to their text); decoder ids ``</s> <s>`` + reply.

    The placeholders are laid out on a blank image, then re-expanded to the count the
    processor gives the explained image (recorded by :meth:`prepare`). Reply token j is
    scored by ``log_softmax(logits)`` at the position before it.
    """

    DEFAULT_PROMPTS = {LLAVA: "Describe the image.", PALIGEMMA: "caption en",
                       FLORENCE2: "<CAPTION>"}

    def __init__(self, model: nn.Module, processor: Any, prompt: str | None = None) -> None:
        name = arch(model)
        if name not in PROMPTED:
            raise MMCamError(f"{name} is not LLaVA, PaliGemma or Florence-2")
        super().__init__(model, processor, prompt=prompt or self.DEFAULT_PROMPTS[name],
                         family=family_of(model))
        self.arch = name  # the transformers class name
        self.seq2seq = name == FLORENCE2
        self.image_token_id = int(model.config.image_token_id)

    # ------------------------------------------------------------------ prompts

    def _prompt_text(self, text: str) -> str:
        """What the processor reads for the user's ``text``."""
        image = self.processor.image_token
        if self.arch == LLAVA:
            if getattr(self.processor, "chat_template", None):
                turn = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": text}]}]
                return self.processor.apply_chat_template(turn, add_generation_prompt=True)
            return f"USER: {image}\n{text} ASSISTANT:"
        if self.arch == PALIGEMMA:
            return image + text
        return text  # Florence-2: the processor adds the image, <s>, </s> and task texts

    def _processed(self, image: Image.Image, text: str) -> Any:
        """The processor's output for ``image`` and the prompt ``text``."""
        return self.processor(images=image.convert("RGB"), text=self._prompt_text(text),
                              return_tensors="pt")

    def _prompt_ids(self, text: str) -> list[int]:
        """The prompt's ids as the processor lays them out for a blank 64x64 image."""
        return self._processed(Image.new("RGB", (64, 64)), text)["input_ids"][0].tolist()

    def _prefix(self) -> list[int]:
        """The caption prompt's ids (LLaVA/PaliGemma: the whole sequence before the reply;
        Florence-2: the encoder's)."""
        return self._prompt_ids(self.prompt)

    def _decoder_prefix(self) -> list[int]:
        """Florence-2's decoder ids before the reply: ``</s>`` (decoder start), ``<s>``."""
        start, bos = self._special("decoder_start_token_id"), self.tokenizer.bos_token_id
        if start is None or bos is None:
            raise MMCamError(f"{self.arch}: no decoder start or <s> token id")
        return [int(start), int(bos)]

    def _expand(self, ids: list[int], n: int | None) -> list[int]:
        """``ids`` with its run of image placeholders resized to ``n``."""
        tok = self.image_token_id
        k = ids.count(tok)
        if n is None or k == n:
            return ids
        first = ids.index(tok) if k else -1
        if k == 0 or ids[first:first + k] != [tok] * k:
            raise MMCamError(f"{self.arch}: the prompt ids hold no single run of image "
                             "placeholders; build them with tokenize_question")
        return ids[:first] + [tok] * n + ids[first + k:]

    def prepare(self, image: Image.Image) -> tuple[dict[str, Any], Geometry]:
        """RGB image -> ({"pixel_values", "image_tokens"}, geometry): the processor's pixels
        and its count of image placeholders for this image."""
        enc = self._processed(image, self.prompt)
        pv = enc["pixel_values"]
        p = next(self.model.parameters())
        n = int((enc["input_ids"][0] == self.image_token_id).sum())
        return ({"pixel_values": pv.to(p.device, p.dtype), "image_tokens": n},
                pixels_geometry(self.processor.image_processor, image.size, pv))

    # ------------------------------------------------------------------ scoring

    def _logits(self, inputs: dict[str, Any], prompt: torch.Tensor | list[int],
                targets: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
        """(N,T) reply ids after ``prompt`` -> (N,T,V) logits in float32 predicting them
        (positions after ``max(last)`` are not computed: zeros)."""
        N, T = targets.shape
        t_used = T if last is None else int(last.max()) + 1
        if t_used == 0:
            V = self.model.get_output_embeddings().weight.shape[0]
            return torch.zeros(N, T, V, device=targets.device)
        tgt = targets[:, :t_used]
        if bool((tgt == self.image_token_id).any()):
            raise MMCamError("the text holds the image placeholder token: remove it")
        dev = targets.device
        ids = self._expand([int(i) for i in torch.as_tensor(prompt).reshape(-1)],
                           inputs.get("image_tokens"))
        p = torch.tensor(ids, dtype=torch.long, device=dev).expand(N, -1)
        if self.seq2seq:  # the decoder reads </s> <s> + reply; the encoder the prompt
            start = torch.tensor(self._decoder_prefix(), device=dev).expand(N, -1)
            kw = {"input_ids": p, "decoder_input_ids": torch.cat([start, tgt[:, :-1]], 1)}
        else:
            kw = {"input_ids": torch.cat([p, tgt[:, :-1]], 1)}
            if self.arch == PALIGEMMA:
                kw["token_type_ids"] = torch.cat([torch.zeros_like(p), torch.ones_like(
                    tgt[:, :-1])], 1)
        logits = self.model(pixel_values=inputs["pixel_values"], use_cache=False,
                            logits_to_keep=t_used, **kw).logits[:, -t_used:]
        return pad_positions(logits.float(), T)

    def token_logits(self, inputs: dict[str, Any], token_ids: torch.Tensor,
                     last: torch.Tensor | None = None) -> torch.Tensor:
        """(N,T) -> (N,T,V): the logits predicting each reply token after the prompt."""
        return self._logits(inputs, self._prefix(), token_ids, last)

    def score_tokens(self, inputs: dict[str, Any], token_ids: torch.Tensor,
                     last: torch.Tensor | None = None) -> torch.Tensor:
        """(N,T) -> (N,T): log p(token_t | prompt, tokens_<t, image), in float32."""
        return gather_logprobs(self.token_logits(inputs, token_ids, last), token_ids, last)

    def answer_token_logits(self, inputs: dict[str, Any], question_ids: torch.Tensor,
                            answer_ids: torch.Tensor, last: torch.Tensor | None = None
                            ) -> torch.Tensor:
        """(N,T) answer ids -> (N,T,V) logits predicting each answer token."""
        return self._logits(inputs, question_ids, answer_ids, last)

    def score_answer_tokens(self, inputs: dict[str, Any], question_ids: torch.Tensor,
                            answer_ids: torch.Tensor, last: torch.Tensor | None = None
                            ) -> torch.Tensor:
        """(N,T) answer ids (each ending with the end token, then padding) -> (N,T)
        log-probs."""
        return gather_logprobs(self.answer_token_logits(inputs, question_ids, answer_ids,
                                                        last), answer_ids, last)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def _generate(self, inputs: dict[str, Any], prompt: list[int], max_len: int, beams: int,
                  k: int = 1, min_len: int = 0) -> list[list[int]]:
        """Replies by the model's ``generate`` (special tokens other than the end
        suppressed), each cut at its first end/padding token."""
        dev = inputs["pixel_values"].device
        ids = torch.tensor([self._expand(list(prompt), inputs.get("image_tokens"))], device=dev)
        end = self.tokenizer.eos_token_id
        kw: dict[str, Any] = {
            "input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": inputs["pixel_values"], "max_new_tokens": max_len,
            "num_beams": max(beams, k), "num_return_sequences": k, "do_sample": False,
            "min_new_tokens": min_len,
            "suppress_tokens": sorted(set(self.tokenizer.all_special_ids) - {end})}
        if self.seq2seq:
            kw["decoder_input_ids"] = torch.tensor([self._decoder_prefix()], device=dev)
        if self.arch == PALIGEMMA:
            kw["token_type_ids"] = torch.zeros_like(ids)
        skip = len(kw["decoder_input_ids"][0]) if self.seq2seq else ids.shape[1]
        ends, out = self._ends(), []
        for row in self.model.generate(**kw).tolist():
            reply = []
            for t in row[skip:]:
                if t in ends:
                    break
                reply.append(t)
            out.append(reply)
        return out

    def generate(self, inputs: dict[str, Any], max_len: int = 20, beam_size: int = 1,
                 min_len: int = 0) -> torch.Tensor:
        """The reply (1,T) to ``prompt``: greedy or beam search, at least ``min_len`` tokens,
        prompt and end token removed."""
        reply = self._generate(inputs, self._prefix(), max_len, beam_size, min_len=min_len)[0]
        return torch.tensor([reply], dtype=torch.long)

    def generate_answers(self, inputs: dict[str, Any], question_ids: torch.Tensor, k: int = 5,
                         max_len: int = 10) -> list[torch.Tensor]:
        """Up to ``k`` distinct non-empty answers by beam search, best first, each ending
        with the end token."""
        rows = self._generate(inputs, [int(i) for i in question_ids.reshape(-1)], max_len,
                              max(k, 1), k=max(k, 1), min_len=1)
        seen: set[tuple[int, ...]] = set()
        answers = []
        for r in rows:
            if r and tuple(r) not in seen:
                seen.add(tuple(r))
                answers.append(torch.tensor(r + [self.tokenizer.eos_token_id]))
        return answers

    # ------------------------------------------------------------------ text

    def tokenize_question(self, question: str) -> tuple[torch.Tensor, list[str]]:
        """The processor's ids for the question as the prompt, and the question words the
        vocabulary lacks."""
        return (torch.tensor(self._prompt_ids(question), dtype=torch.long),
                unknown_words(self.tokenizer, question))

    def tokenize_answer(self, text: str) -> torch.Tensor:
        """Answer text -> ids (T+1,) ending with the end token."""
        return torch.cat([self.tokenize(text), torch.tensor([self.tokenizer.eos_token_id])])

    def decode_answer(self, ids: torch.Tensor) -> str:
        """Answer ids -> text (special tokens dropped)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()


VILT_SEED = 0


_VILT_RNG = threading.RLock()  # serializes the seeded ViLT forwards of all threads


class HFVilt:
    """``ViltForQuestionAnswering``: a classifier over its answer labels.

    The explained score is ``log_softmax(logits)[answer]`` (mmcam's VQA contract; VQAv2 heads
    are trained with a sigmoid per answer, so probabilities are relative to the listed
    answers). The default layer is the block before the last: the pooler reads only token 0,
    so the last block's patch tokens get exactly zero gradient. ViLT samples its patch order
    at random on every forward; mmcam runs every forward with the CPU generator seeded to
    ``VILT_SEED`` (restored afterwards), records that order once in ``prepare`` and scatters
    the patch tokens back to their (row, col) with it. Layer tokens: text, image CLS, patches.
    """

    def __init__(self, model: nn.Module, processor: Any) -> None:
        self.model, self.processor = model, processor
        self.tokenizer = processor.tokenizer
        n = model.config.num_labels
        self.answers = [str(model.config.id2label[i]) for i in range(n)]
        self.layer = f"vilt.encoder.layer[{len(model.vilt.encoder.layer) - 2}]" \
            if len(model.vilt.encoder.layer) > 1 else "vilt.encoder.layer[0]"
        from mmcam.layers import Custom

        self.layout = Custom(self._grid)

    @staticmethod
    def _grid(x: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """(B, L + 1 + n, D) -> (B, D, h, w): patch k goes to cell ``inputs["patches"][k]``."""
        rows, cols = inputs["patches"].to(x.device).unbind(-1)
        h, w = inputs["grid"]
        n = rows.shape[0]
        grid = x.new_zeros(x.shape[0], x.shape[2], h, w)
        grid[:, :, rows, cols] = x[:, -n:].transpose(1, 2)
        return grid

    def _seeded(self, fn: Any) -> Any:
        """``fn()`` with the CPU generator seeded to ``VILT_SEED`` and restored afterwards;
        one thread at a time (the generator is global: another thread's seeding or restoring
        in between would change the patch order)."""
        with _VILT_RNG, torch.random.fork_rng(devices=[]):
            torch.manual_seed(VILT_SEED)
            return fn()

    def prepare(self, image: Image.Image) -> tuple[dict[str, Any], Geometry]:
        """Pixels, pixel mask and the patch order the seeded forward will use."""
        enc = self.processor.image_processor(images=image.convert("RGB"), return_tensors="pt")
        p = next(self.model.parameters())
        pv = enc["pixel_values"].to(p.device, p.dtype)
        pm = enc["pixel_mask"].to(p.device)
        limit = self.model.config.max_image_length
        with torch.no_grad():
            _, _, (index, grid) = self._seeded(
                lambda: self.model.vilt.embeddings.visual_embed(pv, pm, max_image_length=limit))
        geom = Geometry.identity(image.size).resize((pv.shape[-1], pv.shape[-2]))
        return {"pixel_values": pv, "pixel_mask": pm, "patches": index[0].cpu(),
                "grid": tuple(int(g) for g in grid)}, geom

    def tokenize_question(self, question: str) -> tuple[torch.Tensor, list[str]]:
        """``[CLS] question [SEP]`` ids and the words the vocabulary lacks."""
        ids = self.tokenizer(question)["input_ids"]
        return torch.tensor(ids, dtype=torch.long), unknown_words(self.tokenizer, question)

    def score_answers(self, inputs: dict[str, Any], question_ids: torch.Tensor) -> torch.Tensor:
        """(N,L) question ids -> (N, n_answers) log-probabilities over ``answers``."""
        return self.answer_logits(inputs, question_ids).log_softmax(-1)

    def answer_logits(self, inputs: dict[str, Any], question_ids: torch.Tensor) -> torch.Tensor:
        """(N,L) question ids -> (N, n_answers) logits (float32). Rows that share one
        question run as one forward (the image joins the text before any layer)."""
        q = question_ids
        same = bool((q == q[:1]).all())
        run = q[:1] if same else q
        pv, pm = inputs["pixel_values"], inputs["pixel_mask"]
        if run.shape[0] > 1:
            pv, pm = pv.expand(run.shape[0], -1, -1, -1), pm.expand(run.shape[0], -1, -1)
        logits = self._seeded(lambda: self.model(
            input_ids=run, attention_mask=torch.ones_like(run), pixel_values=pv,
            pixel_mask=pm).logits).float()
        return logits.expand(q.shape[0], -1) if logits.shape[0] == 1 and q.shape[0] > 1 \
            else logits


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Processor:
    """An image processor and a tokenizer loaded separately."""

    image_processor: Any
    tokenizer: Any


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
              "all_proxy")


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub's host (``HF_ENDPOINT``, default huggingface.co) cannot be reached, or
    None: one name lookup and one TCP connection, at most ``timeout`` seconds, instead of
    huggingface_hub's retries (about 25 s before an unreachable hub fails). Not probed (None)
    behind a proxy, where only the proxy can tell."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in PROXY_VARS):
        return None
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"{host} cannot be reached ({e.strerror or e})"
    return None


CUSTOM_CODE = ("{src} runs Python code shipped with the checkpoint (auto_map in its config): "
               "load it with trust_remote_code=True (command line: --trust-remote-code) only "
               "if you trust where it comes from")


def _model_class(transformers: Any, config: Any, src: str, trust_remote_code: bool,
                 get: Any) -> Any:
    """The class to load: the first of the config's ``architectures`` that transformers has
    and the checkpoint does not bring itself; else, with ``trust_remote_code``, the
    checkpoint's own class named in its ``auto_map`` (``get(fn)`` reads from the folder or
    the cache)."""
    archs = getattr(config, "architectures", None) or []
    auto = getattr(config, "auto_map", None) or {}
    if not isinstance(archs, (list, tuple)) or not all(isinstance(a, str) for a in archs):
        raise MMCamError(f"{src}: 'architectures' in {CONFIG} must be a list of class names, "
                         f"got {archs!r}"[:300])
    if not isinstance(auto, dict):
        raise MMCamError(f"{src}: 'auto_map' in {CONFIG} must be an object, got {auto!r}"[:300])
    archs = list(archs)
    own = [a for a in archs if any(str(v).split(".")[-1] == a for v in auto.values())]
    native = next((getattr(transformers, a) for a in archs
                   if hasattr(transformers, a) and a not in own), None)
    if native is not None:
        return native
    if own and not trust_remote_code:
        raise MMCamError(CUSTOM_CODE.format(src=src))
    if own:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        ref = next(str(v) for v in auto.values() if str(v).split(".")[-1] == own[0])
        return get(lambda path, **kw: get_class_from_dynamic_module(ref, path, **kw))
    raise MMCamError(f"{src}: config.json names no transformers class mmcam can load "
                     f"({archs or 'no architectures'})")


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_restore: tuple[bool, bool] = (False, False)


@contextmanager
def _quiet() -> Iterator[None]:
    """Transformers' progress bars off (``transformers.utils.logging.disable_progress_bar``)
    while local files load: a folder loads in a moment, and the bar made every error message
    and every run's stderr several lines. The previous state (transformers' switch and
    huggingface_hub's) is set back when the last of overlapping loads ends."""
    global _quiet_depth, _quiet_restore
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as tlog

    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_restore = (tlog.is_progress_bar_enabled(), are_progress_bars_disabled())
            if _quiet_restore[0]:
                tlog.disable_progress_bar()
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _quiet_restore[0]:
                tlog.enable_progress_bar()  # also turns huggingface_hub's bars on
                if _quiet_restore[1]:
                    disable_progress_bars()


def _strict_errors() -> tuple[type[BaseException], ...]:
    """huggingface_hub's config validation errors (recent versions), which derive from
    ``Exception`` only."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return ()
    return (StrictDataclassError,)


def _config_problem(where: Any, e: BaseException) -> str:
    """One line for a ``config.json`` transformers refused: the field and its value when the
    error names them (not the Python type list of the validation message)."""
    text = str(e)
    field = re.search(r"[Ff]ield '([^']+)'", text)
    if field:
        value = re.search(r"with value (.*?) doesn't match|\(value: (.*?)\)", text)
        shown = next((v for v in value.groups() if v is not None), "")[:80] if value else ""
        return f"{where}: {field.group(1)!r} has a wrong value" + (f" ({shown})" if shown else "")
    return f"{where}: not a transformers checkpoint mmcam can read ({first_line(e)})"


def _check_weights(folder: Path) -> None:
    """A folder's ``model.safetensors`` is there and its header reads (the same check and
    message as mmcam's own model folders, :func:`mmcam.models.hub.read_weights`); sharded or
    PyTorch weights are left to transformers."""
    others = ("model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    if (folder / WEIGHTS).is_file() or not any((folder / n).is_file() for n in others):
        read_weights(folder, load=False)


_LIBRARY_LOGGER = "transformers"
_log_lock = threading.Lock()
_log_holds: dict[int, list[logging.LogRecord]] = {}  # thread id -> its held records
_log_saved: tuple[list[logging.Handler], bool] = ([], False)


def _pass_on(record: logging.LogRecord) -> None:
    """Give ``record`` to the handlers transformers' logger had before records were held
    (and its parents' when it propagated), as ``logging.Logger.callHandlers`` would."""
    handlers, propagate = _log_saved
    for h in handlers:
        if record.levelno >= h.level:
            h.handle(record)
    parent = logging.getLogger(_LIBRARY_LOGGER).parent if propagate else None
    while parent is not None:
        for h in parent.handlers:
            if record.levelno >= h.level:
                h.handle(record)
        parent = parent.parent if parent.propagate else None


class _Hold(logging.Handler):
    """Stands in for transformers' log handlers while checkpoints load: records of a loading
    thread are held, others passed on at once."""

    def emit(self, record: logging.LogRecord) -> None:
        held = _log_holds.get(record.thread or 0)
        if held is not None:
            held.append(record)
        else:
            _pass_on(record)


_HOLD = _Hold()


@contextmanager
def _held_logs() -> Iterator[list[logging.LogRecord]]:
    """Hold what transformers logs in this thread while a checkpoint loads: its load report
    (many lines) comes before the error it raises when the weights do not fit the config.
    If the load succeeds, the records are passed on as usual; if it fails, they are dropped
    (the one-line :class:`MMCamError` says what was wrong). The logger's handlers are set back
    when the last of overlapping loads ends."""
    global _log_saved
    from transformers.utils import logging as tlog

    lg = tlog.get_logger(_LIBRARY_LOGGER)  # set up (handler, propagation) before it is held
    held: list[logging.LogRecord] = []
    me = threading.get_ident()
    with _log_lock:
        if not _log_holds:
            _log_saved = (list(lg.handlers), lg.propagate)
            lg.handlers = [_HOLD]
            lg.propagate = False
        _log_holds[me] = held
    ok = False
    try:
        yield held
        ok = True
    finally:
        with _log_lock:
            del _log_holds[me]
            saved = _log_saved
            if not _log_holds:
                lg.handlers = saved[0] + [h for h in lg.handlers if h is not _HOLD]
                lg.propagate = saved[1]
            if ok:
                for record in held:
                    _pass_on(record)


def _mismatch(e: BaseException, held: list[logging.LogRecord]) -> str | None:
    """The first "size mismatch" line of ``e`` (transformers 4) or of the load report logged
    before it (transformers 5), tidied to ``key: ckpt [..] vs model [..]``; None if none."""
    for text in [str(e), *(r.getMessage() for r in held)]:
        for line in text.splitlines():
            if "size mismatch" in line.lower():
                line = re.sub(r"\x1b\[[0-9;]*m", "", line)
                if "|" in line:
                    cells = [c.strip() for c in line.split("|")]
                    line = f"{cells[0]}: {cells[-1]}"
                line = re.sub(r"torch\.Size\((\[[^\]]*\])\)", r"\1", line)
                line = re.sub(r"(\w):\[", r"\1: [", line.replace("Reinit due to ", ""))
                return " ".join(line.split())[:200]
    return None


@contextmanager
def _loading(what: str, held: list[logging.LogRecord] | None = None,
             unfit: str | None = None) -> Iterator[None]:
    """Errors transformers raises on a damaged checkpoint become one :class:`MMCamError`
    line: ``what`` and the error's first line, or, when weights do not fit the config (a size
    mismatch in the error or in the ``held`` load report), ``unfit`` (the weights) and the
    first mismatch, as for mmcam's own model folders."""
    from safetensors import SafetensorError

    try:
        yield
    except MMCamError:
        raise
    except (OSError, SafetensorError, RuntimeError, ValueError, TypeError, KeyError,
            AttributeError, IndexError, *_strict_errors()) as e:
        mismatch = _mismatch(e, held or []) if unfit else None
        if mismatch:
            raise MMCamError(f"cannot load weights {unfit}: they do not fit {CONFIG} "
                             f"({mismatch})") from None
        raise MMCamError(f"{what}: {first_line(e)}"[:400]) from None


def _check_tokenizer(tokenizer: Any, src: str) -> None:
    """Refuse a tokenizer that knows only its special tokens: transformers makes one when a
    folder lacks its tokenizer files (``tokenizer.json``, ``vocab.txt``, ...)."""
    try:
        words = set(tokenizer.get_vocab()) - set(tokenizer.all_special_tokens)
    except (AttributeError, NotImplementedError, TypeError):
        return
    if not words:
        raise MMCamError(f"{src} holds no tokenizer: the one transformers made knows only "
                         "special tokens (tokenizer.json, vocab.txt or the like are missing)")


def _load_processor(transformers: Any, get: Callable, src: str,
                    trust_remote_code: bool) -> Any:
    """The checkpoint's processor, or its image processor and tokenizer joined in a
    :class:`Processor` (checkpoints such as vit-gpt2 keep no processor); its tokenizer must
    know some words (:func:`_check_tokenizer`)."""
    with _loading(f"cannot load the processor (tokenizer, image processor) of {src}"):
        processor = get(transformers.AutoProcessor.from_pretrained,
                        trust_remote_code=trust_remote_code)
        if not (hasattr(processor, "image_processor") and hasattr(processor, "tokenizer")):
            processor = Processor(
                get(transformers.AutoImageProcessor.from_pretrained,
                    trust_remote_code=trust_remote_code),
                get(transformers.AutoTokenizer.from_pretrained,
                    trust_remote_code=trust_remote_code))
    _check_tokenizer(processor.tokenizer, src)
    return processor


def _adapter(model: nn.Module, processor: Any, prompt: str | None, task: str | None) -> Any:
    """The adapter of a loaded model: ViLT, a prompted VLM (captions and answers alike), BLIP
    VQA (or any captioning class with ``task="vqa"``), else a captioner."""
    name = arch(model)
    if name == "ViltForQuestionAnswering":
        return HFVilt(model, processor)
    if name in PROMPTED:
        return HFPromptedVLM(model, processor, prompt=prompt)
    if name == "BlipForQuestionAnswering" or task == "vqa":
        return HFAnswerer(model, processor)
    return HFCaptioner(model, processor, prompt=prompt)


def load_hf(name_or_path: str | os.PathLike, prompt: str | None = None,
            device: str | torch.device | None = None, dtype: torch.dtype | None = None,
            trust_remote_code: bool = False, task: str | None = None) -> HFCaptioner:
    """Load a transformers checkpoint (hub id or folder) and its processor: an
    :class:`HFCaptioner`, or an :class:`HFAnswerer` for BLIP VQA and for ``task="vqa"``
    (GIT VQA checkpoints share the captioning class); LLaVA, PaliGemma and Florence-2 give an
    :class:`HFPromptedVLM` for either task (``prompt``: the caption instruction).

    A hub id is read from the local cache first; only when that fails, ``HF_HUB_OFFLINE`` is
    not set and the hub's host answers (:func:`_hub_unreachable`) is the hub asked. The
    class comes from the config's ``architectures``. A folder or cached checkpoint that
    cannot be read (no or damaged ``model.safetensors``, a mistyped ``config.json``, no
    tokenizer) raises one :class:`MMCamError` naming it; transformers' progress bars are off
    while local files load (and set back as they were).
    """
    if task not in (None, "caption", "vqa"):  # before any loading
        raise MMCamError(f"unknown task {task!r}: use caption or vqa")
    try:
        import transformers
    except ImportError:
        raise MMCamError("Hugging Face models need transformers: pip install "
                         "'mmcam[hf]'") from None
    src = str(name_or_path)
    folder = Path(src).expanduser()
    local = folder.is_dir()

    def get(fn, **kw):
        if local:
            with _quiet():
                return fn(src, **kw)
        try:
            with _quiet():
                return fn(src, local_files_only=True, **kw)
        except OSError as e:
            if _offline():
                raise MMCamError(f"{src} is not in the local cache: run once online or pass a "
                                 "folder") from None
            why = _hub_unreachable()
            if why is not None:
                raise MMCamError(f"{src} is not in the local cache and {why}: run once online "
                                 "or pass a folder") from None
            try:
                return fn(src, **kw)
            except OSError:
                raise MMCamError(f"{src} is not in the local cache and cannot be downloaded "
                                 f"({first_line(e)}): run once online or pass a "
                                 "folder") from None

    try:
        config = get(transformers.AutoConfig.from_pretrained,
                     trust_remote_code=trust_remote_code)
    except MMCamError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OSError, *_strict_errors()) as e:
        if not trust_remote_code and "trust_remote_code" in str(e):
            raise MMCamError(CUSTOM_CODE.format(src=src)) from None
        raise MMCamError(_config_problem(folder / CONFIG if local else src, e)) from None
    cls = _model_class(transformers, config, src, trust_remote_code, get)
    if local:
        _check_weights(folder)
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kw["dtype"] = dtype
    unfit = str(folder / WEIGHTS) if local else f"of {src}"
    with _held_logs() as held, _loading(f"cannot load the model in {src}", held, unfit):
        model = get(cls.from_pretrained, **kw)
    processor = _load_processor(transformers, get, src, trust_remote_code)
    model.eval()
    if device is not None:
        model.to(device)
    adapter = _adapter(model, processor, prompt, task)
    if local and (folder / "mmcam_training.json").is_file():
        from mmcam.scenes import WORD_KINDS

        adapter.word_kinds = WORD_KINDS  # trained here on the scene world: its kinds of words
    return adapter
