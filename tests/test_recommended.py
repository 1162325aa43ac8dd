"""A model folder's measured best setting (``mmcam_recommended.json``): written by
``mmcam evaluate-explanations --save-recommended``, read by the registry, and offered first by
the app (method, score and layer), checked against the suite's report and the library."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmcam import CaptionExplainer, VQAExplainer, load_model, registry
from mmcam.cli import main
from mmcam.errors import MMCamError
from mmcam.models.hub import REPO_MODELS
from mmcam.registry import RECOMMENDATION_FILE, method_choices, read_recommendation
from mmcam.scenes import generate
from mmcam.suite import save_recommendation

SHIPPED = ("shapes-captioner", "shapes-vqa", "shapes-blip", "shapes-blip-vqa")
REPORTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "explanations"


def copy_model(name: str, dest: Path) -> Path:
    """A copy of shipped model ``name`` without its recommendation file."""
    folder = dest / name
    shutil.copytree(REPO_MODELS / name, folder)
    (folder / RECOMMENDATION_FILE).unlink(missing_ok=True)
    return folder


# ----------------------------------------------------------------------------- registry


def test_read_recommendation_checks_the_file(tmp_path):
    assert read_recommendation(None) is None
    assert read_recommendation(tmp_path) is None  # no file
    f = tmp_path / RECOMMENDATION_FILE
    f.write_text(json.dumps({"method": "integrated", "score": "contrast", "layer": "encoder.2",
                             "steps": 16}))
    rec = read_recommendation(tmp_path)
    assert rec["value"] == "integrated:contrast" and rec["layer"] == "encoder.2"
    f.write_text(json.dumps({"method": "hirescam", "score": "logprob", "layer": None}))
    assert read_recommendation(tmp_path)["value"] == "hirescam"
    for bad, says in ((b"{", "not readable JSON"), (b"[1]", "not a JSON object"),
                      (b'{"method": "lime", "score": "logprob"}', "'lime'"),
                      (b'{"method": "gradcam", "score": "versus"}', "'versus'"),
                      (b'{"method": "gradcam", "score": "logit", "layer": 3}', "layer"),
                      (b"\xff\xfe", "not readable JSON")):
        f.write_bytes(bad)
        with pytest.raises(MMCamError, match=says):
            read_recommendation(tmp_path)


def test_method_choices_put_the_models_recommendation_first():
    plain = method_choices("vqa")
    assert plain[0] == ("HiResCAM, contrast (recommended)", registry.RECOMMENDED)
    got = method_choices("vqa", "integrated")  # integrated with log p
    assert got[0] == ("Integrated gradients, log p (recommended for this model)", "integrated")
    assert sorted(v for _, v in got) == sorted(v for _, v in plain)  # same choices, reordered
    labels = dict((v, label) for label, v in got)
    assert labels[registry.RECOMMENDED] == "HiResCAM, contrast (one pass)"
    assert [label for label, _ in got].count(
        "Integrated gradients, log p (recommended for this model)") == 1
    same = method_choices("caption", registry.RECOMMENDED)
    assert same[0] == ("HiResCAM, contrast (recommended for this model)", registry.RECOMMENDED)
    odd = method_choices("caption", "counterfactual:contrast")  # not among the pairs: added
    assert odd[0][1] == "counterfactual:contrast" and len(odd) == len(same) + 1


# ----------------------------------------------------------------------------- suite, CLI


def report_with(rec: dict | None, default: str = "encoder.14") -> dict:
    return {"recommended": rec, "default_layer": default, "steps": 4, "model": "m", "n": 3,
            "seed": 5, "slack": 4, "methods": ["hirescam"], "scores": ["contrast"],
            "aligns": ["receptive"], "layers": [default],
            "sanity_value": {"hirescam/contrast": 0.1, "integrated/logprob@encoder.2": 0.2}}


def test_save_recommendation_writes_what_the_report_recommends(tmp_path):
    rec = {"method": "hirescam", "score": "contrast", "align": "receptive",
           "layer": "encoder.14", "mean_pointing": 0.9}
    path = save_recommendation(report_with(rec), tmp_path, "mmcam evaluate-explanations m")
    data = json.loads(path.read_text())
    assert data["layer"] is None and "steps" not in data  # the default layer; one pass
    assert data["sanity_value"] == 0.1 and data["mean_pointing"] == 0.9
    assert data["measured"]["command"] == "mmcam evaluate-explanations m"
    assert read_recommendation(tmp_path)["value"] == "hirescam:contrast"
    rec = {"method": "integrated", "score": "logprob", "align": "bilinear",
           "layer": "encoder.2", "mean_pointing": 0.8}
    data = json.loads(save_recommendation(report_with(rec), tmp_path).read_text())
    assert (data["layer"], data["steps"], data["sanity_value"]) == ("encoder.2", 4, 0.2)
    with pytest.raises(ValueError, match="recommends nothing"):
        save_recommendation(report_with(None), tmp_path)


def test_cli_saves_the_recommendation_into_the_model_folder(tmp_path, capsys):
    folder = copy_model("shapes-vqa", tmp_path)
    out = tmp_path / "ev"
    assert main(["evaluate-explanations", str(folder), "--n", "2", "--n-deletion", "0",
                 "--n-sanity", "1", "--methods", "gradcam", "hirescam", "--scores", "contrast",
                 "--aligns", "receptive", "--save-recommended", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    rec = read_recommendation(folder)
    want = report["recommended"]
    assert (rec["method"], rec["score"], rec["align"], rec["mean_pointing"]) == (
        want["method"], want["score"], want["align"], want["mean_pointing"])
    assert rec["measured"]["command"].startswith(f"mmcam evaluate-explanations {folder} --n 2")
    assert f"wrote {folder / RECOMMENDATION_FILE}" in capsys.readouterr().out
    assert load_model(folder).folder == folder

    assert main(["evaluate-explanations", str(folder), "--n", "1", "--n-sanity", "0",
                 "--save-recommended", "--out", str(out)]) == 2
    assert "needs the sanity check" in capsys.readouterr().err


def test_shipped_recommendations_are_the_suites():
    """Each shipped model's file names what its report in benchmarks/ recommends."""
    for name in SHIPPED:
        rec = read_recommendation(REPO_MODELS / name)
        report = json.loads((REPORTS / f"{name}-integrated" / "report.json").read_text())
        want = report["recommended"]
        layer = None if want["layer"] == report["default_layer"] else want["layer"]
        assert (rec["method"], rec["score"], rec["layer"], rec["mean_pointing"]) == (
            want["method"], want["score"], layer, want["mean_pointing"]), name
        assert rec["sanity_value"] < 0.5


# ----------------------------------------------------------------------------- app


@pytest.fixture(scope="module")
def served_app():
    from tests.app_helpers import adapters, served

    with served(adapters()) as (url, names, app):
        yield url, names, app


def component(app, elem_id: str):
    return next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def test_app_starts_at_each_models_recommendation(served_app):
    """The caption tab (shapes-captioner) starts at integrated + contrast, layer "" meaning
    encoder.2; the VQA tab (shapes-vqa) at HiResCAM + contrast at its default layer."""
    _, _, app = served_app
    method, layer = component(app, "cap_method"), component(app, "cap_layer")
    assert method.value == "integrated:contrast"
    assert method.choices[0][0] == "Integrated gradients, contrast (recommended for this model)"
    assert layer.value == "" and layer.choices[0] == ("encoder.2 (recommended)", "")
    assert layer.choices[1] == ("encoder.14 (default)", "encoder.14")
    method = component(app, "vqa_method")
    assert method.value == "hirescam:contrast"
    assert method.choices[0][0] == "HiResCAM, contrast (recommended for this model)"
    assert component(app, "vqa_layer").choices[0] == ("encoder.14 (default)", "")
    assert component(app, "cls_method").value == "gradcam"  # classifiers: none measured


def test_app_default_maps_are_the_librarys_at_the_recommended_setting(served_app, tmp_path):
    from gradio_client import Client, handle_file

    from tests.test_app import pixels

    url, names, _ = served_app
    scene = generate(1, seed=77)[0]
    path = tmp_path / "scene.png"
    scene.image.save(path)
    c = Client(url, verbose=False, download_files=str(tmp_path))
    out = c.predict(handle_file(str(path)), "", names["cap_model"], "integrated:contrast",
                    0.5, False, False, False, api_name="/caption")  # the layer left out
    lib = CaptionExplainer(load_model("shapes-captioner"), method="integrated",
                           score="contrast", layer="encoder.2").explain(scene.image)
    assert "layer encoder.2" in out[0]
    np.testing.assert_array_equal(pixels(out[2]), np.asarray(lib.overlays(0.5)[0]))

    # shapes-blip-vqa: its layer picker value "" is its default (its file names no layer)
    q, _ = scene.questions[0]
    out = c.predict(handle_file(str(path)), q, "shapes-blip-vqa", "integrated:contrast", 0.5,
                    False, False, "", api_name="/vqa")
    lib = VQAExplainer(load_model("shapes-blip-vqa"), method="integrated",
                       score="contrast").explain(scene.image, q, top_k=5)
    np.testing.assert_array_equal(pixels(out[2]), np.asarray(lib.overlays(0.5)[1]))


def test_switching_models_sets_their_recommendation(served_app, tmp_path):
    """layers_for (the model dropdown's change event): a model with a file moves the method
    and layer pickers to it; one without leaves the method as the user chose it."""
    from mmcam.app.common import Tab
    from mmcam.app.models import Models

    models = Models()
    models.add("shapes-blip-vqa", load_model("shapes-blip-vqa"))
    models.add("plain", load_model(copy_model("shapes-vqa", tmp_path)))
    tab = Tab.__new__(Tab)
    tab.models, tab.kind, tab.task, tab.method_default = models, "vqa", "vqa", None
    got = tab.pickers_for("shapes-blip-vqa")
    assert got["method"]["value"] == "integrated:contrast"
    assert got["layer"] == {"choices": got["layer"]["choices"], "value": ""}
    got = tab.pickers_for("plain")
    assert "value" not in got["method"]  # the user's choice stays
    assert got["method"]["choices"] == method_choices("vqa")
    assert models.layer_of("plain", "vqa", "") == ""
    assert models.layer_of("plain", "vqa", " encoder.11 ") == "encoder.11"


def test_a_broken_file_is_ignored_by_the_app(tmp_path, caplog):
    from mmcam.app.models import Models

    folder = copy_model("shapes-vqa", tmp_path)
    (folder / RECOMMENDATION_FILE).write_text('{"method": "nope"}')
    models = Models()
    with caplog.at_level("WARNING"):
        models.add("broken", load_model(folder))
    assert models.recommendation("broken", "vqa") is None
    assert "recommendation ignored" in caplog.text and "'nope'" in caplog.text
