"""Word-by-word Grad-CAM for captioning models: :class:`CaptionExplainer`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mmcam.cam import METHODS, PATH_STEPS
from mmcam.errors import MMCamError
from mmcam.images import ImageInput, load_image
from mmcam.layers import Layout
from mmcam.limits import check_at_least, check_text, check_tokens
from mmcam.pipeline import Context, Explained, Pipeline, Rows, autograd_on, cam_of, module_of
from mmcam.results import CaptionExplanation
from mmcam.scores import Alternatives, check_score, with_logprobs

__all__ = ["CaptionExplainer", "CaptionExplanation", "module_of", "word_membership"]


def word_membership(adapter: Any, token_ids: torch.Tensor) -> torch.Tensor:
    """(n_words, T) 0/1 matrix: entry (w, t) = 1 if token t belongs to word w."""
    T = token_ids.shape[0]
    index = adapter.word_index(token_ids) if hasattr(adapter, "word_index") else list(range(T))
    return membership(index, T)


def membership(index: list[int], T: int) -> torch.Tensor:
    """(n_words, T) 0/1 matrix from the word index of each of T tokens."""
    if len(index) != T:
        raise MMCamError(f"word_index gave {len(index)} entries for {T} tokens")
    n = max(index) + 1 if index else 0
    m = torch.zeros(n, T)
    m[torch.tensor(index, dtype=torch.long), torch.arange(T)] = 1.0
    return m


class CaptionExplainer:
    """Explain every word of a caption at one layer, all words in one batched pass.

    For word t the explained score is ``y_t = log p(word_t | words_<t, image)`` (sub-tokens
    of a word summed); its map is ``method(A, dy_t/dA)`` at ``layer`` (None: the adapter's
    default, the output of ``encode`` for split adapters), carried back onto the image's
    pixels through the preprocessing geometry. ``method``: "gradcam", "gradcam++",
    "hirescam", "counterfactual", "integrated" (integrated gradients from the image filled
    with its mean color, ``steps`` points: :func:`mmcam.cam.integrated`) or
    "guided-gradcam". ``strategy``: "auto", "copies" or
    "vjp" (:mod:`mmcam.engine`); ``chunk_size`` bounds the rows per pass without changing
    any number. ``score``: the explained score per token (:mod:`mmcam.scores`): "logprob",
    "logit", "contrast" against the other words of its kind (``kinds``: lists of words, by
    default the adapter's ``word_kinds``) or the model's top alternatives, "versus" a named
    alternative (``versus={"circle": "square"}``). ``align``: "receptive" draws each grid
    cell at the centre of its receptive field, "bilinear" where plain bilinear upsampling
    puts it (:mod:`mmcam.align`).
    """

    def __init__(
        self,
        adapter: Any,
        method: str = "gradcam",
        chunk_size: int | None = 64,
        layer: str | nn.Module | None = None,
        layout: Layout | str | Callable | None = None,
        strategy: str = "auto",
        align: str = "receptive",
        score: str = "logprob",
        kinds: Sequence[Sequence[str]] | None = None,
        versus: dict[str, str] | None = None,
        steps: int = PATH_STEPS,
    ) -> None:
        missing = [
            m for m in ("prepare", "score_tokens", "generate", "tokenize", "words")
            if not callable(getattr(adapter, m, None))
        ]
        if missing:
            raise MMCamError(
                f"the model is not a captioning adapter: it lacks {', '.join(missing)}"
            )
        if method != "guided-gradcam" and method not in METHODS:
            raise MMCamError(
                f"unknown method {method!r}: choose one of {', '.join(METHODS)}, guided-gradcam"
            )
        self.adapter = adapter
        self.method_name = method
        self.chunk_size = chunk_size
        self.score = check_score(score)
        if score != "logprob" and not callable(getattr(adapter, "token_logits", None)):
            raise MMCamError(f"score={score!r} needs the model's logits: the adapter lacks "
                             "token_logits(inputs, ids) -> (N,T,V)")
        if score == "versus" and not versus:
            raise MMCamError("score='versus' needs named alternatives: versus={\"circle\": "
                             "\"square\"} (command line: --versus circle=square)")
        groups = kinds if kinds is not None else list(getattr(adapter, "word_kinds", {}).values())
        self.alternatives = Alternatives.of(
            adapter, groups if score == "contrast" else (),
            None if score != "versus" else {w: [a] for w, a in versus.items()}
            if isinstance(versus, Mapping) else versus)
        self.pipeline = Pipeline(
            adapter, adapter.score_tokens if score == "logprob" else self._scores,
            lambda x, **kw: adapter.generate(x, **kw),
            layer=layer, layout=layout, strategy=strategy, chunk_size=chunk_size, causal=True,
            align=align, method=method, steps=steps,
        )

    def _scores(self, x: Any, ids: torch.Tensor, last: torch.Tensor | None = None
                ) -> torch.Tensor:
        """(N,T) ids -> (N,2T): the explained scores, then the log-probs (for display)."""
        return with_logprobs(self.adapter.token_logits, (x,), ids, last, self.score,
                             self.alternatives)

    def unknown_words(self, caption: str) -> list[str]:
        """The words of ``caption`` the model does not know (it reads them as its unknown
        token), from the adapter's ``unknown_words(text)``; [] if it has none."""
        find = getattr(self.adapter, "unknown_words", None)
        return list(find(caption)) if callable(find) else []

    @property
    def strategy(self) -> str:
        """The batching strategy in use ("copies", "vjp" or "readers")."""
        return self.pipeline.strategy

    def explain(
        self,
        image: ImageInput,
        caption: str | None = None,
        max_len: int = 20,
        beam_size: int = 1,
    ) -> CaptionExplanation:
        """Explain ``caption`` as given (teacher forcing), or a generated one if None."""
        return self.explain_batch([image], None if caption is None else [caption],
                                  max_len, beam_size)[0]

    @autograd_on
    def explain_batch(
        self,
        images: Sequence[ImageInput],
        captions: Sequence[str | None] | None = None,
        max_len: int = 20,
        beam_size: int = 1,
    ) -> list[CaptionExplanation]:
        """Explain several images in one pass (rows of all images together, chunked);
        each result equals ``explain`` of that image alone. ``captions``: one per image
        (None entries are generated) or None to generate all."""
        return [self._result(e) for e in self.explained(images, captions, max_len, beam_size)]

    @autograd_on
    def explained(
        self,
        images: Sequence[ImageInput],
        captions: Sequence[str | None] | None = None,
        max_len: int = 20,
        beam_size: int = 1,
    ) -> list[Explained]:
        """As :meth:`explain_batch`, before results are made: per image the activations, the
        words' gradients, grid maps and where the cells sit (for evaluations that try several
        methods on one set of gradients). ``rows.info`` is ``(caption or None, words)``."""
        if isinstance(captions, (str, bytes)):
            raise MMCamError("captions must be a list: one caption (or None) per image")
        if captions is not None and len(captions) != len(images):
            raise MMCamError(f"{len(captions)} captions for {len(images)} images")
        check_at_least(1, max_len=max_len, beam_size=beam_size)
        for c in captions or []:
            if c is not None:
                check_text(c, "caption", "give some words or leave it out")
        pils = [load_image(im) for im in images]
        ad = self.adapter

        def rows(ctx: Context, i: int) -> Rows:
            text = None if captions is None else captions[i]
            if text is None:
                ids = ctx.generate(max_len=max_len, beam_size=beam_size)[0].cpu()
                if ids.numel() == 0:
                    raise MMCamError("the model generated an empty caption: nothing to explain")
            else:
                ids = torch.as_tensor(ad.tokenize(text), dtype=torch.long).reshape(-1)
                if ids.numel() == 0:
                    raise MMCamError(f"the caption {text!r} has no tokens the model can read")
                check_tokens(ids.numel(), "caption")
            if callable(getattr(ad, "word_groups", None)):  # labels from the caption's text
                words, index = ad.word_groups(ids, text)
                member = membership(index, ids.shape[0])
            else:
                member = word_membership(ad, ids)
                words = list(ad.words(ids))
            if len(words) != member.shape[0]:
                raise MMCamError(f"words() gave {len(words)} words for {member.shape[0]} word ids")
            coefs = member if self.score == "logprob" else torch.cat(
                [member, torch.zeros_like(member)], dim=1)
            return Rows(ids[None].expand(member.shape[0], -1), coefs, (text, words))

        return self.pipeline.explain(pils, rows, self.method_name,
                                     guided=self.method_name == "guided-gradcam")

    def _result(self, e: Explained) -> CaptionExplanation:
        text, words = e.rows.info
        T = e.rows.ids.shape[1]
        member = e.rows.coefs[:, :T]
        scores = e.scores.to(member.dtype)
        lp = scores[:, T:] if self.score != "logprob" else scores
        sentence = e.extra_layer_map(cam_of(self.method_name), e.G.sum(dim=0))
        return CaptionExplanation(
            image=e.image,
            caption=text if text is not None else " ".join(words),
            unknown_words=self.unknown_words(text) if text is not None else [],
            words=words,
            logprobs=(member * lp).sum(dim=1).tolist(),  # own rows
            score=self.score,
            values=(member * scores[:, :T]).sum(dim=1).tolist(),
            maps=None,
            layer_maps=e.layer_maps,
            boxes=None,
            sentence_map=None,
            sentence_box=None,
            pixels=e.pixel_maps(sentence[None]),  # the words' maps, then the sentence's
            method=self.method_name,
            generated=text is None,
            guided=e.guided,
            layer=self.pipeline.layer_label,
        )
