"""The bias study with a captioner: its training captions name the large object, its
prediction is the two class words' logits after "a large {color}" (checked against the
adapter's teacher-forced logits one image at a time), its maps are Grad-CAM of the shape word
(checked against a hand computation on the 16x16 grid), and the command writes its files,
the same for a seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmcam import bias
from mmcam.bias import StudyConfig, binary_scenes
from mmcam.bias_caption import (
    CAPTIONER,
    GREEDY,
    large_shape_word,
    shape_logits,
    small_mentions,
    train_captioner,
)
from mmcam.caption import CaptionExplainer
from mmcam.cli import main
from mmcam.models import encoder
from mmcam.models.hub import wrap
from mmcam.scenes import generate

SEED = 11
TINY = ["--model", "captioner", "--n-train", "16", "--n-test", "16", "--steps", "6",
        "--seed", "3"]


@pytest.fixture(scope="module")
def scenes() -> bias.SceneSet:
    return binary_scenes(24, SEED, ("circle", "square"), keep_masks=True)


@pytest.fixture(scope="module")
def trained(scenes):
    cfg = StudyConfig(seed=SEED, n_train=24, steps=8, model="captioner")
    model, config, facts = train_captioner(scenes.images, scenes, cfg, "test")
    return model, config, cfg


def test_captions_name_the_large_object(scenes) -> None:
    # independently: the world's captions that contain "large {color} {shape}" of the one
    # large object, and that object's color
    for i, idx in enumerate(scenes.indices):
        s = generate(1, SEED, start=idx, one_large=True)[0]
        large = [o for o in s.objects if o.size == "large"][0]
        assert scenes.colors[i] == large.color
        assert ("circle", "square")[int(scenes.labels[i])] == large.shape
        want = [c for c in s.captions
                if f"large {large.color} {large.shape}" in c]
        assert scenes.captions[i] == want and len(want) >= 1
        assert all("large" in c for c in want)
        assert scenes.small[i] == [(o.color, o.shape) for o in s.objects if o.size == "small"]
        left_out = [c for c in s.captions if c not in want]
        assert all(large.shape not in c.split() or "large" not in c for c in left_out)


@pytest.mark.parametrize("words, want", [
    ("a large red circle to the left of a small blue square", "circle"),
    ("a small blue square and a large green star", "star"),
    ("a large red", None),
    ("two small shapes and one large shape", None),
    ("a small red circle", None),
    ("a large orange purple square", "square"),  # colors skipped, whatever their number
])
def test_large_shape_word(words, want) -> None:
    assert large_shape_word(words.split()) == want


SMALL = [("red", "circle"), ("blue", "square"), ("green", "star"), ("green", "circle")]


@pytest.mark.parametrize("caption, want", [
    ("a large red square and a small red circle", [True]),
    ("a small red square to the left of a large blue circle", [False]),
    ("a small blue square , a small red circle and a large red circle", [True, True]),
    ("a large red circle and a small green circle", []),  # two small green objects
    ("a small yellow circle", []),  # no small yellow object
    ("a small red star", [False]),  # named wrongly as a third shape
    ("a small blue", []),  # no shape word
    ("a large red circle", []),
])
def test_small_mentions(caption, want) -> None:
    assert small_mentions(caption.split(), SMALL, ("circle", "square")) == want
    # a small object of another shape is not counted
    assert small_mentions("a small green star".split(), [("green", "star")],
                          ("circle", "square")) == []


def test_shape_logits_are_the_teacher_forced_logits(scenes, trained) -> None:
    model, config, cfg = trained
    adapter = wrap(model, config)
    got = shape_logits(model, config, scenes.images[:6], scenes.colors[:6], cfg, batch=4)
    assert got.shape == (6, 2)
    for i in range(6):  # one image at a time through the adapter's own teacher forcing
        img = Image.fromarray(scenes.images[i].permute(1, 2, 0).numpy())
        with torch.no_grad():
            feats = adapter.encode(adapter.prepare(img))
            ids = adapter.tokenize(f"a large {scenes.colors[i]} circle")[None]
            logits = adapter.token_logits(feats, ids)[0, 3]
        words = [adapter.vocab.stoi[w] for w in ("circle", "square")]
        assert torch.allclose(got[i], logits[words], atol=1e-5)


def test_versus_map_is_gradcam_of_the_logit_margin_by_hand(scenes, trained) -> None:
    model, config, cfg = trained
    explain = CAPTIONER.explainers(model, config, cfg)["versus"]
    targets = torch.tensor([[0, 1], [1, 1]])  # per image: (predicted, true) class ids
    maps = explain(scenes.images[:2], scenes.colors[:2], targets)
    assert maps.shape == (2, 2, 128, 128)
    vocab = wrap(model, config).vocab
    # the same word through a plain CaptionExplainer: the study picks word 3 of each caption
    ex = CaptionExplainer(wrap(model, config), score="versus",
                          versus={"circle": "square", "square": "circle"})
    for b in range(2):
        img = Image.fromarray(scenes.images[b].permute(1, 2, 0).numpy())
        for k in range(2):
            shape = ("circle", "square")[int(targets[b, k])]
            other = ("circle", "square")[1 - int(targets[b, k])]
            r = ex.explain(img, f"a large {scenes.colors[b]} {shape}")
            # batched with the other captions: equal to float rounding
            assert torch.allclose(maps[b, k], r.maps[3], atol=1e-5 * float(r.maps[3].max()))
            assert float(r.maps[3].max()) > 0
            # Grad-CAM on the grid by hand: y = z_shape - z_other after "<bos> a large color"
            A = model.encoder(encoder.pixels_from_uint8(scenes.images[b:b + 1]))
            A = A.detach().requires_grad_(True)
            inputs = torch.tensor([[vocab.bos] + vocab.encode(f"a large {scenes.colors[b]}")[0]])
            z = model.decode(A, inputs)[0][0, -1]
            y = z[vocab.stoi[shape]] - z[vocab.stoi[other]]
            (G,) = torch.autograd.grad(y, A)
            want = torch.relu((G.mean((2, 3), keepdim=True) * A).sum(1))[0].detach()
            assert torch.allclose(r.layer_maps[3], want, atol=1e-6 * float(want.max()) + 1e-9)


def test_captioner_training_leaves_the_recipe_and_gives_the_same_model_for_a_seed(
        scenes, trained) -> None:
    model, config, cfg = trained
    again, config2, _ = train_captioner(scenes.images, scenes, cfg, "again")
    assert config2["vocab"] == config["vocab"]
    for (n, p), (_, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(p, q), n
    assert not model.training
    assert config["explained_layer"] == "encoder.14"


def test_command_writes_the_captioner_study(tmp_path) -> None:
    out = tmp_path / "cap"
    assert main(["bias-study", "--out", str(out), *TINY]) == 0
    data = json.loads((out / "bias_study.json").read_text())
    assert data["settings"]["model"] == "captioner"
    assert data["command"].startswith("mmcam bias-study --model captioner --out OUT")
    for name in ("biased", "balanced"):
        m = data["models"][name]
        assert set(m["gradcam"]) == {"logprob", "versus"}
        for score in ("logprob", "versus"):
            by = m["gradcam"][score]["predicted_class_by_true_class"]
            assert set(by) == {"circle", "square"}
            assert by["circle"]["n"] + by["square"]["n"] == 8
        small = m["greedy"]["small_named_right"]
        assert set(small) == {"with_cue", "without_cue"}
        for part in ("with_cue", "without_cue"):
            g = m["greedy"][part]
            assert set(g) == set(GREEDY) and sum(g.values()) == pytest.approx(1, abs=1e-5)
        assert m["accuracy"] == pytest.approx(
            sum(g["accuracy"] for g in m["groups"].values()) / 4, abs=1e-5)
    md = (out / "bias_study.md").read_text()
    assert "captioner" in md and "| biased | with cue |" in md and "log p(w)" in md
    png = Image.open(out / "bias_study.png")
    assert png.size == (64 + 6 * (128 + 4), 5 * (128 + 14 + 4))
    again = bias.run_study(tmp_path / "again", StudyConfig(
        seed=3, n_train=16, n_test=16, steps=6, model="captioner"), progress=False)

    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if not k.endswith("seconds")}
        return d

    assert strip(again) == strip(data)
    assert np.array_equal(np.asarray(Image.open(out / "bias_study.png")),
                          np.asarray(Image.open(tmp_path / "again" / "bias_study.png")))


def test_command_names_every_setting_that_differs_from_the_defaults(tmp_path) -> None:
    data = bias.run_study(tmp_path, StudyConfig(seed=3, n_train=16, n_test=16, steps=2,
                                                cue_rate=0.5, cue_size=6), progress=False)
    assert data["command"] == ("mmcam bias-study --out OUT --seed 3 --n-train 16 --n-test 16 "
                               "--steps 2 --cue-rate 0.5 --cue-size 6")
    s = data["settings"]
    assert (s["cue_rate"], s["cue_size"]) == (0.5, 6)


def test_unknown_model_is_refused(tmp_path, capsys) -> None:
    with pytest.raises(bias.MMCamError, match="model must be one of"):
        StudyConfig(model="vqa").check()
    with pytest.raises(SystemExit) as e:  # argparse's choices: usage and one error line
        main(["bias-study", "--out", str(tmp_path / "x"), "--model", "vqa"])
    assert e.value.code == 2 and "invalid choice: 'vqa'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
