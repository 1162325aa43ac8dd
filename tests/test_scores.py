"""Explained scores (mmcam.scores): logprob, logit, contrast, versus; each map equal to a
per-word forward+backward loop that computes the score by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcam import CaptionExplainer, VQAExplainer, load_model
from mmcam.errors import MMCamError
from mmcam.pipeline import Rows
from mmcam.scenes import COLORS, SHAPES, WORD_KINDS, generate
from mmcam.scores import Alternatives, token_scores


def test_token_scores_by_hand():
    z = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0]])  # one position, 5 tokens
    ids = torch.tensor([0])
    lse = torch.logsumexp(z[0], 0)
    assert token_scores(z, ids, "logprob").item() == pytest.approx(2.0 - lse.item())
    assert token_scores(z, ids, "logit").item() == 2.0
    alts = Alternatives(lambda w: [int(w)], groups=[["0", "2", "3"]])
    assert token_scores(z, ids, "contrast", alts).item() == pytest.approx(2.0 - (0.5 - 1.0) / 2)
    # no kind for token 1: its top-2 alternatives are tokens 4 (3.0) and 0 (2.0)
    assert token_scores(z, torch.tensor([1]), "contrast", alts, k=2).item() == \
        pytest.approx(1.0 - 2.5)
    vs = Alternatives(lambda w: [int(w)], pairs={"0": ["4"]})
    assert token_scores(z, ids, "versus", vs).item() == pytest.approx(-1.0)
    assert token_scores(z, torch.tensor([2]), "versus", vs).item() == 0.5  # not named: logit
    # a difference of logits is a difference of log-probs: the softmax's peak does not matter
    lp = z[0].log_softmax(0)
    assert token_scores(z, ids, "contrast", alts).item() == pytest.approx(
        (lp[0] - (lp[2] + lp[3]) / 2).item())


def hirescam_grid(A, G):
    return F.relu((A * G).sum(0))


@pytest.mark.parametrize("score", ["logit", "contrast", "versus"])
def test_caption_scores_equal_a_loop(score):
    ad = load_model("shapes-captioner")
    scene = generate(1, seed=77)[0]
    caption = "a small red circle and a large blue square"
    versus = {"circle": "star", "red": "green"}
    res = CaptionExplainer(ad, method="hirescam", score=score,
                           versus=versus if score == "versus" else None).explain(
        scene.image, caption)
    vocab = ad.vocab
    ids = ad.tokenize(caption)[None]
    groups = [list(COLORS), list(SHAPES), ["small", "large"]]
    with torch.no_grad():
        A = ad.encode(ad.prepare(scene.image))
    for t in range(ids.shape[1]):
        leaf = A.clone().requires_grad_(True)
        z = ad.token_logits(leaf, ids)[0, t]
        w = vocab.itos[int(ids[0, t])]
        if score == "logit":
            y = z[ids[0, t]]
        elif score == "versus":
            y = z[ids[0, t]] - (z[vocab.stoi[versus[w]]] if w in versus else 0.0)
        else:
            kind = next((g for g in groups if w in g), None)
            if kind is not None:
                alts = [vocab.stoi[a] for a in kind if a != w]
            else:  # the model's top 5 other tokens at this position
                alts = [int(i) for i in z.detach().argsort(descending=True)
                        if int(i) != int(ids[0, t])][:5]
            y = z[ids[0, t]] - z[alts].mean()
        (g,) = torch.autograd.grad(y, leaf)
        assert res.values[t] == pytest.approx(float(y.detach()), rel=1e-5, abs=1e-5)
        torch.testing.assert_close(res.layer_maps[t], hirescam_grid(A[0], g[0]),
                                   rtol=1e-5, atol=1e-6)
    # the log-probs shown beside the scores are still the model's log p
    lp = ad.score_tokens(A, ids)[0]
    assert res.logprobs == pytest.approx(lp.tolist(), abs=1e-5)


@pytest.mark.parametrize("score", ["logit", "contrast"])
def test_vqa_scores_equal_a_loop(score):
    ad = load_model("shapes-vqa")
    scene = generate(1, seed=78)[0]
    shape = scene.objects[0].shape
    q = f"what color is the {shape} ?"
    res = VQAExplainer(ad, method="hirescam", score=score).explain(scene.image, q, top_k=2)
    qids = ad.tokenize_question(q)[0][None]
    with torch.no_grad():
        A = ad.encode(ad.prepare(scene.image))
    leaf = A.clone().requires_grad_(True)
    z = ad.answer_logits(leaf, qids)[0]
    a = ad.answers.index(res.answer)
    if score == "logit":
        y = z[a]
    else:
        kind = next(k for k in WORD_KINDS.values() if res.answer in k)
        y = z[a] - z[[ad.answers.index(c) for c in kind if c != res.answer]].mean()
    (g,) = torch.autograd.grad(y, leaf)
    torch.testing.assert_close(answer_layer_map(res.answer, ad, score, scene.image, q),
                               hirescam_grid(A[0], g[0]), rtol=1e-5, atol=1e-6)
    assert res.probability == pytest.approx(float(z.softmax(0)[a]), rel=1e-5)


def answer_layer_map(answer, ad, score, image, q):
    """The layer map mmcam draws for ``answer`` (its image map is that grid resampled)."""
    ex = VQAExplainer(ad, method="hirescam", score=score)
    qq = torch.as_tensor(ad.tokenize_question(q)[0]).reshape(1, -1)

    def rows(ctx, i):
        lp = ctx.score(qq)[0].log_softmax(-1)
        return Rows(qq, ex._answer_coefs(lp, ad.answers.index(answer))[None])

    return ex.pipeline.explain([image], rows, "hirescam")[0].layer_maps[0]


def test_scores_refuse_what_they_cannot_do():
    ad = load_model("shapes-captioner")
    with pytest.raises(MMCamError, match="unknown score"):
        CaptionExplainer(ad, score="margin")
    with pytest.raises(MMCamError, match="versus"):
        CaptionExplainer(ad, score="versus")
    with pytest.raises(MMCamError, match="not one known token"):
        CaptionExplainer(ad, score="versus", versus={"circle": "big square"})

    class NoLogits:
        model = ad.model
        prepare, score_tokens, generate = ad.prepare, ad.score_tokens, ad.generate
        tokenize, words, encode = ad.tokenize, ad.words, ad.encode

    with pytest.raises(MMCamError, match="token_logits"):
        CaptionExplainer(NoLogits(), score="contrast")


def test_named_alternatives_and_kinds_are_checked():
    """``versus`` with an unknown word was scored against <unk> (shapes-captioner) or [UNK]
    (shapes-blip), a word against itself fell back to the logit, a list raised an
    AttributeError, and ``kinds="red blue"`` was read letter by letter: each is refused."""
    cap, blip = load_model("shapes-captioner"), load_model("shapes-blip")
    for ad in (cap, blip):
        for versus, msg in (({"star": "zzzqqq"}, "alternative"),
                            ({"zzzqqq": "circle"}, "'zzzqqq' is not one known token"),
                            ({"star": "star"}, "cannot be contrasted with itself"),
                            ({"star": ""}, "non-empty text"),
                            ([("star", "circle")], "versus must map words")):
            with pytest.raises(MMCamError, match=msg):
                CaptionExplainer(ad, score="versus", versus=versus)
    for kinds in ("red blue", ["red", "blue"]):
        with pytest.raises(MMCamError, match="kinds must be lists of words"):
            CaptionExplainer(cap, score="contrast", kinds=kinds)
        with pytest.raises(MMCamError, match="kinds must be lists of words"):
            VQAExplainer(load_model("shapes-vqa"), score="contrast", kinds=kinds)
    # unknown words inside a kind are left out of the alternatives, known ones kept
    ex = CaptionExplainer(cap, score="contrast", kinds=[["red", "blue", "zzzqqq"]])
    red, blue = (int(cap.tokenize(w)[0]) for w in ("red", "blue"))
    assert ex.alternatives.table == {red: [blue], blue: [red]}


def test_hf_blip_contrast_equals_a_loop_against_the_hf_class():
    ad = load_model("shapes-blip")  # a saved BlipForConditionalGeneration: scene word kinds
    scene = generate(1, seed=79)[0]
    caption = "a small red circle"
    res = CaptionExplainer(ad, method="hirescam", score="contrast").explain(scene.image,
                                                                            caption)
    # the oracle runs in float64 at the default layer, the vision tower's output (its
    # post_layernorm tokens; a ModelOutput whose field 0 is the token states)
    assert ad.layer == "vision_model"
    model = load_model("shapes-blip", dtype=torch.float64).model
    tok = ad.tokenizer
    ids = tok(caption, add_special_tokens=False)["input_ids"]
    full = torch.tensor([[model.config.text_config.bos_token_id] + ids])
    pv = ad.prepare(scene.image)[0]["pixel_values"].double()
    layer = model.vision_model
    groups = [list(COLORS), list(SHAPES), ["small", "large"]]
    for t, w in enumerate(caption.split()):
        held = {}

        def hook(m, i, o, held=held):
            out = o[0] if isinstance(o, (tuple, dict)) else o
            held["a"] = out
            out.retain_grad()

        h = layer.register_forward_hook(hook)
        try:
            z = model(pixel_values=pv, input_ids=full, use_cache=False).logits[0, t].float()
        finally:
            h.remove()
        kind = next((g for g in groups if w in g), None)
        if kind is not None:
            alts = [tok.convert_tokens_to_ids(a) for a in kind if a != w]
        else:
            alts = [int(i) for i in z.detach().argsort(descending=True) if int(i) != ids[t]][:5]
        y = z[ids[t]] - z[alts].mean()
        y.backward()
        a, g = held["a"][0, 1:].detach(), held["a"].grad[0, 1:]
        want = F.relu((a * g).sum(-1)).reshape(8, 8)
        assert res.values[t] == pytest.approx(float(y.detach()), rel=1e-5, abs=1e-5)
        torch.testing.assert_close(res.layer_maps[t].double(), want, rtol=1e-4,
                                   atol=1e-4 * float(want.max()))
        model.zero_grad(set_to_none=True)
