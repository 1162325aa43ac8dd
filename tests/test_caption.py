"""Word maps from one batched backward equal a forward/backward per word, and an oracle."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from mmcam.cam import METHODS, PATH_METHODS, PATH_STEPS, localize, upsample
from mmcam.caption import CaptionExplainer
from mmcam.errors import MMCamError
from tests.toys import ToyCaptioner, image

CAPTION = "a red circle left of the big blue square"


def per_word_loop(ad, pil, caption, method):
    """Reference: encoder + decoder forward and one backward for every word, separately;
    for a path method one per word and path point (the features moved to
    ``A0 + alpha (A - A0)``, A0 those of the image filled with its mean color per channel)."""
    fn = METHODS[method]
    ids = ad.tokenize(caption)
    idx = ad.word_index(ids)
    maps, lps = [], []
    px = ad.prepare(pil)
    A = ad.encode(px).detach()
    A0 = ad.encode(px.mean(dim=(2, 3), keepdim=True).expand_as(px)).detach()
    alphas = [(j + 0.5) / PATH_STEPS for j in range(PATH_STEPS)]
    for w in range(max(idx) + 1):
        def word(feats, w=w):
            lp = ad.score_tokens(feats, ids[None])[0]
            return sum(lp[t] for t in range(len(idx)) if idx[t] == w)

        feats = A.clone().requires_grad_(True)
        y = word(feats)
        (g,) = torch.autograd.grad(y, feats)
        if method in PATH_METHODS:
            gs = []
            for a in alphas:
                at = (A0 + a * (A - A0)).requires_grad_(True)
                gs.append(torch.autograd.grad(word(at), at)[0])
            maps.append(fn(A - A0, torch.stack(gs).mean(0))[0])
        else:
            maps.append(fn(A, g)[0])
        lps.append(float(y.detach()))
    W, H = pil.size
    return upsample(torch.stack(maps), (H, W)), lps


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("chunk", [None, 3, 1])
def test_batched_equals_per_word_loop(method, chunk):
    ad = ToyCaptioner(seed=1, split_words=True).eval()
    pil = image(0)
    res = CaptionExplainer(ad, method=method, chunk_size=chunk,
                           align="bilinear").explain(pil, CAPTION)
    ref, lps = per_word_loop(ad, pil, CAPTION, method)
    assert res.words == CAPTION.split()
    assert ref.abs().max() > 0
    torch.testing.assert_close(res.maps, ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.logprobs, lps, rtol=1e-5)
    assert res.maps.shape == (9, 30, 40)


def test_subword_tokens_are_merged_into_one_word():
    ad = ToyCaptioner(seed=2, split_words=True).eval()
    res = CaptionExplainer(ad).explain(image(1), "the big circle")
    ids = ad.tokenize("the big circle")
    assert len(ids) == 4 and res.words == ["the", "big", "circle"]
    with torch.no_grad():
        lp = ad.score_tokens(ad.encode(ad.prepare(image(1))), ids[None])[0]
    assert res.logprobs[1] == pytest.approx(float(lp[1] + lp[2]), rel=1e-6)


def test_sentence_map_is_the_map_of_the_summed_logprob():
    ad = ToyCaptioner(seed=3).eval()
    pil = image(2)
    res = CaptionExplainer(ad, chunk_size=2).explain(pil, "a blue square")
    feats = ad.encode(ad.prepare(pil)).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(ad.score_tokens(feats, ad.tokenize("a blue square")[None]).sum(),
                               feats)
    ref = upsample(METHODS["gradcam"](feats.detach(), g), (30, 40))[0]
    torch.testing.assert_close(res.sentence_map, ref, rtol=1e-5, atol=1e-7)
    assert res.sentence_box == localize(ref)[0]


class PooledLinear(nn.Module):
    """Hand-built decoder: log p(k | prev) = log_softmax(M v + B[prev]), v = mean_ij A."""

    def __init__(self):
        super().__init__()
        self.M = torch.tensor([[1.0, -2.0], [0.5, 1.0], [-1.0, 0.0]])
        self.B = torch.tensor([[0.0, 0.3, -0.2], [0.1, 0.0, 0.4], [0.2, -0.1, 0.0]])

    def prepare(self, im):
        return torch.zeros(1, 3, 2, 2)

    def encode(self, px):  # the features are fixed: A_0 = [[1,2],[3,4]], A_1 = [[4,3],[2,1]]
        A = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[4.0, 3.0], [2.0, 1.0]]])
        return A.expand(px.shape[0], 2, 2, 2) + 0 * px.sum()

    def score_tokens(self, A, ids):
        v = A.mean((2, 3))
        prev = torch.cat([torch.zeros_like(ids[:, :1]), ids[:, :-1]], 1)
        logits = v[:, None, :] @ self.M.T + self.B[prev]
        return torch.log_softmax(logits, -1).gather(2, ids[..., None])[..., 0]

    def generate(self, A, max_len=20, beam_size=1):
        return torch.tensor([[1, 2]])

    def tokenize(self, text):
        return torch.tensor([int(t) for t in text.split()])

    def words(self, ids):
        return [str(int(t)) for t in ids]


def test_one_word_against_hand_formula():
    # d log p_k / dA_cij = (M[k,c] - sum_j p_j M[j,c]) / 4, uniform over ij, so
    # Grad-CAM = relu(sum_c alpha_c A_c) with alpha_c = (M[k,c] - E_p M[:,c]) / 4.
    dec = PooledLinear()
    res = CaptionExplainer(dec).explain(torch.zeros(3, 2, 2), "1 2")
    v = np.array([2.5, 2.5])
    A = np.array([[[1, 2], [3, 4]], [[4, 3], [2, 1]]], dtype=float)
    M = dec.M.numpy().astype(float)
    for t, (prev, k) in enumerate([(0, 1), (1, 2)]):
        z = M @ v + dec.B.numpy()[prev]
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        alpha = (M[k] - p @ M) / 4
        expected = np.maximum((alpha[:, None, None] * A).sum(0), 0)
        np.testing.assert_allclose(res.layer_maps[t].numpy(), expected, rtol=1e-5, atol=1e-7)
        assert res.logprobs[t] == pytest.approx(np.log(p[k]), rel=1e-5, abs=1e-6)  # float32


def test_generated_caption_and_model_state():
    ad = ToyCaptioner(seed=4)
    ad.train()
    ad.encoder[0].weight.grad = torch.ones_like(ad.encoder[0].weight)
    before = {k: v.clone() for k, v in ad.state_dict().items()}
    res = CaptionExplainer(ad, method="guided-gradcam").explain(image(3))
    assert res.generated and res.words and res.caption == " ".join(res.words)
    with torch.no_grad():
        ad.eval()
        gen = ad.generate(ad.encode(ad.prepare(image(3))))[0]
        ad.train()
    assert res.words == ad.words(gen)
    assert all(m.training for m in ad.modules())
    assert torch.equal(ad.encoder[0].weight.grad, torch.ones_like(ad.encoder[0].weight))
    assert all(p.grad is None for n, p in ad.named_parameters() if n != "encoder.0.weight")
    assert all("forward" not in m.__dict__ for m in ad.modules())
    assert all(torch.equal(v, before[k]) for k, v in ad.state_dict().items())
    assert res.guided is not None and res.guided.shape == (len(res.words), 3, 24, 24)


def test_guided_gradcam_per_word_equals_loop():
    from mmcam.guided import guided_relus

    ad = ToyCaptioner(seed=5).eval()
    pil = image(4)
    res = CaptionExplainer(ad, method="guided-gradcam", chunk_size=2,
                           align="bilinear").explain(pil, "a red circle")
    ids = ad.tokenize("a red circle")
    for t in range(3):
        px = ad.prepare(pil).requires_grad_(True)
        with guided_relus(ad):
            feats = ad.encode(px)
            lp = ad.score_tokens(feats, ids[None])[0, t]
            (gx,) = torch.autograd.grad(lp, px)
        cam = upsample(res.layer_maps[t : t + 1], (24, 24))[0]
        want = gx[0] * cam
        torch.testing.assert_close(res.guided[t], want, rtol=1e-5,
                                   atol=1e-5 * float(want.abs().max()))


def test_bad_input():
    ad = ToyCaptioner().eval()
    ex = CaptionExplainer(ad)
    with pytest.raises(MMCamError, match="caption is empty"):
        ex.explain(image(), "   ")
    with pytest.raises(MMCamError, match="image not found"):
        ex.explain("/no/such/file.png")
    with pytest.raises(MMCamError, match="not a captioning adapter"):
        CaptionExplainer(object())
    with pytest.raises(MMCamError, match="unknown method"):
        CaptionExplainer(ad, method="gradcam+++")


def test_save_writes_grid_pngs_json_and_html(tmp_path):
    ad = ToyCaptioner(seed=6).eval()
    res = CaptionExplainer(ad).explain(image(5), "a red circle")
    res.save(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["grid.png", "grid_per_map_scale.png", "index.html", "result.json",
                            "sentence.png",
                            "word_00_a.png", "word_01_red.png", "word_02_circle.png"])
    data = json.loads((tmp_path / "result.json").read_text())
    assert [w["word"] for w in data["words"]] == ["a", "red", "circle"]
    assert data["words"][1]["logprob"] == pytest.approx(res.logprobs[1])
    assert data["words"][1]["map_max"] == pytest.approx(float(res.maps[1].max()))
    page = (tmp_path / "index.html").read_text()
    # the image once and each of the 4 maps once (the browser colors and blends them)
    assert page.count('class="item"') == 4 and page.count("data:image/png;base64,") == 1 + 4
    from PIL import Image

    assert Image.open(tmp_path / "word_01_red.png").size == (40, 30)


def test_saving_again_into_a_folder_leaves_one_result(tmp_path):
    """A second result saved into the same folder: the first one's per-word files that the
    second does not write are gone (they were left mixed with the new ones); a user's own
    file there, and files of a folder without result.json, are kept."""
    ad = ToyCaptioner(seed=6).eval()
    ex = CaptionExplainer(ad)
    ex.explain(image(5), "a red circle").save(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "word_99_mine.txt").write_text("mine")
    ex.explain(image(5), "a square").save(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["grid.png", "grid_per_map_scale.png", "index.html", "result.json",
                            "sentence.png", "word_00_a.png", "word_01_square.png",
                            "notes.txt", "word_99_mine.txt"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "word_05_x.png").write_bytes(b"not ours")  # no result.json: not touched
    ex.explain(image(5), "a square").save(other)
    assert (other / "word_05_x.png").read_bytes() == b"not ours"
