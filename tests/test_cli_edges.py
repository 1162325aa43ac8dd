"""Command-line inputs a new-user pass found ending in tracebacks or silently wrong: each is
now one line on stderr and exit code 2, or the right output. Every case failed before."""

from __future__ import annotations

import json

import pytest
from test_hardening import one_error_line

from mmcam.cli import main
from mmcam.errors import MMCamError
from mmcam.scenes import generate


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    generate(1, seed=5)[0].image.save(path)
    return str(path)


@pytest.mark.parametrize("argv,message", [
    (["classify", "{scene}", "--model", "shapes-captioner", "--out", "{tmp}/o"],
     "shapes-captioner is not a classifier"),
    (["classify", "{scene}", "--model", "shapes-classifier", "--layer", " ", "--out",
      "{tmp}/o"], "--layer is empty"),
    (["classify", "{scene}", "--model", "shapes-classifier", "--class", "1", "--top", "3",
      "--out", "{tmp}/o"], "--class and --top exclude each other"),
    (["caption", "{scene}", "--layer", "", "--out", "{tmp}/o"], "--layer is empty"),
    (["caption", "{scene}", "--layer", "encoder..14", "--out", "{tmp}/o"],
     "no layer named 'encoder..14'"),
    (["caption", "{scene}", "--out", ""], "--out is empty"),
    (["caption", "{scene}", "--out", "/proc/mmcam-out"], "no folder can be made in /proc"),
    (["caption", "{scene}", "--versus", "yellow=red", "--out", "{tmp}/o"],
     "add --score versus"),
    (["caption", "{scene}", "--score", "versus", "--versus", "yellow=red", "--versus",
      "yellow=blue", "--out", "{tmp}/o"], "names 'yellow' twice"),
    (["caption", "{scene}", "--score", "versus", "--versus", "yellow=zzz", "--out",
      "{tmp}/o"], "is not one known token"),
    (["caption", "{scene}", "--score", "versus", "--versus", "yellow=yellow", "--out",
      "{tmp}/o"], "cannot be contrasted with itself"),
    (["vqa", "{scene}", "what color is the square?", "--top", "51", "--out", "{tmp}/o"],
     "top_k=51: over the limit of 50"),
    (["evaluate-model", "shapes-classifier", "--n", "0"], "n=0: must be an integer"),
    (["evaluate-explanations", "shapes-captioner", "--n", "1", "--slack", "-4", "--out",
      "{tmp}/o"], "--slack must be 0 or more"),
    (["train", "blip-captioner", "--out", "{tmp}/o", "--init-from", "/no/such/folder"],
     "no model folder there"),
    (["train", "captioner", "--out", "{tmp}/o", "--init-from", "models/shapes-captioner"],
     "--init-from is for blip-captioner and blip-vqa"),
    (["demo", "--port", "70000"], "--port 70000: a port is a number from 0 to 65535"),
])
def test_bad_command_lines_end_in_one_line(capsys, tmp_path, scene, argv, message):
    argv = [a.replace("{scene}", scene).replace("{tmp}", str(tmp_path)) for a in argv]
    one_error_line(capsys, argv, message)
    assert not (tmp_path / "o").exists()


def test_broken_symlink_out_is_refused(capsys, tmp_path, scene):
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    one_error_line(capsys, ["caption", scene, "--out", str(link)], "broken symbolic link")


@pytest.mark.parametrize("flag", [["evaluate-model", "shapes-classifier", "--n", "1"],
                                  ["train", "captioner", "--out", "x", "--steps", "1"],
                                  ["bias-study", "--out", "x", "--steps", "1"]])
def test_negative_seeds_are_refused_by_the_parser(capsys, flag):
    with pytest.raises(SystemExit) as e:
        main(flag + ["--seed", "-1"])
    assert e.value.code == 2
    assert "a seed is an integer of at least 0" in capsys.readouterr().err


def test_beam_wider_than_the_vocabulary_is_clamped(capsys, tmp_path, scene):
    """shapes-captioner's vocabulary is smaller than 60 words: the beam keeps them all
    (topk raised "selected index k out of range"), and the caption equals beam 40's."""
    from mmcam import load_model

    vocab = len(load_model("shapes-captioner").vocab.itos)
    assert vocab < 60
    assert main(["caption", scene, "--beam", "60", "--out", str(tmp_path / "a")]) == 0
    assert main(["caption", scene, "--beam", str(vocab), "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "result.json").read_text())["caption"] for d in "ab")
    assert a == b


def test_evaluate_model_measures_the_shipped_blip_models(capsys):
    """It read ``adapter.config["kind"]``, which HF adapters lack; now BLEU-4 / accuracy as
    the trainer measures them (checked against the trainer's own evaluation)."""
    from mmcam import load_model
    from mmcam.models.train_blip import evaluate_blip_captioner

    assert main(["evaluate-model", "shapes-blip", "--n", "2", "--seed", "7"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = evaluate_blip_captioner(load_model("shapes-blip"), n=2, seed=7)
    assert got["kind"] == "captioner" and got["bleu4"] == want["bleu4"]
    assert main(["evaluate-model", "shapes-blip-vqa", "--n", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "vqa"


def test_evaluation_report_is_standard_json(tmp_path, capsys):
    """Rows without deletion curves held bare NaN, which JavaScript's JSON.parse refuses."""
    out = tmp_path / "ev"
    assert main(["evaluate-explanations", "shapes-captioner", "--n", "2", "--n-deletion", "1",
                 "--n-sanity", "1", "--methods", "gradcam", "--scores", "logprob", "--aligns",
                 "bilinear", "--out", str(out)]) == 0

    def refuse(name):
        raise AssertionError(f"{name} in report.json")

    report = json.loads((out / "report.json").read_text(), parse_constant=refuse)
    assert any(r.get("deletion_auc") is None for r in report["table"])


def test_random_classifier_says_so_and_weight_errors_are_one_line(capsys, tmp_path, scene):
    assert main(["classify", scene, "--model", "resnet18", "--top", "1", "--out",
                 str(tmp_path / "o")]) == 0
    assert "resnet18 without --weights has random weights" in capsys.readouterr().err
    empty = tmp_path / "w.pt"
    empty.write_bytes(b"")
    one_error_line(capsys, ["classify", scene, "--model", "resnet18", "--weights", str(empty),
                            "--out", str(tmp_path / "p")], f"cannot read weights file {empty}: ")
    err_line = main(["classify", scene, "--model", "resnet18", "--weights", scene, "--out",
                     str(tmp_path / "q")])
    assert err_line == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read weights file" in err


def test_library_layer_paths_with_empty_parts_are_refused():
    from mmcam import CaptionExplainer, load_model

    ad = load_model("shapes-captioner")
    for bad in (".encoder", "encoder.", "encoder..14"):
        with pytest.raises(MMCamError, match="no layer named"):
            CaptionExplainer(ad, layer=bad)
    assert CaptionExplainer(ad, layer="encoder.14").pipeline.layer == "encoder.14"
