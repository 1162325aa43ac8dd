"""VQA maps: batched copies equal one backward per answer; contrast; unknown words; errors."""

import json

import pytest
import torch

from mmcam.cam import METHODS, upsample
from mmcam.errors import MMCamError
from mmcam.vqa import VQAExplainer
from tests.toys import ToyVQA, image


def loop_map(ad, pil, question, coef, method="gradcam"):
    """Reference: a forward and a backward for one linear combination of answer log-probs."""
    q, _ = ad.tokenize_question(question)
    feats = ad.encode(ad.prepare(pil)).detach().requires_grad_(True)
    lp = ad.score_answers(feats, q[None])[0]
    (g,) = torch.autograd.grad((lp * coef).sum(), feats)
    W, H = pil.size
    return upsample(METHODS[method](feats.detach(), g), (H, W))[0], lp.detach()


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradcam++"])
def test_answers_and_contrast_equal_loop(method):
    ad = ToyVQA(seed=4).eval()  # a seed whose maps are not all zero
    pil = image(3)
    q = "what color is the circle ?"
    res = VQAExplainer(ad, method=method, align="bilinear").explain(
        pil, q, answer="blue", contrast="red", top_k=3)
    K = len(ad.answers)
    onehot = torch.eye(K)
    ref, lp = loop_map(ad, pil, q, onehot[1], method)
    assert ref.abs().max() > 0
    torch.testing.assert_close(res.map, ref, rtol=1e-5, atol=1e-7)
    assert res.answer == "blue" and res.probability == pytest.approx(float(lp[1].exp()), rel=1e-6)
    assert res.model_answer == ad.answers[int(lp.argmax())]
    top = lp.topk(3)
    assert [a for a, _, _ in res.top_answers] == [ad.answers[i] for i in top.indices]
    for (_, p, m), i in zip(res.top_answers, top.indices):
        assert p == pytest.approx(float(lp[i].exp()), rel=1e-6)
        torch.testing.assert_close(m, loop_map(ad, pil, q, onehot[i], method)[0],
                                   rtol=1e-5, atol=1e-7)
    ref_c, _ = loop_map(ad, pil, q, onehot[1] - onehot[0], method)
    assert ref_c.abs().max() > 0
    torch.testing.assert_close(res.contrast_map, ref_c, rtol=1e-5, atol=1e-7)


def test_default_answer_is_the_models_and_unknown_words_reported():
    ad = ToyVQA(seed=2).eval()
    res = VQAExplainer(ad).explain(image(1), "What colour is the hexagon?")
    assert res.unknown_words == ["colour", "hexagon"]
    assert res.answer == res.model_answer == res.top_answers[0][0]
    torch.testing.assert_close(res.map, res.top_answers[0][2])
    assert res.contrast is None and res.contrast_map is None


def test_errors():
    ex = VQAExplainer(ToyVQA().eval())
    with pytest.raises(MMCamError, match="question is empty"):
        ex.explain(image(), "  ")
    with pytest.raises(MMCamError, match="'purple' is not an answer"):
        ex.explain(image(), "what color is the circle?", answer="purple")
    with pytest.raises(MMCamError,
                       match=r"does not answer questions \(a captioner\?\): its adapter lacks"):
        VQAExplainer(object())


def test_save(tmp_path):
    ad = ToyVQA(seed=3).eval()
    res = VQAExplainer(ad).explain(image(2), "is the square blue?", contrast="no", top_k=2)
    res.save(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"grid.png", "index.html", "result.json", "answer.png", "contrast.png"} <= names
    assert len([n for n in names if n.startswith("top_")]) == 2
    d = json.loads((tmp_path / "result.json").read_text())
    assert d["answer"] == res.answer and d["contrast"]["answer"] == "no"
    assert d["score"] == "logprob"  # the explained score, as in a caption's result.json
    # saved again without contrast and with one top answer: the old files are gone
    VQAExplainer(ad).explain(image(2), "is the square blue?", top_k=1).save(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert "contrast.png" not in names
    assert len([n for n in names if n.startswith("top_")]) == 1
