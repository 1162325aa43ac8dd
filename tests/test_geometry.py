"""Maps carried back through resize, centre crop and padding onto the original pixels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF

from mmcam.classify import ClassExplainer
from mmcam.geometry import Geometry


def test_plain_resize_equals_bilinear_upsampling_both_ways():
    torch.manual_seed(0)
    maps = torch.rand(3, 4, 6)
    g = Geometry.identity((40, 30)).resize((24, 24))
    want = F.interpolate(maps[:, None], size=(30, 40), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(g.to_image(maps), want)
    # the general sampler (used for crops and pads) gives the same on a plain resize
    cells = ((2.0, 4.0), (3.0, 6.0))  # cell j centred on c0 + j*s: the default for 24/6, 24/4
    torch.testing.assert_close(g.to_image(maps, cell=cells), want, rtol=1e-5, atol=1e-6)


def test_separable_sampling_equals_grid_sample_in_float64():
    """to_image (two interpolation matrices) against grid_sample run in float64 at each
    original pixel's grid position, on a crop, a pad and odd receptive-field cells."""
    torch.manual_seed(1)
    maps = torch.rand(5, 7, 9, dtype=torch.float64)
    g = Geometry.identity((130, 70)).resize_short(40).center_crop((40, 36)).pad(3, 2, 1, 4)
    cell = ((1.5, 4.75), (2.25, 5.5))
    W, H = g.image_size
    xs = g.scale[0] * (torch.arange(W, dtype=torch.float64) + 0.5) + g.offset[0]
    ys = g.scale[1] * (torch.arange(H, dtype=torch.float64) + 0.5) + g.offset[1]
    u = ((xs - cell[0][0]) / cell[0][1]).clamp(0, 8) / 8 * 2 - 1
    v = ((ys - cell[1][0]) / cell[1][1]).clamp(0, 6) / 6 * 2 - 1
    pos = torch.stack(torch.broadcast_tensors(u[None, :], v[:, None]), dim=-1)
    want = F.grid_sample(maps[:, None], pos[None].expand(5, -1, -1, -1), mode="bilinear",
                         padding_mode="border", align_corners=True)[:, 0]
    x0, y0, x1, y1 = g.content
    seen = ((ys >= max(y0, 0)) & (ys < min(y1, g.input_size[1])))[:, None] & \
        ((xs >= max(x0, 0)) & (xs < min(x1, g.input_size[0])))[None, :]
    assert 0 < int(seen.sum()) < seen.numel()  # the crop and the pad both bite
    torch.testing.assert_close(g.to_image(maps, cell).double(), want * seen,
                               rtol=1e-6, atol=1e-6)


def test_geometry_composition_by_hand():
    # 96x48 -> shorter side 32 (64x32) -> centre crop 32x32 (left = 16) -> pad 2 left
    g = Geometry.identity((96, 48)).resize_short(32).center_crop((32, 32)).pad(2, 0, 0, 0)
    assert g.input_size == (34, 32)
    assert g.scale == (2 / 3, 2 / 3)
    assert g.offset == (-16 + 2, 0)
    assert g.content == (2.0, 0.0, 34.0, 32.0)
    # letterbox: 96x48 -> 32x16 -> pad 8 top and bottom
    g = Geometry.identity((96, 48)).resize((32, 16)).pad(0, 8, 0, 8)
    assert (g.input_size, g.offset, g.content) == ((32, 32), (0, 8), (0.0, 8.0, 32.0, 24.0))


class RedDetector(nn.Module):
    """score = sum over 4x4 cells of ReLU(r - g - b): Grad-CAM = the cell's redness."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1))
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(4)

    def forward(self, x):
        return self.pool(self.relu(self.conv(x))).sum(dim=(2, 3))


def scene(size, boxes) -> Image.Image:
    arr = np.full((size[1], size[0], 3), 90, dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        arr[y0:y1, x0:x1] = (230, 20, 20)
    return Image.fromarray(arr)


def crop_prepare(image):
    g = Geometry.identity(image.size).resize_short(32)
    im = TF.center_crop(image.resize(g.input_size, Image.BILINEAR), [32, 32])
    return TF.to_tensor(im)[None], g.center_crop((32, 32))


def pad_prepare(image):
    g = Geometry.identity(image.size).resize((32, 16))
    canvas = Image.new("RGB", (32, 32), (0, 0, 0))
    canvas.paste(image.resize((32, 16), Image.BILINEAR), (0, 8))
    return TF.to_tensor(canvas)[None], g.pad(0, 8, 0, 8)


def peak(m: torch.Tensor) -> tuple[int, int]:
    i = int(m.argmax())
    return i % m.shape[1], i // m.shape[1]


def inside(p, box) -> bool:
    return box[0] <= p[0] < box[2] and box[1] <= p[1] < box[3]


def test_off_centre_object_under_a_centre_crop():
    obj, hidden = (56, 8, 68, 20), (2, 30, 12, 40)  # `hidden` lies in the cropped-away band
    img = scene((96, 48), [obj, hidden])
    r = ClassExplainer(RedDetector(), layer="pool", prepare=crop_prepare).explain(img, [0])
    m = r.maps[0]
    assert m.shape == (48, 96)
    assert inside(peak(m), obj)
    # the crop kept original x in [24, 72): nothing outside it has a map
    assert m[:, :24].abs().max() == 0 and m[:, 72:].abs().max() == 0
    assert m[:, 24:72].max() > 0
    # control: read as a plain resize to 32x32, the same grid puts the peak elsewhere
    wrong = Geometry.identity((96, 48)).resize((32, 32)).to_image(r.layer_maps)[0]
    assert not inside(peak(wrong), obj)


def test_off_centre_object_under_letterbox_padding():
    obj = (70, 30, 86, 42)
    img = scene((96, 48), [obj])
    r = ClassExplainer(RedDetector(), layer="pool", prepare=pad_prepare).explain(img, [0])
    m = r.maps[0]
    assert m.shape == (48, 96)
    assert inside(peak(m), obj)
    assert r.boxes[0] is not None
    x0, y0, x1, y1 = r.boxes[0]  # the 15% box overlaps the object in original pixels
    assert x0 < obj[2] and obj[0] < x1 and y0 < obj[3] and obj[1] < y1
    wrong = Geometry.identity((96, 48)).resize((32, 32)).to_image(r.layer_maps)[0]
    assert not inside(peak(wrong), obj)
