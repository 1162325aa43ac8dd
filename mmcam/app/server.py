"""The app put together: models loaded once, the three tabs, the model-folder box, the
queue (how many model runs at once) and the launch."""

from __future__ import annotations

import logging
import os
from typing import Any

import gradio as gr

from mmcam.app.caption import CaptionTab
from mmcam.app.classify import ClassifyTab
from mmcam.app.common import on
from mmcam.app.models import KINDS, FolderPolicy, Models
from mmcam.app.samples import MAX_SIDE, fresh_indices
from mmcam.app.state import Session, close_session
from mmcam.app.vqa import VQATab
from mmcam.errors import MMCamError
from mmcam.registry import SHIPPED

_log = logging.getLogger(__name__)
SESSION_TTL_S = 1800  # a session's results are dropped this long after its last event
MAX_SESSIONS = 100
WORKERS = 2  # model runs at once (all users together); drawing and downloads do not wait
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TAB_OF = {"captioner": "Captioning", "vqa": "VQA", "classifier": "Classification"}
CSS = """
#cap_words .wrap, #vqa_top .wrap, #cls_top .wrap { gap: 6px; }
.mmcam-map img, .mmcam-input img { width: 100% !important; height: 100% !important;
  object-fit: contain; }
.mmcam-file .empty { min-height: 48px !important; height: 48px !important; }
#cap_status p, #vqa_answer p, #cls_status p { margin: 0.2em 0; }
"""


def is_local(host: str) -> bool:
    """True when ``host`` only listens on this machine."""
    return host in LOCAL_HOSTS


def load_models(given: dict[str, Any], policy: FolderPolicy) -> Models:
    """The shipped models for the kinds not ``given``, the given adapters, then the Hugging
    Face folders under the model directories."""
    from mmcam import load_model

    models = Models(policy)
    for kind in KINDS:
        adapter = given.get(kind)
        if adapter is None:
            models.add(SHIPPED[kind], load_model(SHIPPED[kind]))
            continue
        name = getattr(adapter, "name", None) or f"{type(adapter).__name__} (given)"
        got = models.add(str(name), adapter)
        if kind not in models.kinds[str(name)]:
            raise MMCamError(f"the {kind} given to build_app is a {got} adapter")
    for problem in models.add_hf_folders():
        _log.warning("model folder not loaded: %s", problem)
    return models


def build_app(captioner: Any = None, vqa: Any = None, classifier: Any = None, *,
              allow_model_folders: bool = True, workers: int = WORKERS,
              session_ttl: float = SESSION_TTL_S) -> gr.Blocks:
    """The app. Adapters left as None are the shipped models, loaded once here.

    ``allow_model_folders``: whether the page may load model folders (only from under the
    model directories in any case); ``workers``: model runs at once; ``session_ttl``:
    seconds after a session's last event when its results are dropped.
    """
    policy = FolderPolicy(allowed=allow_model_folders)
    models = load_models({"captioner": captioner, "vqa": vqa, "classifier": classifier},
                         policy)
    first = fresh_indices()
    with gr.Blocks(title="mmcam: word-by-word Grad-CAM", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as app:
        session = gr.State(Session(), time_to_live=session_ttl, delete_callback=close_session)
        gr.Markdown(
            "# mmcam: where each word comes from\n"
            "Grad-CAM maps for every word of a caption, every VQA answer and every class, "
            "computed together in one backward pass. Pick a sample or upload an image "
            f"(larger than {MAX_SIDE} px: shrunk).")
        tabs = [CaptionTab(models, session, workers), VQATab(models, session, workers),
                ClassifyTab(models, session, workers)]
        with gr.Tabs(elem_id="tabs"):
            for tab in tabs:
                tab.layout(first)
        folder_box(models, tabs, workers)
        for tab in tabs:
            tab.wire()

        def unload(request: gr.Request) -> None:
            end_session(app, session, request)

        app.unload(unload)
    return app


def folder_box(models: Models, tabs: list[Any], workers: int) -> None:
    """The "Load a local model folder" accordion and its event (``/load_model``)."""
    where = ("a folder under $MMCAM_MODELS, the shipped models or the Hugging Face cache"
             if models.policy.allowed else "off on this server (--allow-model-folders)")
    with gr.Accordion("Load a local model folder", open=False, elem_id="model_folder"):
        with gr.Row():
            path = gr.Textbox(label=f"Model folder: {where}", elem_id="model_path", scale=4,
                              interactive=models.policy.allowed)
            run = gr.Button("Load", elem_id="model_load", scale=1)
        status = gr.Markdown("", elem_id="model_status")
    pickers = {tab.kind: tab.model for tab in tabs}

    def load_folder(text: str) -> dict:
        """Load a model folder and select it in the tab(s) of its kind(s)."""
        name, kind = models.load_folder(text)
        kinds = models.kinds[name]
        out = {pickers[k]: gr.update(choices=models.names(k), value=name) for k in kinds}
        where = " and ".join(f"the {TAB_OF[k]} tab" for k in kinds)
        return {status: f"loaded {kind} model from `{name}`: selected in {where}", **out}

    on(run.click, load_folder, [path], [status, *pickers.values()], status,
       api_name="load_model", concurrency_id="model", concurrency_limit=workers)


def end_session(app: gr.Blocks, state: gr.State, request: gr.Request) -> None:
    """The page was closed: give the session's results and files back at once (gradio
    would keep a closed session's state for an hour)."""
    session_id = getattr(request, "session_hash", None)
    holder = getattr(app, "state_holder", None)
    if session_id is None or holder is None or session_id not in holder:
        return
    value = holder[session_id].state_data.get(state._id)
    if isinstance(value, Session):
        value.close()


def launch(
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    app: gr.Blocks | None = None,
    block: bool = True,
    threads: int | None = 1,
    allow_model_folders: bool | None = None,
    workers: int = WORKERS,
) -> gr.Blocks:
    """Serve the app (built with the shipped models unless ``app`` is given) on host:port.

    Offline: no analytics, no share link unless ``share=True``. ``block=False`` returns at
    once with the server running (tests, benchmarks); stop it with ``app.close()``.
    ``threads`` sets torch's intra-op threads for this process (None: leave as is); one
    thread is the default because on a small shared CPU it is several times faster and
    steadier than two (idle OpenMP threads spin waiting for a busy core).
    ``allow_model_folders`` (None: only when serving on this machine alone, without a share
    link) lets the page load model folders from under the model directories.
    """
    import torch

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    if threads is not None:
        torch.set_num_threads(threads)
    if allow_model_folders is None:
        allow_model_folders = is_local(host) and not share
    app = app or build_app(allow_model_folders=allow_model_folders, workers=workers)
    app.queue(default_concurrency_limit=workers)
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
               inbrowser=False, quiet=not block, css=CSS, show_error=True,
               state_session_capacity=MAX_SESSIONS)
    return app


def exposure_warning(host: str, share: bool, allow_model_folders: bool) -> str | None:
    """The warning ``mmcam demo`` prints when the app is reachable beyond this machine."""
    if is_local(host) and not share:
        return None
    where = "a public share link" if share else f"{host}"
    folders = ("on (--allow-model-folders): pages can load any model folder under the model "
               "directories" if allow_model_folders else
               "off (give --allow-model-folders to turn it on)")
    return (f"warning: serving on {where}: anyone who can reach it can use the app and its "
            f"CPU; loading model folders from the page is {folders}")


__all__ = ["build_app", "exposure_warning", "is_local", "launch"]
