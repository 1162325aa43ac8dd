"""``mmcam evaluate-explanations``: word kinds, chance, records checked against the public API
and the ground truth by hand, the report files and the CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcam import CaptionExplainer, VQAExplainer, load_model
from mmcam.cli import main
from mmcam.evaluation import pointing_hit
from mmcam.scenes import generate
from mmcam.suite import (
    _chance,
    evaluate_explanations,
    sanity_value,
    vqa_questions,
    vqa_records,
    word_kind,
    yes_no_table,
)


def test_word_kinds():
    got = [word_kind(w) for w in ["red", "circles", "square,", "large", "left", "above", "a",
                                  "two"]]
    assert got == ["color", "shape", "shape", "size", "relation", "relation", "function",
                   "function"]


def test_chance_is_the_share_of_pixels_within_the_slack():
    mask = np.zeros((128, 128), dtype=bool)
    mask[10:14, 20:24] = True  # 4x4
    assert _chance(mask, 0) == pytest.approx(16 / 128**2)
    assert _chance(mask, 1) == pytest.approx(36 / 128**2)
    mask2 = np.zeros((128, 128), dtype=bool)
    mask2[0, 0] = True  # at the corner the slack square is clipped: 3x3 -> 2x2... 4 pixels
    assert _chance(mask2, 1) == pytest.approx(4 / 128**2)


def test_sanity_value_is_read_before_the_explained_stage():
    curve = [("head", 0.3), ("decoder", 0.2), ("encoder", -0.1)]
    assert sanity_value(curve, "encoder") == 0.2
    assert sanity_value(curve, None) == -0.1


def test_vqa_records_match_the_explainer_and_the_masks():
    ad = load_model("shapes-vqa")
    scenes = generate(2, seed=31)
    recs = vqa_records(ad, scenes, ["hirescam"], ["logprob"], ["receptive"], slack=0,
                       n_deletion=1, progress=False)
    ex = VQAExplainer(ad, method="hirescam")
    checked = 0
    for r in recs:
        scene = scenes[r["scene"]]
        k = next(i for i, t in enumerate(scene.question_types) if t == r["kind"]
                 and scene.question_objects[i])
        q = scene.questions[k][0]
        res = ex.explain(scene.image, q)
        assert r["answer"] == res.answer
        assert r["correct"] == (res.answer.lower() == scene.questions[k][1].lower())
        m = res.map
        y, x = divmod(int(torch.argmax(m)), m.shape[1])
        mask = np.zeros_like(scene.objects[0].mask)
        for j in scene.question_objects[k]:
            mask |= scene.objects[j].mask
        assert r["hit"] == (bool(mask[y, x]) and float(m.max()) > 0)
        assert r["chance"] == pytest.approx(mask.mean())
        checked += 1
        if r["scene"] == 0:  # deletion ran on the first scene only
            assert "deletion_drop" in r and len(r["deletion_curve"]) == 5
            assert r["deletion_curve"][0] == 0.0
        else:
            assert "deletion_drop" not in r
    assert checked >= 4


def test_deletion_fill_reaches_the_curves():
    """The same first scene's deletion curves with both fills: the unperturbed score agrees,
    the curves differ (each fill is actually used), and an unknown fill is refused."""
    ad = load_model("shapes-vqa")
    scenes = generate(1, seed=31)
    curves = {}
    for fill in ("mean", "blur"):
        recs = vqa_records(ad, scenes, ["hirescam"], ["logprob"], ["receptive"], slack=0,
                           n_deletion=1, progress=False, fill=fill)
        curves[fill] = [r["deletion_curve"] for r in recs]
    assert len(curves["mean"]) == len(curves["blur"]) >= 2
    assert all(c[0] == 0.0 for c in curves["mean"] + curves["blur"])
    assert curves["mean"] != curves["blur"]
    with pytest.raises(ValueError, match="deletion fill"):
        evaluate_explanations(ad, "shapes-vqa", n=1, fill="zeros", progress=False)


def test_layers_are_compared_with_their_own_maps_and_sanity_checks(tmp_path):
    """Two layers of the captioner (grids 16x16 and 32x32): each layer's records are its own
    explainer's maps (the pointing of every word checked against CaptionExplainer(layer=...)
    by hand), the sanity
    keys carry the non-default layer, and the recommendation names a layer."""
    ad = load_model("shapes-captioner")
    report = evaluate_explanations(ad, "shapes-captioner", n=2, methods=["hirescam"],
                                   scores=["logprob"], aligns=["receptive"], n_deletion=0,
                                   n_sanity=1, progress=False, layers=["encoder.14",
                                                                       "encoder.5"])
    assert report["default_layer"] == "encoder.14"
    assert report["layers"] == ["encoder.14", "encoder.5"]  # 16x16 and 32x32 grids
    assert set(report["sanity"]) == {"hirescam/logprob", "hirescam/logprob@encoder.5"}
    assert report["recommended"]["layer"] in ("encoder.14", "encoder.5")
    # the attention (16x16, encode's grid) is compared cell by cell with the 16x16 layer
    # only, and drawn and scored only there (at encoder.5 its cells would be misplaced)
    assert "hirescam" in report["attention_correlation"]
    assert {t["layer"] for t in report["table"] if t["method"] == "attention"} == {
        "encoder.14"}
    scenes = generate(2, seed=report["seed"])
    for layer in ("encoder.14", "encoder.5"):
        ex = CaptionExplainer(ad, method="hirescam", layer=layer)
        hits = []
        for sc in scenes:
            r = ex.explain(sc.image)
            for i, w in enumerate(r.words):
                if word_kind(w) != "color" or len(sc.objects_named(w)) != 1:
                    continue
                hits.append(pointing_hit(r.maps[i], sc.objects_named(w)[0].mask, 4))
        row = next(t for t in report["table"] if t["kind"] == "color" and t["layer"] == layer
                   and t["method"] == "hirescam")
        assert row["n"] == len(hits) > 0
        assert row["pointing"] == pytest.approx(np.mean(hits))


def test_report_files_and_cli(tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["evaluate-explanations", "shapes-captioner", "--n", "2", "--n-deletion", "1",
               "--n-sanity", "1", "--methods", "gradcam", "hirescam", "--scores", "logprob",
               "--aligns", "receptive", "--deletion-fill", "blur", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert {"table", "sanity", "sanity_value", "recommended", "attention_correlation"} <= set(
        report)
    assert report["explained_stage"] == "encoder"
    assert report["deletion_fill"] == "blur"
    assert "removed pixels: a blurred copy" in (out / "report.md").read_text()
    methods = {r["method"] for r in report["table"]}
    assert methods == {"gradcam", "hirescam", "attention"}  # the captioner's own attention
    for r in report["table"]:
        assert 0 <= r["pointing"] <= 1 and 0 < r["chance"] < 1
    md = (out / "report.md").read_text()
    assert "| caption | color |" in md and "Sanity check" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert "recommended" in capsys.readouterr().out


def test_cli_refuses_bad_n(capsys):
    assert main(["evaluate-explanations", "shapes-vqa", "--n", "0", "--out", "/tmp/x"]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err


def test_no_sanity_scenes_skips_the_check_and_the_recommendation(tmp_path, capsys):
    """``--n-sanity 0`` (a traceback once): the table is made, no sanity curves, nothing
    recommended (only a setting that passes the check can be), and the report says so."""
    out = tmp_path / "ev"
    assert main(["evaluate-explanations", "shapes-vqa", "--n", "2", "--n-deletion", "0",
                 "--n-sanity", "0", "--methods", "hirescam", "--scores", "contrast",
                 "--aligns", "receptive", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["sanity"] == {} and report["recommended"] is None
    assert report["table"] and {r["method"] for r in report["table"]} == {"hirescam"}
    md = (out / "report.md").read_text()
    assert "Sanity check skipped" in md and "| method/score |" not in md  # no empty table
    assert "recommended" not in capsys.readouterr().out
    for flag in ("--n-sanity", "--n-deletion"):
        assert main(["evaluate-explanations", "shapes-vqa", "--n", "1", flag, "-1",
                     "--out", str(tmp_path / "x")]) == 2
        assert f"{flag} must be 0 or more" in capsys.readouterr().err


def test_evaluate_explanations_refuses_unknown_methods():
    with pytest.raises(ValueError, match="unknown method"):
        evaluate_explanations(load_model("shapes-vqa"), "x", n=1, methods=["nope"])


def test_reducible_methods_keep_the_readers_exact_maps(tmp_path):
    """In front of BLIP's post_layernorm the suite's Grad-CAM and HiResCAM come from the
    "readers" strategy (exact), Grad-CAM++ from full "vjp" gradients, and the integrated
    method from its own path gradients."""
    from test_hf import save_blip
    from toys import image

    from mmcam import evaluation as ev
    from mmcam import suite
    from mmcam.pipeline import cam_of

    ad = load_model(save_blip(tmp_path / "blip"))
    layer = "vision_model.encoder.layers[-1]"
    methods = ["gradcam", "hirescam", "gradcam++", "integrated"]
    ex, by = suite._explainers(CaptionExplainer, ad, "logprob", methods, layer)
    assert ex.pipeline.strategy == "readers" and by["gradcam"] is ex and by["hirescam"] is ex
    assert by["gradcam++"].pipeline.strategy == "vjp"
    assert by["integrated"].method_name == "integrated" and by["integrated"] is not ex
    ex2, by2 = suite._explainers(CaptionExplainer, ad, "logprob", methods[:2], layer)
    assert set(by2.values()) == {ex2}
    pil, caption = image(3, (40, 40)), "a red circle"
    e = ex.explained([pil], [caption])[0]
    src = suite._sources(by, lambda x: x.explained([pil], [caption])[0], {id(ex): e})
    assert src["gradcam"] is e and src["gradcam++"] is not e
    mask = np.zeros((40, 40), dtype=bool)
    mask[4:20, 6:24] = True
    recs = suite._records_for([(e, 1, "color", mask, (6, 4, 24, 20), 0.2)], "logprob",
                              methods, ["bilinear"], 4, None, None, 0, src=src)
    assert sorted(r["method"] for r in recs) == sorted(methods)
    path = by["integrated"].explained([pil], [caption])[0]
    full = by["gradcam++"].explained([pil], [caption])[0]
    for rec in recs:
        got = {"gradcam++": full, "integrated": path}.get(rec["method"], e)
        m = cam_of(rec["method"])(got.A[None], got.G[1:2])[0]
        want = ev.energy_ratio(e.geometry.to_image(m[None], None)[0], mask)
        assert rec["energy_mask"] == pytest.approx(want, rel=1e-6)


def _benchmark(name: str):
    """The script ``benchmarks/<name>.py`` imported as a module."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deletion_by_answer_table_splits_by_answer():
    module = _benchmark("deletion_by_answer")
    table = module.table

    def rec(kind, answer, drop, rand, hit=True, correct=True):
        return {"kind": kind, "answer": answer, "deletion_drop": drop, "random_drop": rand,
                "hit": hit, "correct": correct}
    recs = [rec("relation", "no", -1.0, 0.0), rec("relation", "no", 2.0, 1.0, hit=False),
            rec("relation", "yes", 3.0, 0.5), {"kind": "relation", "answer": "yes"}]
    t = table(recs)["relation"]
    assert t["no"] == {"n": 2, "deletion_beats_random": 0.5, "map_drop_mean": 0.5,
                       "random_drop_mean": 0.5, "map_deletion_raises_score": 0.5,
                       "pointing": 0.5, "correct": 1.0}
    assert t["yes"]["n"] == 1 and t["yes"]["deletion_beats_random"] == 1.0
    assert t["(all)"]["n"] == 3 and t["(all)"]["deletion_beats_random"] == 2 / 3


def test_pointing_ceiling_reachable_uses_each_cells_peak():
    module = _benchmark("pointing_ceiling")
    cells = torch.zeros(2, 8, 8)
    cells[0, 1, 1] = 1.0  # cell 0 peaks at (x=1, y=1), cell 1 at (6, 6)
    cells[1, 6, 6] = 1.0
    mask = np.zeros((8, 8), dtype=bool)
    mask[3, 3] = True  # Chebyshev distance 2 from cell 0's peak, 3 from cell 1's
    assert not module.reachable(cells, mask, slack=1)
    assert module.reachable(cells, mask, slack=2)
    mask[:] = False
    mask[6, 6] = True
    assert module.reachable(cells, mask, slack=0)


def test_yes_no_table_splits_yes_and_no_answers_with_deletion():
    def rec(kind, answer, drop, rand=0.0, task="vqa", **extra):
        return {"task": task, "kind": kind, "answer": answer, "method": "hirescam",
                "score": "contrast", "align": "receptive", "hit": True, "chance": 0.1,
                "energy_mask": 2.0, "energy_box": 2.0, "localized": True,
                "deletion_drop": drop, "random_drop": rand, "centre_drop": 0.0,
                "deletion_curve": [0, -drop, 0, 0, 0], "random_curve": [0, -rand, 0, 0, 0],
                "centre_curve": [0] * 5, **extra}
    recs = [rec("relation", "no", -0.5), rec("relation", "no", 0.3, 0.1),
            rec("relation", "no", 0.05, 0.1), rec("relation", "Yes", 2.0),
            rec("color", "red", 1.0),  # not a yes/no answer
            rec("relation", "yes", 1.0, task="caption"),  # not VQA
            {k: v for k, v in rec("exists", "no", 1.0).items() if "drop" not in k}]  # no curve
    rows = {r["kind"]: r for r in yes_no_table(recs)}
    assert set(rows) == {"relation (no)", "relation (yes)"}
    no = rows["relation (no)"]
    assert no["n_deletion"] == 3
    assert no["deletion_beats_random"] == pytest.approx(1 / 3)  # only 0.3 > 0.1
    assert no["deletion_raises_score"] == pytest.approx(1 / 3)  # only -0.5 < 0
    assert rows["relation (yes)"]["deletion_beats_random"] == 1.0


def test_vqa_report_splits_deletion_by_yes_and_no(tmp_path):
    out = tmp_path / "ev"
    assert main(["evaluate-explanations", "shapes-vqa", "--n", "4", "--n-deletion", "4",
                 "--n-sanity", "0", "--methods", "hirescam", "--scores", "contrast",
                 "--aligns", "receptive", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = report["yes_no_table"]
    assert rows and all(r["kind"].endswith((" (yes)", " (no)")) for r in rows)
    whole = {r["kind"]: r["n_deletion"] for r in report["table"]}
    for kind in ("exists", "relation"):  # answered yes or no only: the split covers them
        split = sum(r["n_deletion"] for r in rows if r["kind"].startswith(kind + " ("))
        assert split == whole[kind] > 0
    assert "Deletion on the answers yes and no" in (out / "report.md").read_text()


def test_miss_occlusion_drops_match_the_model_scored_by_hand():
    """The objects' drop is the model's log p of its answer on the image minus on the image
    with the questioned objects' pixels set to its mean color, scored here through the
    adapter's own encode and score_answers; the table counts by hand."""
    module = _benchmark("miss_occlusion")
    recs = module.records("shapes-vqa", 1, 2000000, "mean")
    scene = generate(1, seed=2000000)[0]
    ad = load_model("shapes-vqa")
    qs = vqa_questions(scene)
    assert [r["type"] for r in recs] == [q[3] for q in qs]
    for r, (_, q, _, _, objs) in zip(recs, qs):
        px = ad.prepare(scene.image)
        mask = torch.as_tensor(np.any([scene.objects[j].mask for j in objs], axis=0))
        absent = torch.where(mask, px.mean(dim=(2, 3), keepdim=True), px)
        qids = torch.as_tensor(ad.tokenize_question(q)[0])[None]
        with torch.no_grad():
            lp = [ad.score_answers(ad.encode(x), qids)[0] for x in (px, absent)]
        a = ad.answers.index(r["answer"])
        assert r["area"] == int(mask.sum())
        assert r["drop_objects"] == pytest.approx(float(lp[0][a] - lp[1][a]), rel=1e-4,
                                                  abs=1e-5)
    t = module.table([{"type": "color", "hit": False, "right": True, "drop_objects": 2.0,
                       "drop_map": 3.0, "drop_random": 0.0},
                      {"type": "color", "hit": False, "right": False, "drop_objects": 2.0,
                       "drop_map": 1.0, "drop_random": 1.0}])
    assert t["color"]["miss"] == {"n": 2, "right": 0.5, "drop_objects_mean": 2.0,
                                  "drop_map_mean": 2.0, "drop_random_mean": 0.5,
                                  "map_drop_at_least_objects": 0.5}


def test_steps_reach_the_integrated_method(tmp_path):
    """``--steps`` is the integrated method's path points in the suite: its records are the
    maps of VQAExplainer(method="integrated", steps=2), and the report says so."""
    out = tmp_path / "ev"
    assert main(["evaluate-explanations", "shapes-vqa", "--n", "2", "--n-deletion", "0",
                 "--n-sanity", "0", "--methods", "integrated", "--scores", "contrast",
                 "--aligns", "receptive", "--steps", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2
    assert "The integrated method with 2 path points." in (out / "report.md").read_text()
    ad = load_model("shapes-vqa")
    ex = VQAExplainer(ad, method="integrated", score="contrast", steps=2)
    hits = []
    for sc in generate(2, seed=report["seed"]):
        for _, q, _, qtype, objs in vqa_questions(sc):
            mask = np.any([sc.objects[j].mask for j in objs], axis=0)
            e = ex.explained(sc.image, q)
            m = e.geometry.to_image(e.layer_maps[0:1], e.cell)[0]
            hits.append((qtype, pointing_hit(m, mask, 4)))
    for row in report["table"]:
        mine = [h for k, h in hits if k == row["kind"]]
        assert row["n"] == len(mine) and row["pointing"] == pytest.approx(np.mean(mine))
