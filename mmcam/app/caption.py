"""The Captioning tab: a caption (the model's or yours), every word's map, the grid of all
words, and the side-by-side view of one word explained two ways (two methods, two layers or
two models)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from mmcam.app import render
from mmcam.app.common import DRAW, PRIVATE, Tab, map_output, on
from mmcam.app.render import Display
from mmcam.app.state import CaptionView, Compare, Session
from mmcam.errors import MMCamError
from mmcam.registry import method_choices, method_score

SANITY_NOTE = (
    "Sanity check (decoder re-initialized, Adebayo et al. 2018): Grad-CAM, HiResCAM and "
    "integrated-gradients maps change (they depend on what the model learned); Grad-CAM++ maps "
    "barely change, so they show the image more than the model. Integrated gradients point "
    "best on the BLIP models and at encoder.2 of shapes-captioner, at 16 gradient passes. "
    "Contrast: the word's logit minus the mean of the other words of its kind (or the model's "
    "top 5 alternatives).")


class CaptionTab(Tab):
    """Layout, handlers and wiring of the Captioning tab."""

    key, kind, prefix, task, noun = "caption", "captioner", "cap", "caption", "word"
    first, bundle = "make a caption first", "caption's"
    display_names = ("alpha", "box", "truth", "own")

    def layout(self, first: list[int]) -> None:
        """Build the tab's components."""
        with gr.Tab("Captioning", id="captioning", elem_id="tab_captioning"):
            with gr.Row():
                with gr.Column(scale=2):
                    self.samples_row(first)
                    self.text = gr.Textbox(label="Your own caption (leave empty: the model "
                                                 "writes one)", elem_id="cap_text")
                    self.model_pickers()
                    gr.Markdown(SANITY_NOTE)
                    self.run = gr.Button("Explain caption", variant="primary",
                                         elem_id="cap_run")
                with gr.Column(scale=3):
                    self.status = gr.Markdown("", elem_id="cap_status")
                    self.selector = gr.Radio([], label="Caption: click a word",
                                             elem_id="cap_words")
                    with gr.Row():
                        self.map = map_output("Map of the word", "cap_word_map")
                        self.sentence = map_output("Whole caption", "cap_sentence_map")
                        self.guided = map_output("Guided Grad-CAM of the word", "cap_guided",
                                                 visible=False)
                    self.info = gr.Markdown("", elem_id="cap_word_info")
                    self.display_row(truth=True)
            self.grid = gr.Image(label="All words and the whole caption", type="filepath",
                                 format="png", interactive=False, elem_id="cap_grid")
            self.compare_layout()
            self.download_row()
        self.show_status = self.info

    def compare_layout(self) -> None:
        """The side-by-side view: B's model, method and layer; A's and B's map of a word."""
        names = self.models.names(self.kind)
        with gr.Accordion("Side by side: the selected word explained another way (B)",
                          open=False, elem_id="cmp"):
            with gr.Row():
                self.cmp_model = gr.Dropdown(names, value=names[0] if names else None,
                                             label="B's model", elem_id="cmp_model")
                self.cmp_method = gr.Dropdown(method_choices("caption"), value="gradcam",
                                              label="B's method and score",
                                              elem_id="cmp_method")
                self.cmp_layer = gr.Dropdown(
                    **self.pickers_for(self.cmp_model.value)["layer"], label="B's layer",
                    elem_id="cmp_layer", allow_custom_value=True)
                self.cmp_run = gr.Button("Compare", elem_id="cmp_run")
            with gr.Row():
                self.cmp_a = map_output("A: as explained above", "cmp_a")
                self.cmp_b = map_output("B", "cmp_b")
            self.cmp_info = gr.Markdown("", elem_id="cmp_info")

    # ---- handlers

    def explain(self, image_path: Any, text: str, model: str, method: str, alpha: float,
                box: bool, truth: bool, own: bool, session: Session, layer: str = "") -> dict:
        """Caption the image (or explain your caption) and compute every word's map."""
        image, scene = self.image_and_truth(image_path, session)
        text = (text or "").strip()
        session.caption = self._view(image, text or None, model, method, layer, scene)
        session.compare = None
        return self.outputs(session.caption, Display(alpha, box, truth, own), session)

    def _view(self, image: Any, caption: str | None, model: str, method: str, layer: str,
              scene: Any) -> CaptionView:
        from mmcam.caption import CaptionExplainer

        adapter, kw, layer = self.explainer_kw(model, layer)
        m, score = method_score(method)
        explainer = CaptionExplainer(adapter, method=m, score=score, **kw)
        view = render.caption_view(explainer.explain(image, caption=caption), scene)
        view.model, view.layer = model or self.models.names(self.kind)[0], layer
        return view

    def rerun(self, method: str, alpha: float, box: bool, truth: bool, own: bool, model: str,
              session: Session, layer: str = "") -> dict:
        """Explain the shown caption again with another method (same image and words)."""
        view = session.caption
        if view is None:
            return {}
        r = view.result
        session.caption = self._view(r.image, None if r.generated else r.caption, model,
                                     method, layer, view.truth)
        return self.outputs(session.caption, Display(alpha, box, truth, own), session)

    def outputs(self, view: CaptionView, d: Display, session: Session) -> dict:
        """Everything a new caption shows."""
        return {self.status: render.caption_status(view),
                self.selector: gr.update(choices=render.word_choices(view), value=0),
                self.gt: gr.update(interactive=view.truth is not None),
                **self.draw_all(view, d, session),
                **self.draw_selected(view, d, session)}

    def count(self, view: CaptionView) -> int:
        return len(view.result.words)

    def on_scene(self, scene: Any) -> dict:
        return {self.text: ""}

    def scene_outputs(self) -> list[Any]:
        return [self.text]

    def draw_selected(self, view: CaptionView, d: Display, session: Session) -> dict:
        i = view.selected
        return {self.map: session.png(render.caption_image(view, i, d.alpha, d.box, d.truth,
                                                           d.own), "word"),
                self.info: render.word_info(view, i, d.own),
                self.guided: session.png(view.guided[i] if view.guided else None, "guided")}

    def draw_all(self, view: CaptionView, d: Display, session: Session) -> dict:
        n = len(view.result.words)
        return {**self.draw_selected(view, d, session),
                self.sentence: session.png(render.caption_image(view, n, d.alpha, d.box,
                                                                d.truth, d.own), "sentence"),
                self.grid: session.png(render.grid_image(view, d.alpha, d.box, d.truth, d.own),
                                       "grid")}

    def compare(self, model: str, method: str, layer: str, alpha: float, own: bool,
                session: Session) -> dict:
        """Explain the shown caption as B (model, method, layer) and show the selected word
        under A and under B."""
        a = session.caption
        if a is None:
            raise MMCamError(self.first)
        r = a.result
        b = self._view(r.image, r.caption, model, method, layer, a.truth)
        session.compare = Compare(b, (a.model, b.model))
        return self.compare_show(a.selected, alpha, own, session)

    def compare_show(self, word: int | None, alpha: float, own: bool, session: Session
                     ) -> dict:
        """A's and B's maps of word ``word`` (nothing compared yet: no change)."""
        a, c = session.caption, session.compare
        if a is None or c is None or word is None or not 0 <= int(word) < len(a.result.words):
            return {}
        i = int(word)
        j = render.compare_index(a, c.view, i)
        b_image = None if j is None else render.caption_image(c.view, j, alpha, False, False,
                                                               own)
        return {self.cmp_a: session.png(render.caption_image(a, i, alpha, False, False, own),
                                        "cmp_a"),
                self.cmp_b: session.png(b_image, "cmp_b"),
                self.cmp_info: render.compare_info(a, c.view, i, c.models)}

    def clear_compare(self) -> dict:
        """A new caption: the side-by-side view of the old one is cleared."""
        return {self.cmp_a: None, self.cmp_b: None, self.cmp_info: ""}

    def compare_layers(self, model: str) -> dict:
        """B's layer picker for B's model."""
        return {self.cmp_layer: gr.update(**self.pickers_for(model)["layer"])}

    # ---- wiring

    def wire(self) -> None:
        """Connect the tab's events (API names as in the module docstring of mmcam.app)."""
        s = self.session
        outputs = [self.status, self.selector, self.map, self.info, self.sentence, self.guided,
                   self.grid, self.gt]
        inputs = [self.image, self.text, self.model, self.method, *self.display, s, self.layer]
        on(self.run.click, self.explain, inputs, outputs, self.status, session=s,
           api_name="caption", **self.model_kw)
        on(self.text.submit, self.explain, inputs, outputs, self.status, session=s,
           **PRIVATE, **self.model_kw)
        on(self.method.input, self.rerun,
           [self.method, *self.display, self.model, s, self.layer], outputs, self.status,
           session=s, api_name="caption_method", **self.model_kw)
        self.method.change(lambda m: gr.update(visible=m == "guided-gradcam"), [self.method],
                           [self.guided], queue=False, **PRIVATE)
        self.wire_common({"sample": "caption_sample", "new_scene": "caption_new_scene",
                          "show": "show_word", "render": "render_caption",
                          "download": "download_caption"},
                         [self.map, self.info, self.guided],
                         [self.map, self.sentence, self.grid, self.info])
        cmp_out = [self.cmp_a, self.cmp_b, self.cmp_info]
        on(self.cmp_run.click, self.compare,
           [self.cmp_model, self.cmp_method, self.cmp_layer, self.alpha, self.own, s],
           cmp_out, self.cmp_info, session=s, api_name="compare", **self.model_kw)
        on(self.selector.input, self.compare_show, [self.selector, self.alpha, self.own, s],
           cmp_out, session=s, **PRIVATE, **DRAW)
        on(self.cmp_model.change, self.compare_layers, [self.cmp_model], [self.cmp_layer],
           queue=False, **PRIVATE)
        for trigger in (self.run.click, self.text.submit, self.method.input):
            on(trigger, self.clear_compare, [], cmp_out, queue=False, **PRIVATE)
