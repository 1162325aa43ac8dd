"""Guided Backprop (Springenberg et al. 2015) and Guided Grad-CAM (Selvaraju et al. 2017)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from mmcam.cam import upsample


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients to positive inputs.

    forward: ``max(x, 0)``; backward: ``dL/dx = max(dL/dy, 0) * [x > 0]``.
    """

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clamp_min(0)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad.clamp_min(0) * (x > 0).to(grad.dtype)


def guided_relu(x: torch.Tensor) -> torch.Tensor:
    """``max(x, 0)`` with the guided backward rule."""
    return _GuidedReLU.apply(x)


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[int]:
    """Make every ``nn.ReLU`` module of ``model`` guided inside the block (in-place ones too).

    Each ReLU instance gets a ``forward`` attribute that computes an out-of-place guided
    ReLU; it is deleted in ``finally``. ReLUs called as functions (``F.relu``) are not
    seen: only modules. Yields the number of ReLU modules patched.
    """
    patched = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        for m in patched:
            m.forward = guided_relu  # type: ignore[method-assign]
        yield len(patched)
    finally:
        for m in patched:
            if "forward" in m.__dict__:
                del m.forward


def guided_backprop(
    model: nn.Module, pixels: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Guided Backprop: ``d y_c / d pixels`` through guided ReLUs.

    pixels (B,3,H,W), targets (B,k) class ids -> (B,k,3,H,W). The caller sets eval mode.
    """
    x = pixels.detach().clone().requires_grad_(True)
    with guided_relus(model), torch.enable_grad():
        logits = model(x)
        out = []
        k = targets.shape[1]
        for j in range(k):
            y = logits.gather(1, targets[:, j : j + 1]).sum()
            (g,) = torch.autograd.grad(y, x, retain_graph=j < k - 1)
            out.append(g)
    return torch.stack(out, dim=1)


def guided_gradcam(gradcam_maps: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
    """Guided Grad-CAM: ``guided * upsample_bilinear(gradcam)``.

    gradcam_maps (..., h, w) at layer resolution; guided (..., 3, H, W). Returns (..., 3, H, W).
    """
    lead = gradcam_maps.shape[:-2]
    h, w = gradcam_maps.shape[-2:]
    H, W = guided.shape[-2:]
    up = upsample(gradcam_maps.reshape(-1, h, w), (H, W)).reshape(*lead, 1, H, W)
    return guided * up


def guided_backprop_from_layer(
    module: nn.Module,
    encode: Callable[[torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    layer_grads: torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Guided Backprop from given gradients at the explained layer down to the pixels.

    pixels (1,3,H,W); layer_grads (N,C,h,w) = dy_i/dA (the exact gradients above the layer).
    Returns (N,3,H,W): ``dy_i/dpixels`` through ``encode`` with the ReLUs of ``module``
    guided. One encoder forward/backward per chunk of N copies.
    """
    n_total = layer_grads.shape[0]
    step = n_total if not chunk_size or chunk_size <= 0 else chunk_size
    out = []
    with guided_relus(module), torch.enable_grad():
        for start in range(0, n_total, step):
            g = layer_grads[start : start + step]
            x = pixels.detach().expand(g.shape[0], *pixels.shape[1:]).clone().requires_grad_()
            feats = encode(x)
            (gx,) = torch.autograd.grad(feats, x, grad_outputs=g)
            out.append(gx)
    return torch.cat(out, dim=0)
