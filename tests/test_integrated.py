"""method="integrated": the batched path gradients equal a slow loop (one forward and backward
per row and path point, the layer's output replaced by a hook), completeness holds exactly where
the midpoint rule is exact, and explaining leaves the model as it was."""

import pytest
import torch
from torch import nn

from mmcam.cam import PATH_STEPS
from mmcam.caption import CaptionExplainer
from mmcam.classify import ClassExplainer
from mmcam.geometry import Geometry
from mmcam.layers import Tokens
from tests.toys import ToyCaptioner, ToyViTCaptioner, image

CAPTION = "a red circle left of the big blue square"
ALPHAS = [(j + 0.5) / PATH_STEPS for j in range(PATH_STEPS)]


def output_of(layer: nn.Module, run) -> torch.Tensor:
    """The layer's output when ``run()`` runs the model."""
    got = {}
    h = layer.register_forward_hook(lambda m, i, o: got.setdefault("a", o.detach()))
    try:
        with torch.no_grad():
            run()
    finally:
        h.remove()
    return got["a"]


def loop_gradient(layer: nn.Module, value: torch.Tensor, score) -> torch.Tensor:
    """d score / d (the layer's output), the output replaced by ``value``."""
    leaf = value.clone().requires_grad_(True)
    h = layer.register_forward_hook(lambda m, i, o: leaf)
    try:
        (g,) = torch.autograd.grad(score(), leaf)
    finally:
        h.remove()
    return g


def slow_path(layer, run_on, px, row_scores):
    """(A - A0, [mean over the path of d y_r / dA for each row r]) by one forward and
    backward per row and path point; A0 the layer's output on the mean-color image."""
    A = output_of(layer, lambda: run_on(px))
    A0 = output_of(layer, lambda: run_on(px.mean(dim=(2, 3), keepdim=True).expand_as(px)))
    grads = []
    for y in row_scores:
        g = sum(loop_gradient(layer, A0 + a * (A - A0), lambda y=y: y(px)) for a in ALPHAS)
        grads.append(g / PATH_STEPS)
    return A - A0, grads


def word_rows(ad, feats_of, caption):
    ids = ad.tokenize(caption)
    idx = ad.word_index(ids)

    def row(w):
        def y(px):
            lp = ad.score_tokens(feats_of(px), ids[None])[0]
            return sum(lp[t] for t in range(len(idx)) if idx[t] == w)
        return y
    return [row(w) for w in range(max(idx) + 1)]


@pytest.mark.parametrize("layer", [None, "encoder.2"])
def test_split_model_equals_slow_loop(layer):
    """Split model (encode, then score): at encode's output and inside the encoder, where
    the encoder's rest runs again from each path point."""
    ad = ToyCaptioner(seed=1, split_words=True).eval()
    pil = image(0)
    e = CaptionExplainer(ad, method="integrated", layer=layer, align="bilinear"
                         ).explained([pil], [CAPTION])[0]
    module = ad.encoder if layer is None else ad.encoder[2]
    D, grads = slow_path(module, ad.encode, ad.prepare(pil),
                         word_rows(ad, ad.encode, CAPTION))
    assert D.abs().max() > 0 and all(g.abs().max() > 0 for g in grads)
    torch.testing.assert_close(e.A, D[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e.G, torch.cat(grads), rtol=1e-4, atol=1e-6)
    ref = torch.relu((torch.cat(grads) * D).sum(1))
    torch.testing.assert_close(e.layer_maps, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("strategy", ["copies", "vjp"])
def test_whole_model_tokens_equal_slow_loop(strategy):
    """Whole model, token layout with a CLS prefix, both strategies."""
    ad = ToyViTCaptioner(seed=2).eval()
    pil = image(1)
    caption = "a blue square"
    e = CaptionExplainer(ad, method="integrated", strategy=strategy, align="bilinear"
                         ).explained([pil], [caption])[0]
    px, _ = ad.prepare(pil)
    ids = ad.tokenize(caption)
    rows = [lambda p, t=t: ad.score_tokens(p, ids[None])[0, t] for t in range(len(ids))]
    D, grads = slow_path(ad.vision.layers[-1], ad.image_tokens, px, rows)
    grid = Tokens(prefix=1).to_grid
    torch.testing.assert_close(e.A, grid(D)[0], rtol=1e-5, atol=1e-6)
    G = torch.cat([grid(g) for g in grads])
    # rows are words; each of this toy's words is one token
    assert e.G.shape == G.shape
    torch.testing.assert_close(e.G, G, rtol=1e-4, atol=1e-6)


class Square(nn.Module):
    def forward(self, x):
        return x * x


def test_completeness_is_exact_where_the_midpoint_rule_is():
    """y = w . (A * A) + b: dy/dA = 2 w A is linear along the path, so the midpoint rule is
    exact and the map before the ReLU sums to y(A) - y(A0) (float64)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Square(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 5)).double().eval()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    ex = ClassExplainer(model, layer="0", method="integrated", align="bilinear")
    e = ex.pipeline.explain_prepared([None], [(x, Geometry.identity((8, 8)))],
                                     ex._rows([[0, 3]], 1), "integrated")[0]
    base = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    with torch.no_grad():
        gap = model(x)[0, [0, 3]] - model(base)[0, [0, 3]]
    sums = (e.A[None] * e.G).sum(dim=(1, 2, 3))
    assert gap.abs().min() > 1e-3
    torch.testing.assert_close(sums, gap, rtol=1e-7, atol=1e-9)


def test_model_left_as_it_was():
    """No hooks left, parameter gradients untouched, train mode restored."""
    ad = ToyViTCaptioner(seed=3).train()
    for p in ad.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in ad.state_dict().items()}
    CaptionExplainer(ad, method="integrated").explain(image(2), "a red circle")
    assert ad.training and all(m.training for m in ad.modules())
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in ad.parameters())
    assert all(torch.equal(v, before[k]) for k, v in ad.state_dict().items())
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in ad.modules()) == 0


@pytest.mark.parametrize("layer", [None, "encoder.2"])
def test_a_batch_of_images_equals_each_alone(layer):
    """Several images in one pass (each its own baseline and path) give each image's maps."""
    ad = ToyCaptioner(seed=4).eval()
    ex = CaptionExplainer(ad, method="integrated", layer=layer, align="bilinear")
    pils, caps = [image(5), image(6)], ["a red circle", "the big blue square"]
    batch = ex.explain_batch(pils, caps)
    for pil, cap, got in zip(pils, caps, batch):
        alone = ex.explain(pil, cap)
        assert alone.maps.abs().max() > 0
        torch.testing.assert_close(got.maps, alone.maps, rtol=1e-5, atol=1e-7)
