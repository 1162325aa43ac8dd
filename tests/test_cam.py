"""CAM math against hand-computed maps on a tiny fixed-weight net."""

from fractions import Fraction as Fr

import numpy as np
import pytest
import torch
from torch import nn

from mmcam.cam import gradcam_plus_plus, hirescam, normalize, upsample
from mmcam.classify import ClassExplainer
from mmcam.errors import MMCamError


class Tiny(nn.Module):
    """A = conv(x) with channels (x, 2x); y0 = sum(W*A0) + sum(A1^2)/2, y1 = sum(W*A0) - sum(A1)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1))
        self.register_buffer("W", torch.tensor([[1.0, 0.0], [0.0, -3.0]]))

    def forward(self, x):
        a = self.conv(x)
        s = (self.W * a[:, 0]).sum(dim=(1, 2))
        y0 = s + (a[:, 1] ** 2).sum(dim=(1, 2)) / 2
        y1 = s - a[:, 1].sum(dim=(1, 2))
        return torch.stack([y0, y1], dim=1)


X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
x = [[1, 2], [3, 4]]


def maps(method):
    ex = ClassExplainer(Tiny(), layer="conv", method=method)
    return ex.explain_pixels(X, torch.tensor([[0, 1]]))["layer_maps"][0].double()


def test_gradcam_by_hand():
    # y0: G0 = W (mean -1/2), G1 = A1 (mean 5): L = relu(-x/2 + 5*2x) = 9.5 x
    # y1: G0 = W (mean -1/2), G1 = -1: L = relu(-x/2 - 2x) = 0
    m = maps("gradcam")
    assert torch.allclose(m[0], torch.tensor(x, dtype=torch.float64) * 9.5)
    assert torch.equal(m[1], torch.zeros(2, 2, dtype=torch.float64))


def test_counterfactual_by_hand():
    # negated gradients: y0 -> relu(x/2 - 10x) = 0 ; y1 -> relu(x/2 + 2x) = 2.5x
    m = maps("counterfactual")
    assert torch.equal(m[0], torch.zeros(2, 2, dtype=torch.float64))
    assert torch.allclose(m[1], torch.tensor(x, dtype=torch.float64) * 2.5)


def test_hirescam_by_hand():
    # y0: G0*A0 = [[1,0],[0,-12]], G1*A1 = (2x)^2 = [[4,16],[36,64]]
    m = maps("hirescam")
    assert torch.allclose(m[0], torch.tensor([[5.0, 16.0], [36.0, 52.0]], dtype=torch.float64))
    # y1: G0*A0 - A1 = [[1-2, -4], [-6, -12-8]] -> all negative -> 0
    assert torch.equal(m[1], torch.zeros(2, 2, dtype=torch.float64))


def test_gradcam_plus_plus_by_hand():
    # channel 0: S=10, G=[[1,0],[0,-3]]: a=1/12 at g=1, a=9/(18-270) at g=-3 -> w0 = 1/12
    # channel 1: S=20, G=2x: a = 1/(2+20g) -> w1 = sum g/(2+20g)
    w0 = Fr(1, 12)
    w1 = sum(Fr(g, 2 + 20 * g) for g in (2, 4, 6, 8))
    expected = torch.tensor([[float(w0 * v + w1 * 2 * v) for v in row] for row in x])
    m = maps("gradcam++")
    assert torch.allclose(m[0], expected.double(), rtol=1e-6)


def test_gradcam_plus_plus_matches_pytorch_grad_cam_formula():
    pgc = pytest.importorskip("pytorch_grad_cam")
    torch.manual_seed(0)
    A = torch.rand(3, 8, 5, 5, dtype=torch.float64)
    G = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    ref = pgc.GradCAMPlusPlus.get_cam_weights(None, None, None, None, A.numpy(), G.numpy())
    ref_map = np.maximum((ref[:, :, None, None] * A.numpy()).sum(axis=1), 0)
    # pytorch-grad-cam adds eps=1e-7 to the denominator (ours is exact): ~1e-5 relative here
    assert np.allclose(gradcam_plus_plus(A, G).numpy(), ref_map, rtol=1e-4, atol=0)
    assert not np.allclose(gradcam_plus_plus(A, -G).numpy(), ref_map, rtol=1e-2)


def test_hirescam_matches_slow_loop():
    torch.manual_seed(1)
    A, G = torch.rand(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    slow = torch.zeros(2, 3, 3)
    for n in range(2):
        for i in range(3):
            for j in range(3):
                total = sum(float(G[n, k, i, j] * A[n, k, i, j]) for k in range(4))
                slow[n, i, j] = max(0.0, total)
    assert torch.allclose(hirescam(A, G), slow, atol=1e-6)


def test_upsample_is_bilinear_half_pixel():
    # 1x2 -> 1x4 with align_corners=False: centers at 0.25,0.75 of the source: [a, .75a+.25b, ...]
    m = torch.tensor([[[0.0, 4.0]]])
    assert torch.allclose(upsample(m, (1, 4)), torch.tensor([[[0.0, 1.0, 3.0, 4.0]]]))


def test_normalize_shared_and_per_map():
    m = torch.tensor([[[1.0, 2.0]], [[0.0, 4.0]], [[0.0, 0.0]]])
    assert torch.allclose(normalize(m), m / 4)
    per = normalize(m, shared=False)
    assert torch.allclose(per[0], torch.tensor([[0.5, 1.0]]))
    assert torch.equal(per[2], torch.zeros(1, 2))


def test_unknown_method_is_a_clear_error():
    with pytest.raises(MMCamError, match="unknown method"):
        ClassExplainer(Tiny(), layer="conv", method="nope")
