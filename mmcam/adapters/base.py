"""The adapter contracts. A user's own model plugs into mmcam by implementing one of these.

Two forms, told apart by whether the adapter has ``encode``:

- **whole model** (any model, e.g. Hugging Face): ``prepare(image) -> (inputs, Geometry)``
  and a scorer that runs the *whole* model from those inputs on rows of token ids. The
  explained layer is any submodule of ``model`` (attribute ``layer``, a dotted path such as
  ``"vision_model.encoder.layers[-1]"``, or the module), read through ``layout``
  (:mod:`mmcam.layers`). The inputs have batch 1; the scorer must accept N rows of ids (the
  image side is broadcast or expanded to N rows after the explained layer, as HF models do).
- **split** (the older form): ``encode(pixels) -> features`` and a scorer from features. The
  default explained layer is the output of ``encode``; any module inside the encoder can be
  named instead.

Adapters keep no state between calls: everything a call needs travels in ``inputs``.
Shapes: ``token_ids`` (N,T) hold caption tokens *without* begin/end markers.
Optional attributes: ``model`` (the ``nn.Module``; the adapter itself if it is one),
``layer`` and ``layout`` (defaults), ``strategy`` ("copies" or "vjp", else measured per family:
recurrent decoders -> copies, others -> vjp), ``word_index(ids) -> list[int]``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image


@runtime_checkable
class CaptionAdapter(Protocol):
    """A captioning model (whole-model form; the split form adds ``encode``)."""

    def prepare(self, image: Image.Image) -> Any:
        """RGB image -> ``(inputs, Geometry)``, or pixels (1,3,H,W) made by a plain resize."""

    def score_tokens(self, inputs: Any, token_ids: torch.Tensor) -> torch.Tensor:
        """inputs (or features, split form), ids (N,T) -> (N,T):
        entry t = log p(token_t | tokens_<t, image). Rows must be independent and token t's
        score must not depend on later tokens (teacher forcing)."""

    def generate(self, inputs: Any, max_len: int = 20, beam_size: int = 1) -> torch.Tensor:
        """inputs (or features) -> token ids (1,T) of the generated caption, markers excluded."""

    def tokenize(self, text: str) -> torch.Tensor:
        """Caption text -> token ids (T,), markers excluded."""

    def words(self, token_ids: torch.Tensor) -> list[str]:
        """Token ids (T,) -> the caption's words, one per word (sub-tokens merged).

        If a word spans several tokens, also define ``word_index(token_ids) -> list[int]``
        giving for every token the index of its word; without it one token is one word.
        """


@runtime_checkable
class SplitCaptionAdapter(CaptionAdapter, Protocol):
    """A captioning model split at its encoder's output."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B,3,H,W) -> features (B,C,h,w): the default explained layer."""


@runtime_checkable
class VQAAdapter(Protocol):
    """A classifier-style VQA model (whole-model form; the split form adds ``encode``)."""

    answers: list[str]

    def prepare(self, image: Image.Image) -> Any:
        """RGB image -> ``(inputs, Geometry)`` or pixels (1,3,H,W)."""

    def tokenize_question(self, question: str) -> tuple[torch.Tensor, list[str]]:
        """Question -> (token ids (L,), the question words that were out of vocabulary)."""

    def score_answers(self, inputs: Any, question_ids: torch.Tensor) -> torch.Tensor:
        """inputs (or features), question ids (N,L) -> (N, n_answers) log-probabilities."""


@runtime_checkable
class ClassifierAdapter(Protocol):
    """A classifier with the name of its explained layer."""

    model: torch.nn.Module
    layer: str
    labels: list[str]

    def prepare(self, image: Image.Image) -> Any:
        """RGB image -> pixels (1,3,H,W) or ``(pixels, Geometry)``."""
