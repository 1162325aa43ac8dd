"""Maps of bounded memory (:mod:`mmcam.pixelmaps`): pixel maps made on demand equal an
independent bilinear sampler and the explain path's former eager computation; a result of a
2-megapixel image with the word limit's 64 words holds a bounded number of tensor bytes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.bench_result_memory import tensor_bytes
from mmcam import pixelmaps
from mmcam.cam import gradcam, localize
from mmcam.caption import CaptionExplainer
from mmcam.geometry import Geometry
from mmcam.limits import MAX_WORDS
from mmcam.pixelmaps import CACHE_BYTES, PixelMaps
from tests.toys import WORDS, ToyCaptioner


def sample(lm: np.ndarray, geom: Geometry, cell) -> np.ndarray:
    """The oracle, in float64 and by hand: pixel x of the image sits at input coordinate
    ``X = sx (x + 1/2) + tx``, at grid position ``u = (X - c0) / s`` clamped to the grid
    (cell j centred on ``c0 + j s``; by default ``s = W_in / w``, ``c0 = s / 2``), read by
    bilinear interpolation of the 4 cells around it; 0 where X lies outside the input's
    image content."""
    n, h, w = lm.shape
    W, H = geom.image_size
    Win, Hin = geom.input_size
    if cell is None:
        cell = ((Win / w / 2, Win / w), (Hin / h / 2, Hin / h))
    out = np.zeros((n, H, W))
    x0, y0, x1, y1 = geom.content or (0, 0, Win, Hin)
    X = geom.scale[0] * (np.arange(W) + 0.5) + geom.offset[0]
    Y = geom.scale[1] * (np.arange(H) + 0.5) + geom.offset[1]
    u = np.clip((X - cell[0][0]) / cell[0][1], 0, w - 1)
    v = np.clip((Y - cell[1][0]) / cell[1][1], 0, h - 1)
    for yi in range(H):
        j0 = min(int(np.floor(v[yi])), h - 1)
        j1, fy = min(j0 + 1, h - 1), v[yi] - j0
        for xi in range(W):
            if not (max(x0, 0) <= X[xi] < min(x1, Win) and max(y0, 0) <= Y[yi] < min(y1, Hin)):
                continue
            i0 = min(int(np.floor(u[xi])), w - 1)
            i1, fx = min(i0 + 1, w - 1), u[xi] - i0
            out[:, yi, xi] = ((1 - fy) * ((1 - fx) * lm[:, j0, i0] + fx * lm[:, j0, i1])
                              + fy * ((1 - fx) * lm[:, j1, i0] + fx * lm[:, j1, i1]))
    return out


GEOMETRIES = {
    "resize": (Geometry.identity((61, 47)).resize((28, 28)), None),
    "crop_cell": (Geometry.identity((61, 47)).resize_short(32).center_crop((28, 28)),
                  ((1.5, 4.0), (2.5, 4.0))),
    "pad": (Geometry.identity((50, 30)).resize_short(18, max_long=28).pad(0, 5, 0, 5),
            None),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_maps_on_demand_equal_a_bilinear_sampler_by_hand(name):
    geom, cell = GEOMETRIES[name]
    lm = torch.rand(5, 7, 7, generator=torch.Generator().manual_seed(1))
    want = sample(lm.double().numpy(), geom, cell)
    pm = PixelMaps(lm, geom, cell)
    assert pm.shape == (5, geom.image_size[1], geom.image_size[0])
    tol = 1e-6 * float(np.abs(want).max())
    np.testing.assert_allclose(pm.stack().numpy(), want, rtol=0, atol=tol)
    for i in range(5):
        np.testing.assert_allclose(pm[i].numpy(), want[i], rtol=0, atol=tol)
    assert pm.maxima() == pytest.approx(list(want.max(axis=(1, 2))), rel=1e-6)


def test_chunks_and_cache_change_no_map(monkeypatch):
    """Maps made one, a few or all at a time are the same floats; the cache stays bounded."""
    geom, cell = GEOMETRIES["crop_cell"]
    lm = torch.rand(9, 7, 7, generator=torch.Generator().manual_seed(2))
    full = geom.to_image(lm, cell)
    monkeypatch.setattr(pixelmaps, "CHUNK_BYTES", 2 * full[0].numel() * 4)  # 2 maps a chunk
    monkeypatch.setattr(pixelmaps, "CACHE_BYTES", 3 * full[0].numel() * 4)  # 3 maps kept
    pm = PixelMaps(lm, geom, cell)
    assert [s for s, _ in pm.chunks()] == [0, 2, 4, 6, 8]
    assert torch.equal(torch.cat([m for _, m in pm.chunks()]), full)
    for _ in range(2):
        for i in (0, 5, 8, 3, -1):
            assert torch.equal(pm[i], full[i])
    assert pm.nbytes() == lm.numel() * 4 + 3 * full[0].numel() * 4
    assert pm.boxes() == localize(full)
    assert pm.resized((10, 9)).shape == (9, 9, 10)
    again = pickle.loads(pickle.dumps(pm))  # the app's sessions may be copied
    assert torch.equal(again[5], full[5]) and again.boxes() == pm.boxes()


@pytest.fixture(scope="module")
def big():
    """The worst case: the word limit's 64 words on a 2-megapixel image (under the pixel
    limit, so explained at its own size)."""
    g = torch.Generator().manual_seed(0)
    arr = (torch.rand(1200, 1740, 3, generator=g) * 255).to(torch.uint8).numpy()
    img = Image.fromarray(arr)
    caption = " ".join(WORDS[k % len(WORDS)] for k in range(MAX_WORDS))
    ex = CaptionExplainer(ToyCaptioner())
    return ex, img, caption, ex.explain(img, caption)


def test_a_big_result_holds_bounded_memory(big, tmp_path):
    """64 words on 2.09 Mpx: the maps at the image's size would be 65 x 2.09 M x 4 bytes =
    543 MB; the result holds at most CACHE_BYTES of them plus its layer maps, before and
    after everything is drawn from it."""
    _, img, _, res = big
    n = len(res.words)
    assert n == MAX_WORDS and res.image.size == img.size
    bound = CACHE_BYTES + 2 * 2**20
    assert tensor_bytes(res) < 2**20  # explained: nothing made on the image's pixels yet
    res.save(tmp_path / "out")  # every map drawn: grids, overlays, page, result.json
    res.overlay(3, full_size=True)
    assert res.sentence_map.shape == (img.height, img.width)  # made for the caller, not kept
    assert tensor_bytes(res) <= bound
    assert res.pixels.nbytes() <= bound


def test_big_result_maps_equal_the_former_eager_computation(big):
    """Maps, boxes and the sentence map equal what the explain path computed eagerly
    before (``geometry.to_image`` of all layer maps at once, ``localize`` of those)."""
    ex, img, caption, res = big
    e = ex.explained([img], [caption])[0]
    idx = [0, 1, 31, 63]
    words = e.geometry.to_image(e.layer_maps[idx], e.cell)  # rows: see the chunks test
    assert torch.equal(res.layer_maps, e.layer_maps)
    panels = res.panels()
    assert torch.equal(torch.stack([panels[i].map for i in idx]), words)
    sentence = e.geometry.to_image(gradcam(e.A[None], e.G.sum(0)[None]), e.cell)[0]
    assert torch.equal(res.sentence_map, sentence)
    assert [res.boxes[i] for i in idx] == localize(words)
    assert res.sentence_box == localize(sentence)[0]
    d = res.to_dict()
    assert [d["words"][i]["map_max"] for i in idx] == [float(m.max()) for m in words]
