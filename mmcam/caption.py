"""Word-by-word Grad-CAM for captioning models: :class:`CaptionExplainer`."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from PIL import Image
from torch import nn

from mmcam.adapters.base import CaptionAdapter
from mmcam.batched import copy_gradients
from mmcam.cam import get_method, gradcam, localize, upsample
from mmcam.capture import eval_mode
from mmcam.errors import MMCamError
from mmcam.guided import guided_backprop_from_layer, guided_gradcam
from mmcam.images import ImageInput, load_image
from mmcam.results import CaptionExplanation


def module_of(adapter: Any) -> nn.Module | None:
    """The ``nn.Module`` behind an adapter (itself, or its ``.model``), if any."""
    if isinstance(adapter, nn.Module):
        return adapter
    m = getattr(adapter, "model", None)
    return m if isinstance(m, nn.Module) else None


def word_membership(adapter: Any, token_ids: torch.Tensor) -> torch.Tensor:
    """(n_words, T) 0/1 matrix: entry (w, t) = 1 if token t belongs to word w."""
    T = token_ids.shape[0]
    index = adapter.word_index(token_ids) if hasattr(adapter, "word_index") else list(range(T))
    if len(index) != T:
        raise MMCamError(f"word_index gave {len(index)} entries for {T} tokens")
    n = max(index) + 1 if index else 0
    m = torch.zeros(n, T)
    m[torch.tensor(index, dtype=torch.long), torch.arange(T)] = 1.0
    return m


class CaptionExplainer:
    """Explain every word of a caption with one encoder pass and one batched backward.

    For word t the explained score is ``y_t = log p(word_t | words_<t, image)`` (sub-tokens
    of a word summed). Its map is ``method(A, dy_t/dA)`` at the adapter's explained layer,
    bilinearly upsampled to the image's own size. ``method``: "gradcam", "gradcam++",
    "hirescam", "counterfactual" or "guided-gradcam" (Grad-CAM maps plus per-word Guided
    Backprop through the encoder's ReLU modules). ``chunk_size`` bounds how many feature
    copies go through the decoder at once (memory), without changing any number.
    """

    def __init__(
        self, adapter: CaptionAdapter, method: str = "gradcam", chunk_size: int | None = 64
    ) -> None:
        missing = [
            m for m in ("prepare", "encode", "score_tokens", "generate", "tokenize", "words")
            if not callable(getattr(adapter, m, None))
        ]
        if missing:
            raise MMCamError(
                f"the model is not a captioning adapter: it lacks {', '.join(missing)}"
            )
        self.adapter = adapter
        self.guided = method == "guided-gradcam"
        self.method_name = method
        self.method = gradcam if self.guided else get_method(method)
        self.chunk_size = chunk_size

    def explain(
        self,
        image: ImageInput,
        caption: str | None = None,
        max_len: int = 20,
        beam_size: int = 1,
    ) -> CaptionExplanation:
        """Explain ``caption`` as given (teacher forcing), or a generated one if None."""
        pil = load_image(image)
        module = module_of(self.adapter)
        with eval_mode(module) if module is not None else nullcontext():
            return self._explain(pil, caption, max_len, beam_size, module)

    def _explain(
        self, pil: Image.Image, caption: str | None, max_len: int, beam_size: int,
        module: nn.Module | None,
    ) -> CaptionExplanation:
        ad = self.adapter
        pixels = ad.prepare(pil)
        with torch.no_grad():
            feats = ad.encode(pixels)
        if caption is None:
            with torch.no_grad():
                ids = ad.generate(feats, max_len=max_len, beam_size=beam_size)[0]
            if ids.numel() == 0:
                raise MMCamError("the model generated an empty caption: nothing to explain")
        else:
            if not caption.strip():
                raise MMCamError("the caption is empty: give some words or leave it out")
            ids = torch.as_tensor(ad.tokenize(caption), dtype=torch.long).reshape(-1)
            if ids.numel() == 0:
                raise MMCamError(f"the caption {caption!r} has no tokens the model can read")
        member = word_membership(ad, ids)
        words = list(ad.words(ids))
        if len(words) != member.shape[0]:
            raise MMCamError(f"words() gave {len(words)} words for {member.shape[0]} word ids")
        T = ids.shape[0]

        def score(copies: torch.Tensor) -> torch.Tensor:
            return ad.score_tokens(copies, ids.unsqueeze(0).expand(copies.shape[0], T))

        token_lp, G = copy_gradients(feats, score, member, self.chunk_size)
        A = feats.detach()
        layer_maps = self.method(A.expand(G.shape[0], *A.shape[1:]), G)
        sentence_layer = self.method(A, G.sum(dim=0, keepdim=True))
        H, W = pil.size[1], pil.size[0]
        maps = upsample(layer_maps, (H, W))
        sentence = upsample(sentence_layer, (H, W))[0]
        guided = None
        if self.guided:
            if module is None:
                raise MMCamError("guided-gradcam needs an adapter with an nn.Module .model")
            gb = guided_backprop_from_layer(module, ad.encode, pixels, G, self.chunk_size)
            guided = guided_gradcam(layer_maps, gb)
        text = caption if caption is not None else " ".join(words)
        return CaptionExplanation(
            image=pil,
            caption=text,
            words=words,
            logprobs=(member @ token_lp.to(member.dtype)).tolist(),
            maps=maps,
            layer_maps=layer_maps,
            boxes=localize(maps),
            sentence_map=sentence,
            sentence_box=localize(sentence)[0],
            method=self.method_name,
            generated=caption is None,
            guided=guided,
        )
