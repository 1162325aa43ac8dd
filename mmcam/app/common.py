"""What the three tabs share: image inputs and map outputs, the event wrapper (errors become
messages; handlers return ``{component: value}``), and :class:`Tab`, one implementation of
sample, new scene, show, re-draw and download over a tab's own view of its result.
"""

from __future__ import annotations

import inspect
import logging
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

from mmcam.app import render
from mmcam.app.models import Models
from mmcam.app.samples import (
    fresh_indices,
    load_sample,
    make_scene,
    read_image,
    sample_choices,
    scene_label,
    truth_of,
)
from mmcam.app.state import Session
from mmcam.errors import MMCamError
from mmcam.registry import RECOMMENDED, layer_choices, method_choices

_log = logging.getLogger(__name__)
N_SCENES = 5
PRIVATE = {"api_visibility": "private"}
# drawing from stored maps is cheap: served at once, outside the queue, without a spinner;
# a click made while one is pending is not dropped but served after it ("always_last")
DRAW = {"queue": False, "show_progress": "hidden", "trigger_mode": "always_last"}
FILES = {"concurrency_id": "files", "concurrency_limit": 2}  # downloads: their own workers


def model_events(workers: int) -> dict[str, Any]:
    """Events that run a model: ``workers`` at once, shared by all users and tabs."""
    return {"concurrency_id": "model", "concurrency_limit": workers}


# ----------------------------------------------------------------------------- components


def tolerant(component: gr.Image) -> gr.Image:
    """Make an image input pass an undecodable upload to the event as its file path (instead
    of failing inside gradio), so the event answers with its own one-line message.

    (An instance patch: subclassing ``gr.Image`` makes gradio write a .pyi next to this file.)
    """
    original = component.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return original(payload)
        except Exception:  # noqa: BLE001 - the event reports the unreadable file itself
            path = getattr(payload, "path", None)
            if path is None:
                raise
            return str(path)

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


def image_input(elem_id: str) -> gr.Image:
    """An image upload box that hands the event a file path."""
    return tolerant(gr.Image(label="Image", type="filepath", format="png", image_mode=None,
                             sources=["upload", "clipboard"], height=300, elem_id=elem_id,
                             elem_classes="mmcam-input"))


def map_output(label: str, elem_id: str, visible: bool = True) -> gr.Image:
    """An image output for a map."""
    return gr.Image(label=label, type="pil", format="png", interactive=False, height=300,
                    visible=visible, elem_id=elem_id, elem_classes="mmcam-map")


def layer_options(layers: Sequence[str], recommended: str | None = None
                  ) -> list[tuple[str, str]]:
    """Layer dropdown choices: "" first, which is the ``recommended`` layer when there is one
    (then the default by name) or else the model's default; then the others."""
    if not layers:
        return [("the model's default", "")]
    if not recommended or recommended == layers[0]:
        return [(f"{layers[0]} (default)", "")] + [(x, x) for x in layers[1:]]
    return [(f"{recommended} (recommended)", ""), (f"{layers[0]} (default)", layers[0])] + [
        (x, x) for x in layers[1:] if x != recommended]


def explainer_layer(adapter: Any, layer: str | None) -> dict[str, Any]:
    """Explainer keywords for ``layer`` ("" or None: the model's default). A layer offered by
    :func:`mmcam.registry.layer_choices` is a sibling of the default's type: the default's
    layout reads it too; any other is read with an inferred layout."""
    layer = (layer or "").strip()
    if not layer or layer == getattr(adapter, "layer", None):
        return {}
    if layer in layer_choices(adapter):
        return {"layer": layer, "layout": getattr(adapter, "layout", None)}
    return {"layer": layer}


# ----------------------------------------------------------------------------- events


def guarded(fn: Callable[..., dict], outputs: list[Any], status: Any = None) -> Callable:
    """Wrap a handler that returns ``{component: value}`` into a gradio event function that
    returns the values in the order of ``outputs`` (a component left out is not changed; one
    that is not an output of this event is not sent).

    An error becomes a message (gr.Warning, and ``status`` when given); the app keeps
    running. The session, when it is among the inputs, is returned as a last output: gradio
    re-stores it, which restarts its time-to-live (in-place changes do not).
    """
    index = {id(c): k for k, c in enumerate(outputs)}

    def run(*args: Any) -> Any:
        try:
            out = fn(*args)
        except MMCamError as e:
            out = _message(str(e), status)
        except Exception as e:  # noqa: BLE001 - a user's model may fail in any way
            _log.exception("mmcam app: event %s failed", fn.__name__)
            out = _message(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                           status)
        values = [gr.skip()] * len(outputs)
        for component, value in out.items():  # components the event does not output: unused
            if id(component) in index:
                values[index[id(component)]] = value
        session = next((a for a in args if isinstance(a, Session)), None)
        if session is not None:
            values.append(session)
        return tuple(values) if len(values) != 1 else values[0]

    run.__name__ = getattr(fn, "__name__", "event")
    run.__doc__ = fn.__doc__
    params = inspect.signature(fn).parameters.values()  # the API's parameter names
    run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [p.replace(annotation=inspect.Parameter.empty) for p in params])
    return run


def _message(text: str, status: Any) -> dict:
    gr.Warning(text)
    return {} if status is None else {status: f"**Error:** {text}"}


def on(trigger: Callable[..., Any], fn: Callable[..., dict], inputs: list[Any],
       outputs: list[Any], status: Any = None, session: Any = None, **kw: Any) -> None:
    """Wire ``fn`` to ``trigger`` through :func:`guarded`; ``session`` (the gr.State) is
    added to the outputs when it is among the inputs."""
    touch = session is not None and any(c is session for c in inputs)
    trigger(guarded(fn, outputs, status), inputs, outputs + [session] if touch else outputs,
            **kw)


# ----------------------------------------------------------------------------- tabs


class Tab:
    """One tab's shared parts and handlers. A subclass sets the class attributes, builds
    its layout with the helpers here and implements ``draw_selected`` / ``draw_all``."""

    key = "caption"  # the Session attribute holding the tab's view, and its scene's key
    kind = "captioner"  # the model kind the tab explains
    prefix = "cap"  # elem_id prefix
    task = "caption"  # the registry's task (method choices)
    one_large = False  # the kind of scene: one large object (the classifier's)
    noun = "word"  # what the selector picks
    first = "make a caption first"  # the message before the first result
    bundle = "caption's"  # "saved the ...'s bundle"
    display_names: tuple[str, ...] = ("alpha", "box", "own")

    def __init__(self, models: Models, session: gr.State, workers: int) -> None:
        self.models = models
        self.session = session
        self.model_kw = model_events(workers)
        self.display: list[Any] = []  # the display components, in display_names' order

    # ---- layout pieces

    def samples_row(self, first: list[int]) -> None:
        """Image input, sample dropdown and "New scene" button."""
        p = self.prefix
        self.image = image_input(f"{p}_image")
        with gr.Row():
            self.sample_dd = gr.Dropdown(sample_choices(first), value=None, label="Sample",
                                         elem_id=f"{p}_sample", allow_custom_value=True,
                                         scale=3)
            self.new = gr.Button("New scene", elem_id=f"{p}_new_scene", scale=1)

    def model_pickers(self, method_default: str | None = RECOMMENDED,
                      method_label: str = "Method and explained score") -> None:
        """Model dropdown, layer picker and method radio, set to the first model's
        recommended setting when it has one (see :meth:`pickers_for`)."""
        p, names = self.prefix, self.models.names(self.kind)
        self.method_default = method_default
        self.model = gr.Dropdown(names, value=names[0] if names else None, label="Model",
                                 elem_id=f"{p}_model")
        start = self.pickers_for(self.model.value, self.method_default)
        self.layer = gr.Dropdown(**start["layer"], label="Layer (the model's default, or an "
                                 "earlier one)", elem_id=f"{p}_layer", allow_custom_value=True)
        self.method = gr.Radio(**start["method"], label=method_label, elem_id=f"{p}_method")

    def pickers_for(self, model: str | None, method: str | None = None
                    ) -> dict[str, dict[str, Any]]:
        """The layer and method pickers' choices and values for ``model``: the setting its
        folder recommends (``mmcam evaluate-explanations --save-recommended``) selected and
        listed first; else the model's default layer and ``method`` (None: the method
        picker keeps its value)."""
        rec = self.models.recommendation(model, self.kind)
        first = rec["value"] if rec else None
        chosen = {"value": first or method} if first or method else {}
        return {"layer": {"choices": layer_options(self.models.layers(model, self.kind),
                                                   (rec or {}).get("layer")), "value": ""},
                "method": {"choices": method_choices(self.task, first), **chosen}}

    def display_row(self, box: bool = False, truth: bool = False) -> None:
        """Opacity, localization box, (ground truth), own color scale."""
        p = self.prefix
        with gr.Row():
            self.alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity",
                                   elem_id=f"{p}_alpha")
            self.box = gr.Checkbox(box, label="Localization box", elem_id=f"{p}_box")
            if truth:
                self.gt = gr.Checkbox(False, label="Ground-truth boxes (scenes)",
                                      interactive=False, elem_id=f"{p}_gt")
            self.own = gr.Checkbox(False, label="Each map on its own color scale",
                                   elem_id=f"{p}_own")
        self.display = [getattr(self, "gt" if n == "truth" else n) for n in self.display_names]

    def download_row(self) -> None:
        """The download button and file."""
        p = self.prefix
        with gr.Row():
            self.save = gr.Button("Download result (zip)", elem_id=f"{p}_save")
            self.file = gr.File(label="Result bundle", elem_id=f"{p}_file",
                                elem_classes="mmcam-file")

    # ---- what a subclass provides

    def view(self, session: Session) -> Any:
        """The tab's current view in ``session`` (None before the first result)."""
        return getattr(session, self.key)

    def count(self, view: Any) -> int:
        """How many panels the selector offers."""
        raise NotImplementedError

    def on_scene(self, scene: Any) -> dict:
        """Extra outputs when a sample or new scene is shown (e.g. its questions)."""
        return {}

    def draw_selected(self, view: Any, d: render.Display, session: Session) -> dict:
        """The selected panel's outputs (the ``show_*`` event's)."""
        raise NotImplementedError

    def draw_all(self, view: Any, d: render.Display, session: Session) -> dict:
        """Everything drawn from the view (the ``render_*`` event's)."""
        raise NotImplementedError

    # ---- shared handlers

    def settings(self, values: Sequence[Any]) -> render.Display:
        """The display settings from the display components' values."""
        return render.Display(**dict(zip(self.display_names, values)))

    def image_and_truth(self, path: Any, session: Session) -> tuple[Any, Any]:
        """The event's image and the tab's scene when the image is exactly its picture."""
        image = read_image(path)
        return image, truth_of(session.scenes.get(self.key), image)

    def sample(self, label: str, session: Session) -> dict:
        """Show a sample from the dropdown (an empty box: nothing to do)."""
        if not (label or "").strip():
            return {}
        image, scene = load_sample(label, one_large=self.one_large)
        session.scenes[self.key] = scene
        return {self.image: session.png(image, f"{self.prefix}_sample"), **self.on_scene(scene)}

    def new_scene(self, session: Session) -> dict:
        """Show a fresh scene and offer other fresh ones in the dropdown."""
        index = fresh_indices(1)[0]
        scene = make_scene(index, self.one_large)
        session.scenes[self.key] = scene
        choices = sample_choices([index] + fresh_indices(N_SCENES - 1))
        return {self.image: session.png(scene.image, f"{self.prefix}_sample"),
                self.sample_dd: gr.update(choices=choices, value=scene_label(index)),
                **self.on_scene(scene)}

    def show(self, index: int | None, *args: Any) -> dict:
        """Show panel ``index`` (0-based) from the maps already computed."""
        *values, session = args
        view = self.view(session)
        if view is None:
            raise MMCamError(self.first)
        n = self.count(view)
        if index is None or not 0 <= int(index) < n:
            raise MMCamError(f"{self.noun} index {index} is out of range: there are {n} "
                             f"{self.noun}s")
        view.selected = int(index)
        return self.draw_selected(view, self.settings(values), session)

    def render(self, *args: Any) -> dict:
        """Re-draw the shown maps with new display settings (no recomputation)."""
        *values, session = args
        view = self.view(session)
        return {} if view is None else self.draw_all(view, self.settings(values), session)

    def download(self, session: Session) -> dict:
        """Save the tab's result (``result.save``) in the session folder as a zip."""
        view = self.view(session)
        if view is None:
            raise MMCamError(self.first)
        import matplotlib

        matplotlib.use("Agg", force=False)
        root = session.workdir()
        out = root / self.task
        shutil.rmtree(out, ignore_errors=True)
        self.result_to_save(view).save(out)
        path = shutil.make_archive(str(out), "zip", root_dir=out)
        return {self.file: path, self.status: f"saved the {self.bundle} bundle"}

    def result_to_save(self, view: Any) -> Any:
        """What the download saves."""
        return view.result

    def explainer_kw(self, model: str | None, layer: str | None) -> tuple[Any, dict, str]:
        """The adapter of ``model``, its explainer's layer keywords and the layer the picker
        value ``layer`` means ("": the model's recommended layer, else its default)."""
        adapter = self.models.get(model, self.kind)
        layer = self.models.layer_of(model, self.kind, layer)
        return adapter, explainer_layer(adapter, layer), layer

    def layers_for(self, model: str) -> dict:
        """The layer and method pickers for ``model`` (:meth:`pickers_for`)."""
        new = self.pickers_for(model)
        return {self.layer: gr.update(**new["layer"]), self.method: gr.update(**new["method"])}

    # ---- shared wiring

    def wire_common(self, api: dict[str, str], show_out: list[Any], render_out: list[Any]
                    ) -> None:
        """Sample, new scene, selector clicks, display settings, download, layer picker.
        ``api`` names the events: keys "sample", "new_scene", "show", "render", "download"."""
        s = self.session
        sample_out = [self.image] + self.scene_outputs()
        on(self.sample_dd.input, self.sample, [self.sample_dd, s], sample_out, session=s,
           api_name=api["sample"], **DRAW)
        on(self.new.click, self.new_scene, [s],
           [self.image, self.sample_dd] + self.scene_outputs(), session=s,
           api_name=api["new_scene"], **DRAW)
        on(self.selector.input, self.show, [self.selector, *self.display, s], show_out,
           self.show_status, session=s, api_name=api["show"], **DRAW)
        on(self.alpha.change, self.render, [*self.display, s], render_out, session=s,
           api_name=api["render"], **DRAW)
        for c in self.display[1:]:
            on(c.input, self.render, [*self.display, s], render_out, session=s, **PRIVATE,
               **DRAW)
        on(self.save.click, self.download, [s], [self.file, self.status], self.status,
           session=s, api_name=api["download"], **FILES)
        on(self.model.change, self.layers_for, [self.model], [self.layer, self.method],
           queue=False, **PRIVATE)

    def scene_outputs(self) -> list[Any]:
        """The components :meth:`on_scene` sets, in API order."""
        return []
