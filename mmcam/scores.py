"""What is explained for a word or an answer: the explained score ``y``.

For a token ``w`` predicted at one position with logits ``z`` (over the vocabulary or the
answers):

- ``"logprob"``: ``y = log softmax(z)_w`` (the paper's choice for captions);
- ``"logit"``: ``y = z_w``;
- ``"contrast"``: ``y = z_w - mean_{a in alt(w)} z_a``: the word against its alternatives,
  the other words of its kind when the model's kinds are known (e.g. the other colors), else
  the ``k`` tokens the model itself ranked highest at that position after ``w``;
- ``"versus"``: ``y = z_w - z_b`` for a named alternative ``b`` ("circle rather than square");
  tokens without a named alternative are scored as ``"logit"``.

Differences of logits at one position equal differences of log-probabilities (the
normalizer cancels), so ``"contrast"`` and ``"versus"`` ignore how peaked the softmax is.
A word of several tokens sums its tokens' scores, each token against alternatives at its own
position.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from mmcam.errors import MMCamError

SCORES = ("logprob", "logit", "contrast", "versus")
TOP_K = 5


def takes_last(fn: Callable) -> bool:
    """Whether ``fn`` accepts a ``last=`` argument (rows' last used positions)."""
    try:
        return "last" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def check_score(score: str) -> str:
    """``score`` if it is one of :data:`SCORES`, else an :class:`MMCamError`."""
    if score not in SCORES:
        raise MMCamError(f"unknown score {score!r}: choose one of {', '.join(SCORES)}")
    return score


class Alternatives:
    """Token id -> the ids it is contrasted with (fixed per id), built from word lists.

    ``groups``: lists of words of one kind (each word's alternatives are the others of its
    list); ``pairs``: word -> named alternative words. ``encode(word)`` gives a word's ids;
    only words that are one token can be used (others are skipped in ``groups``, refused in
    ``pairs``), and ``unknown(text)`` (the words the model reads as its unknown token) keeps
    unknown words out: in ``groups`` they are skipped, in ``pairs`` refused, as is a word
    named as its own alternative.
    """

    def __init__(self, encode: Callable[[str], list[int]],
                 groups: Iterable[Iterable[str]] = (),
                 pairs: Mapping[str, Iterable[str]] | None = None,
                 unknown: Callable[[str], list[str]] | None = None) -> None:
        def one(word: str) -> int | None:
            if unknown is not None and unknown(word):
                return None
            ids = list(encode(word))
            return int(ids[0]) if len(ids) == 1 else None

        self.table: dict[int, list[int]] = {}
        for group in word_lists(groups):
            ids = [i for i in (one(w) for w in group) if i is not None]
            for i in ids:
                self.table[i] = [j for j in ids if j != i]
        if pairs is not None and not isinstance(pairs, Mapping):
            raise MMCamError("versus must map words to their alternatives, e.g. "
                             f"{{'circle': 'square'}}; got {type(pairs).__name__}")
        for word, alts in (pairs or {}).items():
            texts = [word, *alts]
            if not all(isinstance(t, str) and t.strip() for t in texts):
                raise MMCamError(f"versus {word!r}: {list(alts)!r}: words must be non-empty "
                                 "text")
            if any(t.strip().lower() == word.strip().lower() for t in alts):
                raise MMCamError(f"versus: {word!r} cannot be contrasted with itself")
            i = one(word)
            if i is None:
                raise MMCamError(f"{word!r} is not one known token of the model's vocabulary: "
                                 "it cannot be contrasted")
            js = [one(a) for a in alts]
            if any(j is None for j in js):
                raise MMCamError(f"the alternative {list(alts)!r} is not one known token of "
                                 "the model's vocabulary")
            self.table[i] = [j for j in js if j != i]

    def __bool__(self) -> bool:
        return bool(self.table)

    @classmethod
    def of(cls, adapter: Any, groups: Iterable[Iterable[str]] = (),
           pairs: Mapping[str, Iterable[str]] | None = None) -> Alternatives:
        """Built with ``adapter.word_ids(word)`` (a word as it reads inside a sentence), or
        ``adapter.tokenize(word)`` when it has none."""
        encode = getattr(adapter, "word_ids", None) or (
            lambda w: [int(i) for i in adapter.tokenize(w).reshape(-1)])
        return cls(encode, groups, pairs, getattr(adapter, "unknown_words", None))


def word_lists(groups: Iterable[Iterable[str]]) -> list[list[str]]:
    """``groups`` (``kinds``) as lists of words, or :class:`MMCamError` when it is not a list
    of lists of text (a string would be read letter by letter)."""
    bad = MMCamError("kinds must be lists of words of one kind, e.g. [['red', 'blue'], "
                     f"['circle', 'square']]; got {groups!r:.60}")
    if isinstance(groups, str):
        raise bad
    out = []
    for g in groups:
        if isinstance(g, str) or not all(isinstance(w, str) for w in g):
            raise bad
        out.append(list(g))
    return out


def with_logprobs(logits_fn: Callable[..., torch.Tensor], args: tuple, ids: torch.Tensor,
                  last: torch.Tensor | None, score: str,
                  alternatives: Alternatives | None) -> torch.Tensor:
    """(N,T) ids -> (N,2T): the explained scores, then the log-probs (for display), from
    one ``logits_fn(*args, ids[, last=])`` call ((N,T,V) logits)."""
    kw = {} if last is None or not takes_last(logits_fn) else {"last": last}
    logits = logits_fn(*args, ids, **kw)
    return torch.cat([token_scores(logits, ids, score, alternatives),
                      token_scores(logits, ids, "logprob")], dim=1)


def token_scores(logits: torch.Tensor, ids: torch.Tensor, score: str,
                 alternatives: Alternatives | None = None, k: int = TOP_K) -> torch.Tensor:
    """logits (...,V) and target ids (...) -> explained scores (...) (see module doc).

    For ``"contrast"``, a token without known alternatives is compared with the ``k``
    highest-ranked other tokens at its position (a choice made on the forward values; the
    gradient flows through the chosen logits). For ``"versus"``, only tokens in
    ``alternatives`` are contrasted."""
    z = logits.float()
    own = z.gather(-1, ids[..., None])[..., 0]
    if score == "logprob":
        return own - z.logsumexp(-1)
    if score == "logit":
        return own
    table = alternatives.table if alternatives is not None else {}
    width = max([len(v) for v in table.values()] + ([k] if score == "contrast" else [1]))
    alt = torch.zeros(*ids.shape, width, dtype=torch.long, device=z.device)
    mask = torch.zeros(*ids.shape, width, dtype=z.dtype, device=z.device)
    known = torch.zeros(ids.shape, dtype=torch.bool, device=z.device)
    flat_ids = ids.reshape(-1).tolist()
    a2, m2, k2 = alt.view(-1, width), mask.view(-1, width), known.view(-1)
    for n, t in enumerate(flat_ids):
        js = table.get(t)
        if js:
            a2[n, : len(js)] = torch.tensor(js)
            m2[n, : len(js)] = 1.0
            k2[n] = True
    if score == "contrast":
        kk = min(k, z.shape[-1] - 1)
        top = z.detach().topk(kk + 1, dim=-1).indices  # own id removed below
        keep = top != ids[..., None]
        top = torch.where(keep, top, top.new_zeros(()))
        order = keep.float().argsort(dim=-1, descending=True, stable=True)[..., :kk]
        top_ids = top.gather(-1, order)
        fill = ~known[..., None] & (torch.arange(width, device=z.device) < kk)
        alt = torch.where(fill, torch.nn.functional.pad(top_ids, (0, width - kk)), alt)
        mask = torch.where(fill, torch.ones_like(mask), mask)
    other = (z.gather(-1, alt) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return own - other
