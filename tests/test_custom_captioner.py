"""The README's own-captioner example (demos/custom_captioner.py) works with mmcam exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from demos.custom_captioner import BOS, EOS, ResNetLSTMCaptioner
from mmcam.caption import CaptionExplainer
from tests.toys import image

VOCAB = ["a", "cat", "dog", "on", "the", "bed", "red", "sofa"]
CAPTION = "a cat on the red sofa"


@pytest.fixture(scope="module")
def captioner() -> ResNetLSTMCaptioner:
    torch.manual_seed(0)
    return ResNetLSTMCaptioner(VOCAB, resnet="resnet18", embed=16, hidden=24, size=64).eval()


def test_start_state_equals_nn_lstm_on_the_pooled_feature(captioner):
    """``_start`` writes the LSTM's first step out; oracle: nn.LSTM run on that one input,
    values and gradients with respect to the features."""
    feats = torch.randn(3, 512, 2, 2, requires_grad=True)
    x = captioner.image_in(feats.mean(dim=(2, 3)))[:, None]
    _, (h_ref, c_ref) = captioner.lstm(x)
    h, c = captioner._start(feats)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c, c_ref, rtol=1e-5, atol=1e-6)
    w = torch.randn_like(h)
    got = torch.autograd.grad((h * w).sum() + c.sum(), feats)[0]
    want = torch.autograd.grad((h_ref * w).sum() + c_ref.sum(), feats)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_batched_maps_equal_a_forward_and_backward_per_word(captioner):
    pil = image(0, size=(50, 40))
    res = CaptionExplainer(captioner, chunk_size=4, align="bilinear").explain(pil, CAPTION)
    ids = captioner.tokenize(CAPTION)[None]
    maps, lps = [], []
    for t in range(ids.shape[1]):  # the naive way: whole model forward, one backward, per word
        feats = captioner.encoder(captioner.prepare(pil))  # layer4 output, part of the graph
        lp = captioner.score_tokens(feats, ids)[0, t]
        (g,) = torch.autograd.grad(lp, feats)
        cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * feats).sum(1, keepdim=True))
        maps.append(F.interpolate(cam, size=(40, 50), mode="bilinear", align_corners=False)[0, 0])
        lps.append(float(lp.detach()))
    ref = torch.stack(maps).detach()
    assert res.words == CAPTION.split() and res.maps.shape == (6, 40, 50)
    assert ref.amax() > 0 and (ref.amax(dim=(1, 2)) > 0).sum() >= 3
    torch.testing.assert_close(res.maps, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    torch.testing.assert_close(torch.tensor(res.logprobs), torch.tensor(lps), rtol=1e-5, atol=0)
    assert all(p.grad is None for p in captioner.parameters())


def test_greedy_generation_picks_the_argmax_of_score_tokens(captioner):
    with torch.no_grad():
        feats = captioner.encode(captioner.prepare(image(1, size=(64, 64))))
        ids = captioner.generate(feats, max_len=5, min_len=5)[0]
        assert ids.shape == (5,)
        n = len(captioner.itos)
        for t in range(5):  # score every candidate token after the generated prefix
            cands = torch.cat([ids[:t].expand(n, t), torch.arange(n)[:, None]], dim=1)
            lp = captioner.score_tokens(feats.expand(n, -1, -1, -1), cands)[:, t]
            lp[[BOS, EOS]] = -float("inf")  # generate() forbids <bos>, and <eos> before min_len
            assert int(lp.argmax()) == int(ids[t])


def test_beam_search_as_wide_as_the_vocabulary_finds_the_best_two_word_caption(captioner):
    with torch.no_grad():
        feats = captioner.encode(captioner.prepare(image(2, size=(64, 64))))
        words = torch.arange(2, len(captioner.itos))  # all but <bos> and <eos>
        pairs = torch.cartesian_prod(words, words)
        total = captioner.score_tokens(feats.expand(len(pairs), -1, -1, -1), pairs).sum(1)
        beam = captioner.generate(feats, max_len=2, beam_size=len(words), min_len=2)[0]
    assert beam.tolist() == pairs[int(total.argmax())].tolist()


def test_tokenize_and_words_round_trip(captioner):
    ids = captioner.tokenize("A cat on the Moon")
    assert captioner.words(ids) == ["a", "cat", "on", "the", "<unk>"]


def test_score_tokens_with_last_equals_the_full_rows_up_to_last(captioner):
    feats = captioner.encode(captioner.prepare(image(3, size=(64, 64)))).expand(4, -1, -1, -1)
    ids = captioner.tokenize(CAPTION)[None].expand(4, -1)
    last = torch.tensor([0, 5, 2, 3])
    full = captioner.score_tokens(feats, ids)
    part = captioner.score_tokens(feats, ids, last=last)
    for r, k in enumerate(last.tolist()):
        torch.testing.assert_close(part[r, : k + 1], full[r, : k + 1], rtol=1e-5, atol=1e-6)
        assert torch.all(part[r, k + 1:] == 0)


@pytest.mark.parametrize("strategy", ["copies", "vjp"])
def test_layer_inside_the_encoder_equals_the_loop(captioner, strategy):
    """The README's example at ``encoder.layer3`` instead of the encode output."""
    pil = image(0, size=(50, 40))
    res = CaptionExplainer(captioner, layer="encoder.layer3", strategy=strategy).explain(
        pil, CAPTION)
    ids = captioner.tokenize(CAPTION)[None]
    ref = []
    for t in range(ids.shape[1]):
        held = {}
        hook = captioner.encoder.layer3.register_forward_hook(
            lambda m, i, o, held=held: held.setdefault("A", o))
        try:
            lp = captioner.score_tokens(captioner.encode(captioner.prepare(pil)), ids)[0, t]
        finally:
            hook.remove()
        (g,) = torch.autograd.grad(lp, held["A"])
        ref.append(F.relu((g.mean(dim=(2, 3), keepdim=True) * held["A"]).sum(1))[0])
    ref = torch.stack(ref).detach()
    assert res.layer_maps.shape == ref.shape == (6, 4, 4) and ref.amax() > 0
    torch.testing.assert_close(res.layer_maps, ref, rtol=1e-5, atol=1e-6 * float(ref.max()))
    assert res.layer == "encoder.layer3"


def test_the_readme_example_runs_as_written(tmp_path):
    """The README's own-captioner code block, run with its photo and output paths replaced."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    code = next(b for b in blocks if "class ResNetLSTMCaptioner" in b)
    photo = tmp_path / "photo.png"
    image(7, size=(96, 80)).save(photo)
    code = code.replace('"photo.jpg"', repr(str(photo))).replace('"out/mine"',
                                                                 repr(str(tmp_path / "out")))
    ns: dict = {}
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - our own documentation
    assert ns["result"].words == ["a", "cat", "on", "the", "bed"]
    assert ns["result"].layer_maps.shape == (5, 7, 7)
    assert ns["inner"].layer_maps.shape == (5, 14, 14) and ns["inner"].layer == "encoder.6"
    assert (tmp_path / "out" / "index.html").is_file()
