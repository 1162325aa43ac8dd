"""Receptive-field alignment: grid cells drawn where the model looked (mmcam.align)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from mmcam.align import fit_edges, receptive_cells, support_edges
from mmcam.classify import ClassExplainer
from mmcam.errors import MMCamError


def conv_stack(*specs: tuple[int, int, int], seed: int = 0) -> nn.Sequential:
    """Convs (kernel, stride, padding) with random weights and ReLUs between them."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    c = 3
    for k, s, p in specs:
        layers += [nn.Conv2d(c, 8, k, s, p), nn.ReLU()]
        c = 8
    return nn.Sequential(*layers[:-1])


def rf_by_hand(specs: list[tuple[int, int, int]]) -> tuple[float, float]:
    """(c0, s) by receptive-field arithmetic: cell j of a layer covers input
    [lo(j), hi(j)) with lo(j) = lo_prev(j*stride - pad), hi(j) = hi_prev(j*stride - pad + k - 1)."""
    lo0, hi0, step = 0.0, 1.0, 1.0  # input pixel i covers [i, i+1)
    for k, s, p in specs:
        lo0, hi0 = lo0 + step * (-p), hi0 + step * (-p + k - 1)
        step *= s
    return (lo0 + hi0) / 2, step


@pytest.mark.parametrize("specs", [
    [(3, 2, 1)] * 3,                     # the shipped encoders' stride-2 blocks: 8j + 1/2
    [(4, 2, 1), (4, 2, 1)],              # even kernels: off the pixel grid (4j + 2)
    [(7, 2, 3), (3, 1, 1), (3, 2, 0)],   # mixed, no padding at the end
    [(5, 1, 0), (3, 3, 2)],              # stride 3, padding 2
])
def test_derived_cell_centres_equal_receptive_field_arithmetic(specs):
    net = conv_stack(*specs).eval()
    c0, s = rf_by_hand(specs)
    (cx, sx), (cy, sy) = receptive_cells(net, torch.randn(1, 3, 96, 80))
    assert (cx, sx) == pytest.approx((c0, s), abs=1e-9)
    assert (cy, sy) == pytest.approx((c0, s), abs=1e-9)


def test_large_receptive_field_is_probed_on_a_larger_input():
    # resnet18 layer4 at 160 px: every cell's receptive field (435 px) covers the whole input,
    # so the probe moves to a larger canvas; the stem (7x7 s2 p3, maxpool 3 s2 p1) and the
    # stride-2 3x3 p1 convs centre cell j on pixel 32j
    net = torchvision.models.resnet18()
    body = nn.Sequential(*list(net.children())[:-2]).eval()
    (cx, sx), (cy, sy) = receptive_cells(body, torch.randn(1, 3, 160, 160))
    assert (cx, sx, cy, sy) == pytest.approx((0.5, 32.0, 0.5, 32.0), abs=1e-9)


class TinyViT(nn.Module):
    """16x16 patches + one attention block: every token sees every pixel."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 32, 16, 16)
        self.pos = nn.Parameter(torch.randn(1, 16, 32) * 0.1)  # one input size only (64 px)
        self.block = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.block(t).mean(1))


def test_global_receptive_fields_sit_on_their_patch_grid():
    vit = TinyViT().eval()

    def tokens(x):
        t = vit.patch(x).flatten(2).transpose(1, 2) + vit.pos
        return vit.block(t).transpose(1, 2).reshape(1, 32, 4, 4)

    assert receptive_cells(tokens, torch.randn(1, 3, 64, 64)) == ((8.0, 16.0), (8.0, 16.0))


def test_support_edges_and_fit_by_hand():
    p = torch.tensor([0, 0, 1, 3, 2, 0, 0], dtype=torch.float64)
    assert support_edges(p) == (2.0, 5.0)
    assert support_edges(torch.tensor([1.0, 2.0, 0.0])) == (None, 2.0)  # clipped at 0
    assert support_edges(torch.zeros(4)) == (None, None)
    # cells 1, 2 of a stride-4 grid with c0 = 2, r = 5: bounds by hand
    assert fit_edges([(1, 1.0, 11.0), (2, 5.0, None)]) == pytest.approx((2.0, 4.0))
    assert fit_edges([(1, 1.0, 11.0)]) is None  # one cell: the stride is not determined


class HotPixelNet(nn.Module):
    """Three stride-2 3x3 box filters; score = sum of the last map."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*[nn.Conv2d(1 if i == 0 else 1, 1, 3, 2, 1, bias=False)
                                        for i in range(3)])
        for m in self.features:
            nn.init.constant_(m.weight, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x[:, :1]).sum(dim=(1, 2, 3))[:, None]


@pytest.mark.parametrize("hot", [(40, 56), (24, 88), (64, 64)])
def test_a_hot_pixel_puts_the_map_peak_on_that_pixel(hot):
    x, y = hot
    px = torch.zeros(1, 3, 128, 128)
    px[0, :, y, x] = 1.0
    net = HotPixelNet()
    # the layer's response to the pixel: a pyramid peaking at the cell centred on it; only
    # the drawing decides where that cell lands
    peaks = {}
    for align in ("receptive", "bilinear"):
        ex = ClassExplainer(net, layer="features.2", method="hirescam", align=align)
        m = ex.explain_pixels(px, targets=torch.tensor([[0]]))["maps"][0, 0]
        i = int(m.argmax())
        peaks[align] = (i % 128, i // 128)
    assert peaks["receptive"] == (x, y)
    assert peaks["bilinear"] != (x, y)  # plain upsampling draws it 3.5 px down and right
    assert abs(peaks["bilinear"][0] - x) >= 3 and abs(peaks["bilinear"][1] - y) >= 3


def test_cells_are_derived_once_per_model_layer_and_size(monkeypatch):
    import mmcam.pipeline as pipeline

    probes = []

    def counting(to_grid, px):
        probes.append(tuple(px.shape))
        return receptive_cells(to_grid, px)

    monkeypatch.setattr(pipeline, "receptive_cells", counting)
    net = HotPixelNet()
    ex = ClassExplainer(net, layer="features.2", method="hirescam")
    px = torch.rand(1, 3, 64, 64)
    first = ex.explain_pixels(px)["maps"]
    again = ClassExplainer(net, layer="features.2", method="hirescam").explain_pixels(px)["maps"]
    assert probes == [(1, 3, 64, 64)]  # a second explainer on the same model reuses it
    torch.testing.assert_close(first, again)
    ex.explain_pixels(torch.rand(1, 3, 72, 64))  # another input size: probed once more
    assert probes == [(1, 3, 64, 64), (1, 3, 72, 64)]
    ClassExplainer(net, layer="features.1").explain_pixels(px)  # another layer
    assert len(probes) == 3


def test_unknown_align_is_refused():
    with pytest.raises(MMCamError, match="align"):
        ClassExplainer(HotPixelNet(), layer="features.2", align="nearest")
