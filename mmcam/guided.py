"""Guided Backprop (Springenberg et al. 2015) and Guided Grad-CAM (Selvaraju et al. 2017).

Guided Backprop is defined for ReLU networks: at every ``nn.ReLU`` module the backward pass
keeps only positive gradients at positive inputs. A forward pass that runs another
activation module (GELU, SiLU, ...) is refused, and so is one that runs no ``nn.ReLU``
module at all (functional ``F.relu`` is invisible to hooks): either would silently return
plain gradients.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmcam.align import Cell
from mmcam.cam import upsample
from mmcam.errors import MMCamError
from mmcam.geometry import Geometry

OTHER_ACTIVATIONS = (
    nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.ELU, nn.SELU, nn.CELU, nn.LeakyReLU,
    nn.PReLU, nn.Softplus, nn.Hardtanh, nn.Hardsigmoid, nn.Tanh, nn.Sigmoid, nn.GLU,
)
_NAME_HINTS = ("gelu", "silu", "swish", "mish", "quickgelu")


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients to positive inputs.

    forward: ``max(x, 0)``; backward: ``dL/dx = max(dL/dy, 0) * [x > 0]``.
    """

    generate_vmap_rule = True

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


_STATE = threading.local()  # .on: guided ReLUs active in this thread; .relus: ReLU calls seen
_LOCK = threading.Lock()
_PATCHES: dict[int, int] = {}


def _forward(self: nn.ReLU, x: torch.Tensor) -> torch.Tensor:
    if getattr(_STATE, "on", False):
        _STATE.relus += 1
        return guided_relu(x)
    return F.relu(x, inplace=self.inplace)


def _is_other_activation(m: nn.Module) -> bool:
    name = type(m).__name__.lower()
    return isinstance(m, OTHER_ACTIVATIONS) or any(h in name for h in _NAME_HINTS)


class GuidedRun:
    """Counts the ReLU modules run inside :func:`guided_relus`; ``check()`` refuses none."""

    def __init__(self, patched: int) -> None:
        self.patched = patched

    @property
    def relus_run(self) -> int:
        return int(getattr(_STATE, "relus", 0))

    def check(self) -> None:
        if self.relus_run == 0:
            raise MMCamError(
                "guided backprop found no nn.ReLU module in the forward pass (functional relu or "
                "other activations): it would return plain gradients; use gradcam instead"
            )


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[GuidedRun]:
    """Inside the block, this thread's forward passes through ``model`` use guided ReLUs.

    Each ``nn.ReLU`` instance gets a ``forward`` attribute (removed in ``finally`` when the
    last concurrent user leaves) that is guided only in a thread inside this block; other
    threads see a plain ReLU. A non-ReLU activation module that runs raises MMCamError.
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    others = [m for m in model.modules() if _is_other_activation(m)]

    def refuse(module: nn.Module, inputs: tuple) -> None:
        if getattr(_STATE, "on", False):
            raise MMCamError(
                f"guided backprop is defined for ReLU networks, but the model runs "
                f"{type(module).__name__}: use gradcam, hirescam or gradcam++ instead"
            )

    handles = []
    with _LOCK:
        for m in relus:
            if _PATCHES.get(id(m), 0) == 0:
                m.forward = types.MethodType(_forward, m)  # type: ignore[method-assign]
            _PATCHES[id(m)] = _PATCHES.get(id(m), 0) + 1
    prev = getattr(_STATE, "on", False), getattr(_STATE, "relus", 0)
    try:
        handles = [m.register_forward_pre_hook(refuse, prepend=True) for m in others]
        _STATE.on, _STATE.relus = True, 0
        yield GuidedRun(len(relus))
    finally:
        _STATE.on, _STATE.relus = prev
        for h in handles:
            h.remove()
        with _LOCK:
            for m in relus:
                _PATCHES[id(m)] -= 1
                if _PATCHES[id(m)] == 0:
                    del _PATCHES[id(m)]
                    if "forward" in m.__dict__:
                        del m.forward


def guided_backprop(
    model: nn.Module, pixels: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Guided Backprop: ``d y_c / d pixels`` through guided ReLUs.

    pixels (B,3,H,W), targets (B,k) class ids -> (B,k,3,H,W). The caller sets eval mode.
    """
    x = pixels.detach().clone().requires_grad_(True)
    with guided_relus(model) as run, torch.enable_grad():
        logits = model(x)
        run.check()
        out = []
        k = targets.shape[1]
        for j in range(k):
            y = logits.gather(1, targets[:, j : j + 1].to(logits.device)).sum()
            (g,) = torch.autograd.grad(y, x, retain_graph=j < k - 1)
            out.append(g)
    return torch.stack(out, dim=1)


def guided_gradcam(gradcam_maps: torch.Tensor, guided: torch.Tensor,
                   cell: Cell | None = None) -> torch.Tensor:
    """Guided Grad-CAM: ``guided * upsample_bilinear(gradcam)``; with ``cell`` the maps are
    sampled at the grid cells' input positions instead (:mod:`mmcam.align`).

    gradcam_maps (..., h, w) at layer resolution; guided (..., 3, H, W). Returns (..., 3, H, W).
    """
    lead = gradcam_maps.shape[:-2]
    h, w = gradcam_maps.shape[-2:]
    H, W = guided.shape[-2:]
    flat = gradcam_maps.reshape(-1, h, w)
    up = (upsample(flat, (H, W)) if cell is None else
          Geometry.identity((W, H)).to_image(flat, cell)).reshape(*lead, 1, H, W)
    return guided * up.to(guided)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the explained layer has run."""


def guided_from_layer(
    model: nn.Module,
    pixels: torch.Tensor,
    layer_grads: torch.Tensor,
    to_layer: Callable[[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]], None],
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Guided Backprop from given gradients at the explained layer down to the pixels.

    pixels (1,3,H,W); layer_grads (N, ...) = dy_i/dA, exact above the layer.
    ``to_layer(pixels, feed)`` runs the model until the layer hands its output to ``feed``
    (which then stops the pass). Returns (N,3,H,W): ``G_i^T dA/dpixels`` with the ReLUs
    below the layer guided, by one forward and one batched VJP per chunk.
    """
    from mmcam.engine import batched_vjp, chunks

    x = pixels.detach().clone().requires_grad_(True)
    held: dict[str, torch.Tensor] = {}

    def feed(a: torch.Tensor) -> torch.Tensor:
        held["A"] = a
        raise _Stop

    with guided_relus(model) as run, torch.enable_grad():
        try:
            to_layer(x, feed)
        except _Stop:
            pass
        run.check()
        A = held["A"]
        out = []
        for sl in chunks(layer_grads.shape[0], chunk_size):
            cot = layer_grads[sl].reshape(-1, *A.shape).to(A)
            out.append(batched_vjp(A, x, cot)[:, 0])
    return torch.cat(out).float()
