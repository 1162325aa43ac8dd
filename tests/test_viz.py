"""mmcam.viz without matplotlib: the built-in jet table and the bundled-font fast path,
against matplotlib's colormap, matplotlib's font list and fontTools' character maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mmcam import viz


def test_jet_table_is_matplotlibs():
    """The jet table computed here equals matplotlib's, as floats and as uint8 colors."""
    from matplotlib import colormaps

    want = colormaps["jet"].resampled(256)(np.arange(256))[:, :3]
    got = np.stack([viz._segments_lut(viz.JET[c]) for c in ("red", "green", "blue")], axis=1)
    assert np.array_equal(got, want)
    np.testing.assert_array_equal(viz.colormap_lut("jet"), (want * 255).round().astype(np.uint8))
    # the colors of the extremes, by hand: jet runs from dark blue to dark red
    assert viz.colormap_lut()[0].tolist() == [0, 0, 128]
    assert viz.colormap_lut()[255].tolist() == [128, 0, 0]


def test_other_colormaps_still_come_from_matplotlib():
    from matplotlib import colormaps

    want = (colormaps["viridis"].resampled(256)(np.arange(256))[:, :3] * 255).round()
    np.testing.assert_array_equal(viz.colormap_lut("viridis"), want.astype(np.uint8))


def test_bundled_font_is_the_first_font_and_has_the_plain_glyphs():
    from fontTools.ttLib import TTFont

    family, path, charmap = viz.fonts()[0]
    assert (family, path) == ("DejaVu Sans", viz.bundled_font())
    cmap = TTFont(path, fontNumber=0, lazy=True).getBestCmap()
    assert {ord(c) for c in viz.PLAIN} <= set(cmap) & charmap


@pytest.mark.parametrize("text", ["a large red circle , and", "x" * 80, "café 猫 (3) …"])
def test_fast_path_draws_what_the_font_list_draws(monkeypatch, text):
    """Text drawn by the fast path equals text drawn by the font list alone (pixels), also
    when cut with an ellipsis."""
    def drawn() -> tuple[str, np.ndarray]:
        viz._pil_font.cache_clear()
        im = Image.new("RGB", (200, 20), "white")
        draw = ImageDraw.Draw(im)
        cut = viz.fit_text(draw, text, 190)
        viz.draw_text(draw, (2, 2), cut)
        return cut, np.asarray(im)

    try:
        fast = drawn()
        monkeypatch.setattr(viz, "bundled_font", lambda: None)
        slow = drawn()
    finally:
        viz._pil_font.cache_clear()
    assert fast[0] == slow[0]
    assert np.array_equal(fast[1], slow[1])
    assert (fast[1] < 128).any()  # something was drawn


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 7, 3), (9, 1, 3), (37, 53, 3), (5, 5),
                                   (64, 33)])
def test_png_bytes_decode_to_the_same_pixels(shape):
    """The PNG writer's files, read back by PIL (which checks each chunk's CRC), hold the
    pixels given; random pixels exercise every byte value of the row differences."""
    import io

    a = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    image = Image.fromarray(a)
    data = viz.png_bytes(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"  # written here
    back = Image.open(io.BytesIO(data))
    back.load()
    assert back.mode == image.mode and back.size == image.size
    assert np.array_equal(np.asarray(back), a)


def test_png_bytes_keep_what_pil_would_write():
    """Images with transparency or another mode go through PIL, which keeps them (an RGBA
    image, a gray image with a transparent value); an RGB or gray image with an ICC profile
    is written here with the profile in an iCCP chunk before the pixels, read back by PIL
    (which checks the CRC and decompresses the profile) and by ImageCms as the same profile."""
    import io

    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = Image.new("RGB", (4, 3), (10, 200, 30))
    rgb.info["icc_profile"] = profile
    gray_icc = Image.new("L", (5, 2), 99)
    gray_icc.info["icc_profile"] = profile
    gray = Image.new("L", (4, 3), 7)
    gray.info["transparency"] = 7
    for image in (Image.new("RGBA", (4, 3), (1, 2, 3, 4)), gray, rgb, gray_icc):
        back = Image.open(io.BytesIO(viz.png_bytes(image)))
        back.load()
        assert back.mode == image.mode
        assert np.array_equal(np.asarray(back), np.asarray(image))
        assert back.info.get("icc_profile") == image.info.get("icc_profile")
    for image in (rgb, gray_icc):
        data = viz.png_bytes(image)
        assert data.index(b"iCCP") < data.index(b"IDAT")
        assert data.count(b"IDAT") == 1  # one IDAT: this writer, not PIL's
        back = Image.open(io.BytesIO(data))
        read = ImageCms.ImageCmsProfile(io.BytesIO(back.info["icc_profile"]))
        assert read.tobytes() == profile
    assert Image.open(io.BytesIO(viz.png_bytes(gray))).info.get("transparency") == 7


def _colorize_by_table(h: np.ndarray) -> np.ndarray:
    """The oracle: clip to [0,1], NaN to 0, index min(floor(256 v), 255) of the table."""
    h = h.astype(np.float64) if h.dtype.kind != "f" else h
    with np.errstate(all="ignore"):
        v = np.nan_to_num(np.clip(h, 0.0, 1.0), nan=0.0)
        idx = np.minimum(np.floor(v.astype(np.float64) * 256).astype(np.intp), 255)
    return viz.colormap_lut()[idx]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64])
def test_colorize_is_the_table_lookup(dtype):
    """Every value, the edges of the 256 bins, out of range, infinite and NaN ones."""
    edges = np.arange(257) / 256
    special = [np.nan, np.inf, -np.inf, -0.0, 1.0, 2.0, -3.0, 1e300, -1e300]
    with np.errstate(all="ignore"):
        values = np.concatenate([edges, np.nextafter(edges, -1), np.nextafter(edges, 2),
                                 special, np.random.default_rng(0).random(1000) * 1.4 - 0.2])
        h = (values * 3 if dtype is np.int64 else values).astype(dtype)
    h = h[: len(h) // 20 * 20].reshape(20, -1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings from huge values
        got = viz.colorize(h)
        got_t = viz.colorize(torch.from_numpy(h.T.copy())) if dtype is not np.int64 else None
    np.testing.assert_array_equal(got, _colorize_by_table(h))
    if got_t is not None:
        np.testing.assert_array_equal(got_t, _colorize_by_table(h.T))
