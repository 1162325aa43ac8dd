"""shapes-captioner: a conv encoder and an LSTM decoder with soft attention (Show, Attend and
Tell, Xu et al. 2015) over the encoder's 16x16 grid.

Per step t, with cells c_i = a_i + p_i (features a_i over the h*w grid plus a learned position
embedding p_i), scaled dot-product attention (Luong's "general" score):
    e_ti  = (W_k c_i) . (W_q h_{t-1}) / sqrt(d)            alpha_t = softmax_i(e_t)
    z_t   = sum_i alpha_ti c_i
    h_t, c_t = LSTMCell([E y_{t-1}, z_t], (h_{t-1}, c_{t-1}))
    p(y_t | y_<t, image) = softmax(W_o [h_t, z_t])
h_0, c_0 = tanh(W_init mean_i(c_i)); y_0 = <bos>.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch import nn

from mmcam.models.encoder import CHANNELS, STRIDES, ConvEncoder, prepare_image
from mmcam.models.text import Vocab
from mmcam.scenes import WORD_KINDS

State = tuple[torch.Tensor, torch.Tensor]


class Captioner(nn.Module):
    """Encoder + attention decoder. ``forward(pixels, inputs)`` gives logits (B,T,V)."""

    def __init__(
        self,
        vocab_size: int,
        channels: tuple[int, ...] = CHANNELS,
        strides: tuple[int, ...] = STRIDES,
        grid: int = 16,
        embed: int = 64,
        hidden: int = 160,
        attn: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoder = ConvEncoder(channels, strides)
        c = self.encoder.out_channels
        self.pos = nn.Parameter(torch.zeros(1, grid * grid, c))
        self.embed = nn.Embedding(vocab_size, embed)
        self.init_h = nn.Linear(c, hidden)
        self.init_c = nn.Linear(c, hidden)
        self.att_key = nn.Linear(c, attn)
        self.att_query = nn.Linear(hidden, attn)
        self.lstm = nn.LSTMCell(embed + c, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden + c, vocab_size)

    def start(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, State]:
        """features (B,C,h,w) -> (cells a+p (B,N,C), attention keys (B,N,attn), (h0, c0))."""
        cells = features.flatten(2).transpose(1, 2) + self.pos
        mean = cells.mean(1)
        state = (torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)))
        return cells, self.att_key(cells), state

    def step(
        self, cells: torch.Tensor, keys: torch.Tensor, state: State, token: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One decoder step: previous token (B,) -> (logits (B,V), alpha (B,N), new state)."""
        h, c = state
        query = self.att_query(h)[:, :, None] / keys.shape[-1] ** 0.5
        alpha = torch.softmax(torch.bmm(keys, query).squeeze(-1), dim=-1)  # (B,N)
        z = torch.bmm(alpha[:, None], cells).squeeze(1)  # (B,C)
        h, c = self.lstm(torch.cat([self.embed(token), z], dim=-1), (h, c))
        logits = self.out(self.drop(torch.cat([h, z], dim=-1)))
        return logits, alpha, (h, c)

    def decode(
        self, features: torch.Tensor, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: inputs (B,T), starting with <bos> -> (logits (B,T,V), alpha (B,T,N))."""
        cells, keys, state = self.start(features)
        logits, alphas = [], []
        for t in range(inputs.shape[1]):
            lg, al, state = self.step(cells, keys, state, inputs[:, t])
            logits.append(lg)
            alphas.append(al)
        return torch.stack(logits, 1), torch.stack(alphas, 1)

    def forward(self, pixels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encoder(pixels), inputs)[0]


class CaptionerAdapter:
    """:class:`mmcam.adapters.base.CaptionAdapter` for :class:`Captioner` (eval mode, CPU)."""

    def __init__(self, model: Captioner, vocab: Vocab, config: dict[str, Any]) -> None:
        self.model = model
        self.vocab = vocab
        self.config = config
        self.layer = "encoder." + model.encoder.last_layer
        self.word_kinds = WORD_KINDS  # trained on the scene world: its kinds of words

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> (1,3,128,128): bilinear resize, then (x/255 - mean) / std."""
        return prepare_image(
            image, self.config["image_size"], self.config["mean"], self.config["std"]
        )

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B,3,128,128) -> features (B,96,16,16): the last conv block's ReLU output."""
        return self.model.encoder(pixels)

    def _inputs(self, token_ids: torch.Tensor) -> torch.Tensor:
        bos = torch.full_like(token_ids[:, :1], self.vocab.bos)
        return torch.cat([bos, token_ids[:, :-1]], dim=1)

    def token_logits(self, features: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w), (B,T) -> (B,T,V): the logits that predict token t from <bos>, tokens_<t."""
        return self.model.decode(features, self._inputs(token_ids))[0]

    def score_tokens(self, features: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w), (B,T) -> (B,T): log p(token_t | <bos>, tokens_<t, image)."""
        logits = self.token_logits(features, token_ids)
        return torch.log_softmax(logits, -1).gather(2, token_ids[..., None]).squeeze(-1)

    def attention(self, features: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w), (B,T) -> (B,T,h,w): the attention weights alpha_t used to predict token t."""
        _, alpha = self.model.decode(features, self._inputs(token_ids))
        return alpha.reshape(*alpha.shape[:2], *features.shape[2:])

    @torch.no_grad()
    def generate(
        self, features: torch.Tensor, max_len: int = 20, beam_size: int = 1
    ) -> torch.Tensor:
        """(1,C,h,w) -> ids (1,T): greedy (beam_size=1) or beam search by total log-prob.

        Stops at <eos> (excluded) or after ``max_len`` tokens.
        """
        if features.shape[0] != 1:
            raise ValueError("generate takes one image: features of shape (1,C,h,w)")
        cells, keys, state = self.model.start(features)
        # beams: (total log-prob, tokens, state)
        beams: list[tuple[float, list[int], State]] = [(0.0, [], state)]
        done: list[tuple[float, list[int]]] = []
        for _ in range(max_len):
            cand: list[tuple[float, list[int], State]] = []
            for lp, toks, st in beams:
                prev = torch.tensor([toks[-1] if toks else self.vocab.bos], device=features.device)
                logits, _, st2 = self.model.step(cells, keys, st, prev)
                logp = torch.log_softmax(logits[0], -1)
                top = logp.topk(min(beam_size, logp.numel()))
                for v, i in zip(top.values.tolist(), top.indices.tolist()):
                    if i == self.vocab.eos:
                        done.append((lp + v, toks))
                    else:
                        cand.append((lp + v, toks + [i], st2))
            cand.sort(key=lambda b: -b[0])
            beams = cand[:beam_size]
            if not beams or (done and max(d[0] for d in done) >= beams[0][0]):
                break  # log-probs only fall: no open beam can beat the best finished one
        if not done:
            done = [(b[0], b[1]) for b in beams]
        best = max(done, key=lambda d: d[0])[1]
        return torch.tensor([best], dtype=torch.long).reshape(1, -1)

    def tokenize(self, text: str) -> torch.Tensor:
        """Caption -> ids (T,) (lowercased Treebank tokens; unknown words -> <unk>)."""
        return self.vocab.tensor(text)

    def unknown_words(self, text: str) -> list[str]:
        """The tokens of ``text`` not in the vocabulary (each read as <unk>), in order."""
        return self.vocab.encode(text)[1]

    def words(self, token_ids: torch.Tensor) -> list[str]:
        """Ids (T,) -> words (one token is one word)."""
        return [self.vocab.itos[int(i)] for i in token_ids.reshape(-1)]


def build(config: dict[str, Any]) -> Captioner:
    """An untrained :class:`Captioner` from ``config["arch"]`` and the vocabulary size."""
    a = config["arch"]
    return Captioner(
        len(config["vocab"]),
        channels=tuple(a["channels"]),
        strides=tuple(a["strides"]),
        grid=a["grid"],
        embed=a["embed"],
        hidden=a["hidden"],
        attn=a["attn"],
        dropout=a["dropout"],
    )
