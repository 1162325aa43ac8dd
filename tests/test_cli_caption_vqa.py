"""`mmcam caption` and `mmcam vqa` on a scene with the shipped models; bad input exits 2."""

import json

import pytest
import torch

import mmcam
from mmcam.caption import CaptionExplainer
from mmcam.cli import main
from mmcam.scenes import generate
from mmcam.vqa import VQAExplainer


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    scene = generate(1, seed=31337)[0]
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    scene.image.save(path)
    return path, scene


def test_caption_cli_matches_library(scene_png, tmp_path, capsys):
    path, scene = scene_png
    out = tmp_path / "cap"
    assert main(["caption", str(path), "--out", str(out)]) == 0
    data = json.loads((out / "result.json").read_text())
    ref = CaptionExplainer(mmcam.load_model("shapes-captioner")).explain(scene.image)
    assert [w["word"] for w in data["words"]] == ref.words
    for w, lp, box in zip(data["words"], ref.logprobs, ref.boxes):
        assert w["logprob"] == pytest.approx(lp, rel=1e-5)
        assert w["box"] == (list(box) if box else None)
    assert f"caption: {ref.caption}" in capsys.readouterr().out
    assert (out / "index.html").exists() and (out / "grid.png").exists()


def test_caption_cli_explains_a_given_caption(scene_png, tmp_path):
    path, scene = scene_png
    text = scene.captions[0]
    out = tmp_path / "given"
    assert main(["caption", str(path), "--caption", text, "--method", "hirescam",
                 "--out", str(out)]) == 0
    data = json.loads((out / "result.json").read_text())
    assert data["caption"] == text and data["generated"] is False
    assert data["method"] == "hirescam"


def test_vqa_cli_matches_library(scene_png, tmp_path):
    path, scene = scene_png
    q = scene.questions[0][0]
    out = tmp_path / "vqa"
    adapter = mmcam.load_model("shapes-vqa")
    ref = VQAExplainer(adapter).explain(scene.image, q)
    other = next(a for a in adapter.answers if a != ref.answer)
    assert main(["vqa", str(path), q, "--contrast", other, "--out", str(out)]) == 0
    data = json.loads((out / "result.json").read_text())
    assert data["answer"] == ref.answer
    assert data["probability"] == pytest.approx(ref.probability, rel=1e-5)
    assert data["contrast"]["answer"] == other
    assert [a["answer"] for a in data["top_answers"]] == [a for a, _, _ in ref.top_answers]
    assert torch.isclose(torch.tensor(data["top_answers"][0]["map_max"]),
                         ref.top_answers[0][2].max(), rtol=1e-5)


@pytest.mark.parametrize(
    "args,message",
    [
        (["vqa", "{img}", "   "], "the question is empty"),
        (["vqa", "{img}", "what color is the circle?", "--answer", "purple-ish"],
         "is not an answer this model knows"),
        (["caption", "{img}", "--caption", "  "], "the caption is empty"),
        (["caption", "{img}", "--model", "shapes-nope"], "unknown model 'shapes-nope'"),
        (["caption", "{bad}"], "not an image file"),
        (["vqa", "{missing}", "what?"], "image not found"),
    ],
)
def test_bad_input_exits_2(scene_png, tmp_path, capsys, args, message):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    fill = {"img": str(scene_png[0]), "bad": str(bad), "missing": str(tmp_path / "no.png")}
    argv = [a.format(**fill) for a in args] + ["--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_caption_cli_bfloat16_and_inner_layer(scene_png, tmp_path):
    """--dtype bfloat16 runs the model in bf16 (scores in float32): the library's bf16 result;
    --layer explains inside the encoder (a 32x32 grid for encoder.5)."""
    path, scene = scene_png
    text = scene.captions[0]
    out = tmp_path / "bf16"
    assert main(["caption", str(path), "--caption", text, "--dtype", "bfloat16",
                 "--layer", "encoder.5", "--out", str(out)]) == 0
    data = json.loads((out / "result.json").read_text())
    model = mmcam.load_model("shapes-captioner", dtype=torch.bfloat16)
    assert next(model.model.parameters()).dtype == torch.bfloat16
    ref = CaptionExplainer(model, layer="encoder.5").explain(scene.image, text)
    assert ref.layer_maps.shape[-2:] == (32, 32) and data["layer"] == "encoder.5"
    assert [w["logprob"] for w in data["words"]] == pytest.approx(ref.logprobs, rel=1e-5)
    fp32 = CaptionExplainer(mmcam.load_model("shapes-captioner")).explain(scene.image, text)
    assert ref.logprobs == pytest.approx(fp32.logprobs, abs=0.1)  # bf16 keeps ~3 digits


def test_vqa_cli_integrated_takes_steps(scene_png, tmp_path):
    """--method integrated --steps N draws what VQAExplainer(method="integrated", steps=N)
    draws (the answer's map, as saved), and N changes it."""
    path, scene = scene_png
    q = scene.questions[0][0]
    out = tmp_path / "cli"
    assert main(["vqa", str(path), q, "--method", "integrated", "--steps", "3",
                 "--out", str(out)]) == 0
    assert json.loads((out / "result.json").read_text())["method"] == "integrated"
    adapter = mmcam.load_model("shapes-vqa")
    for steps in (3, 16):
        VQAExplainer(adapter, method="integrated", steps=steps).explain(
            scene.image, q).save(tmp_path / f"lib{steps}")
    png = "answer.png"
    assert (out / png).read_bytes() == (tmp_path / "lib3" / png).read_bytes()
    assert (out / png).read_bytes() != (tmp_path / "lib16" / png).read_bytes()
