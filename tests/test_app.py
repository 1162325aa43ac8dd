"""The Gradio app through gradio_client against a real local launch (127.0.0.1, free port).

The oracle is the library called directly on the same image: every map the app shows must
be, pixel for pixel, the library's display map of that word / answer / class drawn with
``mmcam.viz.overlay`` at the requested opacity. Uses the shipped models when they exist,
else the toy adapters.
"""

from __future__ import annotations

import gc
import json
import re
import time
import weakref
import zipfile
from pathlib import Path

import numpy as np
import pytest
from app_helpers import adapters, served, shipped_models_present
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from mmcam import registry, scenes
from mmcam.app import RECOMMENDED, SCENE_SEED, build_app
from mmcam.app.models import NOT_FOUND
from mmcam.caption import CaptionExplainer
from mmcam.classify import ClassExplainer
from mmcam.errors import MMCamError
from mmcam.images import load_image
from mmcam.viz import guided_image, overlay
from mmcam.vqa import VQAExplainer

# gradio's queue calls a pandas option deprecated in pandas 3: not ours to fix
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
QUESTION = "what color is the circle?"
OWN_CAPTION = "a red circle"


@pytest.fixture(scope="module")
def models():
    return adapters()


@pytest.fixture(scope="module")
def app(models):
    with served(models) as (url, names, _):
        yield url, {**names, "cap_layer": models["captioner"].layer}


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    scenes.generate(1, seed=31, start=5)[0].image.save(path)
    return path


def client(app, tmp_path) -> Client:
    return Client(app[0], verbose=False, download_files=str(tmp_path))


def pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def caption_call(c: Client, app, image: Path, text: str = "", method: str = "gradcam",
                 alpha: float = 0.5, box: bool = False, gt: bool = False, own: bool = False,
                 layer: str | None = None):
    """The /caption endpoint at ``layer`` (None: the captioner's default layer, by name;
    "" is the model's recommended layer where its folder names one)."""
    layer = app[1]["cap_layer"] if layer is None else layer
    return c.predict(handle_file(str(image)), text, app[1]["cap_model"], method, alpha, box,
                     gt, own, layer, api_name="/caption")


def test_endpoints_are_named(app, tmp_path):
    api = client(app, tmp_path).view_api(print_info=False, return_format="dict")
    names = set(api["named_endpoints"])
    for name in ("/caption", "/show_word", "/render_caption", "/caption_sample",
                 "/caption_new_scene", "/caption_method", "/download_caption", "/vqa",
                 "/show_answer", "/vqa_contrast", "/download_vqa", "/classify", "/show_class",
                 "/download_classify", "/load_model"):
        assert name in names


def test_word_maps_equal_the_library(app, models, scene_png, tmp_path):
    c = client(app, tmp_path)
    status, words, word0, info, sentence, guided, grid, gt = caption_call(c, app, scene_png)
    lib = CaptionExplainer(models["captioner"]).explain(load_image(scene_png))
    assert status.startswith("**Caption:** " + lib.caption)
    assert [label for label, _ in words["choices"]] == lib.words
    assert [v for _, v in words["choices"]] == list(range(len(lib.words)))
    assert guided is None
    expected = lib.overlays(0.5)  # one per word, then the whole caption
    np.testing.assert_array_equal(pixels(word0), np.asarray(expected[0]))
    np.testing.assert_array_equal(pixels(sentence), np.asarray(expected[-1]))
    assert pixels(grid).shape[1] > pixels(word0).shape[1]  # a sheet of tiles, not one map
    assert f"log p = {lib.logprobs[0]:.3f}" in info

    # a click shows that word's own map; another opacity re-draws the same maps
    clicked = sorted({min(1, len(lib.words) - 1), len(lib.words) - 1})
    for i in clicked:
        shown, info, _ = c.predict(i, 0.7, False, False, False, api_name="/show_word")
        np.testing.assert_array_equal(pixels(shown), np.asarray(lib.overlays(0.7)[i]))
        assert f"word {i + 1} of {len(lib.words)}" in info
    word_map, sentence, _, info = c.predict(0.25, False, False, False,
                                            api_name="/render_caption")
    last = clicked[-1]  # the word shown stays the last one clicked
    np.testing.assert_array_equal(pixels(word_map), np.asarray(lib.overlays(0.25)[last]))
    np.testing.assert_array_equal(pixels(sentence), np.asarray(lib.overlays(0.25)[-1]))
    assert f"word {last + 1} of {len(lib.words)}" in info


def own_scale(image: Image.Image, m, alpha: float) -> np.ndarray:
    """The oracle for "each map on its own color scale": the map divided by its own max."""
    return np.asarray(overlay(image, m / m.max() if m.max() > 0 else m, alpha))


def test_own_color_scale(app, models, scene_png, tmp_path):
    c = client(app, tmp_path)
    image = load_image(scene_png)
    out = caption_call(c, app, scene_png, own=True)
    lib = CaptionExplainer(models["captioner"]).explain(image)
    np.testing.assert_array_equal(pixels(out[2]), own_scale(image, lib.maps[0], 0.5))
    np.testing.assert_array_equal(pixels(out[4]), own_scale(image, lib.sentence_map, 0.5))
    i = len(lib.words) - 1
    shown, _, _ = c.predict(i, 0.4, False, False, True, api_name="/show_word")
    np.testing.assert_array_equal(pixels(shown), own_scale(image, lib.maps[i], 0.4))

    c.predict(handle_file(str(scene_png)), QUESTION, app[1]["vqa_model"], "gradcam", 0.5,
              False, True, api_name="/vqa")
    vqa = VQAExplainer(models["vqa"]).explain(image, QUESTION, top_k=5)
    k = len(vqa.top_answers) - 1
    shown, _ = c.predict(k, 0.5, False, True, api_name="/show_answer")
    np.testing.assert_array_equal(pixels(shown), own_scale(image, vqa.top_answers[k][2], 0.5))

    c.predict(handle_file(str(scene_png)), app[1]["cls_model"], "gradcam", 0.5, False, True,
              api_name="/classify")
    cls = ClassExplainer(models["classifier"]).explain(image, top=3)
    shown, _, _ = c.predict(2, 0.5, False, True, api_name="/show_class")
    np.testing.assert_array_equal(pixels(shown), own_scale(image, cls.maps[2], 0.5))


def test_box_is_the_library_box(app, models, scene_png, tmp_path):
    c = client(app, tmp_path)
    caption_call(c, app, scene_png)
    lib = CaptionExplainer(models["captioner"]).explain(load_image(scene_png))
    shown, _, _ = c.predict(0, 0.5, True, False, False, api_name="/show_word")
    plain = np.asarray(lib.overlays(0.5)[0])
    changed = np.argwhere((pixels(shown) != plain).any(axis=-1))  # (y, x) of drawn pixels
    x0, y0, x1, y1 = lib.boxes[0]
    assert len(changed) > 0
    ys, xs = changed[:, 0], changed[:, 1]
    assert ((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)).all()  # on the box ...
    ring = (xs < x0 + 3) | (xs >= x1 - 3) | (ys < y0 + 3) | (ys >= y1 - 3)
    assert ring.all()  # ... and only on its outline


def test_own_caption_and_method_switch(app, models, scene_png, tmp_path):
    c = client(app, tmp_path)
    status, words, word0, *_ = caption_call(c, app, scene_png, text=OWN_CAPTION,
                                            method="gradcam++")
    lib = CaptionExplainer(models["captioner"], method="gradcam++").explain(
        load_image(scene_png), caption=OWN_CAPTION)
    assert "your caption" in status
    assert [label for label, _ in words["choices"]] == lib.words
    np.testing.assert_array_equal(pixels(word0), np.asarray(lib.overlays(0.5)[0]))

    # switching the method re-explains the same words; Guided Grad-CAM adds guided images
    out = c.predict("guided-gradcam", 0.5, False, False, False, app[1]["cap_model"],
                    app[1]["cap_layer"], api_name="/caption_method")
    lib = CaptionExplainer(models["captioner"], method="guided-gradcam").explain(
        load_image(scene_png), caption=OWN_CAPTION)
    np.testing.assert_array_equal(pixels(out[2]), np.asarray(lib.overlays(0.5)[0]))
    assert "Guided Grad-CAM" in out[0]
    i = len(lib.words) - 1
    _, _, guided = c.predict(i, 0.5, False, False, False, api_name="/show_word")
    want = guided_image(lib.guided[i]).resize(lib.image.size)
    np.testing.assert_array_equal(pixels(guided), np.asarray(want))


def test_clicks_and_opacity_do_not_recompute(app, scene_png, tmp_path, monkeypatch):
    c = client(app, tmp_path)
    caption_call(c, app, scene_png)
    calls = []
    original = CaptionExplainer.explain

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CaptionExplainer, "explain", counting)
    c.predict(0, 0.4, True, False, False, api_name="/show_word")
    c.predict(0.9, True, False, False, api_name="/render_caption")
    assert calls == []
    caption_call(c, app, scene_png)
    assert calls == [1]


def test_vqa_answers_and_maps_equal_the_library(app, models, scene_png, tmp_path):
    c = client(app, tmp_path)
    answer, top, shown, info, other, cmap, cinfo = c.predict(
        handle_file(str(scene_png)), QUESTION, app[1]["vqa_model"], "gradcam", 0.5, False,
        False, api_name="/vqa")
    lib = VQAExplainer(models["vqa"]).explain(load_image(scene_png), QUESTION, top_k=5)
    assert answer.startswith(f"**Answer: {lib.answer}** (p = {lib.probability:.3f})")
    labels = [label for label, _ in top["choices"]]
    assert len(labels) == len(lib.top_answers) == min(5, len(models["vqa"].answers))
    for label, (a, p, _) in zip(labels, lib.top_answers):
        name, pct = re.fullmatch(r"(.+)  ([0-9.]+)%", label).groups()
        assert name == a
        assert abs(float(pct) / 100 - p) <= 5e-4
    expected = lib.overlays(0.5)  # [explained answer, top-1 .. top-k]
    np.testing.assert_array_equal(pixels(shown), np.asarray(expected[1]))
    assert cmap is None

    k = len(lib.top_answers) - 1
    shown, info = c.predict(k, 0.5, False, False, api_name="/show_answer")
    np.testing.assert_array_equal(pixels(shown), np.asarray(expected[1 + k]))
    assert lib.top_answers[k][0] in info

    # why top-k rather than top-1: the map of log p(A) - log p(B)
    a, b = lib.top_answers[k][0], lib.top_answers[0][0]
    cmap, cinfo = c.predict(b, "gradcam", 0.6, False, app[1]["vqa_model"],
                            api_name="/vqa_contrast")
    want = VQAExplainer(models["vqa"]).explain(load_image(scene_png), QUESTION, answer=a,
                                               contrast=b)
    np.testing.assert_array_equal(pixels(cmap), np.asarray(want.overlays(0.6)[-1]))
    assert f"Why {a} rather than {b}" in cinfo


def test_classify_equals_the_library(app, models, scene_png, tmp_path):
    c = client(app, tmp_path)
    status, top, shown, guided, info = c.predict(
        handle_file(str(scene_png)), app[1]["cls_model"], "gradcam", 0.5, False, False,
        api_name="/classify")
    lib = ClassExplainer(models["classifier"]).explain(load_image(scene_png), top=3)
    assert status.startswith(f"**{lib.labels[0]}** (p = {lib.probabilities[0]:.3f})")
    assert [label.split("  ")[0] for label, _ in top["choices"]] == lib.labels
    np.testing.assert_array_equal(pixels(shown), np.asarray(lib.overlays(0.5)[0]))
    want = guided_image(lib.guided_gradcam[0]).resize(lib.image.size)
    np.testing.assert_array_equal(pixels(guided), np.asarray(want))
    shown, guided, info = c.predict(2, 0.5, False, False, api_name="/show_class")
    np.testing.assert_array_equal(pixels(shown), np.asarray(lib.overlays(0.5)[2]))
    assert lib.labels[2] in info


def test_errors_come_back_as_messages(app, scene_png, tmp_path):
    c = client(app, tmp_path)
    out = c.predict(handle_file(str(scene_png)), "   ", app[1]["vqa_model"], "gradcam", 0.5,
                    False, False, api_name="/vqa")
    assert out[0] == "**Error:** the question is empty: ask something about the image"
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"this is not a picture")
    out = caption_call(c, app, bad)
    assert out[0].startswith("**Error:** cannot read the uploaded file 'photo.png'")
    assert "upload a PNG or JPEG image" in out[0]
    with pytest.raises(AppError, match="not in the list of choices"):  # no caption, no words
        c.predict(3, 0.5, False, False, False, api_name="/show_word")
    out = c.predict("/no/such/folder", api_name="/load_model")
    assert out[0] == "**Error:** " + NOT_FOUND.format(path="/no/such/folder")
    # the app still answers, in the same session
    out = caption_call(c, app, scene_png)
    assert out[0].startswith("**Caption:**")
    with pytest.raises(AppError, match="not in the list of choices"):
        c.predict(99, 0.5, False, False, False, api_name="/show_word")
    assert c.predict(0, 0.5, False, False, False, api_name="/show_word")[1].startswith("**")


def test_sessions_do_not_share_results(app, models, scene_png, tmp_path):
    other_png = tmp_path / "other.png"
    scenes.generate(1, seed=32, start=9)[0].image.save(other_png)
    a, b = client(app, tmp_path / "a"), client(app, tmp_path / "b")
    caption_call(a, app, scene_png)
    caption_call(b, app, other_png)
    lib_a = CaptionExplainer(models["captioner"]).explain(load_image(scene_png))
    shown, _, _ = a.predict(0, 0.5, False, False, False, api_name="/show_word")
    np.testing.assert_array_equal(pixels(shown), np.asarray(lib_a.overlays(0.5)[0]))


def test_samples_and_ground_truth(app, models, tmp_path):
    c = client(app, tmp_path)
    image, text = c.predict("scene 123", api_name="/caption_sample")
    scene = scenes.generate(1, SCENE_SEED, start=123)[0]
    np.testing.assert_array_equal(pixels(image), np.asarray(scene.image))
    assert text == ""
    out = caption_call(c, app, Path(image), gt=True)
    assert out[7]["interactive"] is True  # ground-truth toggle on for a scene
    assert scene.captions[0] in out[0]
    new_image, dropdown, _ = c.predict(api_name="/caption_new_scene")
    label = dropdown["value"]
    fresh = scenes.generate(1, SCENE_SEED, start=int(label.split()[1]))[0]
    np.testing.assert_array_equal(pixels(new_image), np.asarray(fresh.image))
    # the question box gets one of the scene's own questions
    image, question, _ = c.predict("scene 123", api_name="/vqa_sample")
    assert question == scene.questions[0][0]


def test_download_is_the_saved_bundle(app, models, scene_png, tmp_path):
    c = client(app, tmp_path)
    caption_call(c, app, scene_png)
    path, status = c.predict(api_name="/download_caption")
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        saved = json.loads(z.read("result.json"))
    assert {"grid.png", "index.html", "result.json", "sentence.png"} <= names
    lib = CaptionExplainer(models["captioner"]).explain(load_image(scene_png))
    assert [w["word"] for w in saved["words"]] == lib.words
    assert saved["words"][0]["box"] == list(lib.boxes[0])


def test_load_model_folder(app, tmp_path):
    c = client(app, tmp_path)
    if shipped_models_present():
        from mmcam.models.hub import resolve

        folder = resolve("shapes-classifier")
    else:
        from mmcam.models.train import train

        folder = tmp_path / "cls"
        train("classifier", folder, steps=1, n_train=4, n_val=0, progress=False)
    status, cap, vqa, cls = c.predict(str(folder), api_name="/load_model")
    assert status.startswith("loaded classifier model from")
    assert cls["value"] == str(folder.resolve())
    assert str(folder.resolve()) in [v for _, v in cls["choices"]]


def test_build_app_checks_injected_kinds(models):
    with pytest.raises(MMCamError, match="the captioner given to build_app is a vqa adapter"):
        build_app(models["vqa"], models["vqa"], models["classifier"])


def test_shipped_hugging_face_captioner_in_the_app(app, scene_png, tmp_path):
    """shapes-blip (a save_pretrained folder in models/) is listed and explained by the app
    exactly as by the library."""
    from mmcam import load_model
    from mmcam.models.hub import REPO_MODELS

    if not (REPO_MODELS / "shapes-blip" / "model.safetensors").is_file() or \
            not shipped_models_present():
        pytest.fail("the shipped models, shapes-blip included, must be in models/")
    c = client(app, tmp_path)
    status, words, word0, *_ = c.predict(handle_file(str(scene_png)), "", "shapes-blip",
                                         "gradcam", 0.5, False, False, False,
                                         api_name="/caption")
    lib = CaptionExplainer(load_model("shapes-blip"), method="gradcam").explain(
        load_image(scene_png))
    assert status.startswith("**Caption:** " + lib.caption)
    assert [label for label, _ in words["choices"]] == lib.words
    np.testing.assert_array_equal(pixels(word0), np.asarray(lib.overlays(0.5)[0]))


# ----------------------------------------------------------------------------- new views


def need_shipped():
    if not shipped_models_present():
        pytest.fail("the shipped models must be in models/ (or $MMCAM_MODELS)")


def test_layer_picker_explains_an_earlier_layer(app, models, scene_png, tmp_path):
    need_shipped()
    c = client(app, tmp_path)
    params = c.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/caption", "/caption_method", "/vqa", "/classify"):
        last = params[name]["parameters"][-1]
        assert (last["parameter_name"], last["parameter_default"]) == ("layer", "")
    image = load_image(scene_png)
    layer = registry.layer_choices(models["captioner"])[1]
    out = caption_call(c, app, scene_png, layer=layer)
    lib = CaptionExplainer(models["captioner"], layer=layer).explain(image)
    assert lib.layer == layer != models["captioner"].layer
    assert [w for w, _ in out[1]["choices"]] == lib.words
    np.testing.assert_array_equal(pixels(out[2]), np.asarray(lib.overlays(0.5)[0]))
    assert f"layer {layer}" in out[0]

    layer = registry.layer_choices(models["vqa"])[2]
    out = c.predict(handle_file(str(scene_png)), QUESTION, app[1]["vqa_model"], "gradcam", 0.5,
                    False, False, layer, api_name="/vqa")
    lib = VQAExplainer(models["vqa"], layer=layer).explain(image, QUESTION, top_k=5)
    np.testing.assert_array_equal(pixels(out[2]), np.asarray(lib.overlays(0.5)[1]))
    assert f"layer {layer}" in out[0]

    layer = registry.layer_choices(models["classifier"])[1]
    out = c.predict(handle_file(str(scene_png)), app[1]["cls_model"], "gradcam", 0.5, False,
                    False, layer, api_name="/classify")
    lib = ClassExplainer(models["classifier"], layer=layer).explain(image, top=3)
    np.testing.assert_array_equal(pixels(out[2]), np.asarray(lib.overlays(0.5)[0]))
    assert f"layer {layer}" in out[4]
    out = caption_call(c, app, scene_png, layer="encoder.99")  # a layer that is not there
    assert out[0].startswith("**Error:** ") and "encoder.99" in out[0]


def cosine(a, b) -> float:
    x, y = a.double().numpy().ravel(), b.double().numpy().ravel()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_integrated_choice_equals_the_library(app, models, scene_png, tmp_path):
    """The "Integrated gradients, contrast" choice draws the library's maps for
    method="integrated", score="contrast"."""
    c = client(app, tmp_path)
    status, words, word0, info, sentence, *_ = caption_call(c, app, scene_png,
                                                          method="integrated:contrast")
    lib = CaptionExplainer(models["captioner"], method="integrated", score="contrast").explain(
        load_image(scene_png))
    assert [label for label, _ in words["choices"]] == lib.words
    expected = lib.overlays(0.5)
    np.testing.assert_array_equal(pixels(word0), np.asarray(expected[0]))
    np.testing.assert_array_equal(pixels(sentence), np.asarray(expected[-1]))


def test_side_by_side_methods_layers_and_models(app, models, scene_png, tmp_path):
    """The selected word under A (the caption shown) and B (another method and layer, then
    another model): each map is the library's for that setting and the same caption."""
    need_shipped()
    from mmcam import load_model

    c = client(app, tmp_path)
    image = load_image(scene_png)
    caption_call(c, app, scene_png, method=RECOMMENDED)
    a = CaptionExplainer(models["captioner"], method="hirescam", score="contrast").explain(image)
    i = len(a.words) - 1
    c.predict(i, 0.5, False, False, False, api_name="/show_word")
    layer = registry.layer_choices(models["captioner"])[1]
    shown_a, shown_b, info = c.predict(app[1]["cap_model"], "gradcam", layer, 0.6, False,
                                       api_name="/compare")
    b = CaptionExplainer(models["captioner"], method="gradcam", layer=layer).explain(
        image, caption=a.caption)
    np.testing.assert_array_equal(pixels(shown_a), np.asarray(a.overlays(0.6)[i]))
    np.testing.assert_array_equal(pixels(shown_b), np.asarray(b.overlays(0.6)[i]))
    assert f"cosine similarity is {cosine(a.maps[i], b.maps[i]):.2f}" in info
    assert f"Grad-CAM, log p (the paper), layer {layer}, shapes-captioner" in info

    # another word clicked: the side-by-side view follows (stored maps, no recomputation)
    shown, _, _ = c.predict(0, 0.6, False, False, False, api_name="/show_word")
    np.testing.assert_array_equal(pixels(shown), np.asarray(a.overlays(0.6)[0]))

    # another model, the same caption
    blip = load_model("shapes-blip")
    shown_a, shown_b, info = c.predict("shapes-blip", RECOMMENDED, "", 0.5, True,
                                       api_name="/compare")
    b = CaptionExplainer(blip, method="hirescam", score="contrast").explain(
        image, caption=a.caption)
    j = b.words.index(a.words[0])
    m = b.maps[j]
    np.testing.assert_array_equal(pixels(shown_b), np.asarray(overlay(image, m / m.max(),
                                                                      0.5)))
    assert "shapes-blip" in info
    _, _, info = c.predict("shapes-blip", "gradcam", "encoder.11", 0.5, False,
                           api_name="/compare")
    assert info.startswith("**Error:** ") and "encoder.11" in info


class Slow:
    """An adapter that waits ``seconds`` before generating (the rest is the wrapped one's)."""

    def __init__(self, adapter, seconds: float) -> None:
        self.__dict__.update(_adapter=adapter, seconds=seconds, name="slow captioner")

    def __getattr__(self, key):
        return getattr(self._adapter, key)

    def generate(self, *args, **kwargs):
        time.sleep(self.seconds)
        return self._adapter.generate(*args, **kwargs)


def test_a_long_job_does_not_block_other_users(models, scene_png, tmp_path):
    """Client A's caption takes 10 s; client B asks a question and downloads the answer
    meanwhile: with the app's 2 model workers B is done before A. With one worker (the
    control) B's question waits for A's caption."""
    need_shipped()
    from gradio_client.utils import Status

    slow = Slow(models["captioner"], 10.0)
    for workers in (2, 1):
        app = build_app(slow, workers=workers)
        with served(models, app=app) as (url, names, _):
            a = Client(url, verbose=False, download_files=str(tmp_path / f"a{workers}"))
            b = Client(url, verbose=False, download_files=str(tmp_path / f"b{workers}"))
            job = a.submit(handle_file(str(scene_png)), "", "slow captioner", "gradcam", 0.5,
                           False, False, False, api_name="/caption")
            deadline = time.monotonic() + 60
            while job.status().code != Status.PROCESSING and time.monotonic() < deadline:
                time.sleep(0.05)
            answer = b.predict(handle_file(str(scene_png)), QUESTION, names["vqa_model"],
                               "gradcam", 0.5, False, False, api_name="/vqa")[0]
            b_asked = time.monotonic()
            bundle, _ = b.predict(api_name="/download_vqa") if workers == 2 else (None, None)
            b_done = time.monotonic()
            status = job.result()[0]
            a_done = time.monotonic()
        assert answer.startswith("**Answer: ") and status.startswith("**Caption:** ")
        if workers == 2:
            assert zipfile.is_zipfile(bundle)
            assert b_done < a_done - 1.0
        else:
            assert b_asked >= a_done - 0.5  # the control: one worker, B waited for A


def _sessions(app) -> list:
    from mmcam.app import Session

    return [v for sd in list(app.state_holder.session_data.values())
            for v in list(sd.state_data.values()) if isinstance(v, Session)]


def test_a_session_gives_its_memory_back(models, scene_png, tmp_path):
    """Results and files of a session are released once its time to live has passed."""
    need_shipped()
    with served(models, session_ttl=3) as (url, names, app):
        c = Client(url, verbose=False, download_files=str(tmp_path))
        c.predict(handle_file(str(scene_png)), "", names["cap_model"], "gradcam", 0.5, False,
                  False, False, api_name="/caption")
        held = [s for s in _sessions(app) if s.caption is not None]
        assert len(held) == 1
        # the maps a result holds: its PixelMaps (layer maps; pixel maps are made on demand)
        maps, folder = weakref.ref(held[0].caption.result.pixels), held[0].folder
        assert maps() is not None and folder.is_dir()
        del held
        deadline = time.monotonic() + 30
        while (maps() is not None or folder.exists()) and time.monotonic() < deadline:
            time.sleep(0.5)
            gc.collect()
        assert maps() is None and not folder.exists()


def test_model_folders_only_from_the_model_directories(app, tmp_path):
    c = client(app, tmp_path)
    (tmp_path / "model").mkdir()
    for path in (str(tmp_path / "model"), str(tmp_path / "absent"), "/etc", "../../etc"):
        out = c.predict(path, api_name="/load_model")
        assert out[0] == "**Error:** " + NOT_FOUND.format(path=path)


def test_folder_loading_can_be_off(models):
    need_shipped()
    from mmcam.app.models import OFF
    from mmcam.models.hub import resolve

    app = build_app(allow_model_folders=False)
    load = next(f for f in app.fns.values() if f.api_name == "load_model")
    with pytest.warns(UserWarning, match="off on this server"):
        out = load.fn(str(resolve("shapes-classifier")))
    assert out[0] == "**Error:** " + OFF


def test_a_llava_folder_captions_and_answers(models, scene_png, tmp_path, monkeypatch):
    """LLaVA, PaliGemma and Florence-2 folders under $MMCAM_MODELS are offered in the
    Captioning and the VQA tab, and explained there as by the library."""
    need_shipped()
    pytest.importorskip("transformers")
    from test_hf_vlm import save_llava

    from mmcam import load_model
    from mmcam.app import Session

    save_llava(tmp_path / "tiny-llava")
    monkeypatch.setenv("MMCAM_MODELS", str(tmp_path))
    app = build_app()
    fns = {f.api_name: f for f in app.fns.values() if f.api_name}
    assert "tiny-llava" in [v for _, v in fns["caption"].inputs[2].choices]
    assert "tiny-llava" in [v for _, v in fns["vqa"].inputs[2].choices]
    image = load_image(scene_png)
    adapter = load_model(tmp_path / "tiny-llava")
    session = Session()
    out = fns["caption"].fn(str(scene_png), OWN_CAPTION, "tiny-llava", "gradcam", 0.5, False,
                            False, False, session)
    lib = CaptionExplainer(adapter).explain(image, caption=OWN_CAPTION)
    assert [w for w, _ in out[1]["choices"]] == lib.words
    np.testing.assert_array_equal(pixels(out[2]), np.asarray(lib.overlays(0.5)[0]))
    out = fns["vqa"].fn(str(scene_png), QUESTION, "tiny-llava", "gradcam", 0.5, False, False,
                        session)
    lib = VQAExplainer(adapter).explain(image, QUESTION, top_k=5)
    assert out[0].startswith(f"**Answer: {lib.answer}** (p = {lib.probability:.3f})")
    session.close()
