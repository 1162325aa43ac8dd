"""Many explained scores from one pass: copies of the feature map, one backward.

For N explained scores ``y_i = c_i . s(A_i)`` where ``s`` maps a batch of feature maps to
(n, K) scores (token or answer log-probs) and ``A_i`` is the i-th copy of the same features
A, the gradient of ``sum_i y_i`` with respect to the stacked copies is exactly
``(dy_1/dA, ..., dy_N/dA)``, because each copy only feeds its own row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def copy_gradients(
    features: torch.Tensor,
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    coefs: torch.Tensor,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of N linear combinations of scores, with one backward per chunk.

    features (1,C,h,w); ``score_fn`` (n,C,h,w) -> (n,K), rows independent; coefs (N,K).
    Returns (scores (K,) of the unmodified features, G (N,C,h,w) with
    ``G_i = d(coefs_i . score_fn(A))/dA``). ``chunk_size`` bounds the copies per pass.
    """
    if features.dim() != 4 or features.shape[0] != 1:
        raise ValueError(f"features must have shape (1,C,h,w), got {tuple(features.shape)}")
    n_total = coefs.shape[0]
    step = n_total if not chunk_size or chunk_size <= 0 else chunk_size
    base = features.detach()
    grads = []
    scores = None
    with torch.enable_grad():
        for start in range(0, n_total, step):
            c = coefs[start : start + step]
            copies = base.expand(c.shape[0], *base.shape[1:]).clone().requires_grad_(True)
            s = score_fn(copies)
            if scores is None:
                scores = s[0].detach()
            y = (s * c.to(s.dtype)).sum()
            (g,) = torch.autograd.grad(y, copies)
            grads.append(g)
    assert scores is not None
    return scores, torch.cat(grads, dim=0)
