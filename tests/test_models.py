"""The shipped reference models: loading, the adapter contracts, the decoder math against a
hand-written loop from the raw parameters, floors on fresh scenes, and the training loop."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from mmcam.adapters.base import CaptionAdapter, ClassifierAdapter, VQAAdapter
from mmcam.errors import MMCamError
from mmcam.models import hub
from mmcam.models.evaluate import evaluate_adapter
from mmcam.models.hub import load_model
from mmcam.models.text import pad_batch
from mmcam.scenes import SHAPES, generate

TEST_SEED = 31337  # neither a training seed nor the model cards' held-out seed


@pytest.fixture(scope="module")
def captioner():
    return load_model("shapes-captioner")


@pytest.fixture(scope="module")
def vqa():
    return load_model("shapes-vqa")


@pytest.fixture(scope="module")
def classifier():
    return load_model("shapes-classifier")


@pytest.fixture(scope="module")
def scenes():
    return generate(80, TEST_SEED)


# ---------------------------------------------------------------- loading


def test_unknown_model_name() -> None:
    with pytest.raises(MMCamError, match="shapes-captioner, shapes-vqa, shapes-classifier"):
        load_model("shapes-giraffe")


def test_folder_env_and_incomplete_folder(tmp_path, monkeypatch) -> None:
    src = hub.resolve("shapes-classifier")
    dst = tmp_path / "mine" / "shapes-classifier"
    shutil.copytree(src, dst)
    assert isinstance(load_model(dst), ClassifierAdapter)  # a folder path
    monkeypatch.setenv("MMCAM_MODELS", str(tmp_path / "mine"))
    assert hub.resolve("shapes-classifier") == dst  # $MMCAM_MODELS comes before the repo
    (dst / "model.safetensors").unlink()
    with pytest.raises(MMCamError, match="model.safetensors"):
        load_model("shapes-classifier")


def test_models_are_small() -> None:
    total = sum(f.stat().st_size for name in hub.KNOWN_MODELS for f in hub.resolve(name).iterdir())
    assert total < 15e6


# ---------------------------------------------------------------- captioner


def slow_decoder(model, feats: torch.Tensor, ids: list[int], bos: int) -> tuple[list, list]:
    """log p(ids_t | <bos>, ids_<t) and attention, one token at a time from the raw weights,
    following the formulas in the captioner's docstring (PyTorch LSTM gate order i, f, g, o)."""
    cells = feats[0].flatten(1).T + model.pos[0]  # (N, C)
    mean = cells.mean(0)
    h = torch.tanh(model.init_h.weight @ mean + model.init_h.bias)
    c = torch.tanh(model.init_c.weight @ mean + model.init_c.bias)
    keys = cells @ model.att_key.weight.T + model.att_key.bias
    lstm = model.lstm
    logps, alphas, prev = [], [], bos
    for tok in ids:
        q = model.att_query.weight @ h + model.att_query.bias
        alpha = torch.softmax(keys @ q / math.sqrt(keys.shape[1]), 0)
        z = alpha @ cells
        x = torch.cat([model.embed.weight[prev], z])
        gates = lstm.weight_ih @ x + lstm.bias_ih + lstm.weight_hh @ h + lstm.bias_hh
        i, f, g, o = gates.chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        logits = model.out.weight @ torch.cat([h, z]) + model.out.bias
        logps.append(torch.log_softmax(logits, 0))
        alphas.append(alpha)
        prev = tok
    return logps, alphas


def test_captioner_contract(captioner, scenes) -> None:
    assert isinstance(captioner, CaptionAdapter)
    assert not captioner.model.training
    pixels = captioner.prepare(scenes[0].image.resize((200, 150)))
    assert pixels.shape == (1, 3, 128, 128)
    feats = captioner.encode(pixels)
    assert feats.dim() == 4 and feats.shape[0] == 1 and min(feats.shape[2:]) >= 8
    # encode is the output of the explained module inside the model
    layer = captioner.model.get_submodule(captioner.layer)
    assert isinstance(layer, torch.nn.ReLU)
    ids = captioner.tokenize("A small red circle, a large BLUE giraffe")
    assert captioner.words(ids) == ["a", "small", "red", "circle", ",", "a", "large", "blue",
                                    "<unk>"]  # fmt: skip


def test_score_tokens_matches_slow_loop(captioner, scenes) -> None:
    feats = captioner.encode(captioner.prepare(scenes[1].image))
    caps = [scenes[1].captions[0], scenes[2].captions[3]]
    ids = [captioner.tokenize(c).tolist() for c in caps]
    n = min(len(i) for i in ids)
    batch = torch.tensor([i[:n] for i in ids])
    scores = captioner.score_tokens(feats.expand(2, -1, -1, -1), batch)
    att = captioner.attention(feats.expand(2, -1, -1, -1), batch)
    assert scores.shape == (2, n) and att.shape == (2, n, *feats.shape[2:])
    with torch.no_grad():
        for row in range(2):
            logps, alphas = slow_decoder(captioner.model, feats, ids[row][:n], captioner.vocab.bos)
            expect = torch.stack([lp[t] for lp, t in zip(logps, ids[row][:n])])
            torch.testing.assert_close(scores[row], expect, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(att[row].flatten(1), torch.stack(alphas), atol=1e-5,
                                       rtol=1e-4)  # fmt: skip
    # differentiable in the features
    f = feats.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(captioner.score_tokens(f, batch[:1]).sum(), f)
    assert g.abs().sum() > 0


def test_generate_greedy_and_beam(captioner, scenes) -> None:
    eos = captioner.vocab.eos
    for s in scenes[:3]:
        feats = captioner.encode(captioner.prepare(s.image))
        greedy = captioner.generate(feats, max_len=20)
        assert greedy.dim() == 2 and greedy.shape[0] == 1 and greedy.shape[1] >= 1
        toks = greedy[0].tolist()
        with torch.no_grad():
            logps, _ = slow_decoder(captioner.model, feats, toks + [eos], captioner.vocab.bos)
        # each greedy token, and the final <eos>, is the argmax given the prefix
        assert [int(lp.argmax()) for lp in logps] == toks + [eos]
        greedy_lp = sum(float(lp[t]) for lp, t in zip(logps, toks + [eos]))
        beam = captioner.generate(feats, max_len=20, beam_size=3)[0].tolist()
        with torch.no_grad():
            logps, _ = slow_decoder(captioner.model, feats, beam + [eos], captioner.vocab.bos)
        beam_lp = sum(float(lp[t]) for lp, t in zip(logps, beam + [eos]))
        assert beam_lp >= greedy_lp - 1e-4
    short = captioner.generate(feats, max_len=2)
    assert short.shape[1] <= 2


def test_captioner_floor(captioner, scenes) -> None:
    m = evaluate_adapter(captioner, "captioner", scenes[:60])
    assert m["bleu4"] >= 0.5, m


def peak_in_box(att: torch.Tensor, box: tuple[int, int, int, int], pad: int = 4) -> bool:
    """Whether the center of the 16x16 cell with the largest weight lies in the box (+pad)."""
    k = int(att.flatten().argmax())
    cy, cx = (k // 16) * 8 + 4, (k % 16) * 8 + 4
    x0, y0, x1, y1 = box
    return x0 - pad <= cx < x1 + pad and y0 - pad <= cy < y1 + pad


def test_captioner_attention_is_grounded(captioner, scenes) -> None:
    hits = []
    for s in scenes[:30]:
        feats = captioner.encode(captioner.prepare(s.image))
        ids = captioner.generate(feats)
        words = captioner.words(ids[0])
        att = captioner.attention(feats, ids)[0]
        for t in range(1, len(words)):
            named = [o for o in s.objects if (o.color, o.shape) == (words[t - 1], words[t])]
            if len(named) == 1:  # the shape word of "<color> <shape>"
                hits.append(peak_in_box(att[t], named[0].box, pad=8))
    assert len(hits) >= 30 and sum(hits) / len(hits) >= 0.7


# ---------------------------------------------------------------- vqa


def test_vqa_contract(vqa, scenes) -> None:
    assert isinstance(vqa, VQAAdapter)
    assert not vqa.model.training
    assert set(vqa.answers) >= {"yes", "no", "red", "circle", "two"}
    feats = vqa.encode(vqa.prepare(scenes[0].image))
    assert feats.dim() == 4 and min(feats.shape[2:]) >= 8
    ids, oov = vqa.tokenize_question("What colour is the Giraffe?")
    assert oov == ["colour", "giraffe"]
    assert ids.dim() == 1 and ids.shape[0] == 6
    assert (ids == vqa.vocab.unk).sum() == 2


def test_vqa_rows_independent_and_padding(vqa, scenes) -> None:
    feats = torch.cat([vqa.encode(vqa.prepare(s.image)) for s in scenes[:2]])
    qs = ["how many objects are there?", "is the red circle to the left of the blue square?"]
    ids = [vqa.tokenize_question(q)[0].tolist() for q in qs]
    batch = vqa.score_answers(feats, pad_batch(ids))
    assert batch.shape == (2, len(vqa.answers))
    torch.testing.assert_close(batch.exp().sum(1), torch.ones(2))
    for row in range(2):
        alone = vqa.score_answers(feats[row : row + 1], torch.tensor([ids[row]]))
        torch.testing.assert_close(batch[row], alone[0], atol=1e-5, rtol=1e-5)
    f = feats.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(vqa.score_answers(f, pad_batch(ids))[:, 0].sum(), f)
    assert g.abs().sum() > 0
    att = vqa.attention(feats, pad_batch(ids))
    assert att.shape[0] == 2 and att.shape[2:] == feats.shape[2:]
    torch.testing.assert_close(att.sum((2, 3)), torch.ones(att.shape[:2]))


def test_vqa_attention_is_grounded(vqa, scenes) -> None:
    hits = []
    for s in scenes[:30]:
        feats = vqa.encode(vqa.prepare(s.image))
        for (q, _), t, refs in zip(s.questions, s.question_types, s.question_objects):
            if t in ("color", "shape", "relation"):
                att = vqa.attention(feats, vqa.tokenize_question(q)[0][None])[0]
                hits += [peak_in_box(att[g], s.objects[r].box) for g, r in enumerate(refs)]
    assert len(hits) >= 50 and sum(hits) / len(hits) >= 0.9


def test_vqa_floor(vqa, scenes) -> None:
    m = evaluate_adapter(vqa, "vqa", scenes)
    # ~1000 questions: the standard error is ~1%, so 3 points of margin
    assert m["accuracy"] >= 0.82, m


# ---------------------------------------------------------------- classifier


def test_classifier_contract(classifier) -> None:
    assert isinstance(classifier, ClassifierAdapter)
    assert classifier.labels == list(SHAPES)
    s = generate(1, TEST_SEED, one_large=True)[0]
    pixels = classifier.prepare(s.image)
    seen = {}
    layer = classifier.model.get_submodule(classifier.layer)
    handle = layer.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    try:
        logits = classifier.model(pixels)
    finally:
        handle.remove()
    a = seen["a"]
    assert a.shape[2:] == (16, 16) and logits.shape == (1, 6)
    # documented head: logits = W . mean_cells(A) + b (global average pooling)
    fc = classifier.model.fc
    torch.testing.assert_close(logits, a.mean((2, 3)) @ fc.weight.T + fc.bias)


def test_classifier_floor(classifier) -> None:
    m = evaluate_adapter(classifier, "classifier", generate(100, TEST_SEED, one_large=True))
    # 100 scenes: the standard error at 0.95 is ~2%, so 4 points of margin
    assert m["accuracy"] >= 0.91, m


# ---------------------------------------------------------------- training


def test_tiny_training_run_lowers_loss_and_saves(tmp_path) -> None:
    from mmcam.models.train import train

    m = train("captioner", tmp_path / "cap", seed=3, steps=12, n_train=16, progress=False,
              n_val=0)  # fmt: skip
    h = m["loss_history"]
    assert len(h) == 12 and sum(h[-3:]) / 3 < sum(h[:3]) / 3
    adapter = load_model(tmp_path / "cap")
    assert isinstance(adapter, CaptionAdapter)
    assert (tmp_path / "cap" / "README.md").is_file()
    again = train("captioner", tmp_path / "cap2", seed=3, steps=2, n_train=16, progress=False,
                  n_val=0)  # fmt: skip
    assert again["loss_history"] == h[:2]  # deterministic for a seed


def test_train_rejects_bad_input(tmp_path) -> None:
    from mmcam.models.train import train

    with pytest.raises(MMCamError, match="kind"):
        train("detector", tmp_path)
