"""The app's parts without a server: the registry, the layer picker's choices, which model
folders a page may load, the pure render module, the --host/--share warning, and the size of
every function in ``mmcam/app/``."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import mmcam
from mmcam import registry, scenes
from mmcam.app import render
from mmcam.app.models import NOT_FOUND, OFF, FolderPolicy
from mmcam.caption import CaptionExplainer
from mmcam.classify import ClassExplainer
from mmcam.errors import MMCamError
from mmcam.layers import resolve_layer
from mmcam.viz import overlay
from mmcam.vqa import VQAExplainer

APP = Path(mmcam.__file__).parent / "app"
MAX_LINES = 80


def test_no_function_in_the_app_is_over_80_lines():
    too_long = []
    for path in sorted(APP.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    too_long.append(f"{path.name}:{node.lineno} {node.name} ({n} lines)")
    assert len(list(APP.glob("*.py"))) >= 8  # the package, not one module
    assert too_long == []


def test_no_gradio_in_the_render_module():
    tree = ast.parse((APP / "render.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert "gradio" not in imported


# ----------------------------------------------------------------------------- registry


def test_registry_lists_every_method_and_score():
    from mmcam import cam, scores

    assert set(registry.METHODS) == set(cam.METHODS)
    assert set(registry.SCORES) == set(scores.SCORES)
    for task in ("caption", "vqa"):
        values = [v for _, v in registry.method_choices(task)]
        assert values[0] == registry.RECOMMENDED
        assert set(cam.METHODS) <= set(values)  # each method also as plain log p
        assert len(values) == len(set(values))
    assert "guided-gradcam" in [v for _, v in registry.method_choices("caption")]
    assert [v for _, v in registry.method_choices("classify")] == list(cam.METHODS)
    assert registry.method_label("hirescam") == "HiResCAM, log p"
    assert registry.method_score("gradcam++:contrast") == ("gradcam++", "contrast")


def test_cli_choices_come_from_the_registry():
    from mmcam import cam
    from mmcam.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices

    def choices(command, option):
        return next(a for a in sub[command]._actions if option in a.option_strings).choices

    assert choices("caption", "--method") == list(cam.METHODS) + ["guided-gradcam"]
    assert choices("vqa", "--method") == list(cam.METHODS)
    assert choices("classify", "--method") == list(cam.METHODS)
    assert choices("caption", "--score") == ["logprob", "logit", "contrast", "versus"]
    assert choices("vqa", "--score") == ["logprob", "logit", "contrast"]


class _Blocks(nn.Module):
    """A ViT-like stack: 4 blocks in a ModuleList with a norm between blocks 1 and 2."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Module()
        self.enc.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4), nn.LayerNorm(4),
                                         nn.Linear(4, 4), nn.Linear(4, 4)])


def test_layer_choices_are_earlier_blocks_of_the_same_kind():
    adapter = mmcam.load_model("shapes-captioner")
    enc = adapter.model.encoder
    relus = [f"encoder.{i}" for i, m in enumerate(enc) if isinstance(m, nn.ReLU)]
    want = [relus[-1]] + relus[-2::-1][:4]
    assert registry.layer_choices(adapter) == want
    assert want == ["encoder.14", "encoder.11", "encoder.8", "encoder.5", "encoder.2"]

    class A:
        model = _Blocks()
        layer = "enc.layers[-1]"

    got = registry.layer_choices(A())
    assert got == ["enc.layers[-1]", "enc.layers[-2]", "enc.layers[-4]", "enc.layers[-5]"]
    layers = A.model.enc.layers
    assert [resolve_layer(A.model, x) for x in got] == [layers[4], layers[3], layers[1],
                                                        layers[0]]
    A.layer = "enc"  # not an indexed layer: only itself
    assert registry.layer_choices(A()) == ["enc"]
    A.layer_before = "enc.layers[-1]"  # a tower's output: then the blocks it reads
    assert registry.layer_choices(A()) == ["enc", "enc.layers[-1]", "enc.layers[-2]",
                                           "enc.layers[-4]", "enc.layers[-5]"]


def test_blip_picker_offers_the_tower_output_then_its_blocks():
    ad = mmcam.load_model("shapes-blip")
    got = registry.layer_choices(ad)
    assert got == ["vision_model"] + [f"vision_model.encoder.layers[{i}]" for i in (-1, -2, -3, -4)]
    assert resolve_layer(ad.model, got[0]) is ad.model.vision_model


@pytest.mark.parametrize("name, task", [("shapes-captioner", "caption"), ("shapes-vqa", "vqa")])
def test_status_and_picker_name_the_default_layer_alike(name, task):
    """The explained layer's name in results and the app's status is the picker's default
    (one source: the adapter's ``layer``), and that layer is what the default explains:
    its maps equal the maps of the explicitly named layer."""
    from mmcam.app.common import layer_options

    adapter = mmcam.load_model(name)
    image = scenes.generate(1, seed=7)[0].image
    if task == "caption":
        default = CaptionExplainer(adapter).explain(image)
        named = CaptionExplainer(adapter, layer=adapter.layer).explain(image)
        status = render.caption_status(render.caption_view(default))
    else:
        q = "what color is the circle?"
        default = VQAExplainer(adapter).explain(image, q)
        named = VQAExplainer(adapter, layer=adapter.layer).explain(image, q)
        status = render.vqa_status(render.vqa_view(default))
    picker = layer_options(registry.layer_choices(adapter))[0]
    assert picker == (f"{default.layer} (default)", "")
    assert default.layer == named.layer == "encoder.14"
    assert f"layer {default.layer}" in status and "encode output" not in status
    a, b = (default.layer_maps, named.layer_maps) if task == "caption" else (
        default.map, named.map)
    # the same tensor reached by another path (a hook inside encode): float32 rounding only
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()))


def test_shipped_names():
    from mmcam.models.hub import KNOWN_MODELS

    assert sorted(registry.SHIPPED.values()) == sorted(KNOWN_MODELS)
    for kind, name in registry.SHIPPED.items():
        assert registry.kinds_of(mmcam.load_model(name)) == (kind,)


def test_kinds_of_the_adapters():
    assert registry.kinds_of(mmcam.load_model("shapes-captioner")) == ("captioner",)
    assert registry.kinds_of(mmcam.load_model("shapes-vqa")) == ("vqa",)
    assert registry.kinds_of(mmcam.load_model("shapes-classifier")) == ("classifier",)
    assert registry.kinds_of(object()) == ()


def test_model_roots(monkeypatch, tmp_path):
    from mmcam.models.hub import REPO_MODELS

    monkeypatch.setenv("MMCAM_MODELS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert registry.model_roots() == [tmp_path.resolve(), REPO_MODELS.resolve(),
                                      (tmp_path / "hub").resolve()]
    monkeypatch.delenv("MMCAM_MODELS")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert registry.model_roots()[-1] == (tmp_path / "home" / "hub").resolve()


# ----------------------------------------------------------------------------- folders


@pytest.fixture
def roots(tmp_path):
    inside, outside = tmp_path / "models", tmp_path / "elsewhere"
    (inside / "good").mkdir(parents=True)
    (outside / "secret").mkdir(parents=True)
    (inside / "link").symlink_to(outside / "secret")
    (inside / "file.txt").write_text("x")
    return inside, outside


def test_only_folders_under_the_model_directories(roots):
    inside, outside = roots
    policy = FolderPolicy([inside])
    assert policy.find(str(inside / "good")) == (inside / "good").resolve()
    assert policy.find("good") == (inside / "good").resolve()  # a name under a root
    for path in (str(outside / "secret"), str(outside / "nothing"), str(inside / "link"),
                 str(inside / "good" / ".." / ".." / "elsewhere" / "secret"), "../elsewhere",
                 str(inside), str(inside / "file.txt"), "/etc", "/no/such/folder", "~"):
        with pytest.raises(MMCamError) as e:
            policy.find(path)
        assert str(e.value) == NOT_FOUND.format(path=path)  # the same for existing or not


def test_folder_loading_off(roots):
    inside, _ = roots
    with pytest.raises(MMCamError) as e:
        FolderPolicy([inside], allowed=False).find(str(inside / "good"))
    assert str(e.value) == OFF


def test_exposure_warning_and_the_folder_default():
    from mmcam.app import exposure_warning
    from mmcam.app.server import is_local

    assert exposure_warning("127.0.0.1", False, False) is None
    assert exposure_warning("localhost", False, False) is None
    w = exposure_warning("0.0.0.0", False, False)
    assert w.startswith("warning: serving on 0.0.0.0") and "off" in w
    assert "--allow-model-folders" in w
    assert "is on" in exposure_warning("0.0.0.0", False, True)
    assert "share link" in exposure_warning("127.0.0.1", True, False)
    assert is_local("127.0.0.1") and not is_local("0.0.0.0") and not is_local("192.168.1.5")


@pytest.mark.parametrize("argv,allow,warned", [
    (["demo"], None, False),
    (["demo", "--host", "0.0.0.0"], None, True),
    (["demo", "--host", "0.0.0.0", "--allow-model-folders"], True, True),
])
def test_demo_flags(monkeypatch, capsys, argv, allow, warned):
    """``mmcam demo``: the warning line and what is passed to launch (which decides folder
    loading from the host when not told: see the next test)."""
    import mmcam.app
    from mmcam.cli import main

    seen = {}
    monkeypatch.setattr(mmcam.app, "launch", lambda **kw: seen.update(kw))
    assert main(argv) == 0
    assert seen["allow_model_folders"] is allow
    err = capsys.readouterr().err
    assert ("warning: serving on 0.0.0.0" in err) is warned


@pytest.mark.parametrize("host,share,allow,want", [
    ("127.0.0.1", False, None, True), ("0.0.0.0", False, None, False),
    ("127.0.0.1", True, None, False), ("0.0.0.0", False, True, True)])
def test_launch_decides_folder_loading(monkeypatch, host, share, allow, want):
    import gradio as gr

    from mmcam.app import server

    built = {}
    monkeypatch.setattr(server, "build_app", lambda **kw: built.update(kw) or gr.Blocks())
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: None)
    server.launch(host=host, share=share, allow_model_folders=allow, threads=None,
                  block=False)
    assert built["allow_model_folders"] is want


# ----------------------------------------------------------------------------- render


@pytest.fixture(scope="module")
def scene():
    return scenes.generate(1, seed=41, start=3)[0]


@pytest.fixture(scope="module")
def caption(scene):
    return CaptionExplainer(mmcam.load_model("shapes-captioner")).explain(scene.image)


def test_caption_pictures_are_the_library_overlays(caption, scene):
    view = render.caption_view(caption, scene)
    lib = caption.overlays(0.4)
    for i in (0, len(caption.words)):  # a word, the whole caption
        got = render.caption_image(view, i, 0.4, False, False)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(lib[i]))
    m = caption.maps[-1]
    got = render.caption_image(view, len(caption.words) - 1, 0.5, False, False, own=True)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(overlay(scene.image,
                                                                      m / m.max(), 0.5)))
    info = render.word_info(view, 0)
    assert f"log p = {caption.logprobs[0]:.3f}" in info
    assert f"p = {np.exp(caption.logprobs[0]):.3f}" in info
    status = render.caption_status(view)
    assert caption.caption in status and f"layer {caption.layer}" in status
    assert scene.captions[0] in status


def test_grid_holds_every_panel(caption):
    view = render.caption_view(caption)
    grid = render.grid_image(view, 0.5, False, False, cols=3)
    n = len(caption.words) + 1
    scale = min(1.0, render.TILE / max(caption.image.size))
    tw = round(caption.image.width * scale)
    th = round(caption.image.height * scale)
    rows = -(-n // 3)
    assert grid.size == (3 * (tw + 6) + 6, rows * (th + 18 + 6) + 6)
    tile0 = np.asarray(grid)[6:6 + th, 6:6 + tw]  # the first word's tile, drawn at tile size
    small = caption.image.resize((tw, th), Image.BILINEAR) if scale != 1 else caption.image
    heat = torch.nn.functional.interpolate(view.heat[0][None, None], size=(th, tw),
                                           mode="bilinear", align_corners=False,
                                           antialias=True)[0, 0] if scale != 1 else view.heat[0]
    np.testing.assert_array_equal(tile0, np.asarray(overlay(small, heat, 0.5)))


def test_side_by_side_pairs_words_and_compares_maps(caption):
    other = CaptionExplainer(mmcam.load_model("shapes-captioner"), method="gradcam",
                             layer="encoder.11").explain(caption.image, caption=caption.caption)
    a, b = render.caption_view(caption), render.caption_view(other)
    assert a.result.words == b.result.words
    i = len(caption.words) - 1
    assert render.compare_index(a, b, i) == i
    x, y = caption.maps[i].double().numpy().ravel(), other.maps[i].double().numpy().ravel()
    cos = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
    info = render.compare_info(a, b, i, ("m1", "m2"))
    assert f"cosine similarity is {cos:.2f}" in info
    assert "layer encoder.11, m2" in info and f"layer {caption.layer}, m1" in info
    assert render.cosine(torch.zeros(3, 3), caption.maps[0]) == 0.0
    shifted = CaptionExplainer(mmcam.load_model("shapes-captioner")).explain(
        caption.image, caption="the " + caption.caption)
    c = render.caption_view(shifted)
    assert render.compare_index(a, c, 0) == shifted.words.index(caption.words[0])
    nothing = CaptionExplainer(mmcam.load_model("shapes-captioner")).explain(
        caption.image, caption="big")
    if caption.words[0] != "big":
        assert render.compare_index(a, render.caption_view(nothing), 0) is None


def test_vqa_and_class_pictures_are_the_library_overlays(scene):
    q = scene.questions[0][0]
    r = VQAExplainer(mmcam.load_model("shapes-vqa")).explain(scene.image, q, top_k=3)
    view = render.vqa_view(r, scene)
    np.testing.assert_array_equal(np.asarray(render.vqa_image(view, 2, 0.6, False)),
                                  np.asarray(r.overlays(0.6)[3]))
    truth = dict(scene.questions)[q]
    assert f"ground truth for this scene: **{truth}**" in render.vqa_status(view)
    labels = [lab for lab, _ in render.answer_choices(view)]
    assert labels == [f"{a}  {p:.1%}" for a, p, _ in r.top_answers]

    c = ClassExplainer(mmcam.load_model("shapes-classifier")).explain(scene.image, top=3)
    cv = render.class_view(c)
    np.testing.assert_array_equal(np.asarray(render.class_image(cv, 1, 0.5, False)),
                                  np.asarray(c.overlays(0.5)[1]))
    assert render.class_status(cv).startswith(f"**{c.labels[0]}** (p = "
                                              f"{c.probabilities[0]:.3f})")


def test_session_close_lets_go_of_results(caption, tmp_path):
    import gc
    import weakref

    from mmcam.app.state import Session

    s = Session()
    s.caption = render.caption_view(
        CaptionExplainer(mmcam.load_model("shapes-captioner")).explain(caption.image))
    ref = weakref.ref(s.caption.result)
    path = Path(s.png(caption.image, "x"))
    assert path.is_file()
    s.close()
    gc.collect()
    assert ref() is None and not path.parent.exists() and s.caption is None



def test_a_dropped_session_removes_its_folder():
    """A session gradio drops without calling close (evicted over its session capacity)."""
    import gc

    from mmcam.app.state import Session

    s = Session()
    folder = s.workdir()
    (folder / "x.png").write_bytes(b"x")
    del s
    gc.collect()
    assert not folder.exists()
