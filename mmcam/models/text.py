"""Tokenization (Penn Treebank rules, lowercased) and a word vocabulary saved as JSON in config.

The tokenizer is nltk's ``TreebankWordTokenizer().tokenize`` (nltk 3.8-3.10, Apache 2.0): the
same regular expressions in the same order, copied here because importing nltk loads its
whole package (and scipy, scikit-learn and pandas when installed), seconds at every
``mmcam caption`` or ``mmcam vqa``. A test checks it against nltk's on many texts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)

# (pattern, replacement) in nltk's order: starting quotes, punctuation, brackets, dashes;
# then, on " " + text + " ", ending quotes and the contractions
_BEFORE = [(re.compile(p), r) for p, r in (
    (r"^\"", r"``"),
    (r"(``)", r" \1 "),
    (r"([ \(\[{<])(\"|\'{2})", r"\1 `` "),
    (r"([:,])([^\d])", r" \1 \2"),
    (r"([:,])$", r" \1 "),
    (r"\.\.\.", r" ... "),
    (r"[;@#$%&]", r" \g<0> "),
    (r'([^\.])(\.)([\]\)}>"\']*)\s*$', r"\1 \2\3 "),  # the final period
    (r"[?!]", r" \g<0> "),
    (r"([^'])' ", r"\1 ' "),
    (r"[\]\[\(\)\{\}\<\>]", r" \g<0> "),
    (r"--", r" -- "),
)]
_AFTER = [(re.compile(p), r) for p, r in (
    (r"''", " '' "),
    (r'"', " '' "),
    (r"([^' ])('[sS]|'[mM]|'[dD]|') ", r"\1 \2 "),
    (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1 \2 "),
)] + [(re.compile(p), r" \1 \2 ") for p in (
    r"(?i)\b(can)(?#X)(not)\b",
    r"(?i)\b(d)(?#X)('ye)\b",
    r"(?i)\b(gim)(?#X)(me)\b",
    r"(?i)\b(gon)(?#X)(na)\b",
    r"(?i)\b(got)(?#X)(ta)\b",
    r"(?i)\b(lem)(?#X)(me)\b",
    r"(?i)\b(more)(?#X)('n)\b",
    r"(?i)\b(wan)(?#X)(na)(?=\s)",
    r"(?i) ('t)(?#X)(is)\b",
    r"(?i) ('t)(?#X)(was)\b",
)]


def treebank_tokens(text: str) -> list[str]:
    """Penn Treebank tokens of ``text``, as nltk's ``TreebankWordTokenizer().tokenize``."""
    for pattern, repl in _BEFORE:
        text = pattern.sub(repl, text)
    text = f" {text} "
    for pattern, repl in _AFTER:
        text = pattern.sub(repl, text)
    return text.split()


def tokenize(text: str) -> list[str]:
    """``text`` -> lowercased Treebank tokens, e.g. "A red circle, ..." -> ["a", "red", ...]."""
    return treebank_tokens(text.lower())


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
