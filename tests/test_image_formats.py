"""Real-world image files load as a viewer shows them: transparent pixels over white, a
broken EXIF block ignored quietly. Expected pixels come from hand computation or from another
decoder, never from :func:`load_image` itself."""

import warnings

import numpy as np
import pytest
import tifffile  # another TIFF writer than PIL
from PIL import Image

from mmcam.cli import main
from mmcam.images import load_image

# ---------------------------------------------------------------- transparency


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``a/255 * value + (1 - a/255) * 255``: what a browser shows on a white page."""
    a = alpha[..., None].astype(np.float64) / 255
    return np.round(a * rgb + (1 - a) * 255)


_RGB = np.array([[[0, 0, 0], [220, 30, 30], [30, 60, 220], [10, 200, 90]]] * 2, np.uint8)
_ALPHA = np.array([[0, 0, 0, 0], [255, 128, 64, 255]], np.uint8)


@pytest.mark.parametrize("as_file", [True, False])
def test_transparent_pixels_are_shown_over_white(tmp_path, as_file):
    """RGBA and LA with alpha 0 over black pixels (a logo on a transparent background) were
    loaded black: the alpha channel was dropped, and the model saw a black image."""
    rgba = Image.fromarray(np.dstack([_RGB, _ALPHA]), "RGBA")
    la = Image.fromarray(np.dstack([_RGB[..., 0], _ALPHA]), "LA")
    for im, want in ((rgba, _over_white(_RGB, _ALPHA)),
                     (la, _over_white(_RGB[..., :1], _ALPHA).repeat(3, axis=-1))):
        if as_file:
            im.save(tmp_path / "t.png")
            im = tmp_path / "t.png"
        got = np.asarray(load_image(im)).astype(np.int64)
        assert np.abs(got - want).max() <= 1
        assert (got[0] == 255).all()  # fully transparent: white, not the black underneath


def test_transparent_palette_colour_and_colour_key_are_white(tmp_path):
    """A palette PNG whose transparent entry is black, and an RGB PNG with a tRNS colour key."""
    a = np.zeros((4, 6), np.uint8)
    a[1:3, 2:4] = 1
    p = Image.fromarray(a, "P")
    p.putpalette([0, 0, 0, 200, 40, 40] + [0] * 762)
    p.save(tmp_path / "p.png", transparency=0)
    want = np.full((4, 6, 3), 255)
    want[1:3, 2:4] = (200, 40, 40)
    assert np.array_equal(np.asarray(load_image(tmp_path / "p.png")), want)
    rgb = Image.fromarray(np.where(a[..., None] == 1, (200, 40, 40), 0).astype(np.uint8))
    rgb.save(tmp_path / "k.png", transparency=(0, 0, 0))
    assert np.array_equal(np.asarray(load_image(tmp_path / "k.png")), want)


def test_premultiplied_alpha_is_shown_over_white(tmp_path):
    """Premultiplied PIL images (RGBa, La; an associated-alpha TIFF) over white are
    ``value + 255 - a``; La raised PIL's ValueError and RGBa dropped its alpha."""
    pre = np.array([[[100, 0, 50, 128], [0, 0, 0, 0], [10, 20, 30, 255]]], np.uint8)
    want = pre[..., :3].astype(np.int64) + 255 - pre[..., 3:]
    tifffile.imwrite(tmp_path / "a.tif", pre, photometric="rgb", extrasamples=["assocalpha"])
    for im in (Image.frombytes("RGBa", (3, 1), pre.tobytes()), tmp_path / "a.tif"):
        assert np.abs(np.asarray(load_image(im)).astype(np.int64) - want).max() <= 1
    la = Image.frombytes("La", (3, 1), pre[..., [0, 3]].tobytes())
    assert np.abs(np.asarray(load_image(la))[..., 0] - want[..., 0]).max() <= 1


def test_huge_transparent_image_is_downscaled_then_shown_over_white(monkeypatch):
    monkeypatch.setenv("MMCAM_MAX_PIXELS", "16")
    im = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    with pytest.warns(UserWarning, match="explained at 4x4"):
        assert np.array_equal(np.asarray(load_image(im)), np.full((4, 4, 3), 255))

# ---------------------------------------------------------------- broken metadata


def _corrupt_exif_jpeg(path):
    """A JPEG whose EXIF block's first IFD offset points past its end."""
    a = (np.arange(24 * 32 * 3) % 251).astype(np.uint8).reshape(24, 32, 3)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, exif=exif.tobytes(), quality=95)
    raw = path.read_bytes()
    i = raw.find(b"Exif\0\0") + 6
    path.write_bytes(raw[:i] + b"MM\x00\x2a\xff\xff\xff\xf0" + raw[i + 8:])
    return path


def test_corrupt_exif_is_ignored_quietly(tmp_path, capsys):
    """PIL's "Corrupt EXIF data" UserWarning reached the user (two lines with a source
    line in the CLI); the pixels are good and are explained as stored."""
    path = _corrupt_exif_jpeg(tmp_path / "c.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = np.asarray(load_image(path))
    with pytest.warns(UserWarning, match="Corrupt EXIF"), Image.open(path) as im:
        assert np.array_equal(got, np.asarray(im.convert("RGB")))  # PIL alone warns
    assert main(["classify", str(path), "--model", "shapes-classifier",
                 "--out", str(tmp_path / "o")]) == 0
    assert "Warning" not in capsys.readouterr().err
