"""shapes-blip-vqa: the shipped BlipForQuestionAnswering and the recipe that trains it.

Oracles: the scenes' own ground truth (gold answers, the named object's pixel mask) and a
second training run of the same seed; the app is checked against the library called directly.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_hf import shipped  # noqa: E402

import mmcam  # noqa: E402
from mmcam.scenes import generate  # noqa: E402

NAME = "shapes-blip-vqa"
FLOOR = 0.8  # the floor; the card: 0.921 on 500 held-out scenes, 0.918 on these 40


def test_shipped_blip_vqa_loads_as_a_plain_hf_checkpoint_and_meets_its_floor():
    from mmcam.models.hub import REPO_MODELS
    from mmcam.models.train_blip import evaluate_blip_vqa

    ad = shipped(NAME)
    plain = transformers.BlipForQuestionAnswering.from_pretrained(REPO_MODELS / NAME)
    assert type(ad.model).__name__ == "BlipForQuestionAnswering"
    assert ad.layer == "vision_model"  # the tower's output: the post-LayerNorm tokens
    # nothing of the training-only head was saved: the same tensors as the plain class
    mine, theirs = ad.model.state_dict(), plain.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    r = evaluate_blip_vqa(ad, n=40, seed=2_000_000)  # not the training or the card's seed
    assert r["n_questions"] > 400
    assert r["accuracy"] >= FLOOR  # chance (most frequent answer per type) is about 0.35
    # every type, relations included (0.966 here, 0.975 on the card's 500 scenes; 0.52 / 0.54
    # before the relation terms, whose control run without them stays at 0.48)
    assert min(r["per_type"].values()) >= 0.75
    assert r["per_type"]["relation"] >= 0.9  # chance (always "no") is about 0.5


def test_shipped_blip_vqa_answer_maps_point_inside_the_named_object():
    """For "what color is the X?" / "what shape is the C object?", the peak of the HiResCAM
    map of the model's answer falls inside the named object's visible pixels far more often
    than a uniformly random pixel would (chance = the object's area / the image's)."""
    from mmcam.vqa import VQAExplainer

    ex = VQAExplainer(shipped(NAME), method="hirescam")
    hits, chance, n = 0, 0.0, 0
    for s in generate(15, seed=2_000_001):
        for (q, _), t, refs in zip(s.questions, s.question_types, s.question_objects):
            if t not in ("color", "shape"):
                continue
            mask = s.objects[refs[0]].mask
            m = ex.explain(s.image, q, top_k=1).map
            assert m.shape == mask.shape
            y, x = np.unravel_index(int(torch.argmax(m)), mask.shape)
            hits += bool(mask[y, x]) and bool(m.max() > 0)
            chance += mask.mean()
            n += 1
    assert n >= 30
    assert hits / n > 3 * chance / n


def test_blip_vqa_trainer_is_deterministic_and_ships_no_auxiliary_head(tmp_path):
    from safetensors.torch import load_file

    from mmcam.errors import MMCamError
    from mmcam.models.train_blip import VQA_DEFAULTS, train_blip_vqa

    hp = {"batch": 3, "per_image": 4, "vision_steps": 2, "vision_batch": 2}
    assert VQA_DEFAULTS["aux"] > 0  # the recipe under test has the auxiliary loss
    runs = [train_blip_vqa(tmp_path / f"run{k}", seed=3, steps=3, n_train=10,
                           progress=False, n_eval=2, hp=hp) for k in range(2)]
    a, b = (load_file(str(tmp_path / f"run{k}" / "model.safetensors")) for k in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0]["loss_history"] == runs[1]["loss_history"] and len(runs[0]["loss_history"]) == 3
    assert runs[0]["per_image"] == 4 and runs[0]["aux"] == VQA_DEFAULTS["aux"]
    assert runs[0]["vision_steps"] == 2 and runs[0]["vision_final_loss"] > 0
    # a different seed trains differently (the runs above are not trivially equal)
    other = train_blip_vqa(tmp_path / "other", seed=4, steps=3, n_train=10, progress=False,
                           n_eval=1, hp=hp)
    assert other["loss_history"] != runs[0]["loss_history"]
    # the saved model is exactly a BlipForQuestionAnswering: no auxiliary-head tensor
    plain = transformers.BlipForQuestionAnswering.from_pretrained(tmp_path / "run0")
    assert set(a) <= set(plain.state_dict()) and not any("aux" in k for k in a)
    ad = mmcam.load_model(tmp_path / "run0")
    assert type(ad.model).__name__ == "BlipForQuestionAnswering"
    card = (tmp_path / "run0" / "README.md").read_text()
    assert "auxiliary" in card.lower() and "4 questions" in card
    assert 0.0 <= runs[0]["accuracy"] <= 1.0 and runs[0]["n_scenes"] == 2
    with pytest.raises(MMCamError, match="unknown hyper-parameter"):
        train_blip_vqa(tmp_path / "x", steps=1, n_train=2, hp={"per_img": 2})


def test_attention_targets_by_hand():
    from mmcam.models.train_blip import GRID, _attention_loss, _attention_target

    covers = torch.zeros(2, GRID, GRID)
    covers[0, 0, 0], covers[0, 0, 1] = 1.0, 0.5  # object 0: cells 0 and 1 (row-major)
    covers[1, 2, 3] = 0.25  # object 1: cell 2 * GRID + 3
    rel = _attention_target(covers, (0, 1), "relation")  # head 0 subject, head 1 reference
    assert rel[:, 0].tolist() == [0.0, 0.0]  # the CLS key is never a target
    assert rel[0, 1:3].tolist() == pytest.approx([2 / 3, 1 / 3]) and rel[0].sum() == 1
    assert rel[1, 1 + 2 * GRID + 3] == 1.0 and rel[1].sum() == 1
    both = _attention_target(covers, (0, 1), "count")  # both heads on all counted objects
    assert both[0, 1:3].tolist() == pytest.approx([1 / 1.75, 0.5 / 1.75])
    assert torch.equal(both[0], both[1])
    assert not _attention_target(covers, (), "exists").any()  # "no" answers: no term
    # loss: mean over layers of -sum t log a, over the rows that have a target
    att = torch.full((2, 4, 5, 1 + GRID * GRID), 1.0 / (1 + GRID * GRID))
    target = torch.stack([rel, torch.zeros_like(rel)])
    want = float(torch.log(torch.tensor(1.0 + GRID * GRID)))
    assert float(_attention_loss((att, att), target)) == pytest.approx(want, rel=1e-5)


def test_attention_supervision_of_more_heads_and_every_token_by_hand():
    from mmcam.models.train_blip import GRID, _attention_loss, _attention_target

    covers = torch.zeros(2, GRID, GRID)
    covers[0, 0, 0] = 1.0
    covers[1, 1, 1] = 1.0
    rel = _attention_target(covers, (0, 1), "relation", heads=4)
    assert rel.shape == (4, 1 + GRID * GRID)
    assert rel[0, 1] == 1.0 and rel[1, 1 + GRID + 1] == 1.0  # subject, reference
    assert rel[2, 1] == rel[2, 1 + GRID + 1] == 0.5 and torch.equal(rel[2], rel[3])  # both
    color = _attention_target(covers, (1,), "color", heads=3)
    assert all(color[j, 1 + GRID + 1] == 1.0 for j in range(3))
    # one question, head 0 supervised onto cell 5; three query tokens, the last one padding
    K = 1 + GRID * GRID
    target = torch.zeros(1, 1, K)
    target[0, 0, 5] = 1.0
    att = torch.full((1, 2, 3, K), 0.01)
    att[0, 0, 0, 5], att[0, 0, 1, 5], att[0, 0, 2, 5] = 0.5, 0.25, 0.125
    att[0, 1] = 0.9  # head 1 is not supervised: it must not count
    tokens = torch.tensor([[1, 1, 0]])
    log2 = float(torch.log(torch.tensor(2.0)))
    every = float(_attention_loss((att, att), target, tokens))
    assert every == pytest.approx((1 * log2 + 2 * log2) / 2, rel=1e-5)  # tokens 0 and 1
    assert float(_attention_loss((att,), target)) == pytest.approx(log2, rel=1e-5)  # CLS


def test_object_shape_loss_by_hand():
    """Each object's tokens pooled with its cell coverage as weights, then cross-entropy."""
    from mmcam.models.train_blip import GRID, _object_loss

    width = 3
    patches = torch.zeros(1, GRID * GRID, width)
    patches[0, 0] = torch.tensor([1.0, 0.0, 0.0])
    patches[0, 1] = torch.tensor([0.0, 3.0, 0.0])
    patches[0, GRID + 1] = torch.tensor([0.0, 0.0, 2.0])
    covers = torch.zeros(2, GRID, GRID)
    covers[0, 0, 0], covers[0, 0, 1] = 1.0, 0.5  # object 0: cells 0 and 1
    covers[1, 1, 1] = 0.25  # object 1: cell GRID + 1 only
    head = torch.nn.Linear(width, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))
    # pooled: object 0 = (1*[1,0,0] + 0.5*[0,3,0]) / 1.5 = [2/3, 1, 0]; object 1 = [0, 0, 2]
    logits = [[2 / 3, 1.0, 0.0], [0.0, 0.0, 2.0]]
    shapes = [0, 2]
    want = sum(-lg[t] + math.log(sum(math.exp(v) for v in lg)) for lg, t in zip(logits, shapes))
    got = _object_loss(head, patches, [covers], [torch.tensor(shapes)])
    assert float(got) == pytest.approx(want / 2, rel=1e-6)


def test_shipped_blip_vqa_answers_in_the_app_as_in_the_library(tmp_path):
    pytest.importorskip("gradio")
    from app_helpers import served, shipped_models_present
    from gradio_client import Client, handle_file

    from mmcam.vqa import VQAExplainer

    ad = shipped(NAME)
    if not shipped_models_present():
        pytest.fail("the app test needs the shipped models in models/")
    scene = generate(1, seed=2_000_002)[0]
    path = tmp_path / "scene.png"
    scene.image.save(path)
    question = scene.questions[0][0]
    with served({}) as (url, _, _):
        c = Client(url, verbose=False, download_files=str(tmp_path))
        answer, top, *_ = c.predict(handle_file(str(path)), question, NAME, "gradcam", 0.5,
                                    False, False, api_name="/vqa")
    lib = VQAExplainer(ad).explain(scene.image, question, top_k=5)
    assert answer.startswith(f"**Answer: {lib.answer}** (p = {lib.probability:.3f})")
    assert [label.split("  ")[0] for label, _ in top["choices"]] == \
        [a for a, _, _ in lib.top_answers]


def test_object_position_loss_by_hand():
    """Each object's target is its cells' coverage-weighted centre, in image widths."""
    from mmcam.models.train_blip import GRID, _position_loss

    patches = torch.zeros(1, GRID * GRID, 2)
    covers = torch.zeros(1, GRID, GRID)
    covers[0, 2, 0], covers[0, 2, 1] = 1.0, 0.5  # row 2, columns 0 and 1
    head = torch.nn.Linear(2, 2)  # pooled tokens are zero: the output is the bias
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.25, 0.5]))
    x = (1.0 * 0.5 + 0.5 * 1.5) / 1.5 / GRID  # column centres 0.5 and 1.5 cells
    y = 2.5 / GRID
    want = ((0.25 - x) ** 2 + (0.5 - y) ** 2) / 2
    got = _position_loss(head, patches, [covers])
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_warm_start_from_a_vqa_folder_keeps_its_text_encoder(tmp_path):
    """Continuing a VQA model: every tensor is copied under its own name (the text encoder
    from ``text_encoder``, not from ``text_decoder.bert``, which has the same shapes)."""
    from safetensors.torch import load_file

    from mmcam.models.train_blip import VQA_DEFAULTS, _warm_start, build_model

    src = mmcam.load_model("shapes-blip-vqa").model
    ids = {"[DEC]": src.config.text_config.bos_token_id, "[PAD]": 0,
           "[SEP]": src.config.text_config.sep_token_id}
    src.save_pretrained(tmp_path / "src")
    torch.manual_seed(1)
    fresh = build_model(src.config.text_config.vocab_size, ids, "vqa")
    assert VQA_DEFAULTS["attention"] > 0
    n = _warm_start(fresh, tmp_path / "src")
    theirs = src.state_dict()
    mine = fresh.state_dict()
    saved = load_file(str(tmp_path / "src" / "model.safetensors"))
    assert n == len(saved) >= len(mine) - 2  # tied copies are saved once
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    # the encoder's and the decoder's blocks differ, so a wrong mapping would show
    k = "text_encoder.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(theirs[k], theirs["text_decoder.bert." + k[len("text_encoder."):]])


def test_cli_set_parses_hyper_parameters():
    from mmcam.cli import _hyper
    from mmcam.errors import MMCamError

    assert _hyper(["lr=7e-4", "vision_steps=0", "batch=16"]) == {
        "lr": 7e-4, "vision_steps": 0, "batch": 16}
    assert isinstance(_hyper(["batch=16"])["batch"], int)
    for bad in ("lr", "=3", "lr=fast"):
        with pytest.raises(MMCamError, match="NAME=NUMBER"):
            _hyper([bad])


def test_trainer_with_every_token_supervised_records_it(tmp_path):
    from mmcam.models.train_blip import train_blip_vqa

    hp = {"batch": 2, "per_image": 3, "vision_steps": 1, "vision_batch": 2,
          "att_heads": 4, "att_tokens": 1}
    run = train_blip_vqa(tmp_path / "m", seed=5, steps=2, n_train=6, progress=False,
                         n_eval=1, hp=hp)
    assert run["att_heads"] == 4 and run["att_tokens"] == 1 and run["set"] == hp
    assert all(np.isfinite(run["loss_history"]))
    card = (tmp_path / "m" / "README.md").read_text()
    assert "heads 0-3 of every question token's cross-attention" in card
    assert "--set att_heads=4 --set att_tokens=1" in card and "--steps 2" in card


def test_written_answers_the_model_cannot_read_are_refused():
    """A generative VQA model scored an answer with unknown words as its [UNK] token and
    labelled the result with the decoded text ('zzz' -> '', 'Red!' -> 'red'): such answers,
    contrasts, empty or non-text ones, and empty questions (also through ``explained``) are
    refused with one line; a known answer is still scored under its own name."""
    from mmcam.errors import MMCamError
    from mmcam.vqa import VQAExplainer

    ex = VQAExplainer(shipped(NAME))
    img = generate(1, seed=3)[0].image
    q = "what color is the circle?"
    for kw, msg in ((dict(answer="zzz"), "answer 'zzz' has words this model does not know"),
                    (dict(answer="Red!"), r"does not know \(Red!\)"),
                    (dict(contrast="zzz"), "contrast 'zzz' has words"),
                    (dict(answer="  "), "answer is empty"),
                    (dict(answer=3), "answer must be text, got int"),
                    (dict(contrast=["red"]), "contrast must be text, got list")):
        with pytest.raises(MMCamError, match=msg):
            ex.explain(img, q, **kw)
    with pytest.raises(MMCamError, match="answer 'zzz' has words"):
        ex.explained(img, q, answer="zzz")
    for question, msg in (("", "question is empty"), (None, "question must be text")):
        with pytest.raises(MMCamError, match=msg):
            ex.explained(img, question)
        with pytest.raises(MMCamError, match=msg):
            ex.explain(img, question)
    r = ex.explain(img, q, answer="Blue", top_k=1)
    assert r.answer == "blue" and 0 < r.probability < 1


def test_relation_terms_by_hand():
    """The training-only relation terms (off by default): targets from the centres and the
    scene's margin, the geometry loss and the answer loss computed by hand."""
    import torch.nn.functional as F

    from mmcam.models.train_blip import (
        VQA_DEFAULTS,
        _relation_answer_loss,
        _relation_geometry_loss,
        _relation_heads,
        _relation_target,
    )

    assert VQA_DEFAULTS["relpos"] == 0 and VQA_DEFAULTS["relans"] == 0
    centres = torch.tensor([[0.2, 0.5], [0.6, 0.55], [0.9, 0.1]])
    t = _relation_target(centres, (0, 1))  # 0.4 apart in x (clear), 0.05 in y (< 12/128)
    assert torch.allclose(t, torch.tensor([0.2, 0.5, 0.6, 0.55, 1.0, 1.0, 1.0, 0.0]))
    t2 = _relation_target(centres, (2, 0))
    assert torch.allclose(t2, torch.tensor([0.9, 0.1, 0.2, 0.5, 0.0, 1.0, 1.0, 1.0]))

    torch.manual_seed(0)
    heads = _relation_heads(2)
    states = tuple(torch.randn(3, 4, 128) for _ in range(2))
    got = _relation_geometry_loss(heads, states, [t, None, t2])
    want = 0.0
    tgt = torch.stack([t, t2])
    for head, h in zip(heads, states):
        out = head(h[[0, 2], 0])
        mse = ((out[:, :4] - tgt[:, :4]) ** 2).mean()
        bce = -(tgt[:, 4:6] * torch.log(torch.sigmoid(out[:, 4:6])) + (1 - tgt[:, 4:6])
                * torch.log(1 - torch.sigmoid(out[:, 4:6])))
        want = want + 10 * mse + (bce * tgt[:, 6:8]).sum() / 3  # 3 clear orders of 4
    assert torch.allclose(got, want / 2, atol=1e-6)
    assert _relation_geometry_loss(heads, states, [None, None, None]).item() == 0.0

    head = torch.nn.Linear(128, 2)
    cls = torch.randn(3, 128)
    got = _relation_answer_loss(head, cls, [1, None, 0])
    logits = head(cls[[0, 2]])
    want = -(F.log_softmax(logits, -1)[0, 1] + F.log_softmax(logits, -1)[1, 0]) / 2
    assert torch.allclose(got, want, atol=1e-6)
    assert _relation_answer_loss(head, cls, [None] * 3).item() == 0.0


def test_trainer_with_the_relation_terms_saves_a_plain_model(tmp_path):
    from safetensors.torch import load_file

    from mmcam.models.train_blip import train_blip_vqa

    # stage 1 without the terms, stage 2 continues it with both (the shipped recipe's shape)
    base = {"batch": 2, "per_image": 4, "vision_steps": 1, "vision_batch": 2}
    first = train_blip_vqa(tmp_path / "a", seed=5, steps=1, n_train=6, progress=False,
                           n_eval=1, hp=base)
    assert first["relpos"] == 0.0 and "init_facts" not in first
    hp = {**base, "vision_steps": 0, "relpos": 1.0, "relans": 1.0}
    run = train_blip_vqa(tmp_path / "m", seed=5, steps=2, n_train=6, progress=False,
                         n_eval=1, init_from=tmp_path / "a", hp=hp)
    assert run["relpos"] == 1.0 and run["relans"] == 1.0
    assert all(np.isfinite(run["loss_history"]))
    plain = transformers.BlipForQuestionAnswering.from_pretrained(tmp_path / "m")
    assert set(load_file(str(tmp_path / "m" / "model.safetensors"))) <= set(plain.state_dict())
    # provenance: the run records the facts of the run it continued, and its card lists both
    saved = json.loads((tmp_path / "m" / "mmcam_training.json").read_text())
    assert saved["init_facts"] == json.loads((tmp_path / "a" / "mmcam_training.json").read_text())
    card = (tmp_path / "m" / "README.md").read_text()
    sets = " --set batch=2 --set per_image=4"
    assert ("1. `mmcam train blip-vqa --out stage1 --seed 5 --steps 1" + sets
            + " --set vision_batch=2 --set vision_steps=1`: 1 steps") in card
    assert ("2. `mmcam train blip-vqa --out models/shapes-blip-vqa --seed 5 --init-from stage1 "
            "--steps 2" + sets + " --set relans=1.0 --set relpos=1.0 --set vision_batch=2 "
            "--set vision_steps=0`: 2 steps") in card
    assert "trained in 2 stages" in card and str(tmp_path) not in card
    assert "Relation geometry term during training (weight 1.0" in card
    assert "Relation answer term during training (weight 1.0" in card
