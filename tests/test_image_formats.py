"""Real-world image files load as a viewer shows them: transparent pixels over white, a
broken EXIF block ignored quietly, colours in an embedded ICC profile's space converted to
sRGB, 16-bit colour scaled to 8 bits, the first frame of an animation, CMYK as browsers show
it. Expected pixels come from hand computation or from another decoder, never from
:func:`load_image` itself."""

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile  # another TIFF writer than PIL (installed with scikit-image)
from PIL import Image

from mmcam.cli import main
from mmcam.errors import MMCamError
from mmcam.images import ImageFirstFrame, load_image

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

# ---------------------------------------------------------------- colour profiles

_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367],
                      [0.0389, -0.0685, 1.0296]])
_D50 = np.array([0.9642, 1.0, 0.8249])
_P3 = [(0.680, 0.320), (0.265, 0.690), (0.150, 0.060)]  # Display P3, sRGB's curve
_ADOBE = [(0.64, 0.33), (0.21, 0.71), (0.15, 0.06)]  # Adobe RGB (1998), gamma 563/256
_SRGB = [(0.64, 0.33), (0.30, 0.60), (0.15, 0.06)]


def _to_xyz(primaries) -> np.ndarray:
    """RGB (linear) -> XYZ for ``primaries`` (x, y) and the D65 white point."""
    xy = np.array(primaries + [(0.3127, 0.3290)])
    xyz = np.stack([xy[:, 0] / xy[:, 1], np.ones(4), (1 - xy.sum(1)) / xy[:, 1]], 1)
    return xyz[:3].T * np.linalg.solve(xyz[:3].T, xyz[3])


def _srgb_curve(v):
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _srgb_encode(lin):
    lin = np.clip(lin, 0, 1)
    return np.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1 / 2.4) - 0.055)


def _icc(primaries=None, gamma=None) -> bytes:
    """An ICC v2 display profile written byte by byte from the specification (ICC.1:2001):
    RGB with ``primaries`` (colorants Bradford-adapted to D50), or grey without; a ``gamma``
    curve, or sRGB's curve as a 1024-entry table."""
    def s15(*v):
        return b"".join(struct.pack(">i", round(x * 65536)) for x in v)

    def xyz(v):
        return b"XYZ \0\0\0\0" + s15(*v)

    table = _srgb_curve(np.linspace(0, 1, 1024)) if gamma is None else None
    curve = (b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
             if table is None else
             b"curv\0\0\0\0" + struct.pack(">I", 1024) + np.round(table * 65535)
             .astype(">u2").tobytes())
    tags = [(b"desc", b"desc\0\0\0\0" + struct.pack(">I", 5) + b"test\0" + b"\0" * 78),
            (b"wtpt", xyz(_D50)), (b"cprt", b"text\0\0\0\0none\0\0\0\0")]
    if primaries is None:
        space, tags = b"GRAY", tags + [(b"kTRC", curve)]
    else:
        a = np.linalg.inv(_BRADFORD) @ np.diag(_BRADFORD @ _D50 / (_BRADFORD @ _to_xyz(
            primaries).sum(1))) @ _BRADFORD @ _to_xyz(primaries)  # adapted to D50
        space = b"RGB "
        tags += [(tag, xyz(a[:, i])) for i, tag in enumerate((b"rXYZ", b"gXYZ", b"bXYZ"))]
        tags += [(tag, curve) for tag in (b"rTRC", b"gTRC", b"bTRC")]
    offset, directory, data = 132 + 12 * len(tags), b"", b""
    for sig, body in tags:
        data += b"\0" * (-len(data) % 4)
        directory += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"none\x02\x10\0\0mntr" + space + b"XYZ " + b"\0" * 12
              + b"acsp" + b"\0" * 28 + s15(*_D50) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + directory + data


def _srgb_of(rgb: np.ndarray, primaries, gamma=None) -> np.ndarray:
    """8-bit ``rgb`` in a space with ``primaries`` and ``gamma`` (else sRGB's curve), in
    sRGB: decode, to XYZ, to sRGB's linear RGB (both D65), encode; out-of-gamut clipped."""
    v = rgb.astype(np.float64) / 255
    lin = v ** gamma if gamma else _srgb_curve(v)
    m = np.linalg.inv(_to_xyz(_SRGB)) @ _to_xyz(primaries)
    return np.round(255 * _srgb_encode(lin @ m.T))


_COLOURS = np.array([[[200, 60, 60], [60, 180, 90], [30, 60, 220], [128, 128, 128],
                      [250, 240, 10], [0, 0, 0], [255, 255, 255], [90, 40, 160]]], np.uint8)


@pytest.mark.parametrize("primaries,gamma", [(_P3, None), (_ADOBE, 563 / 256)])
def test_rgb_profile_is_converted_to_srgb(tmp_path, primaries, gamma):
    """A PNG tagged Display P3 or Adobe RGB was explained (and drawn) with its numbers read
    as sRGB: duller colours than a browser or viewer shows (200, 60, 60 in P3 is 217, 42,
    52 in sRGB). The result is untagged sRGB."""
    Image.fromarray(_COLOURS).save(tmp_path / "p.png", icc_profile=_icc(primaries, gamma))
    got = load_image(tmp_path / "p.png")
    want = _srgb_of(_COLOURS, primaries, gamma)
    assert np.abs(np.asarray(got).astype(np.int64) - want).max() <= 1
    assert np.abs(want - _COLOURS).max() > 10  # the profile matters
    assert "icc_profile" not in got.info


def test_grey_profile_is_converted_to_srgb(tmp_path):
    """A grey JPEG tagged gamma 1.8 (a Mac-era scan): value v is luminance (v/255)**1.8."""
    grey = np.arange(0, 256, 15, dtype=np.uint8).reshape(1, -1)
    Image.fromarray(grey).save(tmp_path / "g.png", icc_profile=_icc(gamma=1.8))
    want = np.round(255 * _srgb_encode((grey / 255) ** 1.8))
    got = np.asarray(load_image(tmp_path / "g.png")).astype(np.int64)
    assert all(np.abs(got[..., c] - want).max() <= 1 for c in range(3))


def test_real_adobe_rgb_photo_is_converted_to_srgb():
    """scikit-image's rocket.jpg carries the Adobe RGB (1998) profile (not written here)."""
    import skimage

    path = Path(skimage.__file__).parent / "data" / "rocket.jpg"
    with Image.open(path) as im:
        assert b"Adobe RGB" in im.info["icc_profile"]
        stored = np.asarray(im.convert("RGB"))
    want = _srgb_of(stored, _ADOBE, 563 / 256)
    got = np.asarray(load_image(path)).astype(np.int64)
    assert np.abs(got - want).max() <= 2 and np.abs(want - stored).max() > 20


def test_srgb_and_unreadable_profiles_keep_the_pixels(tmp_path):
    """An sRGB profile (written here, and the one in scikit-image's astronaut.png), or bytes
    that are no profile: the stored pixels, exactly."""
    import skimage

    a = (np.arange(7 * 9 * 3) * 37 % 256).astype(np.uint8).reshape(7, 9, 3)
    with Image.open(Path(skimage.__file__).parent / "data" / "astronaut.png") as im:
        astronaut = im.info["icc_profile"]
    for i, icc in enumerate((_icc(_SRGB), astronaut, b"not a profile")):
        Image.fromarray(a).save(tmp_path / f"{i}.png", icc_profile=icc)
        assert np.array_equal(np.asarray(load_image(tmp_path / f"{i}.png")), a)

# ---------------------------------------------------------------- 16-bit colour


@pytest.mark.parametrize("kind", ["rgb.png", "rgba.png", "rgb.tif"])
def test_16_bit_colour_is_the_high_byte(tmp_path, kind):
    """48- and 64-bit PNGs and a 48-bit TIFF, written by OpenCV and tifffile (PIL cannot
    write them): each channel ``value >> 8``, as 16-bit grey; alpha 65535 is opaque."""
    cv2 = pytest.importorskip("cv2")  # OpenCV, installed with grad-cam (test extra)

    rgb = np.random.default_rng(5).integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    path = tmp_path / kind
    if kind == "rgb.tif":
        tifffile.imwrite(path, rgb, photometric="rgb")
    else:
        alpha = np.full((6, 7, 1), 65535, np.uint16)
        cv2.imwrite(str(path), np.dstack([rgb[..., ::-1]] + [alpha] * (kind == "rgba.png")))
        assert path.read_bytes()[24] == 16  # IHDR bit depth
    assert np.array_equal(np.asarray(load_image(path)), rgb >> 8)

# ---------------------------------------------------------------- frames


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG", "TIFF"])
def test_animations_and_multi_page_files_give_their_first_frame(tmp_path, fmt):
    """Animated GIF, WebP and PNG, multi-page TIFF: the first frame, as a still viewer
    shows it."""
    frames = [np.zeros((4, 5, 3), np.uint8) + np.array(c, np.uint8)
              for c in ((200, 30, 30), (30, 60, 220), (10, 200, 90))]
    path = tmp_path / f"a.{fmt.lower()}"
    Image.fromarray(frames[0]).save(path, format=fmt, save_all=True, lossless=True,
                                    append_images=[Image.fromarray(f) for f in frames[1:]])
    with Image.open(path) as im:
        assert im.n_frames == 3
    with pytest.warns(ImageFirstFrame, match="has 3 frames"):
        assert np.array_equal(np.asarray(load_image(path)), frames[0])


def test_a_single_frame_gives_no_notice(tmp_path):
    """A still image (a one-frame GIF, a PNG) loads without a notice."""
    import warnings

    for fmt in ("GIF", "PNG"):
        path = tmp_path / f"still.{fmt.lower()}"
        Image.new("RGB", (4, 3), (9, 9, 9)).save(path, format=fmt)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_image(path)


def test_cli_says_which_frame_it_explained(tmp_path, capsys):
    """`mmcam caption` on an animated GIF: one note line on stderr, then the usual output."""
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (64, 64), c) for c in ((200, 30, 30), (30, 60, 220))]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert main(["caption", str(path), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mmcam caption: note: {path} has 2 frames (an animation or a multi-page "
                   "file): explained the first"]

# ---------------------------------------------------------------- CMYK


def test_cmyk_jpeg_without_a_profile_is_plain_cmyk(tmp_path):
    """A CMYK JPEG (Adobe's inverted storage, as Photoshop writes it) with no profile: red
    ``(255 - C) * (255 - K) / 255``, as browsers show it; OpenCV's decoder agrees to one level
    (it divides by 256)."""
    cv2 = pytest.importorskip("cv2")  # OpenCV, installed with grad-cam (test extra)

    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 200, 200, 0], [0, 0, 0, 255],
                      [40, 80, 120, 100]]], np.uint8).repeat(8, 0).repeat(8, 1)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg", quality=100, subsampling=0)
    assert b"Adobe" in (tmp_path / "c.jpg").read_bytes()
    got = np.asarray(load_image(tmp_path / "c.jpg")).astype(np.int64)
    want = (255 - cmyk[..., :3].astype(np.float64)) * (255 - cmyk[..., 3:]) / 255
    assert np.abs(got - want).max() <= 1  # JPEG at quality 100, no chroma subsampling
    assert np.abs(got - cv2.imread(str(tmp_path / "c.jpg"))[..., ::-1]).max() <= 1

# ---------------------------------------------------------------- paths


def test_a_broken_link_and_an_unreadable_file_say_so(tmp_path, monkeypatch):
    """A link to a missing file said only "image not found" (the link is there, in ls); a
    file without read permission ended in "(is the file truncated?)"."""
    (tmp_path / "link.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(MMCamError, match=r"^image not found: .*link\.png \(a link to "
                                         r".*gone\.png, which does not exist\)$"):
        load_image(tmp_path / "link.png")
    Image.new("RGB", (2, 2)).save(tmp_path / "x.png")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.png"))

    monkeypatch.setattr(Image, "open", refuse)  # as root, chmod 000 does not stop reading
    with pytest.raises(MMCamError, match=r"^cannot read image .*x\.png: permission denied$"):
        load_image(tmp_path / "x.png")


def _png16(path, samples: np.ndarray, color_type: int, trns: bytes = b""):
    """A 16-bit PNG written chunk by chunk (PIL cannot write a tRNS chunk at 16 bits)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    h, w = samples.shape[:2]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + (chunk(b"tRNS", trns) if trns else b"")
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16_bit_grey_with_a_transparent_value_is_white_there(tmp_path):
    """A 16-bit grey PNG whose tRNS chunk makes 30000 transparent: that pixel was shown as
    30000 >> 8 = 117 (the key was lost with the 8-bit scaling); only exactly 30000 is
    transparent, not 30001, which has the same high byte. Grey+alpha at 16 bits already
    worked: alpha >> 8 over white."""
    g = np.array([[1000, 40000, 65535], [0, 30000, 30001]], np.uint16)
    _png16(tmp_path / "k.png", g, 0, struct.pack(">H", 30000))
    want = (g >> 8).astype(np.int64)
    want[1, 1] = 255
    assert np.array_equal(np.asarray(load_image(tmp_path / "k.png"))[..., 0], want)
    a = np.array([[65535, 32768, 0], [65535, 0, 65535]], np.uint16)
    _png16(tmp_path / "la.png", np.stack([g, a], -1), 4)
    got = np.asarray(load_image(tmp_path / "la.png"))[..., 0]
    assert np.abs(got - _over_white(g[..., None] >> 8, a >> 8)[..., 0]).max() <= 1
