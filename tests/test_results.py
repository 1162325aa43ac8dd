"""Rendering of results: overlays against matplotlib's colormap blended by hand, the bounded
display size and the full-size overlay on demand, the page's data (one gray map per panel),
Jupyter's ``_repr_html_`` / ``_repr_png_``, and the page itself in headless Chromium."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

import mmcam
from mmcam import results
from mmcam.caption import CaptionExplainer
from mmcam.classify import ClassExplainer
from mmcam.errors import MMCamError
from mmcam.scenes import generate
from mmcam.viz import colorize
from mmcam.vqa import VQAExplainer
from tests.toys import ToyCaptioner, image

CHROMIUM = "/usr/bin/chromium"
CAPTION = "a red circle left of the big blue square"


def jet(v: np.ndarray) -> np.ndarray:
    """The oracle's colors: matplotlib's jet at ``v`` (float64), as 0-255 floats."""
    return np.round(colormaps["jet"](np.clip(v.astype(np.float64), 0, 1))[..., :3] * 255)


def blended(img: np.ndarray, v: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return (1 - alpha) * img.astype(np.float64) + alpha * jet(v)


def page_data(page: str) -> dict:
    """The JSON the page's script draws from, and the image its <img> holds (``base``)."""
    found = re.findall(r", D = (\{.*?\});\n", page)
    assert len(found) == 1
    img = re.findall(r'<img class="still" alt="the image" src="([^"]+)">', page)
    assert len(img) == 1 and page.count(img[0]) == 1  # the image once
    return dict(json.loads(found[0]), base=img[0])


def decode(url: str) -> np.ndarray:
    head, data = url.split(",", 1)
    assert head in ("data:image/png;base64", "data:image/jpeg;base64")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


@pytest.fixture(scope="module")
def small():
    """A caption of a 40x30 image (under the display size: drawn at its own size)."""
    return CaptionExplainer(ToyCaptioner(seed=9).eval()).explain(image(5), CAPTION)  # no map 0


@pytest.fixture(scope="module")
def large():
    """A caption of a 1000x700 image: over the display size."""
    return CaptionExplainer(ToyCaptioner(seed=6).eval()).explain(
        image(8, (1000, 700)), "a red circle")


def test_colorize_is_matplotlibs_colormap():
    g = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        v = g.uniform(-0.1, 1.1, (64, 50)).astype(dtype)
        v[0, :6] = [0.0, 1.0, 0.5, 1 / 256, 255 / 256, 0.999999]
        want = (colormaps["viridis"](np.clip(v, 0, 1))[..., :3] * 255).round()
        np.testing.assert_array_equal(colorize(v, "viridis"), want)
        want = (colormaps["jet"](np.clip(v, 0, 1))[..., :3] * 255).round()
        np.testing.assert_array_equal(colorize(torch.from_numpy(v)), want)


def test_overlay_pixels_are_the_colormap_blended_with_the_image(small, tmp_path):
    img = np.asarray(small.image.convert("RGB"))
    words_max = float(small.maps.max())  # the words share one scale; the sentence its own
    small.save(tmp_path)
    for k in range(len(small.words)):
        v = small.maps[k].numpy() / words_max
        want = blended(img, v)
        got = np.asarray(small.overlay(k, box=False), dtype=np.float64)
        assert np.abs(got - want).max() <= 1.0, k
        own = np.asarray(small.overlay(k, box=False, shared=False), dtype=np.float64)
        # an all-zero map stays zero (the documented 1e-12 floor of the divisor)
        want_own = blended(img, small.maps[k].numpy() / max(float(small.maps[k].max()), 1e-12))
        assert np.abs(own - want_own).max() <= 1.0
        # the saved file: the same pixels, with the 15%-of-max box drawn in lime
        name = f"word_{k:02d}_{results._slug(small.words[k])}.png"
        saved = np.asarray(Image.open(tmp_path / name).convert("RGB"), dtype=np.float64)
        box = small.boxes[k]
        outline = np.zeros(img.shape[:2], bool)
        if box is not None:
            x0, y0, x1, y1 = box
            outline[y0:y1, x0:x1] = True
            outline[y0 + 2:y1 - 2, x0 + 2:x1 - 2] = False
            assert (saved[outline] == [0, 255, 0]).all()
        assert np.abs(saved[~outline] - want[~outline]).max() <= 1.0
    sentence = np.asarray(Image.open(tmp_path / "sentence.png").convert("RGB"), np.float64)
    want = blended(img, small.sentence_map.numpy() / float(small.sentence_map.max()))
    x0, y0, x1, y1 = small.sentence_box
    inner = np.zeros(img.shape[:2], bool)
    inner[y0 + 2:y1 - 2, x0 + 2:x1 - 2] = True
    assert np.abs(sentence[inner] - want[inner]).max() <= 1.0


def test_large_image_drawn_at_display_size_full_size_on_demand(large, tmp_path):
    w, h = large.image.size
    dw, dh = results.DISPLAY_SIZE, round(h * results.DISPLAY_SIZE / w)
    assert large.display_size() == (dw, dh) == (768, 538)
    assert large.overlay("red").size == (dw, dh)
    assert all(o.size == (dw, dh) for o in large.overlays())
    full = large.overlay("red", full_size=True, box=False)
    assert full.size == (w, h)
    v = large.maps[1].numpy() / float(large.maps.max())
    got = np.asarray(full, dtype=np.float64)
    assert np.abs(got - blended(np.asarray(large.image), v)).max() <= 1.0
    # the display-size overlay: the map averaged over each display pixel (bilinear with
    # antialiasing, as torch does it), colored and blended with the image shrunk alike
    shrunk = torch.nn.functional.interpolate(
        large.maps[1][None, None], size=(dh, dw), mode="bilinear", antialias=True)[0, 0]
    got = np.asarray(large.overlay(1, box=False), dtype=np.float64)
    base = large.image.resize((dw, dh), Image.BILINEAR, reducing_gap=2.0)
    assert np.abs(got - blended(np.asarray(base), shrunk.numpy() / float(large.maps.max()))
                  ).max() <= 1.0
    large.save(tmp_path / "d")
    large.save(tmp_path / "f", full_size=True)
    assert Image.open(tmp_path / "d" / "word_01_red.png").size == (dw, dh)
    assert Image.open(tmp_path / "f" / "word_01_red.png").size == (w, h)
    with pytest.raises(MMCamError, match="no map titled 'green'"):
        large.overlay("green")
    with pytest.raises(MMCamError, match="position below 4"):
        large.overlay(4)


def test_page_holds_the_image_once_and_each_map_once_as_gray(small):
    page = small.to_html()
    assert page.startswith("<!doctype html>") and "http" not in page  # no external file
    for word in small.words + ["whole caption"]:
        assert f">{word}</span>" in page
    d = page_data(page)
    assert (d["w"], d["h"]) == small.image.size and d["alpha"] == 0.5
    np.testing.assert_array_equal(decode(d["base"]), np.asarray(small.image.convert("RGB")))
    maps = list(small.maps) + [small.sentence_map]
    assert len(d["maps"]) == len(maps) == len(d["scale"]) == len(d["boxes"])
    words_max = float(small.maps.max())
    for k, (url, m) in enumerate(zip(d["maps"], maps)):
        gray = decode(url).astype(np.float64)
        want = np.round(m.numpy().astype(np.float64) / max(float(m.max()), 1e-12) * 255)
        assert np.abs(gray - want).max() <= 1, k
        group_max = words_max if k < len(small.words) else float(m.max())
        assert d["scale"][k] == pytest.approx(max(float(m.max()), 1e-12) / group_max, rel=1e-6)
    assert d["boxes"] == [list(b) if b else None for b in small.boxes + [small.sentence_box]]
    lut = np.frombuffer(base64.b64decode(d["lut"]), np.uint8).reshape(256, 3)
    np.testing.assert_array_equal(lut, jet((np.arange(256) + 0.5) / 256))


def test_page_of_many_words_on_a_large_noisy_image_stays_under_5_mb():
    """The worst case for the page's bytes: the word limit's 64 maps and the image all noise
    (a result built by hand: rendering takes any maps)."""
    g = torch.Generator().manual_seed(0)
    n, size = 64, (800, 790)
    noisy = image(9, size)
    maps = torch.rand(n, size[1], size[0], generator=g)
    res = results.CaptionExplanation(
        image=noisy, caption=" ".join(["w"] * n), words=["w"] * n, logprobs=[-1.0] * n,
        maps=maps, layer_maps=maps[:, :4, :4], boxes=[None] * n, sentence_map=maps.sum(0),
        sentence_box=None, method="gradcam", generated=False)
    page = res.to_html()
    assert len(page.encode()) < 5_000_000
    d = page_data(page)
    assert len(d["maps"]) == n + 1 and (d["w"], d["h"]) == (768, 758)
    assert decode(d["maps"][0]).shape[1] < 768  # the maps were held smaller to fit


@pytest.fixture(scope="module")
def shipped():
    scene = generate(1, seed=77)[0].image
    cap = CaptionExplainer(mmcam.load_model("shapes-captioner")).explain(scene)
    vqa = VQAExplainer(mmcam.load_model("shapes-vqa")).explain(
        scene, "what color is the circle?", top_k=3)
    cls = ClassExplainer(mmcam.load_model("shapes-classifier")).explain(scene, top=2)
    return {"caption": cap, "vqa": vqa, "class": cls}


def grid_size(result) -> tuple[int, int]:
    """The grid's layout, by hand: the image and each panel in tiles of TILE px on the longer
    side, 6 a row, 6 px apart; two 16 px text lines under each tile; a title line on top."""
    w, h = result.image.size
    s = min(1.0, results.TILE / max(w, h))
    tw, th = max(1, round(w * s)), max(1, round(h * s))
    n = 1 + len(result.panels())
    cols = min(6, n)
    rows = -(-n // cols)
    return cols * (tw + 6) + 6, (16 + 12) + rows * (th + 2 * 16 + 6)


@pytest.mark.parametrize("kind", ["caption", "vqa", "class"])
def test_jupyter_reprs(shipped, kind):
    r = shipped[kind]
    png = r._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(png)).size == grid_size(r)
    one, two = r._repr_html_(), r._repr_html_()
    assert not one.lstrip().startswith("<!doctype") and "<div" in one
    ids = [re.findall(r'id="(mmcam-[0-9a-f]+)"', x) for x in (one, two)]
    assert len(ids[0]) == 1 and len(ids[1]) == 1 and ids[0] != ids[1]
    assert f"getElementById('{ids[0][0]}')" in one and ids[1][0] not in one
    panels = r.panels()
    for p in panels:
        assert f">{html.escape(p.title)}</span>" in one
    assert len(page_data(one)["maps"]) == len(panels)


def close(shown: np.ndarray, want: np.ndarray) -> None:
    """The browser's overlay against the library's: the page holds each map as 8 bits, so a
    pixel may take the neighbouring colormap entry (at most jet's largest step between
    neighbours times alpha 0.5, plus rounding), and on average they agree."""
    lut = jet((np.arange(256) + 0.5) / 256)
    bound = np.ceil(0.5 * np.abs(np.diff(lut, axis=0)).max()) + 1
    d = np.abs(shown - want)
    assert d.max() <= bound and d.mean() < 0.5, (d.max(), bound, d.mean())


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing")
def test_page_in_chromium_shows_the_overlays_and_two_renderings_do_not_clash(shipped, small,
                                                                            tmp_path):
    """Click a word: the canvas shows the saved overlay (within the 8-bit map's rounding);
    the own-scale box; Esc: the plain image. Two results in one document keep apart."""
    from playwright.sync_api import sync_playwright

    cap = shipped["caption"]
    cap.save(tmp_path / "cap")
    k = 2
    saved = np.asarray(Image.open(tmp_path / "cap" / f"word_{k:02d}_"
                                  f"{results._slug(cap.words[k])}.png").convert("RGB"), int)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("**/*", lambda route: route.abort()
                       if not route.request.url.startswith(("file:", "data:"))
                       else route.continue_())
            page.goto((tmp_path / "cap" / "index.html").as_uri())

            def shown(root: str, i: int) -> np.ndarray:
                page.wait_for_function(
                    f"document.querySelector('{root} canvas').dataset.shown === '{i}'")
                url = page.evaluate(f"document.querySelector('{root} canvas').toDataURL()")
                return decode(url)[..., :3].astype(int)

            plain = shown(".mmcam", 0)
            np.testing.assert_array_equal(plain, np.asarray(cap.image.convert("RGB")))
            page.click(f'.item[data-i="{k + 1}"]')
            close(shown(".mmcam", k + 1), saved)
            page.check("input.own")
            close(shown(".mmcam", k + 1), np.asarray(cap.overlay(k, shared=False), int))
            page.keyboard.press("Escape")
            np.testing.assert_array_equal(shown(".mmcam", 0), plain)
            # a viewer that runs no script shows the plain image
            still = browser.new_page(java_script_enabled=False)
            still.goto((tmp_path / "cap" / "index.html").as_uri())
            assert still.locator("img.still").is_visible()
            assert not still.locator("canvas").is_visible()
            still.close()

            # two renderings in one notebook-like document
            page.set_content("<html><body>" + small._repr_html_() + cap._repr_html_()
                             + "</body></html>")
            roots = page.evaluate("[...document.querySelectorAll('.mmcam')].map(e => e.id)")
            assert len(set(roots)) == 2
            a, b = (f"#{r}" for r in roots)
            shown(a, 0)
            shown(b, 0)
            page.click(f'{b} .item[data-i="{k + 1}"]')
            close(shown(b, k + 1), saved)
            np.testing.assert_array_equal(shown(a, 0), np.asarray(small.image.convert("RGB")))
            page.click(f'{a} .item[data-i="2"]')
            close(shown(a, 2), np.asarray(small.overlay(1), int))
            assert page.evaluate(f"document.querySelector('{b} canvas').dataset.shown") == \
                str(k + 1)
        finally:
            browser.close()
    assert errors == []
