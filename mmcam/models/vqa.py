"""shapes-vqa: conv image encoder + LSTM question encoder, fused by FiLM (Perez et al. 2018)
into an answer classifier.

    A  = encoder(pixels)                      (B,C,16,16)  <- the explained conv layer
    q  = LSTM(embed(question))[last word]     (B,H)
    x0 = ReLU(W_p [A, xy])                    xy = the cells' coordinates in [-1, 1]
    x1 = x0 + ReLU((1 + g1(q)) * conv3x3([x0, xy]) + b1(q))
    x2 = x1 + ReLU((1 + g2(q)) * conv1x1([x1, xy]) + b2(q))
    x3 = x2 + ReLU((1 + g3(q)) * conv1x1([x2, xy]) + b3(q))
    log p(answer) = log_softmax(MLP([maxpool(x3), meanpool(x3), q]))
The image encoder never sees the question, so ``encode`` is question independent and the
question enters only after the explained layer. x0 and conv3x3([x0, xy]) do not depend on the
question either, so several questions about one image share them (``repeats``).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch import nn

from mmcam.models.encoder import CHANNELS, STRIDES, ConvEncoder, prepare_image
from mmcam.models.text import Vocab


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
        film: int = 64,
        mlp: int = 256,
    ) -> None:
        super().__init__()
        self.encoder = ConvEncoder(channels, strides)
        c = self.encoder.out_channels
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=0)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.proj = nn.Conv2d(c + 2, film, 1)
        self.conv1 = nn.Conv2d(film + 2, film, 3, padding=1)
        self.conv2 = nn.Conv2d(film + 2, film, 1)
        self.conv3 = nn.Conv2d(film + 2, film, 1)
        self.film = nn.Linear(hidden, 6 * film)
        self.classifier = nn.Sequential(
            nn.Linear(2 * film + hidden, mlp), nn.ReLU(), nn.Linear(mlp, n_answers)
        )

    def question(self, question_ids: torch.Tensor) -> torch.Tensor:
        """(B,L) right-padded with 0 -> (B,H): the LSTM state after the last real word."""
        out, _ = self.lstm(self.embed(question_ids))
        last = (question_ids != 0).sum(1).clamp(min=1) - 1
        return out[torch.arange(out.shape[0]), last]

    def answer(
        self, features: torch.Tensor, question_ids: torch.Tensor, repeats: int = 1
    ) -> torch.Tensor:
        """features (B,C,h,w), question ids (B*repeats, L) -> answer logits (B*repeats, n).

        Row k of the questions is about image k // repeats.
        """
        q = self.question(question_ids)
        g1, b1, g2, b2, g3, b3 = (t[..., None, None] for t in self.film(q).chunk(6, dim=-1))
        b, _, h, w = features.shape
        xy = coords(b, h, w, features)
        x = torch.relu(self.proj(torch.cat([features, xy], 1)))
        c1 = self.conv1(torch.cat([x, xy], 1))
        if repeats > 1:
            x, c1 = x.repeat_interleave(repeats, 0), c1.repeat_interleave(repeats, 0)
            xy = coords(b * repeats, h, w, features)
        x = x + torch.relu((1 + g1) * c1 + b1)
        x = x + torch.relu((1 + g2) * self.conv2(torch.cat([x, xy], 1)) + b2)
        x = x + torch.relu((1 + g3) * self.conv3(torch.cat([x, xy], 1)) + b3)
        pooled = torch.cat([x.amax((2, 3)), x.mean((2, 3)), q], dim=1)
        return self.classifier(pooled)

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

    def score_answers(self, features: torch.Tensor, question_ids: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w), (B,L) -> (B, n_answers) log-probabilities over ``answers``."""
        return torch.log_softmax(self.model.answer(features, question_ids), dim=-1)


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
        film=a["film"],
        mlp=a["mlp"],
    )
