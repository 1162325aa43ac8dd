"""shapes-vqa: conv image encoder + LSTM question encoder, fused by question-guided attention
over the encoder's grid (stacked-attention style, several glimpses) into an answer classifier.

    A   = encoder(pixels)                        (B,C,16,16)  <- the explained conv layer
    e_i = ReLU(W_e [A_i, xy_i])                  per cell i; xy_i its coordinates in [-1, 1]
    k_i = W_k e_i                                keys (d = attn)
    q   = LSTM(embed(question))[last word]       (B,H)
    for each glimpse g:  s_gi = k_i . (W_g q) / sqrt(d)
        alpha_g = softmax_i(s_g)                 v_g = sum_i alpha_gi [e_i, xy_i]
        sigma_gi = sigmoid(s_gi + c_g)           u_g = sum_i sigma_gi e_i / 16
    p_g = sum_i alpha_gi xy_i                    the attended position; d = [p_1 - p_g]_{g>1}
    log p(answer) = log_softmax(MLP([v_1..v_G, u_1..u_G, q]) + q^T W_r d)
The v_g read the named objects (their attributes and positions); the gated sums u_g grow with
the number of matching objects (counting, existence); the bilinear term q^T W_r d compares
the attended positions as the question asks (spatial relations). The image encoder never sees the
question, so ``encode`` is question independent and the question enters only after the
explained layer; e and k are computed once per image and shared by its questions.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch import nn

from mmcam.models.encoder import CHANNELS, STRIDES, ConvEncoder, prepare_image
from mmcam.models.text import Vocab
from mmcam.scenes import WORD_KINDS


def coords(b: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(b,2,h,w) cell-center coordinates (x, y) in [-1, 1]."""
    ys = torch.linspace(-1, 1, h, dtype=like.dtype, device=like.device)
    xs = torch.linspace(-1, 1, w, dtype=like.dtype, device=like.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy])[None].expand(b, 2, h, w)


class VQANet(nn.Module):
    """``forward(pixels, question_ids)`` -> answer logits (B, n_answers)."""

    def __init__(
        self,
        vocab_size: int,
        n_answers: int,
        channels: tuple[int, ...] = CHANNELS,
        strides: tuple[int, ...] = STRIDES,
        embed: int = 64,
        hidden: int = 128,
        cell: int = 128,
        attn: int = 64,
        glimpses: int = 2,
        mlp: int = 256,
    ) -> None:
        super().__init__()
        self.encoder = ConvEncoder(channels, strides)
        c = self.encoder.out_channels
        self.glimpses, self.attn = glimpses, attn
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=0)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.cell = nn.Linear(c + 2, cell)
        self.key = nn.Linear(cell, attn)
        self.query = nn.Linear(hidden, glimpses * attn)
        self.gate_bias = nn.Parameter(torch.zeros(glimpses))
        self.classifier = nn.Sequential(
            nn.Linear(glimpses * (2 * cell + 2) + hidden, mlp),
            nn.ReLU(),
            nn.Linear(mlp, n_answers),
        )
        self.relation = nn.Bilinear(hidden, 2 * (glimpses - 1), n_answers, bias=False)

    def question(self, question_ids: torch.Tensor) -> torch.Tensor:
        """(B,L) right-padded with 0 -> (B,H): the LSTM state after the last real word."""
        out, _ = self.lstm(self.embed(question_ids))
        last = (question_ids != 0).sum(1).clamp(min=1) - 1
        return out[torch.arange(out.shape[0]), last]

    def answer(
        self,
        features: torch.Tensor,
        question_ids: torch.Tensor,
        repeats: int = 1,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """features (B,C,h,w), question ids (B*repeats, L) -> answer logits (B*repeats, n),
        and with ``return_attention`` also alpha (B*repeats, G, h*w).

        Row k of the questions is about image k // repeats.
        """
        b, _, h, w = features.shape
        xy = coords(b, h, w, features).flatten(2).transpose(1, 2)  # (B,N,2)
        cells = features.flatten(2).transpose(1, 2)  # (B,N,C)
        e = torch.relu(self.cell(torch.cat([cells, xy], -1)))  # (B,N,E)
        k = self.key(e)  # (B,N,d)
        if repeats > 1:
            e, k, xy = (t.repeat_interleave(repeats, 0) for t in (e, k, xy))
        q = self.question(question_ids)  # (R,H)
        qg = self.query(q).view(-1, self.glimpses, self.attn)  # (R,G,d)
        s = torch.bmm(qg, k.transpose(1, 2)) / self.attn**0.5  # (R,G,N)
        alpha = torch.softmax(s, -1)
        sigma = torch.sigmoid(s + self.gate_bias[:, None])
        v = torch.bmm(alpha, torch.cat([e, xy], -1))  # (R,G,E+2)
        u = torch.bmm(sigma, e) / 16.0  # (R,G,E)
        d = (v[:, :1, -2:] - v[:, 1:, -2:]).flatten(1)  # attended xy: glimpse 0 - glimpse g
        logits = self.classifier(torch.cat([v.flatten(1), u.flatten(1), q], 1))
        logits = logits + self.relation(q, d)
        return (logits, alpha) if return_attention else logits

    def forward(self, pixels: torch.Tensor, question_ids: torch.Tensor) -> torch.Tensor:
        return self.answer(self.encoder(pixels), question_ids)


class VQAModelAdapter:
    """:class:`mmcam.adapters.base.VQAAdapter` for :class:`VQANet` (eval mode, CPU)."""

    def __init__(
        self, model: VQANet, vocab: Vocab, answers: list[str], config: dict[str, Any]
    ) -> None:
        self.model = model
        self.vocab = vocab
        self.answers = list(answers)
        self.config = config
        self.layer = "encoder." + model.encoder.last_layer
        self.word_kinds = WORD_KINDS  # trained on the scene world: its kinds of answers

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> (1,3,128,128): bilinear resize, then (x/255 - mean) / std."""
        return prepare_image(
            image, self.config["image_size"], self.config["mean"], self.config["std"]
        )

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B,3,128,128) -> features (B,96,16,16): the last conv block's ReLU output."""
        return self.model.encoder(pixels)

    def tokenize_question(self, question: str) -> tuple[torch.Tensor, list[str]]:
        """Question -> (ids (L,), out-of-vocabulary words); unknown words -> <unk>."""
        ids, oov = self.vocab.encode(question)
        return torch.tensor(ids, dtype=torch.long), oov

    def answer_logits(self, features: torch.Tensor, question_ids: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w), (B,L) -> (B, n_answers) logits over ``answers``."""
        return self.model.answer(features, question_ids)

    def score_answers(self, features: torch.Tensor, question_ids: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w), (B,L) -> (B, n_answers) log-probabilities over ``answers``."""
        return torch.log_softmax(self.answer_logits(features, question_ids), dim=-1)

    def attention(self, features: torch.Tensor, question_ids: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w), (B,L) -> (B,G,h,w): the softmax attention of each glimpse."""
        _, alpha = self.model.answer(features, question_ids, return_attention=True)
        return alpha.reshape(*alpha.shape[:2], *features.shape[2:])


def build(config: dict[str, Any]) -> VQANet:
    """An untrained :class:`VQANet` from ``config``."""
    a = config["arch"]
    return VQANet(
        len(config["vocab"]),
        len(config["answers"]),
        channels=tuple(a["channels"]),
        strides=tuple(a["strides"]),
        embed=a["embed"],
        hidden=a["hidden"],
        cell=a["cell"],
        attn=a["attn"],
        glimpses=a["glimpses"],
        mlp=a["mlp"],
    )
