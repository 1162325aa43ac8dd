"""Capturing a layer's activations with hooks that live only inside a context manager."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from mmcam.errors import MMCamError


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    """Return the submodule ``layer`` of ``model``, given as a module or a dotted name."""
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise MMCamError("the given layer module is not part of the model")
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        hint = f"; its conv layers include {', '.join(convs[-3:])}" if convs else ""
        raise MMCamError(f"the model has no layer named {layer!r}{hint}") from None


@contextmanager
def eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode inside the block; restore every module's flag after."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        if enabled:
            model.eval()
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


class Capture:
    """Activations of one layer recorded during a forward pass.

    ``activations`` is a leaf tensor with ``requires_grad=True`` holding a copy of the
    layer's output; the network continues from a clone of it, so in-place operations after
    the layer cannot change it and ``torch.autograd.grad(y, capture.activations)`` gives
    ``dy/dA`` without touching any parameter's ``.grad``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.activations: torch.Tensor | None = None
        self.calls = 0

    def hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 1:
            raise MMCamError(
                f"layer {self.name!r} runs more than once in a forward pass: choose another layer"
            )
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise MMCamError(
                f"layer {self.name!r} must output a (B,C,h,w) tensor, got {shape}: "
                "choose a conv layer"
            )
        leaf = output.detach().clone().requires_grad_(True)
        self.activations = leaf
        return leaf.clone()

    def get(self) -> torch.Tensor:
        """The captured activations; raises if the forward pass never reached the layer."""
        if self.activations is None:
            raise MMCamError(
                f"the forward pass never reached layer {self.name!r}: choose a layer the model uses"
            )
        return self.activations


@contextmanager
def capture(model: nn.Module, layer: str | nn.Module) -> Iterator[Capture]:
    """Record ``layer``'s output during forward passes inside the block.

    The hook is removed in ``finally``, also when the block raises. The model's training
    flags, ``requires_grad`` and parameter ``.grad`` are not touched.
    """
    module = resolve_layer(model, layer)
    name = layer if isinstance(layer, str) else type(layer).__name__
    cap = Capture(name)
    handle = module.register_forward_hook(cap.hook)
    try:
        with torch.enable_grad():
            yield cap
    finally:
        handle.remove()
