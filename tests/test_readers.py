"""The "readers" strategy (mmcam.engine): Grad-CAM's channel weights and HiResCAM's cell
values of a layer that reaches the scores only through affine readers of LayerNorm(A).

Oracles: dense gradients of the same toy in float64 (engine test), and a float64 per-token
forward+backward loop written here against the transformers BLIP classes.
"""

from __future__ import annotations

import pytest
import torch
from test_engine import hooks_left, leaf_hook
from test_hf import bert_tokenizer, save_blip, save_blip_vqa, save_git, save_vit_gpt2
from torch import nn
from toys import image

from mmcam import engine
from mmcam.cam import Reduced, gradcam_plus_plus
from mmcam.errors import MMCamError

transformers = pytest.importorskip("transformers")

import mmcam  # noqa: E402
from mmcam.caption import CaptionExplainer  # noqa: E402
from mmcam.layers import resolve_layer  # noqa: E402
from mmcam.vqa import VQAExplainer  # noqa: E402


class Toy(nn.Module):
    """tokens (B,1+9,D) -> LayerNorm -> key/value readers -> attention from text queries."""

    def __init__(self, norm: bool, D: int = 6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(D, eps=0.5) if norm else nn.Identity()  # eps: no cancellation
        self.key, self.value = nn.Linear(D, 4), nn.Linear(D, 4)
        self.q = nn.Embedding(7, 4)
        self.out = nn.Linear(4, 7)
        with torch.no_grad():  # a LayerNorm with its own weight and bias
            for p in self.norm.parameters():
                p.add_(torch.randn_like(p))

    def forward(self, a: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        y = self.norm(a)
        k, v = self.key(y), self.value(y)
        q = self.q(ids)  # (n,T,4)
        att = (q @ k.transpose(1, 2)).softmax(-1)
        return self.out(torch.tanh(att @ v)).log_softmax(-1).gather(-1, ids[..., None])[..., 0]


@pytest.mark.parametrize("norm", [True, False])
def test_readers_equal_dense_gradients_in_float64(norm):
    torch.manual_seed(0)
    toy = Toy(norm).double()
    A = torch.randn(2, 10, 6, dtype=torch.float64) * 3 + 1
    ids = torch.tensor([[1, 2, 3], [1, 2, 3], [4, 5, 6], [1, 2, 3]])
    coefs = torch.tensor([[1.0, 0, 0], [0, 1, -0.5], [0, 0, 1], [0.3, 0.3, 0.3]])
    image_of = torch.tensor([0, 0, 1, 1])

    def run(feed, rows):
        return toy(feed(A), rows)

    grid = torch.arange(1, 10).reshape(3, 3)
    readers = engine.Readers((toy.key, toy.value), toy.norm if norm else None,
                             grid=lambda a: grid)
    red = engine.layer_gradients(run, ids, coefs, "readers", 2, image_of, 2,
                                 readers=readers).G
    want = []  # dense oracle: one backward per row, in float64
    for r in range(4):
        leaf = A.detach().clone().requires_grad_(True)
        y = (toy(leaf[image_of[r:r + 1]], ids[r:r + 1])[0] * coefs[r].double()).sum()
        (g,) = torch.autograd.grad(y, leaf)
        want.append((g[image_of[r], 1:], A[image_of[r], 1:]))
    alpha = torch.stack([g.mean(0) for g, _ in want])
    hires = torch.stack([(g * a).sum(-1).reshape(3, 3) for g, a in want])
    assert isinstance(red, Reduced) and red.shape == (4, 6, 3, 3) and len(red) == 4
    torch.testing.assert_close(red.alpha, alpha, rtol=1e-9, atol=1e-12 * alpha.abs().max())
    torch.testing.assert_close(red.hires, hires, rtol=1e-9, atol=1e-12 * hires.abs().max())
    assert hooks_left(toy) == 0


def loop64(model, pv, full, k, ids, layer, kwarg="input_ids"):
    """Per caption token, in float64: (alpha over the cells, sum_c G*A per cell)."""
    out = []
    for j in range(len(ids)):
        held = {}
        h = layer.register_forward_hook(leaf_hook(held), prepend=True)
        try:
            logits = model(pixel_values=pv, use_cache=False, **{kwarg: full}).logits
        finally:
            h.remove()
        y = logits[0, k - 1 + j].log_softmax(-1)[ids[j]]
        (g,) = torch.autograd.grad(y, held["A"])
        a = held["A"][0, 1:].detach()
        s = int(a.shape[0] ** 0.5)
        out.append((g[0, 1:].mean(0), (g[0, 1:] * a).sum(-1).reshape(s, s)))
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    return save_blip(tmp_path_factory.mktemp("blip"))


@pytest.mark.parametrize("layer", [None, "vision_model.encoder.layers[-1]"])
def test_blip_captions_equal_a_float64_loop(blip, layer):
    """At BLIP's default layer (the vision tower's output: post-LayerNorm tokens, read by the
    cross-attention key/value projections alone) and at the last block in front of that
    LayerNorm."""
    ad32 = mmcam.load_model(blip)
    ad64 = mmcam.load_model(blip, dtype=torch.float64)
    caption = "a red circle left of the big square"
    pil = image(4, (50, 40))
    model = ad64.model
    pv = ad64.prepare(pil)[0]["pixel_values"]
    ids = ad64.tokenize(caption)
    prefix = ad64._prefix()
    full = torch.cat([torch.tensor(prefix), ids])[None]
    params = {n: p.detach().clone() for n, p in ad32.model.named_parameters()}
    assert ad32.layer == "vision_model"
    alpha, hires = loop64(model, pv, full, len(prefix), ids.tolist(),
                          resolve_layer(model, layer or "vision_model"))
    for ad, tol in ((ad64, 1e-5), (ad32, 1e-4)):  # the adapter's logits are float32
        ex = CaptionExplainer(ad, method="hirescam", layer=layer)
        assert ex.strategy == "readers"
        e = ex.explained([pil], [caption])[0]
        assert e.rows.info[1] == caption.split()  # one token per word here
        torch.testing.assert_close(e.G.alpha.double(), alpha, rtol=tol,
                                   atol=tol * float(alpha.abs().max()))
        torch.testing.assert_close(e.G.hires.double(), hires, rtol=tol,
                                   atol=tol * float(hires.abs().max()))
        assert hooks_left(ad.model) == 0
    # dense float64 gradients (vjp) stay float64 through the pipeline: exact there too
    dense = CaptionExplainer(ad64, method="hirescam", strategy="vjp", layer=layer).explained(
        [pil], [caption])[0]
    assert dense.G.dtype == dense.A.dtype == torch.float64
    torch.testing.assert_close((dense.G * dense.A).sum(1), hires, rtol=1e-6,
                               atol=1e-6 * float(hires.abs().max()))
    for n, p in ad32.model.named_parameters():  # parameters and their gradients untouched
        assert p.grad is None and torch.equal(p, params[n])
    assert not ad32.model.training


def test_vit_gpt2_readers_equal_a_float64_loop(tmp_path):
    """VisionEncoderDecoder (ViT + GPT-2): the encoder's layernorm, then each GPT-2 layer's
    cross-attention c_attn (a Conv1D) reads the last ViT block."""
    path = save_vit_gpt2(tmp_path / "vg")
    ad = mmcam.load_model(path)
    model = mmcam.load_model(path, dtype=torch.float64).model
    readers = ad.readers(resolve_layer(ad.model, ad.layer))
    assert readers is not None and len(readers.modules) == 2
    caption = "a red circle left of the big blue square"
    pil = image(5, (40, 40))
    ex = CaptionExplainer(ad, method="hirescam")
    assert ex.strategy == "readers"
    e = ex.explained([pil], [caption])[0]
    ids = ad.tokenize(caption)
    prefix = ad._prefix()
    full = torch.cat([torch.tensor(prefix), ids])[None]
    pv = ad.prepare(pil)[0]["pixel_values"].double()
    alpha, hires = loop64(model, pv, full, len(prefix), ids.tolist(),
                          resolve_layer(model, ad.layer), ad.family.text_kwarg)
    _, index = ad.word_groups(ids, caption)
    words = range(len(caption.split()))
    alpha = torch.stack([alpha[[t for t, x in enumerate(index) if x == w]].sum(0) for w in words])
    hires = torch.stack([hires[[t for t, x in enumerate(index) if x == w]].sum(0) for w in words])
    torch.testing.assert_close(e.G.alpha.double(), alpha, rtol=1e-4,
                               atol=1e-4 * float(alpha.abs().max()))
    torch.testing.assert_close(e.G.hires.double(), hires, rtol=1e-4,
                               atol=1e-4 * float(hires.abs().max()))
    assert hooks_left(ad.model) == 0


def test_shipped_shapes_blip_hirescam_is_rounding_noise_from_dense_float32_gradients():
    """The README's claim: in front of a LayerNorm, sum_c G_c A_c = u eps/(var+eps) is ~1e-5
    of its terms, so from dense float32 gradients it is mostly rounding error; the readers
    strategy computes it from u directly."""
    from mmcam import scenes

    ad = mmcam.load_model("shapes-blip")
    model = mmcam.load_model("shapes-blip", dtype=torch.float64).model
    pil = scenes.generate(1, seed=5)[0].image
    caption = "a red circle above a blue square"
    ids = ad.tokenize(caption)
    prefix = ad._prefix()
    full = torch.cat([torch.tensor(prefix), ids])[None]
    pv = ad.prepare(pil)[0]["pixel_values"].double()
    block = "vision_model.encoder.layers[-1]"  # in front of post_layernorm
    _, hires = loop64(model, pv, full, len(prefix), ids.tolist(), resolve_layer(model, block))

    def err(h: torch.Tensor, want: torch.Tensor) -> float:
        return float((h.double() - want).abs().max() / want.abs().max())

    fast = CaptionExplainer(ad, method="hirescam", layer=block).explained([pil], [caption])[0]
    dense = CaptionExplainer(ad, method="hirescam", strategy="vjp", layer=block).explained(
        [pil], [caption])[0]
    assert len(fast.rows.info[1]) == len(ids)
    assert err(fast.G.hires, hires) < 1e-4
    assert err((dense.G * dense.A).sum(1), hires) > 1e-2
    # the default layer, the LayerNorm's output: dense float32 gradients are fine there
    _, out_hires = loop64(model, pv, full, len(prefix), ids.tolist(), model.vision_model)
    at_out = CaptionExplainer(ad, method="hirescam", strategy="vjp").explained(
        [pil], [caption])[0]
    assert err((at_out.G * at_out.A).sum(1), out_hires) < 1e-4


def test_readers_maps_and_sentence_map_equal_the_dense_path_for_gradcam(blip):
    ad = mmcam.load_model(blip)
    caption = "the small squares and a blue circle"
    pil = image(6, (40, 52))
    fast = CaptionExplainer(ad).explain_batch([pil, image(7, (30, 30))], [caption, None])
    slow = CaptionExplainer(ad, strategy="vjp").explain_batch([pil, image(7, (30, 30))],
                                                             [caption, None])
    for f, s in zip(fast, slow):
        assert f.words == s.words
        scale = float(s.layer_maps.abs().max())
        torch.testing.assert_close(f.layer_maps, s.layer_maps, rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(f.sentence_map, s.sentence_map, rtol=1e-4,
                                   atol=1e-5 * float(s.sentence_map.max()))
    one = CaptionExplainer(ad).explain(pil, caption)  # batched rows equal one image alone
    torch.testing.assert_close(one.layer_maps, fast[0].layer_maps)


def test_blip_vqa_answer_and_contrast_equal_a_float64_loop(tmp_path):
    path = save_blip_vqa(tmp_path / "vqa")
    ad = mmcam.load_model(path)
    model = mmcam.load_model(path, dtype=torch.float64).model
    pil = image(8, (44, 36))
    question = "what color is the circle?"
    ex = VQAExplainer(ad, method="hirescam", align="bilinear")
    assert isinstance(ex.explained(pil, question, "red").G, Reduced)
    r = ex.explain(pil, question, "red", contrast="blue", top_k=3)
    pv = ad.prepare(pil)[0]["pixel_values"].double()
    q = torch.tensor([bert_tokenizer()(question)["input_ids"]])
    layer = resolve_layer(model, "vision_model.encoder.layers[-1]")

    def hires(answer_ids):
        held = {}
        h = layer.register_forward_hook(leaf_hook(held), prepend=True)
        try:
            img = model.vision_model(pixel_values=pv)[0]
            qe = model.text_encoder(input_ids=q, encoder_hidden_states=img)[0]
            logits = model.text_decoder(input_ids=torch.tensor([[5] + answer_ids[:-1]]),
                                        encoder_hidden_states=qe, use_cache=False).logits[0]
        finally:
            h.remove()
        y = sum(logits[j].log_softmax(-1)[t] for j, t in enumerate(answer_ids))
        (g,) = torch.autograd.grad(y, held["A"])
        return (g[0, 1:] * held["A"][0, 1:].detach()).sum(-1).reshape(4, 4)

    red, blue = hires([9, 3]), hires([10, 3])
    want = ad.prepare(pil)[1].to_image(torch.stack([red, red - blue]).clamp_min(0)).double()
    got = torch.stack([r.map, r.contrast_map]).double()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert hooks_left(ad.model) == 0


def test_readers_refuses_what_it_cannot_do(blip, tmp_path):
    ad = mmcam.load_model(blip)
    pil = image(1)
    with pytest.raises(MMCamError, match="readers.*gradcam, hirescam"):
        CaptionExplainer(ad, method="gradcam++", strategy="readers").explain(pil, "a red circle")
    with pytest.raises(MMCamError, match="readers.*guided"):
        CaptionExplainer(ad, method="guided-gradcam", strategy="readers").explain(pil, "a red")
    assert CaptionExplainer(ad, method="gradcam++").strategy == "vjp"  # auto: full gradients
    other = CaptionExplainer(ad, layer="vision_model.encoder.layers[0]")
    assert other.strategy == "vjp"  # the first block is read by the second, not by readers
    git = mmcam.load_model(save_git(tmp_path / "git"))
    with pytest.raises(MMCamError, match="declares the modules"):  # a block the next one reads
        CaptionExplainer(git, strategy="readers",
                         layer="git.image_encoder.vision_model.encoder.layers[0]").explain(
            pil, "a red circle")
    e = CaptionExplainer(ad).explained([pil], ["a red circle"])[0]
    with pytest.raises(MMCamError, match="full gradients"):
        gradcam_plus_plus(e.A[None], e.G[0:1])


@pytest.mark.parametrize("layer", [None, "git.image_encoder.vision_model.encoder.layers[-1]"])
def test_git_readers_equal_a_float64_loop(tmp_path, layer):
    """GIT: its default, the image encoder's output (post_layernorm tokens read by
    visual_projection's first linear layer), and its last vision block in front of that norm;
    Grad-CAM's weights and HiResCAM's cells against a float64 per-token loop. At the block,
    dense float32 HiResCAM is rounding noise (the reason for the default)."""
    from test_hf import loop_grads

    path = save_git(tmp_path / "git")
    ad = mmcam.load_model(path)
    ad64 = mmcam.load_model(path, dtype=torch.float64)
    assert ad.layer == "git.image_encoder"
    caption = "a red circle left of the big square"
    pil = image(4, (50, 40))
    ex = CaptionExplainer(ad, method="hirescam", layer=layer)
    assert ex.strategy == "readers"
    e = ex.explained([pil], [caption])[0]
    ids = ad.tokenize(caption)
    prefix = ad._prefix()
    full = torch.cat([torch.tensor(prefix), ids])[None]
    pv = ad64.prepare(pil)[0]["pixel_values"]
    k = len(prefix)
    pairs = loop_grads(ad64.model, resolve_layer(ad64.model, layer or ad.layer), pv, full,
                       "input_ids", [k - 1 + j for j in range(len(ids))], ids.tolist())
    alpha = torch.stack([g[0, 1:].mean(0) for _, g in pairs])
    s = int((pairs[0][0].shape[1] - 1) ** 0.5)
    hires = torch.stack([(g[0, 1:] * a[0, 1:]).sum(-1).reshape(s, s) for a, g in pairs])
    torch.testing.assert_close(e.G.alpha.double(), alpha, rtol=1e-4,
                               atol=1e-4 * float(alpha.abs().max()))
    torch.testing.assert_close(e.G.hires.double(), hires, rtol=1e-4,
                               atol=1e-4 * float(hires.abs().max()))
    dense = CaptionExplainer(ad, method="hirescam", strategy="vjp", layer=layer).explained(
        [pil], [caption])[0]
    err = float(((dense.G * dense.A).sum(1).double() - hires).abs().max() / hires.abs().max())
    assert (err > 1e-2) if layer else (err < 1e-3)
    assert hooks_left(ad.model) == 0
