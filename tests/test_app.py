"""The Gradio app through gradio_client against a real local launch (127.0.0.1, free port).

The oracle is the library called directly on the same image: every map the app shows must
be, pixel for pixel, the library's display map of that word / answer / class drawn with
``mmcam.viz.overlay`` at the requested opacity. Uses the shipped models when they exist,
else the toy adapters.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from app_helpers import adapters, served, shipped_models_present
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from mmcam import scenes
from mmcam.app import SCENE_SEED, build_app
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
    with served(models) as (url, names):
        yield url, names


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
                 alpha: float = 0.5, box: bool = False, gt: bool = False, own: bool = False):
    return c.predict(handle_file(str(image)), text, app[1]["cap_model"], method, alpha, box,
                     gt, own, api_name="/caption")


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
                    api_name="/caption_method")
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
