"""The equality tests of test_engine.py on a CUDA device (skipped where there is none).

TF32 is turned off for the duration, so float32 means float32 on both sides of a comparison.
"""

from __future__ import annotations

import pytest
import torch
from test_engine import (
    CAPTION,
    assert_maps_close,
    cam_by_hand,
    hooks_left,
    loop_grads,
    tokens_to_grid,
)
from toys import ToyCaptioner, ToyViTCaptioner, ToyVQA, image

from mmcam.caption import CaptionExplainer, word_membership
from mmcam.layers import resolve_layer
from mmcam.vqa import VQAExplainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(autouse=True)
def exact_float32():
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@pytest.mark.parametrize("strategy", ["copies", "vjp"])
@pytest.mark.parametrize("layer", [None, "encoder.2"])
def test_split_captioner_on_cuda_equals_loop(strategy, layer):
    ad = ToyCaptioner(seed=3, split_words=True).eval().cuda()
    res = CaptionExplainer(ad, layer=layer, strategy=strategy, chunk_size=3).explain(
        image(4), CAPTION)
    ids = ad.tokenize(CAPTION).cuda()
    member = word_membership(ad, ids.cpu()).cuda()
    px = ad.prepare(image(4)).cuda()
    target = ad.encoder[3] if layer is None else resolve_layer(ad, layer)
    pairs = loop_grads(target, lambda i: (ad.score_tokens(ad.encode(px), ids[None])[0]
                                          * member[i]).sum(), member.shape[0])
    want = torch.stack([cam_by_hand(A[0], G[0]) for A, G in pairs]).cpu()
    assert res.maps.device.type == "cpu"
    assert_maps_close(res.layer_maps, want)
    assert hooks_left(ad) == 0


@pytest.mark.parametrize("strategy", ["copies", "vjp"])
def test_whole_model_on_cuda_equals_loop(strategy):
    m = ToyViTCaptioner(seed=1).eval().cuda()
    res = CaptionExplainer(m, strategy=strategy).explain(image(2), CAPTION)
    ids = m.tokenize(CAPTION).cuda()
    px, _ = m.prepare(image(2))
    pairs = loop_grads(m.vision.layers[1], lambda i: m.score_tokens(px, ids[None])[0, i],
                       len(ids))
    want = torch.stack([cam_by_hand(tokens_to_grid(A.cpu(), 1), tokens_to_grid(G.cpu(), 1))
                        for A, G in pairs])
    assert_maps_close(res.layer_maps, want)
    generated = CaptionExplainer(m, strategy=strategy).explain(image(2), max_len=5)
    assert len(generated.words) > 0


def test_bfloat16_on_cuda_and_batches():
    m32 = ToyViTCaptioner(seed=7).eval().cuda()
    m16 = ToyViTCaptioner(seed=7).eval().cuda().to(torch.bfloat16)
    r32 = CaptionExplainer(m32).explain(image(5), CAPTION)
    r16 = CaptionExplainer(m16).explain(image(5), CAPTION)
    err = (r16.layer_maps - r32.layer_maps).abs().max() / r32.layer_maps.abs().max()
    assert err < 0.1, err
    ex = CaptionExplainer(ToyCaptioner(seed=1).eval().cuda())
    pils = [image(1), image(2), image(3)]
    for b, pil in zip(ex.explain_batch(pils, ["a red circle", None, "the big square"],
                                       max_len=5), pils):
        one = ex.explain(pil, b.caption)
        assert_maps_close(b.maps, one.maps)


@pytest.mark.parametrize("strategy", ["copies", "vjp"])
def test_recurrent_vqa_on_cuda_equals_cpu(strategy):
    """A GRU question encoder: cuDNN refuses RNN backward in eval mode; mmcam must not."""
    cpu = VQAExplainer(ToyVQA(seed=2).eval(), strategy=strategy).explain(
        image(1), "what color is the circle?", contrast="blue")
    gpu = VQAExplainer(ToyVQA(seed=2).eval().cuda(), strategy=strategy).explain(
        image(1), "what color is the circle?", contrast="blue")
    assert gpu.answer == cpu.answer
    assert_maps_close(torch.stack([m for _, _, m in gpu.top_answers]),
                      torch.stack([m for _, _, m in cpu.top_answers]))
