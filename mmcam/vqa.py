"""Grad-CAM for classifier-style VQA answers: :class:`VQAExplainer`."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from mmcam.adapters.base import VQAAdapter
from mmcam.batched import copy_gradients
from mmcam.cam import get_method, localize, upsample
from mmcam.caption import module_of
from mmcam.capture import eval_mode
from mmcam.errors import MMCamError
from mmcam.images import ImageInput, load_image
from mmcam.results import VQAExplanation


class VQAExplainer:
    """Explain VQA answers: the model's, any candidate, the top-k, and contrasts.

    The explained score for answer a is ``log p(a | question, image)``; for a contrast
    "a rather than b" it is ``log p(a) - log p(b)``. All maps come from one encoder pass
    and one batched backward over copies of the explained layer's features.
    """

    def __init__(self, adapter: VQAAdapter, method: str = "gradcam") -> None:
        missing = [
            m for m in ("prepare", "encode", "tokenize_question", "score_answers")
            if not callable(getattr(adapter, m, None))
        ]
        if missing or not hasattr(adapter, "answers"):
            raise MMCamError(
                f"the model is not a VQA adapter: it lacks {', '.join(missing or ['answers'])}"
            )
        self.adapter = adapter
        self.method_name = method
        self.method = get_method(method)
        self._index = {a.lower(): i for i, a in enumerate(adapter.answers)}

    def answer_id(self, answer: str) -> int:
        """Index of ``answer`` in the model's answer vocabulary (case-insensitive)."""
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
        if not isinstance(question, str) or not question.strip():
            raise MMCamError("the question is empty: ask something about the image")
        pil = load_image(image)
        ad = self.adapter
        chosen = None if answer is None else self.answer_id(answer)
        other = None if contrast is None else self.answer_id(contrast)
        module = module_of(ad)
        with eval_mode(module) if module is not None else nullcontext():
            pixels = ad.prepare(pil)
            with torch.no_grad():
                feats = ad.encode(pixels)
            q, unknown = ad.tokenize_question(question)
            q = torch.as_tensor(q, dtype=torch.long).reshape(1, -1)
            with torch.no_grad():
                lp = ad.score_answers(feats, q)[0]
            K = lp.shape[0]
            top = lp.topk(min(top_k, K)).indices.tolist()
            model_answer = int(lp.argmax())
            chosen = model_answer if chosen is None else chosen
            rows = [chosen] + top
            coefs = torch.zeros(len(rows) + (other is not None), K)
            coefs[torch.arange(len(rows)), torch.tensor(rows)] = 1.0
            if other is not None:
                coefs[-1, chosen] += 1.0
                coefs[-1, other] -= 1.0

            def score(copies: torch.Tensor) -> torch.Tensor:
                return ad.score_answers(copies, q.expand(copies.shape[0], -1))

            _, G = copy_gradients(feats, score, coefs)
        A = feats.detach()
        H, W = pil.size[1], pil.size[0]
        maps = upsample(self.method(A.expand(G.shape[0], *A.shape[1:]), G), (H, W))
        boxes = localize(maps)
        probs = lp.exp()
        n = len(rows)
        return VQAExplanation(
            image=pil,
            question=question,
            unknown_words=list(unknown),
            answer=ad.answers[chosen],
            probability=float(probs[chosen]),
            map=maps[0],
            box=boxes[0],
            top_answers=[(ad.answers[a], float(probs[a]), maps[1 + i]) for i, a in enumerate(top)],
            method=self.method_name,
            model_answer=ad.answers[model_answer],
            contrast=None if other is None else ad.answers[other],
            contrast_map=None if other is None else maps[n],
            contrast_box=None if other is None else boxes[n],
        )
