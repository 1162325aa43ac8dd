"""Grad-CAM for classifier-style VQA answers: :class:`VQAExplainer`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from mmcam.cam import PATH_STEPS, get_method
from mmcam.errors import MMCamError
from mmcam.images import ImageInput, load_image
from mmcam.layers import Layout
from mmcam.limits import MAX_TOP_K, check_at_least, check_text, check_tokens
from mmcam.pipeline import Context, Explained, Pipeline, Rows, autograd_on
from mmcam.results import VQAExplanation
from mmcam.scores import TOP_K, Alternatives, check_score, with_logprobs, word_lists


def check_contrast(answer: str | None, contrast: str | None) -> None:
    """Refuse a contrast that is the explained answer itself (its map would be zero): one
    :class:`MMCamError`, the same message from the library, the command line and the app."""
    if answer is not None and contrast is not None and \
            answer.strip().lower() == contrast.strip().lower():
        raise MMCamError(f"the contrast {contrast.strip()!r} is the answer itself: name "
                         "another answer to contrast with")


def _check_text(text: Any, what: str) -> None:
    """An answer or contrast must be non-empty text (:func:`mmcam.limits.check_text`)."""
    check_text(text, what, "give a word the model can answer")


def _check_question(question: Any) -> None:
    """A question must be non-empty text within the word limit."""
    check_text(question, "question", "ask something about the image")


class VQAExplainer:
    """Explain VQA answers: the model's, any candidate, the top-k, and contrasts.

    The explained score for answer a is ``log p(a | question, image)`` (``score="logprob"``),
    its logit (``"logit"``), or its logit minus the mean logit of its alternatives
    (``"contrast"``: the answers of its kind, ``kinds`` or the adapter's ``word_kinds``, else
    the model's top other answers; see :mod:`mmcam.scores`); for a contrast "a rather than b"
    (``explain(..., contrast=b)``) it is ``log p(a) - log p(b)``. All maps come from one
    batched pass at ``layer`` (None: the adapter's default); see :class:`mmcam.CaptionExplainer` for
    ``layout``, ``strategy``, ``align`` and ``steps``.
    """

    def __init__(
        self,
        adapter: Any,
        method: str = "gradcam",
        layer: str | nn.Module | None = None,
        layout: Layout | str | Callable | None = None,
        strategy: str = "auto",
        chunk_size: int | None = 64,
        align: str = "receptive",
        score: str = "logprob",
        kinds: Sequence[Sequence[str]] | None = None,
        steps: int = PATH_STEPS,
    ) -> None:
        self.generative = callable(getattr(adapter, "score_answer_tokens", None))
        needs = ("prepare", "tokenize_question") + (
            ("tokenize_answer", "generate_answers", "decode_answer") if self.generative
            else ("score_answers",))
        missing = [m for m in needs if not callable(getattr(adapter, m, None))]
        if not self.generative and not hasattr(adapter, "answers"):
            missing.append("answers")
        if missing:
            raise MMCamError(f"the model does not answer questions (a captioner?): its adapter "
                             f"lacks {', '.join(missing)}")
        self.adapter = adapter
        self.method_name = method
        self.method = get_method(method)
        self.score = check_score(score)
        if score == "versus":
            raise MMCamError("for VQA, explain(..., contrast=B) gives the map of A versus B; "
                             "choose score logprob, logit or contrast")
        need = "answer_token_logits" if self.generative else "answer_logits"
        if score == "logit" or (score == "contrast" and self.generative):
            if not callable(getattr(adapter, need, None)):
                raise MMCamError(f"score={score!r} needs the model's logits: the adapter lacks "
                                 f"{need}")
        self.kinds = word_lists(kinds if kinds is not None else
                                 getattr(adapter, "word_kinds", {}).values())
        self._index = {a.lower(): i for i, a in enumerate(getattr(adapter, "answers", []))}
        self._options = {"layer": layer, "layout": layout, "strategy": strategy,
                         "chunk_size": chunk_size, "align": align, "method": method,
                         "steps": steps}
        self.pipeline = Pipeline(adapter, self._score_fn(), causal=self.generative,
                                 **self._options)

    def _score_fn(self, question_ids: torch.Tensor | None = None) -> Callable:
        ad = self.adapter
        if not self.generative:
            return ad.answer_logits if self.score == "logit" else ad.score_answers
        if self.score == "logprob":
            def score(x: Any, ids: torch.Tensor, last: torch.Tensor | None = None
                      ) -> torch.Tensor:
                return ad.score_answer_tokens(x, question_ids, ids)
            return score
        alts = Alternatives.of(ad, self.kinds if self.score == "contrast" else ())

        def scores(x: Any, ids: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
            """(N,T) -> (N,2T): the explained scores, then the log-probs."""
            return with_logprobs(ad.answer_token_logits, (x, question_ids), ids, last,
                                 self.score, alts)
        return scores

    def _generative_pipeline(self, q: torch.Tensor) -> Pipeline:
        """The pipeline of one question for answers written as text (the question is part
        of the scorer)."""
        ad = self.adapter
        return Pipeline(ad, self._score_fn(q), lambda x, **kw: ad.generate_answers(x, q, **kw),
                        causal=True, **self._options)

    def _answer_coefs(self, lp: torch.Tensor, a: int) -> torch.Tensor:
        """(K,) coefficients on the answers' scores explaining answer ``a``: one-hot, or for
        "contrast" minus the mean of its alternatives (the answers of its kind, else the
        model's top :data:`mmcam.scores.TOP_K` other answers)."""
        c = torch.zeros(lp.shape[0])
        c[a] = 1.0
        if self.score != "contrast":
            return c
        name = self.adapter.answers[a].lower()
        kind = next((k for k in self.kinds if name in [w.lower() for w in k]), None)
        alts = [self._index[w.lower()] for w in kind or [] if w.lower() in self._index
                and w.lower() != name]
        if not alts:
            alts = [int(i) for i in lp.argsort(descending=True) if int(i) != a][:TOP_K]
        c[torch.tensor(alts)] -= 1.0 / len(alts)
        return c

    def _answer_tokens(self, text: str, what: str) -> torch.Tensor:
        """A written answer's ids (generative models). Refused: empty text, and words the
        model's vocabulary lacks (they would be scored as its unknown token, and the result
        would name a different answer than the one scored)."""
        _check_text(text, what)
        unknown = getattr(self.adapter, "unknown_words", lambda t: [])(text)
        if unknown:
            raise MMCamError(f"the {what} {text!r} has words this model does not know "
                             f"({', '.join(unknown)}): give an answer in its vocabulary")
        return self.adapter.tokenize_answer(text)

    def answer_id(self, answer: str) -> int:
        """Index of ``answer`` in the model's answer vocabulary (case-insensitive)."""
        _check_text(answer, "answer")
        key = answer.strip().lower()
        if key not in self._index:
            some = ", ".join(list(self._index)[:12])
            raise MMCamError(f"{answer!r} is not an answer this model knows; it knows: {some}, ...")
        return self._index[key]

    def explain(
        self,
        image: ImageInput,
        question: str,
        answer: str | None = None,
        contrast: str | None = None,
        top_k: int = 5,
    ) -> VQAExplanation:
        """Explain ``answer`` (default: the model's) and the ``top_k`` answers."""
        return self.explain_batch([image], [question], [answer], [contrast], top_k)[0]

    @autograd_on
    def explained(self, image: ImageInput, question: str, answer: str | None = None
                  ) -> Explained:
        """The explained answer (default: the model's) before a result is made: activations,
        its gradient, grid map and where the cells sit (row 0), for evaluations that try
        several methods on one set of gradients. ``rows.info`` is ``(answer, log p)``."""
        _check_question(question)
        pil, ad = load_image(image), self.adapter
        if self.generative:
            q = torch.as_tensor(ad.tokenize_question(question)[0], dtype=torch.long)
            check_tokens(q.numel(), "question")
            pipe = self._generative_pipeline(q)
            given = None if answer is None else self._answer_tokens(answer, "answer")

            def rows(ctx: Context, i: int) -> Rows:
                if answer is None:
                    cands = ctx.generate(k=1)
                    if not cands:
                        raise MMCamError("the model generated no answer: nothing to explain")
                    ids = cands[0]
                else:
                    ids = given
                coefs = torch.ones(1, len(ids))
                if self.score != "logprob":
                    coefs = torch.cat([coefs, torch.zeros_like(coefs)], dim=1)
                return Rows(ids[None], coefs, ad.decode_answer(ids))

            e = pipe.explain([pil], rows, self.method_name)[0]
            T = e.rows.ids.shape[1]
            lp = float(e.scores[0, -T:].sum())
            return replace(e, rows=replace(e.rows, info=(e.rows.info, lp)))
        chosen = None if answer is None else self.answer_id(answer)

        def rows(ctx: Context, i: int) -> Rows:
            q = torch.as_tensor(ad.tokenize_question(question)[0], dtype=torch.long)[None]
            check_tokens(q.numel(), "question")
            lp = ctx.score(q)[0].cpu().log_softmax(-1)
            pick = int(lp.argmax()) if chosen is None else chosen
            return Rows(q, self._answer_coefs(lp, pick)[None],
                        (ad.answers[pick], float(lp[pick])))

        return self.pipeline.explain([pil], rows, self.method_name)[0]

    def _explain_generative(self, pil: Any, question: str, answer: str | None,
                            contrast: str | None, top_k: int) -> VQAExplanation:
        """Answers written as text: each candidate is a row with its own token ids, its score
        the sum of its tokens' log-probs (end token included); the contrast map is the CAM of
        ``G_answer - G_contrast``, exact by linearity."""
        ad = self.adapter
        q, unknown = ad.tokenize_question(question)
        q = torch.as_tensor(q, dtype=torch.long)
        check_tokens(q.numel(), "question")
        pipe = self._generative_pipeline(q)
        given = None if answer is None else self._answer_tokens(answer, "answer")
        other = None if contrast is None else self._answer_tokens(contrast, "contrast")

        def rows(ctx: Context, i: int) -> Rows:
            cands = ctx.generate(k=top_k)
            if not cands:
                raise MMCamError("the model generated no answer: nothing to explain")
            pick = cands[0] if given is None else given
            if answer is None:
                check_contrast(ad.decode_answer(pick), contrast)
            seqs = [pick] + cands + ([] if other is None else [other])
            T = max(len(x) for x in seqs)
            ids = torch.zeros(len(seqs), T, dtype=torch.long)
            coefs = torch.zeros(len(seqs), T)
            for r, x in enumerate(seqs):
                ids[r, : len(x)] = x
                coefs[r, : len(x)] = 1.0
            if self.score != "logprob":  # scores (N,2T): explained, then log-probs
                coefs = torch.cat([coefs, torch.zeros_like(coefs)], dim=1)
            return Rows(ids, coefs, [ad.decode_answer(x) for x in seqs])

        e = pipe.explain([pil], rows, self.method_name)[0]
        texts = e.rows.info
        T = e.rows.ids.shape[1]
        member = e.rows.coefs[:, :T]
        logp = (member * e.scores[:, -T:]).sum(dim=1)
        n = 1 + (len(texts) - 1 - (contrast is not None))
        extra = None  # the contrast's map: the CAM of G_answer - G_contrast
        if contrast is not None:
            extra = e.extra_layer_map(self.method, e.G[0] - e.G[-1])[None]
        return VQAExplanation(
            image=e.image, question=question, unknown_words=unknown, answer=texts[0],
            probability=float(logp[0].exp()), map=None, box=None,
            top_answers=[(texts[r], float(logp[r].exp()), None) for r in range(1, n)],
            method=self.method_name, model_answer=texts[1], score=self.score,
            contrast=contrast, layer=pipe.layer_label, pixels=e.pixel_maps(extra, rows=n))

    @autograd_on
    def explain_batch(
        self,
        images: Sequence[ImageInput],
        questions: Sequence[str] | str,
        answers: Sequence[str | None] | None = None,
        contrasts: Sequence[str | None] | None = None,
        top_k: int = 5,
    ) -> list[VQAExplanation]:
        """Explain several images in one pass; ``questions`` one per image or one for all.
        Each result equals ``explain`` of that image alone."""
        check_at_least(1, top_k=top_k)
        if top_k > MAX_TOP_K:
            raise MMCamError(f"top_k={top_k}: over the limit of {MAX_TOP_K} answers")
        n = len(images)
        qs = [questions] * n if isinstance(questions, str) else list(questions)
        answers = list(answers) if answers is not None else [None] * n
        contrasts = list(contrasts) if contrasts is not None else [None] * n
        if not len(qs) == len(answers) == len(contrasts) == n:
            raise MMCamError(f"give one question, answer and contrast per image ({n} images)")
        for a, c in zip(answers, contrasts):
            for text, what in ((a, "answer"), (c, "contrast")):
                if text is not None:
                    _check_text(text, what)
            check_contrast(a, c)
        for q in qs:
            _check_question(q)
        if self.generative:  # the question is part of the scorer: one image at a time
            return [self._explain_generative(load_image(im), q, a, c, top_k)
                    for im, q, a, c in zip(images, qs, answers, contrasts)]
        chosen = [None if a is None else self.answer_id(a) for a in answers]
        others = [None if c is None else self.answer_id(c) for c in contrasts]
        pils = [load_image(im) for im in images]
        ad = self.adapter

        def rows(ctx: Context, i: int) -> Rows:
            q, unknown = ad.tokenize_question(qs[i])
            q = torch.as_tensor(q, dtype=torch.long).reshape(1, -1)
            check_tokens(q.numel(), "question")
            lp = ctx.score(q)[0].cpu().log_softmax(-1)  # log-probs also from logits
            K = lp.shape[0]
            top = lp.topk(min(top_k, K)).indices.tolist()
            model_answer = int(lp.argmax())
            pick = model_answer if chosen[i] is None else chosen[i]
            if others[i] is not None:
                check_contrast(ad.answers[pick], ad.answers[others[i]])
            picked = [pick] + top
            coefs = torch.zeros(len(picked) + (others[i] is not None), K)
            for r, a in enumerate(picked):
                coefs[r] = self._answer_coefs(lp, a)
            if others[i] is not None:
                coefs[-1, pick] += 1.0
                coefs[-1, others[i]] -= 1.0
            info = (qs[i], list(unknown), lp, pick, top, model_answer, others[i])
            return Rows(q.expand(coefs.shape[0], -1), coefs, info)

        return [self._result(e) for e in self.pipeline.explain(pils, rows, self.method_name)]

    def _result(self, e: Explained) -> VQAExplanation:
        question, unknown, lp, pick, top, model_answer, other = e.rows.info
        names = self.adapter.answers
        probs = lp.exp()
        return VQAExplanation(
            image=e.image,
            question=question,
            unknown_words=unknown,
            answer=names[pick],
            probability=float(probs[pick]),
            map=None,
            box=None,
            top_answers=[(names[a], float(probs[a]), None) for a in top],
            method=self.method_name,
            model_answer=names[model_answer],
            score=self.score,
            contrast=None if other is None else names[other],
            layer=self.pipeline.layer_label,
            pixels=e.pixels,  # the answer's map, the top answers', then the contrast's
        )
