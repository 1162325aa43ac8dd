"""Gradients of many explained scores at one layer, by three exact batching strategies.

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

- ``readers``: when A reaches the scores only through affine modules ``O_j = W_j Y + b_j``
  of ``Y = LayerNorm(A)`` (or of A), as an image's tokens reach a cross-attention decoder
  through its key and value projections, the backward stops at the ``O_j`` and only what
  Grad-CAM and HiResCAM read of G is formed (:class:`mmcam.cam.Reduced`), with
  ``dY_i = sum_j dO_ji W_j`` and the LayerNorm backward
  ``G_i = (gamma * dY_i - v_i/D - (u_i/D) xhat_i) / sigma_i``, where
  ``u_i = dY_i . (gamma * xhat_i) = sum_j dO_ji . (O_ji - W_j beta - b_j)`` and
  ``v_i = dY_i . gamma = sum_j dO_ji . W_j gamma``:
  ``hires_i = G_i . A_i = u_i * eps / (var_i + eps)`` (LayerNorm ignores A_i's scale) and
  ``alpha = mean_i G_i`` needs ``W_j`` only once per row, on ``sum_i dO_ji / sigma_i``.
  No row ever pays the (tokens x D x D) products of the full G, and ``hires`` is free of the
  cancellation that makes ``sum_k G_k A_k`` noise in float32 in front of a LayerNorm.

Recurrent decoders are fast with copies (vmap falls back to per-sample loops for RNN ops);
transformer decoders are faster with vjp. ``chunk_size`` bounds the rows per pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from mmcam.cam import Reduced
from mmcam.errors import MMCamError

STRATEGIES = ("auto", "copies", "vjp", "readers")
READER_BYTES = 2**30  # the readers' row gradients held at once (bounds the rows per pass)

Feed = Callable[[torch.Tensor], torch.Tensor]
# run(feed, ids) runs the model on rows of token ids (n,T); the explained layer's output A
# (B,...) is handed to ``feed`` and the model continues with what it returns (n rows).
# For causal scores the engine calls run(feed, ids, last): row r's scores after position
# last[r] are never used, so the model may skip computing them.
Run = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Gradients:
    """``A`` (B,...) activations per image; ``G`` (N,...) row gradients, float32 (or their
    :class:`Reduced` form on the grid); ``scores`` (N,K) the scores of each row's own ids;
    ``image`` (N,) row -> image."""

    A: torch.Tensor
    G: torch.Tensor | Reduced
    scores: torch.Tensor
    image: torch.Tensor


@dataclass(frozen=True)
class Readers:
    """The explained tokens A (B,n,D) reach the scores only through ``modules``, affine maps
    of ``Y = norm(A)`` (a LayerNorm over D; the identity when ``norm`` is None), each run
    once per forward. ``grid`` (h,w) the token index of each grid cell."""

    modules: tuple[nn.Module, ...]
    norm: nn.LayerNorm | None
    grid: Callable[[torch.Tensor], torch.Tensor] | None = None


def at_least_float32(x: torch.Tensor, like: torch.dtype | None = None) -> torch.Tensor:
    """``x`` in float32, or float64 when its dtype (``like`` if given) is float64: fp16/bf16
    values are worked with in float32, a float64 model's stay exact."""
    return x.to(torch.promote_types(like or x.dtype, torch.float32))


def check_strategy(strategy: str) -> str:
    """Return ``strategy`` if known, else raise a one-line error."""
    if strategy not in STRATEGIES:
        raise MMCamError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    return strategy


def chunks(n: int, chunk_size: int | None) -> list[slice]:
    """Slices of at most ``chunk_size`` rows covering ``range(n)`` (all at once if None)."""
    step = n if not chunk_size or chunk_size <= 0 else chunk_size
    return [slice(s, min(s + step, n)) for s in range(0, n, max(step, 1))]


def batched_grads(outputs: torch.Tensor, inputs: list[torch.Tensor], cotangents: torch.Tensor
                  ) -> tuple[torch.Tensor | None, ...]:
    """``C_r^T d outputs / d x`` for every input x and cotangent row r (n, *outputs.shape):
    one ``autograd.grad`` with ``is_grads_batched=True``, graph retained, None for an input
    the outputs do not use. vmap's "performance drop" warnings (ops without a batching rule)
    are silenced: the result is exact either way."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        return torch.autograd.grad(
            outputs, inputs, grad_outputs=cotangents.to(outputs.dtype),
            is_grads_batched=True, retain_graph=True, allow_unused=True,
        )


def batched_vjp(
    outputs: torch.Tensor, inputs: torch.Tensor, cotangents: torch.Tensor
) -> torch.Tensor:
    """``(C_1^T d outputs/d inputs, ..., C_n^T ...)`` for cotangents (n, *outputs.shape)
    (:func:`batched_grads` of one input; zeros where the outputs do not use it)."""
    (g,) = batched_grads(outputs, [inputs], cotangents)
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
            if n_images == 1:  # a view: the clone below is the only copy
                leaf = a.detach().expand(rows.shape[0], *a.shape[1:])
            else:
                leaf = a.detach()[rows.to(a.device)]  # indexing copies
            held["leaf"] = leaf.requires_grad_(True)
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


def _unique_rows(ids, coefs, image, causal):
    """Distinct (image, ids) rows: their images, ids, each row's index among them, and
    each distinct row's last used position (None unless ``causal``)."""
    key = torch.cat([image[:, None], ids.to(image.dtype)], dim=1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    u_image, u_ids = uniq[:, 0], uniq[:, 1:].to(ids.dtype)
    last = None
    if causal:
        last = torch.zeros(u_ids.shape[0], dtype=torch.long).scatter_reduce(
            0, inverse, _last(coefs), "amax")
    return u_image, u_ids, inverse, last


def _vjp(run: Run, ids, coefs, image, n_images, chunk_size, causal):
    u_image, u_ids, inverse, last = _unique_rows(ids, coefs, image, causal)
    held: dict[str, torch.Tensor] = {}

    def feed(a: torch.Tensor) -> torch.Tensor:
        _check_batch(a, n_images, "vjp")
        leaf = a.detach().requires_grad_(True)
        held["leaf"] = leaf
        return leaf[u_image.to(a.device)]  # index_select: a new tensor, in-graph

    with torch.enable_grad():
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


@contextmanager
def _leaf_outputs(modules: tuple[nn.Module, ...]) -> Iterator[list[list[torch.Tensor]]]:
    """While active, each module's output is replaced by a detached leaf that requires
    grad (the backward stops there); ``outs[j]`` lists module j's leaves. Hooks are removed
    on exit."""
    outs: list[list[torch.Tensor]] = [[] for _ in modules]

    def hook_of(j: int) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            leaf = output.detach().requires_grad_(True)
            outs[j].append(leaf)
            return leaf
        return hook

    handles = [m.register_forward_hook(hook_of(j), prepend=True) for j, m in enumerate(modules)]
    try:
        yield outs
    finally:
        for h in handles:
            h.remove()


def _affine_parts(module: nn.Module, D: int, like: torch.Tensor, gamma, beta):
    """``(module(beta), module(gamma) - module(0))`` for an affine module of D inputs:
    the offset ``W beta + b`` and the column ``W gamma`` (float32 or better)."""
    x = torch.stack([beta, gamma, torch.zeros_like(gamma)]).to(like)[:, None, :]
    with torch.no_grad():
        o = at_least_float32(module(x)[:, 0], like.dtype)
    return o[0], o[1] - o[2]


def _transpose_apply(module: nn.Module, D: int, e: torch.Tensor, like: torch.Tensor):
    """``e W`` (n,D) for cotangents e (n,D_out) of an affine module ``W y + b``."""
    x = torch.zeros(1, 1, D, dtype=like.dtype, device=like.device, requires_grad=True)
    with torch.enable_grad():
        out = module(x)
        g = batched_vjp(out, x, e.to(out.dtype)[:, None, None, :])
    return at_least_float32(g[:, 0, 0], like.dtype)


@dataclass(frozen=True)
class _Norm:
    """What the LayerNorm backward needs of A (B,n,D), in float32 or better: ``gamma``,
    ``beta`` (D,); ``w`` (B,n) each token's weight in the mean over the grid cells (``1 /
    (cells * sigma)``); ``xhat`` the normalized tokens and ``keep = eps / (var + eps)``
    (None for the identity)."""

    gamma: torch.Tensor
    beta: torch.Tensor
    w: torch.Tensor
    xhat: torch.Tensor | None = None
    keep: torch.Tensor | None = None


def _norm_of(x: torch.Tensor, norm: nn.LayerNorm | None, cells: torch.Tensor) -> _Norm:
    D = x.shape[-1]
    w = torch.zeros_like(x[..., 0])
    if norm is None:
        w[:, cells] = 1.0 / cells.numel()
        return _Norm(x.new_ones(D), x.new_zeros(D), w)
    var, mu = torch.var_mean(x, dim=-1, unbiased=False, keepdim=True)
    sigma = (var + norm.eps).sqrt()
    w[:, cells] = 1.0 / (cells.numel() * sigma[:, cells, 0])
    gamma = norm.weight.detach().to(x) if norm.weight is not None else x.new_ones(D)
    beta = norm.bias.detach().to(x) if norm.bias is not None else x.new_zeros(D)
    return _Norm(gamma, beta, w, (x - mu) / sigma, (norm.eps / (var + norm.eps))[..., 0])


def _reader_leaves(run: Run, u_ids, u_image, last, n_images, K, readers: Readers):
    """One forward with the readers' outputs as leaves: (A, scores, leaves)."""
    held: dict[str, torch.Tensor] = {}

    def feed(a: torch.Tensor) -> torch.Tensor:
        _check_batch(a, n_images, "readers")
        held["A"] = a.detach()
        return a.detach()[u_image.to(a.device)]

    with torch.enable_grad(), _leaf_outputs(readers.modules) as outs:
        s = _check_scores(_call(run, feed, u_ids, last), u_ids.shape[0], K)
    bad = [j for j, o in enumerate(outs) if len(o) != 1]
    if bad:
        raise MMCamError(f"strategy 'readers': reader {bad[0]} ran {len(outs[bad[0]])} times in "
                         "one forward (once expected): use strategy='vjp'")
    if held["A"].dim() != 3:
        raise MMCamError(f"strategy 'readers' reads tokens (B,n,D), got {tuple(held['A'].shape)}")
    return held["A"], s, [o[0] for o in outs]


def _readers(run: Run, ids, coefs, image, n_images, chunk_size, causal, readers: Readers):
    u_image, u_ids, inverse, last = _unique_rows(ids, coefs, image, causal)
    A, s, leaves = _reader_leaves(run, u_ids, u_image, last, n_images, coefs.shape[1], readers)
    D = A.shape[-1]
    grid = readers.grid(A).to(A.device)  # (h,w) token index per cell
    cells = grid.reshape(-1)
    x = at_least_float32(A)  # float32 or better throughout
    nt = _norm_of(x, readers.norm, cells)
    parts = [_affine_parts(m, D, A, nt.gamma, nt.beta) for m in readers.modules]
    Z = [leaf.detach().to(x) - off for leaf, (off, _) in zip(leaves, parts)]  # W (Y-beta)
    one = u_ids.shape[0] == 1  # one distinct row (a caption): views, no gathers
    per_row = u_ids.shape[0] * sum(leaf[0].numel() for leaf in leaves) * 4 * 2
    step = max(1, min(chunk_size or coefs.shape[0], READER_BYTES // max(per_row, 1)))
    alphas, hires = [], []
    for sl in chunks(coefs.shape[0], step):
        n = sl.stop - sl.start
        rows, u = torch.arange(n), inverse[sl].to(s.device)
        cot = torch.zeros(n, *s.shape, dtype=s.dtype, device=s.device)
        cot[rows, u] = coefs[sl].to(s)
        dO = batched_grads(s, leaves, cot)
        img = image[sl].to(A.device)
        wr = nt.w[img]  # (n,tokens)
        dot_u = x.new_zeros(n, A.shape[1])  # dY . (gamma xhat) per token
        wdot_v = x.new_zeros(n, 1)  # sum_i w_i dY_i . gamma
        first = x.new_zeros(n, D)  # sum_i w_i dY_i
        for m, g, z, (_, col) in zip(readers.modules, dO, Z, parts):
            if g is None:
                continue
            d = (g[:, 0] if one else g[rows, u]).to(x)  # (n,tokens,D_out)
            dot_u += (d * (z if one else z[u])).sum(-1)  # one pass over d (vecdot: two)
            wd = torch.bmm(wr[:, None, :], d)[:, 0]  # sum_i w_i dO_ji
            wdot_v += (wd @ col)[:, None]
            first += _transpose_apply(m, D, wd, A)
        if nt.xhat is None:
            alpha, h = first, dot_u
        else:
            alpha = (nt.gamma * first - wdot_v / D
                     - torch.einsum("nt,ntc->nc", wr * dot_u / D, nt.xhat[img]))
            h = dot_u * nt.keep[img]
        alphas.append(alpha)
        hires.append(h[:, cells].reshape(n, *grid.shape))
    return A, Reduced(torch.cat(alphas), torch.cat(hires)), s.detach()[inverse.to(s.device)]


def layer_gradients(
    run: Run,
    ids: torch.Tensor,
    coefs: torch.Tensor,
    strategy: str = "copies",
    chunk_size: int | None = None,
    image: torch.Tensor | None = None,
    n_images: int = 1,
    causal: bool = False,
    readers: Readers | None = None,
) -> Gradients:
    """Row gradients at the explained layer (see the module docstring for the proof).

    ids (N,T) token ids per row (T may be 0); coefs (N,K); image (N,) row -> image index
    (default all 0); ``run`` as :data:`Run`. ``strategy``: "copies", "vjp" or "readers"
    (needs ``readers``; returns :class:`Reduced` gradients on the grid). ``causal``:
    score t depends only on tokens <= t, so ``run`` is told each row's last used position.
    Returned scores are exact only up to each row's last position when ``causal``.
    """
    N = coefs.shape[0]
    if ids.shape[0] != N:
        raise ValueError(f"{ids.shape[0]} id rows for {N} coefficient rows")
    image = torch.zeros(N, dtype=torch.long) if image is None else image.long().cpu()
    if N == 0:
        raise MMCamError("nothing to explain: no rows")
    if check_strategy(strategy) == "readers":
        if readers is None:
            raise MMCamError("strategy 'readers' needs the modules that read the layer")
        A, G, scores = _readers(run, ids.long(), coefs.float(), image, n_images, chunk_size,
                                causal, readers)
        return Gradients(A=A, G=G, scores=scores, image=image)
    fn = {"copies": _copies, "vjp": _vjp}.get(strategy)
    if fn is None:
        raise ValueError("resolve strategy 'auto' before calling layer_gradients")
    A, G, scores = fn(run, ids.long(), coefs.float(), image, n_images, chunk_size, causal)
    return Gradients(A=A, G=at_least_float32(G), scores=scores, image=image)
