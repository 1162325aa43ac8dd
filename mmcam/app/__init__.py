"""The Gradio app: explain captions word by word, VQA answers and classes in the browser.

``build_app()`` returns the ``gr.Blocks``; ``launch()`` serves it on 127.0.0.1 (``mmcam demo``).
Models are loaded once at start-up and shared read-only; everything a user computes lives in
that user's own ``gr.State`` (a :class:`Session`), so users never see each other's results,
and is given back when the session ends. All maps of a caption (or of a question's top
answers, or of an image's top classes) are computed in one explainer call; clicking a word,
an answer or a class, moving the opacity slider or toggling boxes only re-draws from the
stored display maps.

The parts: :mod:`~mmcam.app.server` (models, tabs, queue, launch), one module per tab
(:mod:`~mmcam.app.caption` with the side-by-side view, :mod:`~mmcam.app.vqa`,
:mod:`~mmcam.app.classify`: layout, handlers, wiring), :mod:`~mmcam.app.common` (what the
tabs share), :mod:`~mmcam.app.render` (pictures and text from results, no gradio),
:mod:`~mmcam.app.state` (the session), :mod:`~mmcam.app.samples`, :mod:`~mmcam.app.models`
(loaded models and which folders a page may load).

Every event has an ``api_name`` and every component a stable ``elem_id``, so the app can be
driven by ``gradio_client`` and by a browser alike. Captioning: ``/caption``,
``/caption_method``, ``/show_word``, ``/render_caption``, ``/caption_sample``,
``/caption_new_scene``, ``/download_caption``, ``/compare`` (side by side); VQA: ``/vqa``,
``/show_answer``, ``/vqa_contrast``, ``/render_vqa``, ``/vqa_sample``, ``/vqa_new_scene``,
``/download_vqa``; classification: ``/classify``, ``/show_class``, ``/render_class``,
``/classify_sample``, ``/classify_new_scene``, ``/download_classify``; ``/load_model``.
The layer picker is the last parameter of ``/caption``, ``/caption_method``, ``/vqa`` and
``/classify`` ("" : the model's default layer).
"""

from mmcam.app.models import FolderPolicy, Models, kind_of
from mmcam.app.render import caption_status as _caption_status
from mmcam.app.render import caption_view, class_view, grid_image, vqa_view
from mmcam.app.samples import SCENE_SEED, load_sample, make_scene, photos, read_image
from mmcam.app.server import SESSION_TTL_S, WORKERS, build_app, exposure_warning, launch
from mmcam.app.state import Session
from mmcam.registry import RECOMMENDED, method_score

__all__ = ["RECOMMENDED", "SCENE_SEED", "SESSION_TTL_S", "WORKERS", "FolderPolicy", "Models",
           "Session", "_caption_status", "build_app", "caption_view", "class_view",
           "exposure_warning", "grid_image", "kind_of", "launch", "load_sample", "make_scene",
           "method_score", "photos", "read_image", "vqa_view"]
