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
