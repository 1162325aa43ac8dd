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


def test_batched_maps_equal_a_forward_and_backward_per_word(captioner):
    pil = image(0, size=(50, 40))
    res = CaptionExplainer(captioner, chunk_size=4).explain(pil, CAPTION)
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
