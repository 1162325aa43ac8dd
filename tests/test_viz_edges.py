"""Drawing at the edges: very wide, very tall and one-pixel images (boxes scaled to a display
or tile size stay valid boxes of at least one pixel, inside the image), and captions and
questions holding line breaks, tabs or other white space (labels are drawn on one line)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import mmcam
from mmcam import viz
from mmcam.cli import main
from mmcam.results import _slug
from mmcam.scenes import generate

SIZES = [(4000, 10), (10, 4000), (1000, 10), (1, 1), (2000, 1)]
SPACES = ["\n", "\r\n", "\t", "\u2028", " \n\t "]


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    return generate(1, seed=5)[0].image


@pytest.fixture(scope="module")
def models():
    return {k: mmcam.load_model(f"shapes-{k}") for k in ("captioner", "vqa", "classifier")}


@pytest.fixture(scope="module")
def spaced(scene, models, tmp_path_factory):
    """The caption and the question written with plain spaces: their results and saves."""
    out = tmp_path_factory.mktemp("spaced")
    cap = mmcam.CaptionExplainer(models["captioner"]).explain(scene, caption="a yellow square")
    vqa = mmcam.VQAExplainer(models["vqa"]).explain(scene, "what color is the square?")
    cap.save(out / "caption")
    vqa.save(out / "vqa")
    return {"caption": (cap, out / "caption"), "vqa": (vqa, out / "vqa")}


def images(scene: Image.Image, size: tuple[int, int]) -> list[Image.Image]:
    """A plain image and the scene squashed to ``size``."""
    return [Image.new("RGB", size, (230, 230, 230)), scene.resize(size, Image.BILINEAR)]


def valid(box, size) -> bool:
    w, h = size
    return 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h


def check_pngs(out: Path, names: set[str], result) -> None:
    """Every expected file is there, each PNG opens (overlays at the display size), and
    the page's boxes are valid boxes in display pixels."""
    have = {p.name for p in out.iterdir()}
    assert names <= have, sorted(names - have)
    display = result.display_size()
    for name in names:
        if name.endswith(".png"):
            with Image.open(out / name) as im:
                im.load()
                if not name.startswith("grid"):
                    assert im.size == display, name
    json.loads((out / "result.json").read_text())
    page = result.page_data()
    assert (page["w"], page["h"]) == display
    for box in page["boxes"]:
        assert box is None or valid(box, display), box


def caption_files(r) -> set[str]:
    names = {f"word_{i:02d}_{_slug(w)}.png" for i, w in enumerate(r.words)}
    if r.guided is not None:
        names |= {f"guided_{i:02d}_{_slug(w)}.png" for i, w in enumerate(r.words)}
    return names | {"sentence.png", "grid.png", "grid_per_map_scale.png", "index.html",
                    "result.json"}


def vqa_files(r) -> set[str]:
    names = {"answer.png"} | {f"top_{i}_{_slug(a)}.png"
                              for i, (a, _) in enumerate(r.top_probabilities)}
    if r.contrast is not None:
        names.add("contrast.png")
    return names | {"grid.png", "grid_per_map_scale.png", "index.html", "result.json"}


# ------------------------------------------------------------------ extreme aspect ratios


def test_caption_results_of_extreme_sizes_save_completely(scene, models, tmp_path):
    for size in SIZES:
        for k, img in enumerate(images(scene, size)):
            r = mmcam.CaptionExplainer(models["captioner"]).explain(img)
            out = tmp_path / f"{size[0]}x{size[1]}_{k}"
            r.save(out)
            check_pngs(out, caption_files(r), r)
            assert r.grid().size[0] > 0  # drawn again outside save


def test_given_caption_of_extreme_sizes_saves_completely(scene, models, tmp_path):
    for size in SIZES:
        img = images(scene, size)[1]
        r = mmcam.CaptionExplainer(models["captioner"]).explain(img, caption="a yellow square")
        out = tmp_path / f"{size[0]}x{size[1]}"
        r.save(out)
        check_pngs(out, caption_files(r), r)
        r.save(tmp_path / f"full{size[0]}x{size[1]}", full_size=True)


def test_vqa_results_of_extreme_sizes_save_completely(scene, models, tmp_path):
    for size in SIZES:
        for k, img in enumerate(images(scene, size)):
            r = mmcam.VQAExplainer(models["vqa"]).explain(img, "what color is the square?")
            out = tmp_path / f"{size[0]}x{size[1]}_{k}"
            r.save(out)
            check_pngs(out, vqa_files(r), r)


def test_class_results_of_extreme_sizes_save_completely(scene, models, tmp_path):
    for size in SIZES:
        for k, img in enumerate(images(scene, size)):
            r = mmcam.ClassExplainer(models["classifier"]).explain(img, top=3)
            out = tmp_path / f"{size[0]}x{size[1]}_{k}"
            files = r.save(out)
            check_pngs(out, {f.name for f in files}, r)
            for i in range(len(r.classes)):
                assert r.overlay(i).size == r.display_size()


def test_cli_saves_extreme_sizes_completely(scene, tmp_path):
    for size in SIZES:
        tag = f"{size[0]}x{size[1]}"
        path = tmp_path / f"{tag}.png"
        Image.new("RGB", size, (230, 230, 230)).save(path)
        runs = {
            "caption": ["caption", str(path)],
            "vqa": ["vqa", str(path), "what color is the square?"],
            "classify": ["classify", str(path), "--model", "shapes-classifier"],
        }
        for kind, args in runs.items():
            out = tmp_path / f"{kind}_{tag}"
            assert main(args + ["--out", str(out)]) == 0, (kind, size)
            saved = json.loads((out / "result.json").read_text())
            assert saved["image_size"] == list(size)
            pngs = {p.name for p in out.glob("*.png")}
            assert {"grid.png", "grid_per_map_scale.png"} <= pngs and (out / "index.html").is_file()
            if kind == "caption":
                assert {f"word_{i:02d}_{_slug(w['word'])}.png"
                        for i, w in enumerate(saved["words"])} | {"sentence.png"} <= pngs
            elif kind == "vqa":
                assert "answer.png" in pngs
                assert len([p for p in pngs if p.startswith("top_")]) == len(
                    saved["top_answers"])
            else:
                assert {f"class{i}_{c['id']}_box.png"
                        for i, c in enumerate(saved["classes"])} <= pngs
            for p in pngs:
                with Image.open(out / p) as im:
                    im.load()


def test_scale_box_keeps_boxes_valid_by_hand():
    s = viz.scale_box
    assert s(None, 0.1, 0.1, (1, 1)) is None
    # a 10x4000 image drawn as a 1x240 tile (sx 0.1, sy 0.06): 0.5 rounds to 0, so the box
    # would be empty; it keeps one pixel
    assert s((0, 1940, 5, 4000), 0.1, 0.06, (1, 240)) == (0, 116, 1, 240)
    # the last column: 0.9 rounds to 1, the far edge; the box moves back onto the image
    assert s((9, 0, 10, 4000), 0.1, 0.06, (1, 240)) == (0, 0, 1, 240)
    # a 4000x10 image as a 240x1 tile (sx 0.06, sy 0.1): the last row, and rows 6..8
    assert s((3553, 9, 4000, 10), 0.06, 0.1, (240, 1)) == (213, 0, 240, 1)
    assert s((100, 6, 200, 9), 0.06, 0.1, (240, 1)) == (6, 0, 12, 1)
    # 4000x10 at the display size 768x2 (sx 0.192, sy 0.2)
    assert s((0, 0, 4000, 10), 0.192, 0.2, (768, 2)) == (0, 0, 768, 2)
    assert s((58, 4, 3723, 5), 0.192, 0.2, (768, 2)) == (11, 1, 715, 2)
    # one pixel: unchanged at scale 1, and one pixel scaled up stays the whole image
    assert s((0, 0, 1, 1), 1.0, 1.0, (1, 1)) == (0, 0, 1, 1)
    assert s((0, 0, 1, 1), 4.0, 4.0, (4, 4)) == (0, 0, 4, 4)
    # 2000x1 at 768x1 (sy 1): a box of the whole row
    assert s((0, 0, 2000, 1), 0.384, 1.0, (768, 1)) == (0, 0, 768, 1)
    # rounding beyond the image is cut back to it
    assert s((0, 0, 7, 7), 1.5, 1.5, (9, 9)) == (0, 0, 9, 9)
    # without a size: at least one pixel, not below 0
    assert s((0, 0, 5, 5), 0.1, 0.1) == (0, 0, 1, 1)
    assert s((3, 4, 10, 12), 1.0, 1.0) == (3, 4, 10, 12)
    # ordinary boxes scale as before (rounded ends)
    assert s((10, 20, 110, 220), 0.5, 0.25, (400, 300)) == (5, 5, 55, 55)
    for w, h in [(1, 240), (240, 1), (768, 2), (2, 768), (1, 1)]:
        for box in [(0, 0, 1, 1), (9, 3999, 10, 4000), (3999, 9, 4000, 10), (4, 4, 6, 6)]:
            assert valid(s(box, w / 4000, h / 4000, (w, h)), (w, h))
            assert valid(s(box, w / 10, h / 10, (w, h)), (w, h))


def test_draw_boxes_draws_degenerate_boxes_as_one_pixel():
    """An empty box (x1 == x0 or y1 == y0) is drawn one pixel wide, not an error."""
    im = viz.draw_boxes(Image.new("RGB", (1, 240)), [(0, 116, 0, 240)])
    a = np.asarray(im)
    assert a[116, 0].tolist() == [0, 255, 0] and a[239, 0].tolist() == [0, 255, 0]
    im = viz.draw_boxes(Image.new("RGB", (240, 1)), [(213, 0, 240, 0)], width=1)
    assert np.asarray(im)[0, 220].tolist() == [0, 255, 0]


# ------------------------------------------------------------------ white space in labels


@pytest.mark.parametrize("space", SPACES)
def test_text_helpers_draw_white_space_as_one_space(space):
    text = f"what color{space}is the square?"
    canvas = Image.new("RGB", (400, 30), "white")
    draw = ImageDraw.Draw(canvas)
    assert viz.fit_text(draw, text, 1000) == "what color is the square?"
    assert viz.fit_text(draw, text, 60) == viz.fit_text(draw, "what color is the square?", 60)
    assert viz._text_width(draw, text, 13) == viz._text_width(draw, "what color is the square?",
                                                              13)

    def drawn(t: str) -> np.ndarray:
        im = Image.new("RGB", (400, 30), "white")
        viz.draw_text(ImageDraw.Draw(im), (2, 2), t)
        return np.asarray(im)

    np.testing.assert_array_equal(drawn(text), drawn("what color is the square?"))
    tiles = [Image.new("RGB", (60, 40), "gray")] * 2
    a = viz.sheet(tiles, [[f"a{space}b"], ["c"]], f"Q: {text}")
    b = viz.sheet(tiles, [["a b"], ["c"]], "Q: what color is the square?")
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_one_line_collapses_every_white_space_run():
    assert viz.one_line("a\nb\r\nc\td\u2028e\u2029f\x0bg\x0ch\x85i\xa0j  \n k") == \
        "a b c d e f g h i j k"
    assert viz.one_line("plain words") == "plain words"


def saved_like(result, files, out, saved):
    """``result`` saved to ``out`` completely, its grids pixel-equal to those in ``saved``."""
    result.save(out)
    check_pngs(out, files, result)
    for name in ("grid.png", "grid_per_map_scale.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(out / name)),
                                      np.asarray(Image.open(saved / name)))


@pytest.mark.parametrize("space", SPACES)
def test_captions_with_line_breaks_save_and_draw_as_with_spaces(scene, models, spaced,
                                                                tmp_path, space):
    want, saved = spaced["caption"]
    r = mmcam.CaptionExplainer(models["captioner"]).explain(scene, caption=f"a yellow{space}square")
    assert r.words == want.words
    saved_like(r, caption_files(r), tmp_path / "a", saved)
    np.testing.assert_array_equal(np.asarray(r.grid()), np.asarray(want.grid()))


@pytest.mark.parametrize("space", SPACES)
def test_questions_with_line_breaks_save_and_draw_as_with_spaces(scene, models, spaced,
                                                                 tmp_path, space):
    want, saved = spaced["vqa"]
    r = mmcam.VQAExplainer(models["vqa"]).explain(scene, f"what color{space}is the square?")
    assert r.answer == want.answer
    saved_like(r, vqa_files(r), tmp_path / "a", saved)


def test_plot_titles_are_one_line(scene, models):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = mmcam.CaptionExplainer(models["captioner"]).explain(scene,
                                                            caption="a yellow\n\nsquare")
    fig = r.plot()
    try:
        assert "\n" not in fig._suptitle.get_text()
        assert fig._suptitle.get_text().startswith("caption: a yellow square")
    finally:
        plt.close(fig)


def test_cli_with_line_breaks_in_caption_and_question(scene, tmp_path):
    path = tmp_path / "scene.png"
    scene.save(path)
    assert main(["caption", str(path), "--caption", "a yellow\nsquare",
                 "--out", str(tmp_path / "c")]) == 0
    assert main(["vqa", str(path), "what color\nis the square?", "--out", str(tmp_path / "v")]
                ) == 0
    for out in ("c", "v"):
        for name in ("grid.png", "grid_per_map_scale.png", "index.html", "result.json"):
            assert (tmp_path / out / name).is_file()
    assert (tmp_path / "c" / "sentence.png").is_file()
    assert (tmp_path / "v" / "answer.png").is_file()



def test_fit_text_cuts_like_the_letter_by_letter_loop_in_few_measurements(monkeypatch):
    """A 5000-letter word was cut one letter at a time (25 s to save one caption); the binary
    search gives the letter-by-letter loop's prefix (the oracle, written out here) and
    measures the text O(log n) times."""
    from PIL import Image, ImageDraw

    from mmcam import viz

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))

    def slow(text, width, size=13):
        text = viz.drawable(viz.one_line(text))
        if viz._text_width(draw, text, size) <= width:
            return text
        while text and viz._text_width(draw, text + "…", size) > width:
            text = text[:-1]
        return text + "…"

    for text in ("a red circle", "x" * 300, "Wide WWW words iii", "größer 東京 circle", "ab"):
        for width in (0, 5, 17, 40, 90, 400):
            assert viz.fit_text(draw, text, width) == slow(text, width), (text, width)
    calls = []
    real = viz._text_width
    monkeypatch.setattr(viz, "_text_width", lambda *a: calls.append(1) or real(*a))
    assert viz.fit_text(draw, "x" * 5000, 100).endswith("…")
    assert len(calls) <= 2 + 14  # the whole text, then log2(5000) < 13 halvings


@pytest.mark.parametrize("size,want", [
    ((240, 1), (240, 64)),     # 240 / 3.75 = 64: the strip stretched across
    ((1, 240), (64, 240)),
    ((240, 24), (240, 64)),    # a 10:1 panorama's tile
    ((240, 64), (240, 64)),    # exactly 3.75:1: unchanged
    ((240, 120), (240, 120)),  # wider tiles are left alone
    ((40, 20), (40, 20)),      # small images too (no upscaling)
    ((100, 10), (100, 27)),    # round(100 / 3.75) = round(26.67)
    ((1, 1), (1, 1)),
])
def test_cap_aspect_by_hand(size, want):
    assert viz.cap_aspect(size, 3.75) == want


def test_grid_tiles_of_a_strip_are_tall_enough_to_see(scene, models):
    """A 4000x8 image's grid tiles are 240x64 (the longer side fitted to TILE, the shorter
    stretched to TILE / 3.75), not 240x1: the grid is as tall as that, and its first map tile
    shows the map (its pixels differ from the plain image's tile)."""
    from mmcam.results import TILE

    img = scene.resize((4000, 8), Image.BILINEAR)
    r = mmcam.ClassExplainer(models["classifier"]).explain(img, top=1)
    grid = np.asarray(r.grid(ncols=2)).astype(int)
    pad, line = 6, 16
    assert grid.shape[1] == 2 * (TILE + pad) + pad
    top = line + 2 * pad  # the title row
    assert grid.shape[0] == top + 64 + 2 * line + pad  # one row: tile and two label lines
    plain = grid[top:top + 64, pad:pad + TILE]
    shown = grid[top:top + 64, 2 * pad + TILE:2 * pad + 2 * TILE]
    assert np.abs(plain - shown).max() > 50
