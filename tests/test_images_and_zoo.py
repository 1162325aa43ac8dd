"""Image loading from every accepted input, and torchvision classifiers by name."""

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from mmcam.adapters.torchvision import build_classifier
from mmcam.errors import MMCamError
from mmcam.images import load_image


def test_load_image_inputs_agree(tmp_path):
    arr = (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3)
    pil = Image.fromarray(arr)
    pil.save(tmp_path / "x.png")
    chw = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    for inp in (pil, tmp_path / "x.png", str(tmp_path / "x.png"), arr, chw, chw[None]):
        assert np.array_equal(np.asarray(load_image(inp)), arr)
    gray = Image.fromarray(arr[..., 0])
    assert np.array_equal(np.asarray(load_image(gray))[..., 2], arr[..., 0])


def test_load_image_errors(tmp_path):
    with pytest.raises(MMCamError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(MMCamError, match=r"shape \(3,H,W\) or \(H,W,3\)"):
        load_image(torch.zeros(5, 4, 4))
    with pytest.raises(MMCamError, match="unsupported image type"):
        load_image(3.0)


@pytest.mark.parametrize(
    "name,layer",
    [("vgg16", "features.29"), ("vgg11", "features.19"), ("resnet50", "layer4"),
     ("densenet121", "features"), ("mobilenet_v3_small", "features")],
)
def test_default_layers(name, layer):
    clf = build_classifier(name)
    assert clf.layer == layer
    module = clf.model.get_submodule(layer)
    if name.startswith("vgg"):  # the rectified output of the last conv layer
        convs = [n for n, m in clf.model.features.named_children()
                 if isinstance(m, torch.nn.Conv2d)]
        assert isinstance(module, torch.nn.ReLU) and int(layer.split(".")[1]) == int(convs[-1]) + 1
    assert not clf.model.training


def test_weights_file_is_loaded(tmp_path):
    torch.manual_seed(3)
    ref = torchvision.models.resnet18(weights=None, num_classes=10)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    clf = build_classifier("resnet18", weights=tmp_path / "w.pth", num_classes=10)
    for (k, a), b in zip(ref.state_dict().items(), clf.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert clf.labels == [f"class {i}" for i in range(10)]
    with pytest.raises(MMCamError, match="do not fit resnet34"):
        build_classifier("resnet34", weights=tmp_path / "w.pth", num_classes=10)


# EXIF orientation -> where stored pixel (x, y) of a W x H image is shown, by the EXIF
# specification's definitions (written out here, not taken from Pillow)
_SHOWN = {
    2: lambda x, y, w, h: (w - 1 - x, y),          # mirrored left-right
    3: lambda x, y, w, h: (w - 1 - x, h - 1 - y),  # turned 180 degrees
    4: lambda x, y, w, h: (x, h - 1 - y),          # mirrored top-bottom
    5: lambda x, y, w, h: (y, x),                  # mirrored along the main diagonal
    6: lambda x, y, w, h: (h - 1 - y, x),          # turned 90 degrees clockwise
    7: lambda x, y, w, h: (h - 1 - y, w - 1 - x),  # mirrored along the other diagonal
    8: lambda x, y, w, h: (y, w - 1 - x),          # turned 90 degrees counter-clockwise
}


def _tagged(a: np.ndarray, orientation: int) -> Image.Image:
    """A PNG (read back) of pixels ``a`` with an EXIF orientation tag."""
    import io

    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="PNG", exif=exif)
    buf.seek(0)
    return Image.open(buf)


@pytest.mark.parametrize("orientation", sorted(_SHOWN))
def test_load_image_turns_exif_orientation_upright(orientation, tmp_path):
    """A file or PIL image with an EXIF orientation is loaded as viewers show it: one marked
    pixel of a 40x20 image lands where the EXIF definition puts it, from a path and from a
    PIL image alike; the result carries no orientation tag."""
    w, h, x, y = 40, 20, 5, 2
    a = np.zeros((h, w, 3), np.uint8)
    a[y, x] = (255, 0, 0)
    tagged = _tagged(a, orientation)
    tagged.save(tmp_path / "t.png", exif=tagged.getexif())
    sx, sy = _SHOWN[orientation](x, y, w, h)
    for source in (tagged, tmp_path / "t.png"):
        im = load_image(source)
        shown = np.asarray(im)
        assert im.size == ((h, w) if orientation >= 5 else (w, h))
        assert [tuple(p) for p in np.argwhere(shown[..., 0] == 255)] == [(sy, sx)]
        assert im.getexif().get(0x0112, 1) == 1


def test_load_image_without_orientation_keeps_the_pixels(tmp_path):
    """Orientation 1 (as stored), no EXIF, or an orientation tag out of range: unchanged."""
    a = (np.arange(6 * 9 * 3) % 251).astype(np.uint8).reshape(6, 9, 3)
    for source in (_tagged(a, 1), _tagged(a, 0), _tagged(a, 9), Image.fromarray(a)):
        assert np.array_equal(np.asarray(load_image(source)), a)


def test_sideways_photo_of_a_scene_is_captioned_upright(tmp_path):
    """A scene stored turned 90 degrees counter-clockwise with orientation 6 (as a phone
    stores an upright photo) gets the upright scene's caption and the same maps."""
    import mmcam
    from mmcam.caption import CaptionExplainer
    from mmcam.scenes import generate

    scene = generate(1, seed=4242)[0]
    upright = scene.image.convert("RGB")
    stored = np.rot90(np.asarray(upright)).copy()  # counter-clockwise
    _tagged(stored, 6).save(tmp_path / "phone.png", exif=_tagged(stored, 6).getexif())
    explainer = CaptionExplainer(mmcam.load_model("shapes-captioner"))
    want = explainer.explain(upright)
    got = explainer.explain(tmp_path / "phone.png")
    assert got.caption == want.caption
    assert got.image.size == upright.size
    assert torch.equal(got.maps, want.maps)
    plain = explainer.explain(Image.fromarray(stored))  # what was explained before the fix
    assert not np.array_equal(np.asarray(plain.image), np.asarray(got.image))
