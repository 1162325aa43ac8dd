"""The bias study: the cue is where and how often it is said to be (counted from the pixels),
the scenes and labels are the scene world's, the map shares match hand computation, and the
command writes its three files, deterministically for a seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmcam import bias
from mmcam.bias import CUE_RGB, StudyConfig, assign_cue, binary_scenes, map_shares, stamp_cue
from mmcam.cli import main
from mmcam.evaluation import box_mask
from mmcam.scenes import generate

SEED = 5
N = 40  # 20 per class
TINY = ["--n-train", "16", "--n-test", "16", "--steps", "4", "--seed", "3"]
TINY_CFG = StudyConfig(seed=3, n_train=16, n_test=16, steps=4)


def cyan_pixels(images: torch.Tensor) -> np.ndarray:
    """Per image, the number of pixels of exactly the cue's color."""
    rgb = torch.tensor(CUE_RGB, dtype=torch.uint8).view(1, 3, 1, 1)
    return (images == rgb).all(1).sum((1, 2)).numpy()


@pytest.fixture(scope="module")
def scenes() -> bias.SceneSet:
    return binary_scenes(N, SEED, ("circle", "square"), keep_masks=True)


def test_scenes_are_the_first_of_each_class_in_the_stream(scenes) -> None:
    # independent walk through the one-large stream: label = the large object's shape
    kept: dict[str, list[int]] = {"circle": [], "square": []}
    for s in generate(scenes.rendered, SEED, one_large=True):
        shape = [o.shape for o in s.objects if o.size == "large"][0]
        if shape in kept and len(kept[shape]) < N // 2:
            kept[shape].append(s.index)
    assert sorted(scenes.indices) == sorted(kept["circle"] + kept["square"])
    for i, lab in zip(scenes.indices, scenes.labels.tolist()):
        assert i in kept[("circle", "square")[lab]]
    assert scenes.labels.tolist().count(0) == scenes.labels.tolist().count(1) == N // 2
    # pixels are the world's, and the mask is the large object's
    s = generate(1, SEED, start=scenes.indices[7], one_large=True)[0]
    pixels = torch.from_numpy(np.asarray(s.image).copy()).permute(2, 0, 1)
    assert torch.equal(scenes.images[7], pixels)
    large = [o for o in s.objects if o.size == "large"][0]
    assert torch.equal(scenes.masks[7], torch.from_numpy(large.mask))


def test_no_scene_pixel_has_the_cue_color(scenes) -> None:
    assert cyan_pixels(scenes.images).sum() == 0


@pytest.mark.parametrize("rate, cue_class, biased_counts, balanced_counts", [
    (1.0, 0, (20, 0), (10, 10)),   # all circles marked; balanced: half of each class
    (0.9, 0, (18, 0), (9, 9)),     # round(0.9 * 20) = 18; round(0.45 * 20) = 9
    (0.95, 1, (0, 19), (10, 10)),  # round(0.95 * 20) = 19; round(0.475 * 20) = round(9.5) = 10
])
def test_cue_counts_per_class(scenes, rate, cue_class, biased_counts, balanced_counts) -> None:
    cfg = StudyConfig(seed=SEED, cue_rate=rate, cue_class=cue_class)
    for rates, salt, expected in ((bias.biased_rates(cfg), 0, biased_counts),
                                  (bias.balanced_rates(cfg), 1, balanced_counts)):
        cue = assign_cue(scenes.labels, rates, SEED, salt)
        stamped = stamp_cue(scenes.images, cue, cfg.cue_box)
        # counted from the pixels: a cue image has exactly cue_size^2 cyan pixels, others none
        cyan = cyan_pixels(stamped)
        assert set(cyan.tolist()) <= {0, 64}
        has = torch.from_numpy(cyan == 64)
        assert torch.equal(has, cue)
        got = tuple(int((has & (scenes.labels == c)).sum()) for c in (0, 1))
        assert got == expected


def test_cue_is_painted_in_its_box_and_nowhere_else(scenes) -> None:
    cfg = StudyConfig(cue_size=8)
    assert cfg.cue_box == (4, 4, 12, 12)
    cue = torch.zeros(N, dtype=torch.bool)
    cue[[0, 3]] = True
    out = stamp_cue(scenes.images, cue, cfg.cue_box)
    inside = box_mask(cfg.cue_box, (128, 128))
    assert int(inside.sum()) == 64
    for i in (0, 3):
        assert (out[i][:, inside] == torch.tensor(CUE_RGB, dtype=torch.uint8)[:, None]).all()
        assert torch.equal(out[i][:, ~inside], scenes.images[i][:, ~inside])
    assert torch.equal(out[1], scenes.images[1])  # unmarked images untouched
    assert cyan_pixels(scenes.images).sum() == 0  # the input was not changed


def test_map_shares_by_hand() -> None:
    cue_mask = box_mask((4, 4, 12, 12), (128, 128))  # 64 px; grown by 8 px: (0,0,20,20)
    obj = torch.zeros(2, 128, 128, dtype=torch.bool)
    obj[:, 64:96, 64:96] = True  # 1024 px; grown by 8 px: 48x48 = 2304 px
    maps = torch.zeros(3, 128, 128)
    maps[0][cue_mask] = 2.0  # all mass on the cue
    maps[1] = 1.0  # uniform: shares = area shares, ratios 1
    r = map_shares(maps[:2], cue_mask, obj, near=8)
    A = 128 * 128
    assert r["cue"]["share"] == pytest.approx((1 + 64 / A) / 2, abs=1e-6)
    assert r["cue"]["energy_ratio"] == pytest.approx((A / 64 + 1) / 2, abs=1e-5)
    assert r["cue_near"]["share"] == pytest.approx((1 + 400 / A) / 2, abs=1e-6)
    assert r["cue_near"]["energy_ratio"] == pytest.approx((A / 400 + 1) / 2, abs=1e-5)
    assert r["object"]["share"] == pytest.approx((0 + 1024 / A) / 2, abs=1e-6)
    assert r["object"]["energy_ratio"] == pytest.approx(0.5, abs=1e-6)
    assert r["object_near"]["area_share"] == pytest.approx(2304 / A, abs=1e-6)
    assert r["cue"]["area_share"] == pytest.approx(64 / A, abs=1e-6)
    r = map_shares(maps[1:], cue_mask, obj)  # an all-zero map is counted, not averaged
    assert r["zero_maps"] == 1 and r["n"] == 2
    assert r["cue"]["energy_ratio"] == pytest.approx(1.0)


def test_margin_map_by_hand() -> None:
    # GAP + linear: d(y_c - y_o)/dA_k(cell) = (w_ck - w_ok) / cells, so Grad-CAM of the
    # margin on the grid is relu(sum_k (w_ck - w_ok) / cells * A_k), the CAM of w_c - w_o
    from mmcam.classify import ClassExplainer
    from mmcam.models.classifier import ShapeClassifier

    torch.manual_seed(0)
    model = ShapeClassifier(2).eval()
    px = torch.randn(2, 3, 128, 128)
    ex = ClassExplainer(bias.Margin(model), layer="model.features.14", align="bilinear")
    got = ex.explain_pixels(px, targets=torch.tensor([[0], [1]]))["layer_maps"][:, 0]
    with torch.no_grad():
        feats = model.features(px)  # (2, 96, 16, 16)
    w = model.fc.weight.detach()
    for b, (c, o) in enumerate(((0, 1), (1, 0))):
        want = torch.relu(torch.einsum("k,khw->hw", (w[c] - w[o]) / 256, feats[b]))
        assert torch.allclose(got[b], want, atol=1e-6 * float(want.abs().max()) + 1e-9)
        assert float(want.max()) > 0


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bias")
    assert main(["bias-study", "--out", str(out), *TINY]) == 0
    return out


def test_command_writes_the_three_files(cli_run) -> None:
    data = json.loads((cli_run / "bias_study.json").read_text())
    assert set(data) >= {"settings", "command", "test", "models", "wall_seconds"}
    s = data["settings"]
    assert (s["seed"], s["n_train"], s["n_test"], s["steps"]) == (3, 16, 16, 4)
    assert s["threads"] == 1 and s["cue_box"] == [4, 4, 12, 12]
    assert data["test"] == {"n": 16, "with_cue": 8, "per_class": {"circle": 8, "square": 8}}
    for name, counts in (("biased", (8, 0)), ("balanced", (4, 4))):
        m = data["models"][name]
        cc = m["training"]["cue_counts"]
        assert (cc["circle"]["with_cue"], cc["square"]["with_cue"]) == counts
        assert cc["circle"]["images"] == cc["square"]["images"] == 8
        assert set(m) >= {"accuracy", "accuracy_with_cue", "accuracy_without_cue", "groups",
                          "cue_flip_rate", "gradcam"}
        # the overall accuracy is the groups' mean (4 test images per group)
        groups = m["groups"]
        assert [g["n"] for g in groups.values()] == [4, 4, 4, 4]
        assert m["accuracy"] == pytest.approx(sum(g["accuracy"] for g in groups.values()) / 4,
                                              abs=1e-5)
        for score in ("logit", "margin"):
            for target in ("predicted_class", "true_class"):
                g = m["gradcam"][score][target]
                assert set(g) == {"cue", "cue_near", "object", "object_near", "zero_maps", "n"}
                assert set(g["cue"]) == {"share", "energy_ratio", "area_share"}
                assert g["n"] == 8
                if g["zero_maps"] < 8:
                    assert g["cue"]["area_share"] == pytest.approx(64 / 128**2, abs=1e-6)
                    assert g["cue_near"]["area_share"] == pytest.approx(400 / 128**2, abs=1e-6)
                    # the cue box and the object mask are disjoint: shares add up to <= 1
                    assert g["cue"]["share"] + g["object"]["share"] <= 1 + 1e-6
            # the predicted class's maps split by true class, and by right and wrong
            # prediction, add up to the whole
            whole = m["gradcam"][score]["predicted_class"]
            for split in ("predicted_class_by_true_class", "predicted_class_by_outcome"):
                parts = m["gradcam"][score][split].values()
                kept = [(p["n"] - p["zero_maps"], p) for p in parts]
                assert sum(p["n"] for p in parts) == 8
                if whole["zero_maps"] < 8:
                    for k in ("cue_near", "object"):
                        mean = sum(w * p[k]["share"] for w, p in kept if w) / sum(
                            w for w, _ in kept)
                        assert whole[k]["share"] == pytest.approx(mean, abs=2e-6)
            # the right/wrong counts follow the cue images' accuracy (4 per group)
            right_n = m["gradcam"][score]["predicted_class_by_outcome"]["right"]["n"]
            cue_groups = [g for k, g in m["groups"].items() if k.endswith(", cue")]
            assert right_n == round(sum(4 * g["accuracy"] for g in cue_groups))
    md = (cli_run / "bias_study.md").read_text()
    assert "| biased |" in md and "| balanced |" in md and "bias_study.png" in md
    acc = f"{100 * data['models']['biased']['accuracy']:.1f}%"
    assert f"| biased | {acc} |" in md
    png = Image.open(cli_run / "bias_study.png")
    n_show = 6  # 6 of the 8 cue images, 3 of each class
    assert png.size == (64 + n_show * (128 + 4), 5 * (128 + 14 + 4))  # image + 4 map rows


def test_same_seed_same_figures(cli_run, tmp_path) -> None:
    again = bias.run_study(tmp_path, TINY_CFG, progress=False)
    first = json.loads((cli_run / "bias_study.json").read_text())

    def strip(d):  # wall-clock fields differ between runs
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if not k.endswith("seconds")}
        return d

    assert strip(again) == strip(first)
    a = np.asarray(Image.open(cli_run / "bias_study.png"))
    b = np.asarray(Image.open(tmp_path / "bias_study.png"))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("args, words", [
    (["--n-test", "22"], "multiple of 4"),
    (["--seed", "1000000"], "reserved"),
    (["--cue-rate", "0"], "cue_rate"),
])
def test_bad_settings_exit_2(tmp_path, capsys, args, words) -> None:
    assert main(["bias-study", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cli_help_states_the_study_defaults() -> None:
    import argparse

    from mmcam.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub.choices["bias-study"]._actions}
    d = StudyConfig()
    for dest, value in (("n_train", d.n_train), ("n_test", d.n_test), ("steps", d.steps),
                        ("cue_rate", f"{d.cue_rate:g}"), ("cue_size", d.cue_size)):
        assert f"(default {value})" in helps[dest], dest
