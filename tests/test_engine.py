"""The general engine: any layer, layouts, both strategies, several images, threads, dtypes.

Every expected map comes from a slow per-row loop: one forward and one backward per explained
row, activations taken by a hook written here, the grid formed by hand and Grad-CAM computed
by its formula (alpha_k = mean_ij G_kij, L = ReLU(sum_k alpha_k A_k)).
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toys import ToyCaptioner, ToyViTCaptioner, ToyVQA, image

from mmcam.caption import CaptionExplainer, word_membership
from mmcam.classify import ClassExplainer
from mmcam.engine import layer_gradients
from mmcam.errors import MMCamError
from mmcam.layers import ChannelsLast, Custom, Tokens, resolve_layer, tap
from mmcam.vqa import VQAExplainer

CAPTION = "a red circle left of the big square"


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def leaf_hook(held: dict):
    """A forward hook that stores the layer's output (element 0 of a tuple, field 0 of a
    ModelOutput) as a leaf
    ``held["A"]`` and lets the model continue from a copy of it."""

    def hook(m, inp, o):
        if isinstance(o, dict):  # a transformers ModelOutput: its first field
            key = list(o.keys())[0]
            held["A"] = o[key].detach().requires_grad_(True)
            out = o.__class__(**o)
            out[key] = held["A"] * 1
            return out
        t = o[0] if isinstance(o, tuple) else o
        held["A"] = t.detach().requires_grad_(True)
        new = held["A"] * 1
        return (new, *o[1:]) if isinstance(o, tuple) else new

    return hook


def loop_grads(layer: nn.Module, scores_of_row, n_rows: int):
    """Per row: a fresh forward with a hand-written hook and one backward -> (A, G) raw."""
    out = []
    for i in range(n_rows):
        held = {}
        h = layer.register_forward_hook(leaf_hook(held))
        try:
            with torch.enable_grad():
                y = scores_of_row(i)
        finally:
            h.remove()
        (g,) = torch.autograd.grad(y, held["A"])
        out.append((held["A"].detach(), g))
    return out


def cam_by_hand(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Grad-CAM on (C,h,w) grids, written out."""
    alpha = G.mean(dim=(1, 2))
    return torch.clamp((alpha[:, None, None] * A).sum(0), min=0)


def tokens_to_grid(x: torch.Tensor, prefix: int) -> torch.Tensor:
    """(1, prefix + h*w, D) -> (D, h, w) by explicit loops over cells (row-major)."""
    n = x.shape[1] - prefix
    s = int(round(n**0.5))
    grid = torch.zeros(x.shape[2], s, s)
    for k in range(n):
        grid[:, k // s, k % s] = x[0, prefix + k]
    return grid


def assert_maps_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


# ----------------------------------------------------------------------------- layer paths


def test_layer_paths_with_negative_indices():
    m = ToyViTCaptioner()
    assert resolve_layer(m, "vision.layers[-1]") is m.vision.layers[1]
    assert resolve_layer(m, "vision.layers.-2") is m.vision.layers[0]
    assert resolve_layer(m, "vision.layers[0].linear1") is m.vision.layers[0].linear1
    assert resolve_layer(m, m.decoder) is m.decoder
    toy = ToyCaptioner()
    assert resolve_layer(toy, "encoder[-1]") is toy.encoder[3]
    with pytest.raises(MMCamError, match="no layer named 'vision.blocks'"):
        resolve_layer(m, "vision.blocks")
    with pytest.raises(MMCamError, match="index 5 is out of range"):
        resolve_layer(m, "vision.layers[5]")
    with pytest.raises(MMCamError, match="not part of the model"):
        resolve_layer(m, nn.Linear(2, 2))


# ----------------------------------------------------------------------------- strategies


@pytest.mark.parametrize("strategy", ["copies", "vjp"])
@pytest.mark.parametrize("layer", [None, "encoder.1", "encoder.2"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_split_captioner_any_layer_equals_loop(strategy, layer, chunk):
    """Split adapter (encode/score_tokens) with sub-word tokens, at the encode output and at
    layers inside the encoder (encoder.1 is an in-place ReLU)."""
    torch.manual_seed(0)
    ad = ToyCaptioner(seed=3, split_words=True).eval()
    pil = image(4)
    res = CaptionExplainer(ad, layer=layer, strategy=strategy, chunk_size=chunk,
                           align="bilinear").explain(
        pil, CAPTION)
    ids = ad.tokenize(CAPTION)
    member = word_membership(ad, ids)
    px = ad.prepare(pil)
    target = ad.encoder[3] if layer is None else resolve_layer(ad, layer)
    pairs = loop_grads(target, lambda i: (ad.score_tokens(ad.encode(px), ids[None])[0]
                                          * member[i]).sum(), member.shape[0])
    want = torch.stack([cam_by_hand(A[0], G[0]) for A, G in pairs])
    assert_maps_close(res.layer_maps, want)
    up = F.interpolate(want[:, None], size=(30, 40), mode="bilinear", align_corners=False)[:, 0]
    assert_maps_close(res.maps, up)
    assert hooks_left(ad) == 0


@pytest.mark.parametrize("strategy", ["copies", "vjp"])
@pytest.mark.parametrize("chunk", [None, 3])
def test_whole_model_token_layout_equals_loop(strategy, chunk):
    """A model without an encode split (ViT tower + transformer decoder), explained by a hook
    at ``vision.layers[-1]`` whose (1, 1+16, D) output is read as a 4x4 grid."""
    m = ToyViTCaptioner(seed=1).eval()
    pil = image(2)
    res = CaptionExplainer(m, strategy=strategy, chunk_size=chunk).explain(pil, CAPTION)
    ids = m.tokenize(CAPTION)
    px, _ = m.prepare(pil)
    pairs = loop_grads(m.vision.layers[1],
                       lambda i: m.score_tokens(px, ids[None])[0, i], len(ids))
    want = torch.stack([cam_by_hand(tokens_to_grid(A, 1), tokens_to_grid(G, 1))
                        for A, G in pairs])
    assert_maps_close(res.layer_maps, want)
    assert res.layer == "vision.layers[-1]"
    assert hooks_left(m) == 0


@pytest.mark.parametrize("strategy", ["copies", "vjp"])
def test_rows_with_their_own_token_ids(strategy):
    """Candidate answers written as text: each row has its own ids and sums its tokens."""
    m = ToyViTCaptioner(seed=2).eval()
    px, _ = m.prepare(image(3))
    cands = ["a red circle", "the blue square", "a red circle", "small big left"]
    ids = torch.stack([m.tokenize(c) for c in cands])
    coefs = torch.tensor([[1.0, 1, 1], [1, 1, 1], [0, 0, 1], [1, 0, -1]])
    with tap(m, "vision.layers[-1]") as t:
        def run(feed, rows):
            with t.run(feed):
                return m.score_tokens(px, rows)

        got = layer_gradients(run, ids, coefs, strategy, chunk_size=3)
    pairs = loop_grads(m.vision.layers[1],
                       lambda i: (m.score_tokens(px, ids[i:i + 1])[0] * coefs[i]).sum(), 4)
    want = torch.cat([G for _, G in pairs])
    torch.testing.assert_close(got.G, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
    lp = m.score_tokens(px, ids).detach()
    torch.testing.assert_close(got.scores, lp, rtol=1e-5, atol=1e-6)


class _ChannelsLastNet(nn.Module):
    """conv -> (B,h,w,C) block (the explained layer) -> mean -> linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.to_last = nn.Sequential(nn.ReLU())
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        y = self.to_last(self.conv(x).permute(0, 2, 3, 1))
        return self.head(y.mean(dim=(1, 2)) + y.amax(dim=(1, 2)))


class _ShuffledTokens(nn.Module):
    """Tokens in a fixed shuffled order (as ViLT's patches): (B, 1 + 16, D)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.patch = nn.Conv2d(3, 5, 4, stride=4)
        self.block = nn.Linear(5, 5)
        self.head = nn.Linear(5, 3)
        self.register_buffer("perm", torch.randperm(16))

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)[:, self.perm]
        t = torch.cat([t.mean(1, keepdim=True), t], 1)
        t = torch.tanh(self.block(t))
        return self.head(t[:, 1:].amax(1) + t[:, 0])


def test_channels_last_and_custom_layouts_equal_loop():
    x = torch.rand(1, 3, 16, 16)
    net = _ChannelsLastNet().eval()
    r = ClassExplainer(net, layer="to_last", layout=ChannelsLast()).explain_pixels(
        x, torch.tensor([[0, 1, 2, 3]]))
    pairs = loop_grads(net.to_last, lambda i: net(x)[0, i], 4)
    assert_maps_close(r["layer_maps"][0], torch.stack(
        [cam_by_hand(A[0].permute(2, 0, 1), G[0].permute(2, 0, 1)) for A, G in pairs]))

    sh = _ShuffledTokens().eval()
    inv = torch.argsort(sh.perm)

    def unshuffle(t):  # drop the prefix, put the patches back in row-major order
        return t[:, 1:][:, inv].transpose(1, 2).reshape(t.shape[0], t.shape[2], 4, 4)

    r = ClassExplainer(sh, layer="block", layout=Custom(unshuffle)).explain_pixels(
        x, torch.tensor([[0, 1, 2]]))
    pairs = loop_grads(sh.block, lambda i: sh(x)[0, i], 3)

    def by_hand(t):
        grid = torch.zeros(5, 4, 4)
        for k in range(16):
            cell = int(sh.perm[k])  # token 1+k holds patch `cell`
            grid[:, cell // 4, cell % 4] = t[0, 1 + k]
        return grid

    assert_maps_close(r["layer_maps"][0],
                      torch.stack([cam_by_hand(by_hand(A), by_hand(G)) for A, G in pairs]))


def test_token_layout_errors_are_clear():
    with pytest.raises(MMCamError, match="not a square grid"):
        Tokens(prefix=0).to_grid(torch.zeros(1, 10, 3))
    assert Tokens(prefix=2, grid=(2, 3)).to_grid(torch.zeros(1, 8, 3)).shape == (1, 3, 2, 3)


# ----------------------------------------------------------------------------- several images


def test_explain_batch_equals_one_by_one():
    pils = [image(s, size) for s, size in ((1, (40, 30)), (2, (40, 30)), (3, (33, 50)))]
    caps = ["a red circle", None, "the big blue square left of a small circle"]
    for model, kw in ((ToyCaptioner(seed=1).eval(), {}),
                      (ToyViTCaptioner(seed=1).eval(), {"strategy": "vjp"})):
        ex = CaptionExplainer(model, chunk_size=4, **kw)
        batch = ex.explain_batch(pils, caps, max_len=6)
        for pil, cap, b in zip(pils, caps, batch):
            one = ex.explain(pil, cap, max_len=6)
            assert b.words == one.words
            assert_maps_close(b.maps, one.maps)
            torch.testing.assert_close(b.sentence_map, one.sentence_map, rtol=1e-5, atol=1e-7)
            assert b.boxes == one.boxes
    vqa = VQAExplainer(ToyVQA(seed=2).eval())
    qs = ["what color is the circle?", "is the square red?", "what is the thing?"]
    batch = vqa.explain_batch(pils, qs, contrasts=[None, "blue", "green"])
    for pil, q, c, b in zip(pils, qs, [None, "blue", "green"], batch):
        one = vqa.explain(pil, q, contrast=c)
        assert (b.answer, b.unknown_words) == (one.answer, one.unknown_words)
        assert_maps_close(torch.stack([m for _, _, m in b.top_answers]),
                          torch.stack([m for _, _, m in one.top_answers]))
    clf = ClassExplainer(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                       nn.Flatten(), nn.Linear(4, 3)).eval(), layer="1",
                         prepare=lambda im: ToyVQA().prepare(im))
    batch = clf.explain_batch(pils, top=2, guided=False)
    for pil, b in zip(pils, batch):
        one = clf.explain(pil, top=2, guided=False)
        assert b.classes == one.classes
        assert_maps_close(b.maps, one.maps)


# ----------------------------------------------------------------------------- state, threads


def test_two_threads_on_one_model_get_their_own_maps():
    model = ToyViTCaptioner(seed=4).eval()
    ex = CaptionExplainer(model, strategy="copies")
    pils = [image(10), image(11)]
    want = [ex.explain(p, CAPTION).maps for p in pils]
    assert not torch.allclose(want[0], want[1])
    got: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(i: int) -> None:
        try:
            start.wait()
            for _ in range(6):
                got[i].append(ex.explain(pils[i], CAPTION).maps)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in (0, 1):
        for m in got[i]:
            assert_maps_close(m, want[i])
    assert hooks_left(model) == 0


def test_state_restored_and_hooks_removed_when_the_call_raises():
    model = ToyViTCaptioner(seed=0)
    model.train()
    model.decoder.eval()
    flags = {n: m.training for n, m in model.named_modules()}
    calls = {"n": 0}
    real = model.score_tokens

    def failing(px, ids):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("boom")
        return real(px, ids)

    model.score_tokens = failing
    with pytest.raises(RuntimeError, match="boom"):
        CaptionExplainer(model, strategy="copies", chunk_size=2).explain(image(1), CAPTION)
    assert calls["n"] == 2
    assert hooks_left(model) == 0
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_layer_that_runs_twice_or_never_is_a_clear_error():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.unused = nn.Conv2d(3, 3, 1)
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.conv(self.conv(x)).mean((2, 3)))

    net = Twice().eval()
    with pytest.raises(MMCamError, match="runs more than once"):
        ClassExplainer(net, layer="conv").explain_pixels(torch.rand(1, 3, 8, 8))
    with pytest.raises(MMCamError, match="never reached layer 'unused'"):
        ClassExplainer(net, layer="unused").explain_pixels(torch.rand(1, 3, 8, 8))
    assert hooks_left(net) == 0


# ----------------------------------------------------------------------------- dtype, guided


def test_bfloat16_model_on_cpu_scores_in_float32():
    m32 = ToyViTCaptioner(seed=7).eval()
    m16 = ToyViTCaptioner(seed=7).eval().to(torch.bfloat16)
    r32 = CaptionExplainer(m32).explain(image(5), CAPTION)
    r16 = CaptionExplainer(m16).explain(image(5), CAPTION)
    assert r16.layer_maps.dtype == torch.float32 and torch.isfinite(r16.maps).all()
    # bf16 keeps ~3 significant digits: the maps agree to a few percent of their peak
    err = (r16.layer_maps - r32.layer_maps).abs().max() / r32.layer_maps.abs().max()
    assert err < 0.1, err
    assert max(abs(a - b) for a, b in zip(r16.logprobs, r32.logprobs)) < 0.1
    assert next(m16.parameters()).dtype == torch.bfloat16


def test_guided_backprop_refuses_non_relu_networks():
    class GeluCaptioner(ToyCaptioner):
        def __init__(self):
            super().__init__(seed=0)
            self.encoder[1] = nn.GELU()
            self.encoder[3] = nn.GELU()

    with pytest.raises(MMCamError, match="defined for ReLU networks.*GELU"):
        CaptionExplainer(GeluCaptioner().eval(), method="guided-gradcam").explain(
            image(0), "a red circle")

    class FunctionalRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(F.relu(self.conv(x)).mean((2, 3)))

    with pytest.raises(MMCamError, match="no nn.ReLU module"):
        ClassExplainer(FunctionalRelu().eval(), layer="conv").explain_pixels(
            torch.rand(1, 3, 8, 8), guided=True)
    assert hooks_left(GeluCaptioner()) == 0


# ----------------------------------------------------------------------------- oracle


class _TinyViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(8)
        d = 12
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 17, d))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, 2, 24, dropout=0.0, batch_first=True,
                                       norm_first=True) for _ in range(2))
        self.head = nn.Linear(d, 5)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1) + self.pos
        for b in self.blocks:
            t = b(t)
        return self.head(t[:, 0])


@pytest.mark.parametrize("strategy", ["copies", "vjp"])
def test_vit_classifier_matches_pytorch_grad_cam_reshape_transform(strategy):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _TinyViT().eval()
    x = torch.rand(2, 3, 16, 16)

    def reshape_transform(t):
        return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    ours = ClassExplainer(model, layer="blocks[-1].norm1", layout=Tokens(prefix=1),
                          strategy=strategy).explain_pixels(x, torch.tensor([[1], [3]]))
    with pgc.GradCAM(model, [model.blocks[-1].norm1], reshape_transform=reshape_transform) as c:
        ref = c(input_tensor=x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
    # pytorch-grad-cam scales ReLU'd maps by (m - min) / (max + 1e-7) at the grid, resizes
    # them bilinearly (half-pixel centres) to the input and scales again: do the same to ours
    def scale(m):
        m = m - m.amin(dim=(1, 2), keepdim=True)
        return m / (m.amax(dim=(1, 2), keepdim=True) + 1e-7)

    m = ours["layer_maps"][:, 0].double()
    up = F.interpolate(scale(m)[:, None], size=(16, 16), mode="bilinear", align_corners=False)
    assert ref.max() > 0.99
    torch.testing.assert_close(scale(up[:, 0]).float(), torch.from_numpy(ref).float(),
                               rtol=1e-5, atol=1e-5)
