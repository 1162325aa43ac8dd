"""The VQA tab: the answer, the maps of the top answers, and "why A rather than B"."""

from __future__ import annotations

from typing import Any

import gradio as gr

from mmcam.app import render
from mmcam.app.caption import SANITY_NOTE
from mmcam.app.common import PRIVATE, Tab, map_output, on
from mmcam.app.render import Display
from mmcam.app.state import Session, VQAView
from mmcam.errors import MMCamError
from mmcam.registry import method_score

TOP_ANSWERS = 5


class VQATab(Tab):
    """Layout, handlers and wiring of the VQA tab."""

    key, kind, prefix, task, noun = "vqa", "vqa", "vqa", "vqa", "answer"
    first, bundle = "ask a question first", "answer's"

    def layout(self, first: list[int]) -> None:
        """Build the tab's components."""
        with gr.Tab("VQA", id="vqa", elem_id="tab_vqa"):
            with gr.Row():
                with gr.Column(scale=2):
                    self.samples_row(first)
                    self.question = gr.Textbox(label="Question", elem_id="vqa_question",
                                               placeholder="what color is the circle?")
                    self.suggest = gr.Dropdown([], value=None, label="Questions about this "
                                               "scene", elem_id="vqa_suggest")
                    self.model_pickers()
                    gr.Markdown(SANITY_NOTE)
                    self.run = gr.Button("Ask", variant="primary", elem_id="vqa_run")
                with gr.Column(scale=3):
                    self.status = gr.Markdown("", elem_id="vqa_answer")
                    self.selector = gr.Radio([], label="Top answers: click one",
                                             elem_id="vqa_top")
                    with gr.Row():
                        self.map = map_output("Map of the answer", "vqa_map")
                        self.cmap = map_output("A rather than B", "vqa_contrast_map")
                    self.info = gr.Markdown("", elem_id="vqa_answer_info")
                    with gr.Row():
                        self.other = gr.Dropdown([], value=None, label="B (rather than)",
                                                 elem_id="vqa_contrast", scale=2)
                        self.crun = gr.Button("Why the selected answer rather than B?",
                                              elem_id="vqa_contrast_run", scale=1)
                    self.cinfo = gr.Markdown("", elem_id="vqa_contrast_info")
                    self.display_row()
            self.download_row()
        self.show_status = self.info

    # ---- handlers

    def ask(self, image_path: Any, question: str, model: str, method: str, alpha: float,
            box: bool, own: bool, session: Session, layer: str = "") -> dict:
        """Answer the question; maps of the top answers."""
        from mmcam.vqa import VQAExplainer

        if not isinstance(question, str) or not question.strip():
            raise MMCamError("the question is empty: ask something about the image")
        image, scene = self.image_and_truth(image_path, session)
        adapter, kw, layer = self.explainer_kw(model, layer)
        m, score = method_score(method)
        result = VQAExplainer(adapter, method=m, score=score, **kw).explain(
            image, question.strip(), top_k=TOP_ANSWERS)
        view = session.vqa = render.vqa_view(result, scene)
        view.model, view.layer = model or self.models.names(self.kind)[0], layer
        second = next((a for a, _ in result.top_probabilities if a != result.answer), None)
        answers = getattr(adapter, "answers", None) or [a for a, _ in result.top_probabilities]
        return {self.status: render.vqa_status(view),
                self.selector: gr.update(choices=render.answer_choices(view), value=0),
                self.other: gr.update(choices=list(answers), value=second),
                self.cmap: None, self.cinfo: "",
                **self.draw_selected(view, Display(alpha, box, False, own), session)}

    def reask(self, image_path: Any, question: str, model: str, method: str, alpha: float,
              box: bool, own: bool, session: Session, layer: str = "") -> dict:
        """Ask the shown question again with another method (nothing asked yet: no-op)."""
        if session.vqa is None:
            return {}
        return self.ask(image_path, question, model, method, alpha, box, own, session, layer)

    def contrast(self, other: str, method: str, alpha: float, box: bool, model: str,
                 session: Session) -> dict:
        """Why the selected answer rather than ``other``: map of log p(A) - log p(B), at the
        layer of the shown answers."""
        from mmcam.vqa import VQAExplainer, check_contrast

        view = session.vqa
        if view is None:
            raise MMCamError(self.first)
        a = view.result.top_probabilities[view.selected][0]
        if not other:
            raise MMCamError("pick an answer B to compare with")
        check_contrast(a, other)  # the message the library and the CLI give
        r = view.result
        adapter, kw, _ = self.explainer_kw(model, view.layer)
        c = VQAExplainer(adapter, method=method_score(method)[0], **kw).explain(
            r.image, r.question, answer=a, contrast=other, top_k=TOP_ANSWERS)
        view.contrast, view.contrast_heat = c, c.heatmap(-1)
        return {self.cmap: session.png(render.contrast_image(view, alpha, box), "contrast"),
                self.cinfo: render.contrast_info(a, c.contrast)}

    def count(self, view: VQAView) -> int:
        return len(view.result.top_probabilities)

    def on_scene(self, scene: Any) -> dict:
        qs = [q for q, _ in scene.questions] if scene is not None else []
        return {self.question: qs[0] if qs else "",
                self.suggest: gr.update(choices=qs, value=None)}

    def scene_outputs(self) -> list[Any]:
        return [self.question, self.suggest]

    def draw_selected(self, view: VQAView, d: Display, session: Session) -> dict:
        i = view.selected
        return {self.map: session.png(render.vqa_image(view, i, d.alpha, d.box, d.own),
                                      "answer"),
                self.info: render.answer_info(view, i, d.own)}

    def draw_all(self, view: VQAView, d: Display, session: Session) -> dict:
        return {**self.draw_selected(view, d, session),
                self.cmap: session.png(render.contrast_image(view, d.alpha, d.box), "contrast")}

    def result_to_save(self, view: VQAView) -> Any:
        return view.contrast or view.result

    # ---- wiring

    def wire(self) -> None:
        """Connect the tab's events."""
        s = self.session
        self.suggest.input(lambda q: q or gr.skip(), [self.suggest], [self.question],
                           queue=False, **PRIVATE)
        inputs = [self.image, self.question, self.model, self.method, *self.display, s,
                  self.layer]
        outputs = [self.status, self.selector, self.map, self.info, self.other, self.cmap,
                   self.cinfo]
        on(self.run.click, self.ask, inputs, outputs, self.status, session=s, api_name="vqa",
           **self.model_kw)
        on(self.question.submit, self.ask, inputs, outputs, self.status, session=s, **PRIVATE,
           **self.model_kw)
        on(self.method.input, self.reask, inputs, outputs, self.status, session=s, **PRIVATE,
           **self.model_kw)
        on(self.crun.click, self.contrast,
           [self.other, self.method, self.alpha, self.box, self.model, s],
           [self.cmap, self.cinfo], self.cinfo, session=s, api_name="vqa_contrast",
           **self.model_kw)
        self.wire_common({"sample": "vqa_sample", "new_scene": "vqa_new_scene",
                          "show": "show_answer", "render": "render_vqa",
                          "download": "download_vqa"},
                         [self.map, self.info], [self.map, self.cmap, self.info])
