"""Gradients of many explained scores at one layer, by two exact batching strategies.

Row i explains ``y_i = c_i . s(A_{b_i}, ids_i)``: a coefficient vector ``c_i`` (K,) over the
scores ``s`` (per-token log-probs, per-answer or per-class scores) that the model computes
from image ``b_i``'s activations ``A_b`` at the explained layer and the row's token ids.
Both strategies return ``G_i = dy_i / dA_{b_i}`` exactly, as a forward and backward per row
would:

- ``copies``: the layer's output is replaced by N leaf copies ``A_{b_1}, ..., A_{b_N}``; the
  rest of the model runs as one batch of N rows and one ``autograd.grad`` of
  ``sum_i c_i . s_i`` returns every ``G_i``, because copy i only feeds row i (rows of a batch
  are independent in eval mode).
- ``vjp``: one forward of the distinct (image, ids) rows records the graph from the layer;
  ``autograd.grad(s, A, grad_outputs=C, is_grads_batched=True)`` then gives, for cotangent
  row i (``c_i`` at the row's position, zero elsewhere), ``G_i = C_i^T ds/dA`` by linearity.

Recurrent decoders are fast with copies (vmap falls back to per-sample loops for RNN ops);
transformer decoders are faster with vjp. ``chunk_size`` bounds the rows per pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mmcam.errors import MMCamError

STRATEGIES = ("auto", "copies", "vjp")

Feed = Callable[[torch.Tensor], torch.Tensor]
# run(feed, ids) runs the model on rows of token ids (n,T); the explained layer's output A
# (B,...) is handed to ``feed`` and the model continues with what it returns (n rows).
# For causal scores the engine calls run(feed, ids, last): row r's scores after position
# last[r] are never used, so the model may skip computing them.
Run = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Gradients:
    """``A`` (B,...) activations per image; ``G`` (N,...) row gradients, float32;
    ``scores`` (N,K) the scores of each row's own ids; ``image`` (N,) row -> image."""

    A: torch.Tensor
    G: torch.Tensor
    scores: torch.Tensor
    image: torch.Tensor


def check_strategy(strategy: str) -> str:
    """Return ``strategy`` if known, else raise a one-line error."""
    if strategy not in STRATEGIES:
        raise MMCamError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    return strategy


def chunks(n: int, chunk_size: int | None) -> list[slice]:
    """Slices of at most ``chunk_size`` rows covering ``range(n)`` (all at once if None)."""
    step = n if not chunk_size or chunk_size <= 0 else chunk_size
    return [slice(s, min(s + step, n)) for s in range(0, n, max(step, 1))]


def batched_vjp(
    outputs: torch.Tensor, inputs: torch.Tensor, cotangents: torch.Tensor
) -> torch.Tensor:
    """``(C_1^T d outputs/d inputs, ..., C_n^T ...)`` for cotangents (n, *outputs.shape).

    One ``autograd.grad`` with ``is_grads_batched=True``; the graph is retained. vmap's
    "performance drop" warnings (ops without a batching rule) are silenced: the result is
    exact either way.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        (g,) = torch.autograd.grad(
            outputs, inputs, grad_outputs=cotangents.to(outputs.dtype),
            is_grads_batched=True, retain_graph=True, allow_unused=True,
        )
    if g is None:
        return torch.zeros(cotangents.shape[0], *inputs.shape, dtype=inputs.dtype,
                           device=inputs.device)
    return g


def _check_batch(a: torch.Tensor, n_images: int, where: str) -> None:
    if a.shape[0] != n_images:
        raise MMCamError(
            f"the explained layer gave a batch of {a.shape[0]} for {n_images} image(s) "
            f"({where}): the model must run the layer once per image"
        )


def _check_scores(s: torch.Tensor, n: int, k: int) -> torch.Tensor:
    if not isinstance(s, torch.Tensor) or s.dim() != 2 or s.shape[0] != n or s.shape[1] != k:
        shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise MMCamError(f"the model's scores have shape {shape}, expected ({n}, {k})")
    return s.float()


def _last(coefs: torch.Tensor) -> torch.Tensor:
    """(N,) index of each row's last non-zero coefficient (0 for an all-zero row)."""
    nz = coefs != 0
    idx = torch.arange(coefs.shape[1]).expand_as(coefs)
    return torch.where(nz, idx, torch.zeros_like(idx)).amax(dim=1)


def _call(run: Run, feed: Feed, ids: torch.Tensor, last: torch.Tensor | None) -> torch.Tensor:
    return run(feed, ids) if last is None else run(feed, ids, last)


def _copies(run: Run, ids, coefs, image, n_images, chunk_size, causal):
    A = None
    grads, scores = [], []
    for sl in chunks(coefs.shape[0], chunk_size):
        rows = image[sl]
        held: dict[str, torch.Tensor] = {}

        def feed(a: torch.Tensor, rows: torch.Tensor = rows, held=held) -> torch.Tensor:
            _check_batch(a, n_images, "copies")
            held["A"] = a.detach()
            leaf = a.detach()[rows.to(a.device)].clone().requires_grad_(True)
            held["leaf"] = leaf
            return leaf.clone()  # in-place ops after the layer must not touch the leaf

        with torch.enable_grad():
            last = _last(coefs[sl]) if causal else None
            s = _check_scores(_call(run, feed, ids[sl], last), rows.shape[0], coefs.shape[1])
            c = coefs[sl].to(s.device)
            (g,) = torch.autograd.grad((s * c).sum(), held["leaf"], allow_unused=True)
        A = held["A"]
        grads.append(torch.zeros_like(held["leaf"]) if g is None else g)
        scores.append(s.detach())
    return A, torch.cat(grads), torch.cat(scores)


def _vjp(run: Run, ids, coefs, image, n_images, chunk_size, causal):
    key = torch.cat([image[:, None], ids.to(image.dtype)], dim=1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    u_image, u_ids = uniq[:, 0], uniq[:, 1:].to(ids.dtype)
    held: dict[str, torch.Tensor] = {}

    def feed(a: torch.Tensor) -> torch.Tensor:
        _check_batch(a, n_images, "vjp")
        leaf = a.detach().requires_grad_(True)
        held["leaf"] = leaf
        return leaf[u_image.to(a.device)]  # index_select: a new tensor, in-graph

    with torch.enable_grad():
        last = None
        if causal:
            last = torch.zeros(u_ids.shape[0], dtype=torch.long).scatter_reduce(
                0, inverse, _last(coefs), "amax")
        s = _check_scores(_call(run, feed, u_ids, last), u_ids.shape[0], coefs.shape[1])
        leaf = held["leaf"]
        grads = []
        for sl in chunks(coefs.shape[0], chunk_size):
            n = sl.stop - sl.start
            cot = torch.zeros(n, *s.shape, dtype=s.dtype, device=s.device)
            cot[torch.arange(n), inverse[sl].to(s.device)] = coefs[sl].to(s)
            g = batched_vjp(s, leaf, cot)  # (n, B, ...)
            grads.append(g[torch.arange(n), image[sl].to(g.device)])
    return leaf.detach(), torch.cat(grads), s.detach()[inverse.to(s.device)]


def layer_gradients(
    run: Run,
    ids: torch.Tensor,
    coefs: torch.Tensor,
    strategy: str = "copies",
    chunk_size: int | None = None,
    image: torch.Tensor | None = None,
    n_images: int = 1,
    causal: bool = False,
) -> Gradients:
    """Row gradients at the explained layer (see the module docstring for the proof).

    ids (N,T) token ids per row (T may be 0); coefs (N,K); image (N,) row -> image index
    (default all 0); ``run`` as :data:`Run`. ``strategy``: "copies" or "vjp". ``causal``:
    score t depends only on tokens <= t, so ``run`` is told each row's last used position.
    Returned scores are exact only up to each row's last position when ``causal``.
    """
    N = coefs.shape[0]
    if ids.shape[0] != N:
        raise ValueError(f"{ids.shape[0]} id rows for {N} coefficient rows")
    image = torch.zeros(N, dtype=torch.long) if image is None else image.long().cpu()
    if N == 0:
        raise MMCamError("nothing to explain: no rows")
    fn = {"copies": _copies, "vjp": _vjp}.get(check_strategy(strategy))
    if fn is None:
        raise ValueError("resolve strategy 'auto' before calling layer_gradients")
    A, G, scores = fn(run, ids.long(), coefs.float(), image, n_images, chunk_size, causal)
    return Gradients(A=A, G=G.float(), scores=scores, image=image)
