"""Limits on text given to explain, checked before any work (documented in the README).

A caption or a question is refused over :data:`MAX_WORDS` words (split on white space) or,
once tokenized by the model, over :data:`MAX_TOKENS` tokens: every word is one row of
gradients and one map, so a 500-word caption would take minutes and a gigabyte. A VQA
explanation shows at most :data:`MAX_TOP_K` answers: a generative model searches its answers
with a beam that wide (``top_k=1000`` ran past two minutes on shapes-blip-vqa).
"""

from __future__ import annotations

from mmcam.errors import MMCamError

MAX_WORDS = 64
MAX_TOKENS = 128
MAX_TOP_K = 50


def check_words(text: str, what: str) -> None:
    """Raise :class:`MMCamError` if ``text`` has more than :data:`MAX_WORDS` words."""
    n = len(text.split())
    if n > MAX_WORDS:
        raise MMCamError(f"the {what} has {n} words, over the limit of {MAX_WORDS}: "
                         "shorten it")


def check_text(text: object, what: str, empty_hint: str) -> None:
    """A caption, question, answer or contrast given to explain must be a string with a
    non-space character and at most :data:`MAX_WORDS` words, else :class:`MMCamError`."""
    if not isinstance(text, str):
        article = "an" if what[:1] in "aeiou" else "a"
        raise MMCamError(f"{article} {what} must be text, got {type(text).__name__}")
    if not text.strip():
        raise MMCamError(f"the {what} is empty: {empty_hint}")
    check_words(text, what)


def check_tokens(n: int, what: str) -> None:
    """Raise :class:`MMCamError` if a tokenized text has more than :data:`MAX_TOKENS` tokens."""
    if n > MAX_TOKENS:
        raise MMCamError(f"the {what} is {n} tokens long, over the limit of {MAX_TOKENS}: "
                         "shorten it")


def check_at_least(low: int, **given: int) -> None:
    """Each ``name=value`` must be an integer of at least ``low`` (library arguments such as
    ``top_k``, ``top``, ``beam_size``, ``max_len``)."""
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise MMCamError(f"{name}={value!r}: must be an integer of at least {low}")
