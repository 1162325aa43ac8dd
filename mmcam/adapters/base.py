"""The adapter contracts. A user's own model plugs into mmcam by implementing one of these.

Shapes: ``pixels`` (1,3,H,W); ``features`` (B,C,h,w) are the activations of the explained
conv layer; ``token_ids`` (B,T) hold caption tokens *without* begin/end markers.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from PIL import Image


@runtime_checkable
class CaptionAdapter(Protocol):
    """A captioning model split at the explained layer."""

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> pixels (1,3,H,W). Only a resize may change geometry."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B,3,H,W) -> features (B,C,h,w) of the explained conv layer."""

    def score_tokens(self, features: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w), (B,T) -> (B,T) with entry t = log p(token_t | tokens_<t, image).

        Must be differentiable in ``features`` and treat batch rows independently.
        """

    def generate(
        self, features: torch.Tensor, max_len: int = 20, beam_size: int = 1
    ) -> torch.Tensor:
        """(1,C,h,w) -> token ids (1,T) of the generated caption, markers excluded."""

    def tokenize(self, text: str) -> torch.Tensor:
        """Caption text -> token ids (T,), markers excluded."""

    def words(self, token_ids: torch.Tensor) -> list[str]:
        """Token ids (T,) -> the caption's words, one per word (sub-tokens merged).

        If a word spans several tokens, also define ``word_index(token_ids) -> list[int]``
        giving for every token the index of its word; without it one token is one word.
        """


@runtime_checkable
class VQAAdapter(Protocol):
    """A classifier-style VQA model split at the explained layer."""

    answers: list[str]

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> pixels (1,3,H,W)."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B,3,H,W) -> features (B,C,h,w) of the explained conv layer."""

    def tokenize_question(self, question: str) -> tuple[torch.Tensor, list[str]]:
        """Question -> (token ids (L,), the question words that were out of vocabulary).

        Unknown words are mapped to the model's unknown token, as in training.
        """

    def score_answers(self, features: torch.Tensor, question_ids: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w), (B,L) -> (B, n_answers) log-probabilities over ``answers``."""


@runtime_checkable
class ClassifierAdapter(Protocol):
    """A CNN classifier with the name of its explained layer."""

    model: torch.nn.Module
    layer: str
    labels: list[str]

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> pixels (1,3,H,W)."""
