"""The Classification tab: the top classes, their maps, Guided Grad-CAM, boxes."""

from __future__ import annotations

from typing import Any

import gradio as gr

from mmcam.app import render
from mmcam.app.common import PRIVATE, Tab, map_output, on
from mmcam.app.render import Display
from mmcam.app.state import ClassView, Session

TOP_CLASSES = 3


class ClassifyTab(Tab):
    """Layout, handlers and wiring of the Classification tab."""

    key, kind, prefix, task, noun = "classes", "classifier", "cls", "classify", "class"
    first, bundle = "classify an image first", "classes'"
    one_large = True

    def layout(self, first: list[int]) -> None:
        """Build the tab's components."""
        with gr.Tab("Classification", id="classify", elem_id="tab_classify"):
            with gr.Row():
                with gr.Column(scale=2):
                    self.samples_row(first)
                    self.model_pickers("gradcam", "Method")
                    self.run = gr.Button("Classify", variant="primary", elem_id="cls_run")
                with gr.Column(scale=3):
                    self.status = gr.Markdown("", elem_id="cls_status")
                    self.selector = gr.Radio([], label="Top classes: click one",
                                             elem_id="cls_top")
                    with gr.Row():
                        self.map = map_output("Map of the class", "cls_map")
                        self.guided = map_output("Guided Grad-CAM", "cls_guided")
                    self.info = gr.Markdown("", elem_id="cls_info")
                    self.display_row(box=True)
            self.download_row()
        self.show_status = self.info

    # ---- handlers

    def classify(self, image_path: Any, model: str, method: str, alpha: float, box: bool,
                 own: bool, session: Session, layer: str = "") -> dict:
        """Top classes, their maps, Guided Grad-CAM and localization boxes."""
        from mmcam.classify import ClassExplainer

        image, scene = self.image_and_truth(image_path, session)
        adapter, kw, _ = self.explainer_kw(model, layer)
        top = min(TOP_CLASSES, len(adapter.labels))
        result = ClassExplainer(adapter, method=method or "gradcam", **kw).explain(
            image, top=top, guided=True)
        view = session.classes = render.class_view(result, scene)
        return {self.status: render.class_status(view),
                self.selector: gr.update(choices=render.class_choices(view), value=0),
                **self.draw_selected(view, Display(alpha, box, False, own), session)}

    def reclassify(self, image_path: Any, model: str, method: str, alpha: float, box: bool,
                   own: bool, session: Session, layer: str = "") -> dict:
        """Classify again with another method (nothing classified yet: no-op)."""
        if session.classes is None:
            return {}
        return self.classify(image_path, model, method, alpha, box, own, session, layer)

    def count(self, view: ClassView) -> int:
        return len(view.result.classes)

    def draw_selected(self, view: ClassView, d: Display, session: Session) -> dict:
        i = view.selected
        return {self.map: session.png(render.class_image(view, i, d.alpha, d.box, d.own),
                                      "class"),
                self.guided: session.png(view.guided[i] if view.guided else None,
                                         "class_guided"),
                self.info: render.class_info(view, i, d.own)}

    def draw_all(self, view: ClassView, d: Display, session: Session) -> dict:
        i = view.selected
        return {self.map: session.png(render.class_image(view, i, d.alpha, d.box, d.own),
                                      "class"),
                self.info: render.class_info(view, i, d.own)}

    # ---- wiring

    def wire(self) -> None:
        """Connect the tab's events."""
        s = self.session
        inputs = [self.image, self.model, self.method, *self.display, s, self.layer]
        outputs = [self.status, self.selector, self.map, self.guided, self.info]
        on(self.run.click, self.classify, inputs, outputs, self.status, session=s,
           api_name="classify", **self.model_kw)
        on(self.method.input, self.reclassify, inputs, outputs, self.status, session=s,
           **PRIVATE, **self.model_kw)
        self.wire_common({"sample": "classify_sample", "new_scene": "classify_new_scene",
                          "show": "show_class", "render": "render_class",
                          "download": "download_classify"},
                         [self.map, self.guided, self.info], [self.map, self.info])
