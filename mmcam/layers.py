"""The explained layer: finding it by path, tapping its output, and reading it as a grid.

A layer is any submodule, named by a dotted path whose parts may be indexed, with negative
indices counted from the end: ``"vision_model.encoder.layers[-1]"``, ``"encoder.-1"``.
Its output (a tensor, a tuple whose element 0 is the explained tensor, or a mapping such as
transformers' ``ModelOutput`` whose first field is) is read as a
(B,C,h,w) grid by a :class:`Layout`:

- :class:`Conv` — (B,C,h,w) as it is;
- :class:`Tokens` — (B, prefix + h*w, D): the ``prefix`` tokens (CLS, distillation,
  registers) are dropped and the rest reshaped row-major, ``grid[b, :, i, j] = x[b, prefix +
  i*w + j]``;
- :class:`ChannelsLast` — (B,h,w,C) permuted to (B,C,h,w);
- :class:`Custom` — a callback for models that scatter or permute tokens.

Every layout is a linear re-indexing, so the gradient's grid is the same re-indexing of the
gradient and the CAM formulas apply unchanged on (h,w).
"""

from __future__ import annotations

import inspect
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmcam.errors import MMCamError

_PART = re.compile(r"^([^\[\]]*)((?:\[-?\d+\])*)$")


def _child(module: nn.Module, key: str, path: str) -> nn.Module:
    if re.fullmatch(r"-?\d+", key):
        children = list(module.children())
        i = int(key)
        if not -len(children) <= i < len(children):
            raise MMCamError(
                f"layer {path!r}: index {i} is out of range ({len(children)} children)"
            )
        if isinstance(module, (nn.Sequential, nn.ModuleList)):
            return module[i]
        return children[i]
    sub = module._modules.get(key)
    if sub is None:
        raise KeyError(key)
    return sub


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    """The submodule ``layer`` of ``model``: the module itself, or a dotted path.

    Path parts are attribute names or integers, each optionally followed by ``[i]`` indices;
    negative integers count from the end (``"layers[-1]"`` = ``"layers.-1"``).
    """
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise MMCamError("the given layer module is not part of the model")
        return layer
    if not isinstance(layer, str) or not layer.strip():
        raise MMCamError(f"a layer is a module or a dotted path such as 'layer4', got {layer!r}")
    module = model
    try:
        for part in layer.strip().split("."):
            m = _PART.match(part)
            if m is None or not part:  # "encoder..14", ".encoder", "encoder." name nothing
                raise KeyError(part)
            name, indices = m.groups()
            if name:
                module = _child(module, name, layer)
            for idx in re.findall(r"-?\d+", indices):
                module = _child(module, idx, layer)
    except KeyError:
        names = [n for n, _ in model.named_children()]
        hint = f"; its top-level parts are {', '.join(names[:8])}" if names else ""
        raise MMCamError(f"the model has no layer named {layer!r}{hint}") from None
    return module


def layer_name(model: nn.Module, layer: str | nn.Module) -> str:
    """A readable name for ``layer``: the path as given, or the module's name in ``model``."""
    if isinstance(layer, str):
        return layer
    for n, m in model.named_modules():
        if m is layer:
            return n or type(layer).__name__
    return type(layer).__name__


# ----------------------------------------------------------------------------- layouts


class Layout:
    """How a layer's output tensor becomes a (B,C,h,w) grid. Subclasses define ``to_grid``;
    ``inputs`` are the prepared model inputs of the image, for layouts that need them."""

    def to_grid(self, x: torch.Tensor, inputs: Any = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class Conv(Layout):
    """(B,C,h,w) feature maps, used as they are."""

    def to_grid(self, x: torch.Tensor, inputs: Any = None) -> torch.Tensor:
        if x.dim() != 4:
            raise MMCamError(
                f"the layer gives a {tuple(x.shape)} tensor, not (B,C,h,w) maps: give "
                "layout=Tokens(...) for token sequences or ChannelsLast() for (B,h,w,C)"
            )
        return x


@dataclass(frozen=True)
class ChannelsLast(Layout):
    """(B,h,w,C) maps (Swin stages, ConvNeXt blocks) -> (B,C,h,w)."""

    def to_grid(self, x: torch.Tensor, inputs: Any = None) -> torch.Tensor:
        if x.dim() != 4:
            raise MMCamError(f"ChannelsLast expects (B,h,w,C), got {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2)


@dataclass(frozen=True)
class Tokens(Layout):
    """(B, prefix + h*w, D) token sequences -> (B,D,h,w), row-major after the prefix.

    ``grid=(h, w)``; None infers a square grid from the token count.
    """

    prefix: int = 0
    grid: tuple[int, int] | None = None

    def to_grid(self, x: torch.Tensor, inputs: Any = None) -> torch.Tensor:
        if x.dim() != 3:
            raise MMCamError(f"Tokens expects (B, tokens, D), got {tuple(x.shape)}")
        n = x.shape[1] - self.prefix
        if self.grid is not None:
            h, w = self.grid
        else:
            h = w = math.isqrt(max(n, 0))
        if h * w != n or n <= 0:
            raise MMCamError(
                f"{x.shape[1]} tokens minus {self.prefix} prefix tokens is {n}, which is not a "
                f"{'x'.join(map(str, self.grid)) if self.grid else 'square'} grid: give "
                "Tokens(prefix=..., grid=(h, w))"
            )
        return x[:, self.prefix :].transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


@dataclass(frozen=True)
class Custom(Layout):
    """A callback ``fn(x) -> (B,C,h,w)``, or ``fn(x, inputs)`` when it needs the image's
    prepared inputs (e.g. a per-image patch order); it must be linear in ``x`` (a
    re-indexing)."""

    fn: Callable[..., torch.Tensor]

    def to_grid(self, x: torch.Tensor, inputs: Any = None) -> torch.Tensor:
        try:
            takes_inputs = len(inspect.signature(self.fn).parameters) >= 2
        except (TypeError, ValueError):
            takes_inputs = False
        g = self.fn(x, inputs) if takes_inputs else self.fn(x)
        if not isinstance(g, torch.Tensor) or g.dim() != 4:
            raise MMCamError("a Custom layout's callback must return a (B,C,h,w) tensor")
        return g


def as_layout(layout: Layout | str | Callable | None) -> Layout:
    """A :class:`Layout` from a Layout, ``"conv"``, ``"channels_last"``, ``"tokens"`` or a
    callable (wrapped in :class:`Custom`); None means :class:`Conv`."""
    if layout is None or layout == "conv":
        return Conv()
    if isinstance(layout, Layout):
        return layout
    if layout == "channels_last":
        return ChannelsLast()
    if layout == "tokens":
        return Tokens()
    if callable(layout):
        return Custom(layout)
    raise MMCamError(f"unknown layout {layout!r}: use conv, tokens, channels_last or a Layout")


# ----------------------------------------------------------------------------- the tap


def _tensor_of(output: Any, name: str) -> torch.Tensor:
    if isinstance(output, Mapping) and output:  # a model output: its first field
        return _tensor_of(next(iter(output.values())), name)
    t = output[0] if isinstance(output, (tuple, list)) and output else output
    if not isinstance(t, torch.Tensor):
        raise MMCamError(
            f"layer {name!r} outputs {type(output).__name__}, not a tensor or a tuple starting "
            "with one: choose another layer"
        )
    return t


class Tap:
    """A forward hook on one module that hands its output to ``feed`` and continues with
    what ``feed`` returns (element 0 of a tuple output, or the first field of a mapping
    output, is the explained tensor).

    The hook only acts in the thread that opened the tap, so two explanations running at
    once on one model each see only their own forward passes. ``runs`` counts calls.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.feed: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.runs = 0
        self.thread = threading.get_ident()

    def hook(self, module: nn.Module, inputs: tuple, output: Any) -> Any:
        if threading.get_ident() != self.thread or self.feed is None:
            return None
        self.runs += 1
        if self.runs > 1:
            raise MMCamError(
                f"layer {self.name!r} runs more than once in a forward pass: choose a layer "
                "that runs once (e.g. a block, not a norm the model calls twice)"
            )
        new = self.feed(_tensor_of(output, self.name))
        if isinstance(output, tuple):
            return (new, *output[1:])
        if isinstance(output, list):
            return [new, *output[1:]]
        if isinstance(output, Mapping):  # e.g. transformers' ModelOutput: same type, field 0 new
            first = next(iter(output))
            return type(output)(**{**output, first: new})
        return new

    @contextmanager
    def run(self, feed: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """One forward pass with ``feed``; raises if the layer ran never."""
        self.feed, self.runs = feed, 0
        try:
            yield
            if self.runs == 0:
                raise MMCamError(
                    f"the forward pass never reached layer {self.name!r}: choose a layer the "
                    "model uses"
                )
        finally:
            self.feed = None


@contextmanager
def tap(model: nn.Module, layer: str | nn.Module) -> Iterator[Tap]:
    """A :class:`Tap` on ``layer`` of ``model`` for the duration of the block.

    The hook is registered with ``prepend=True`` (ahead of hooks libraries install, e.g.
    transformers' output capturing) and removed in ``finally``, also when the block raises.
    """
    module = resolve_layer(model, layer)
    t = Tap(layer_name(model, layer))
    handle = module.register_forward_hook(t.hook, prepend=True)
    try:
        yield t
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- eval mode

_EVAL_LOCK = threading.Lock()
_EVAL_USERS: dict[int, tuple[int, list[tuple[nn.Module, bool]]]] = {}


@contextmanager
def eval_mode(model: nn.Module | None) -> Iterator[None]:
    """Every module of ``model`` in eval mode inside the block; each flag restored after.

    Reference-counted per model: concurrent calls on one model share one switch, and the
    flags are restored when the last of them leaves.
    """
    if model is None:
        yield
        return
    key = id(model)
    with _EVAL_LOCK:
        count, flags = _EVAL_USERS.get(key, (0, []))
        if count == 0:
            # the modules in training mode (each restored after); none: nothing to switch
            flags = [(m, True) for m in model.modules() if m.training]
            if flags:
                model.eval()
        _EVAL_USERS[key] = (count + 1, flags)
    try:
        yield
    finally:
        with _EVAL_LOCK:
            count, flags = _EVAL_USERS[key]
            if count == 1:
                del _EVAL_USERS[key]
                for m, flag in flags:  # eval() set every flag False: restore the True ones
                    m.training = flag
            else:
                _EVAL_USERS[key] = (count - 1, flags)
