"""Tokenization (nltk Treebank, lowercased) and a word vocabulary saved as JSON in config."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from nltk.tokenize import TreebankWordTokenizer

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)

_TOKENIZER = TreebankWordTokenizer()


def tokenize(text: str) -> list[str]:
    """``text`` -> lowercased Treebank tokens, e.g. "A red circle, ..." -> ["a", "red", ...]."""
    return _TOKENIZER.tokenize(text.lower())


class Vocab:
    """Word <-> id map. Ids 0..3 are <pad>, <bos>, <eos>, <unk>; the rest are sorted words."""

    def __init__(self, tokens: list[str]) -> None:
        if list(tokens[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"a vocabulary must start with {SPECIALS}")
        self.itos = list(tokens)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("duplicate tokens in vocabulary")

    @classmethod
    def build(cls, texts: Iterable[str]) -> Vocab:
        """Vocabulary of every token in ``texts``, sorted, after the special tokens."""
        words = sorted({w for t in texts for w in tokenize(t)} - set(SPECIALS))
        return cls(list(SPECIALS) + words)

    pad = property(lambda self: 0)
    bos = property(lambda self: 1)
    eos = property(lambda self: 2)
    unk = property(lambda self: 3)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> tuple[list[int], list[str]]:
        """Text -> (ids, out-of-vocabulary words); unknown words map to <unk>."""
        ids, oov = [], []
        for w in tokenize(text):
            i = self.stoi.get(w)
            if i is None:
                oov.append(w)
                i = self.unk
            ids.append(i)
        return ids, oov

    def tensor(self, text: str) -> torch.Tensor:
        """Text -> LongTensor (T,) of ids, no markers."""
        return torch.tensor(self.encode(text)[0], dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> words, stopping at <eos> and skipping <pad> and <bos>."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i in (self.pad, self.bos):
                continue
            out.append(self.itos[i])
        return out

    def to_json(self) -> list[str]:
        return list(self.itos)


def pad_batch(seqs: list[list[int]], pad: int = 0) -> torch.Tensor:
    """Right-pad id lists to a LongTensor (B, max_len)."""
    n = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), n), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out
