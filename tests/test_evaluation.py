"""mmcam.evaluation against answers known by hand, scipy, and Quantus as an independent oracle.

Every expected number below is computed by hand in the test, by numpy/scipy, or by Quantus
(0.6.x); none is mmcam's own output fed back.

The model for the map-level checks is ``colour_net``: a conv net with hand-set weights (no
training) that tells a red square (class 0) from a blue one (class 1) on a grey background, so
its Grad-CAM maps point at the square, and randomizing its layers has something to destroy.

Quantus conventions, read from its source, and how the comparisons match them:

- ``PointingGame``: a hit when *any* pixel equal to the map's maximum lies in the mask, no slack;
  mmcam's :func:`pointing_hit` looks at the *first* maximum in row-major order and allows a
  ``slack``. Compared at ``slack=0`` on maps with a unique maximum; the tie case is pinned as
  a documented difference.
- ``RelevanceMassAccuracy``: ``sum(a * mask) / sum(a)`` on the raw map (``abs=False``,
  ``normalise=False``); mmcam's :func:`energy_ratio` clamps negatives to 0 and divides by the
  mask's area share, so ``energy_ratio * mask.mean()`` equals Quantus's number on
  non-negative maps.
- ``correlation_spearman``: ``scipy.stats.spearmanr`` (mean ranks for ties), batched per row.
- ``MPRT``: re-initializes every module that has ``reset_parameters`` (here: exactly mmcam's
  stages conv1, conv2, fc), calling ``torch.manual_seed(seed + 1)`` before each one, the same
  seed for every layer; mmcam's cascade seeds the k-th randomized stage with ``seed + k``. So
  Quantus's ``layer_order="independent"`` (each layer alone) equals mmcam's
  ``randomization_check(stages=[name], seed=qseed + 1)``, and the first step of Quantus's
  ``"top_down"`` cascade equals mmcam's first step; later cascade steps draw different weights
  and are not compared. A sample whose map is constant has no rank correlation: Quantus
  reports nan for it, mmcam leaves it out of the mean, so mmcam's value is compared with
  ``nanmean`` of Quantus's per-sample scores. ``abs`` and ``normalise`` are off (Grad-CAM
  maps are non-negative and Spearman ignores scale anyway).
- ``PixelFlipping``: deletion with a constant baseline (``perturb_baseline=0.0``; Quantus's
  ``"black"`` is the image's minimum), ``features_in_step`` pixels x channels at a time, the
  first score taken *after* the first step (no unperturbed point), logits with
  ``softmax=False``, descending ``np.argsort`` (not stable: maps must have distinct values).
  Quantus 0.6.0's AUC (``return_auc_per_sample``) calls ``np.trapz``, which NumPy 2.4 removed,
  so only the curves are compared.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from mmcam import ClassExplainer
from mmcam.errors import MMCamError
from mmcam.evaluation import (
    blurred,
    box_mask,
    centre_blob,
    curve_area,
    energy_ratio,
    localization_correct,
    mean_fill,
    parameter_stages,
    perturbation_curve,
    pointing_hit,
    random_map,
    randomization_check,
    randomize,
    ranking,
    spearman,
)

# ----------------------------------------------------------------------------- fixtures


def scenes(n: int, seed: int, size: int = 12):
    """Grey noise with one 4x4 square: red for even i (class 0), blue for odd i (class 1)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.2 * torch.rand(n, 3, size, size, generator=g)
    y = torch.arange(n) % 2
    boxes = []
    for i in range(n):
        x0, y0 = (int(v) for v in torch.randint(0, size - 3, (2,), generator=g))
        x[i, :, y0:y0 + 4, x0:x0 + 4] = 0.1
        x[i, 0 if y[i] == 0 else 2, y0:y0 + 4, x0:x0 + 4] = 0.9
        boxes.append((x0, y0, x0 + 4, y0 + 4))
    return x, y, boxes


def colour_net() -> nn.Module:
    """Hand-set weights: conv1 detects redness, blueness, brightness and blurred brightness
    (centre taps), conv2 box-sums each channel, fc says red - blue (class 0) or blue - red."""
    net = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 4, 3, padding=1), relu1=nn.ReLU(),
        conv2=nn.Conv2d(4, 4, 3, stride=2, padding=1), relu2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 2)))
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        w = net.conv1.weight
        w[0, :, 1, 1] = torch.tensor([1.0, -0.5, -0.5])
        w[1, :, 1, 1] = torch.tensor([-0.5, -0.5, 1.0])
        w[2, :, 1, 1] = 1 / 3
        w[3] = 1 / 27
        net.conv1.bias.copy_(torch.tensor([-0.1, -0.1, -0.2, -0.2]))
        for c in range(4):
            net.conv2.weight[c, c] = 1 / 9
        net.fc.weight.copy_(torch.tensor([[4.0, -4.0, 0.5, -0.5], [-4.0, 4.0, -0.5, 0.5]]))
    return net.eval()


def gradcam(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,H,W) Grad-CAM maps of class y[i] for image x[i] at relu2."""
    ex = ClassExplainer(model, layer="relu2", method="gradcam", align="bilinear")
    return ex.explain_pixels(x, targets=y[:, None])["maps"][:, 0]


@pytest.fixture(scope="module")
def data():
    x, y, boxes = scenes(8, seed=1)
    return colour_net(), x, y, boxes


# ----------------------------------------------------------------------------- pointing


def test_pointing_hit_slack_is_chebyshev_distance():
    mask = box_mask((2, 3, 5, 6), (10, 10))  # x in 2..4, y in 3..5
    m = torch.zeros(10, 10)
    m[4, 6] = 1.0  # x=6: two columns right of the mask's last column
    assert [pointing_hit(m, mask, slack=s) for s in range(4)] == [False, False, True, True]
    m = torch.zeros(10, 10)
    m[7, 6] = 1.0  # 2 right and 2 below the corner (4, 5): Chebyshev distance 2
    assert [pointing_hit(m, mask, slack=s) for s in range(3)] == [False, False, True]
    m = torch.zeros(10, 10)
    m[4, 3] = 0.5  # inside
    assert pointing_hit(m, mask.numpy())  # a numpy mask works too
    corner = torch.zeros(10, 10)
    corner[0, 0] = 1.0
    assert pointing_hit(corner, box_mask((1, 1, 2, 2), (10, 10)), slack=5)  # window clipped
    assert not pointing_hit(corner, box_mask((3, 0, 4, 1), (10, 10)), slack=2)


def test_pointing_hit_degenerate_maps_and_ties():
    everywhere = torch.ones(6, 6, dtype=torch.bool)
    assert not pointing_hit(torch.zeros(6, 6), everywhere)
    assert not pointing_hit(-torch.rand(6, 6) - 0.1, everywhere)  # max <= 0
    m = torch.zeros(6, 6)
    m[0, 5] = m[4, 1] = 1.0  # two equal maxima; the first (row-major) is (x=5, y=0)
    mask = box_mask((0, 3, 3, 6), (6, 6))  # holds only the second one
    assert not pointing_hit(m, mask)
    m[0, 5] = 0.99
    assert pointing_hit(m, mask)


# ----------------------------------------------------------------------------- energy


def test_box_mask_by_hand():
    m = box_mask((1, 2, 4, 5), (6, 7))  # size is (W, H)
    assert m.shape == (7, 6) and m.dtype == torch.bool
    expected = np.zeros((7, 6), bool)
    for yy in (2, 3, 4):
        for xx in (1, 2, 3):
            expected[yy, xx] = True
    np.testing.assert_array_equal(m.numpy(), expected)


def test_energy_ratio_by_hand():
    mask = box_mask((2, 3, 6, 6), (10, 10))  # 4 x 3 = 12 of 100 pixels
    assert energy_ratio(torch.full((10, 10), 0.3), mask) == pytest.approx(1.0)
    inside = torch.zeros(10, 10)
    inside[3:6, 2:6] = torch.rand(3, 4) + 0.1
    assert energy_ratio(inside, mask) == pytest.approx(100 / 12)
    m = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    diag = np.array([[True, False], [False, True]])
    assert energy_ratio(m, diag) == pytest.approx((5 / 10) / 0.5)
    assert energy_ratio(m, np.array([[False, True], [False, False]])) == pytest.approx(
        (2 / 10) / 0.25)
    signed = torch.tensor([[-5.0, 2.0], [3.0, 4.0]])  # negatives count as 0: total 9
    assert energy_ratio(signed, np.array([[False, True], [False, False]])) == pytest.approx(
        (2 / 9) / 0.25)
    assert math.isnan(energy_ratio(torch.zeros(2, 2), diag))
    assert math.isnan(energy_ratio(m, np.zeros((2, 2), bool)))


# ----------------------------------------------------------------------------- localization


def _gaussian(cx: int, cy: int, sigma: float, size: int = 24) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2)).double()


def test_localization_box_of_a_known_blob():
    # sigma 3: exp(-25/18) = 0.249 >= 0.15 > exp(-36/18) = 0.135, so the 15% segment reaches
    # 5 pixels from the centre along each axis: box (cx-5, cy-5, cx+6, cy+6), 11 x 11.
    blob = _gaussian(10, 12, 3.0)
    blob[1:3, 20:22] = 1.0  # a 2x2 spot as high as the peak, but a smaller segment
    exact = (5, 7, 16, 18)
    assert localization_correct(blob, exact)
    # shifted 3 right: overlap 8 x 11 = 88, union 242 - 88 = 154, IoU 0.571
    assert localization_correct(blob, (8, 7, 19, 18))
    # shifted 4 right: overlap 7 x 11 = 77, union 165, IoU 0.467
    assert not localization_correct(blob, (9, 7, 20, 18))
    assert localization_correct(blob, (9, 7, 20, 18), iou=0.46)
    assert not localization_correct(blob, (9, 7, 20, 18), iou=0.47)
    # threshold 0.5: exp(-9/18) = 0.61 >= 0.5 > exp(-16/18) = 0.41: box (cx-3, cy-3, cx+4,
    # cy+4), 7 x 7; against the 15% box its IoU is 49/121 = 0.405
    small = (7, 9, 14, 16)
    assert localization_correct(blob, small, threshold=0.5)
    assert not localization_correct(blob, small)
    assert not localization_correct(blob, exact, threshold=0.5)
    assert not localization_correct(torch.zeros(24, 24), exact)


# ----------------------------------------------------------------------------- baselines


def test_random_map_and_centre_blob_by_hand():
    a, b, c = random_map((5, 7), 3), random_map((5, 7), 3), random_map((5, 7), 4)
    assert a.shape == (5, 7) and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) < 1
    big = random_map((100, 100), 0)
    assert energy_ratio(big, box_mask((0, 0, 50, 100), (100, 100))) == pytest.approx(1, abs=0.03)

    blob = centre_blob((8, 8))  # coordinates (i + 0.5 - 4) / 2: +-0.25 next to the centre
    assert float(blob[3, 3]) == pytest.approx(math.exp(-0.0625))
    assert float(blob[0, 0]) == pytest.approx(math.exp(-0.5 * 2 * 1.75 ** 2))
    assert torch.allclose(blob, blob.flip(0)) and torch.allclose(blob, blob.flip(1))
    odd = centre_blob((5, 9), sigma=0.5)  # the centre pixel of an odd side is exactly centred
    assert float(odd[2, 4]) == pytest.approx(1.0)
    # one pixel right: x = 1 / (0.5 * 9); one pixel down: y = 1 / (0.5 * 5)
    assert float(odd[2, 5]) == pytest.approx(math.exp(-0.5 * (2 / 9) ** 2))
    assert float(odd[3, 4]) == pytest.approx(math.exp(-0.5 * (2 / 5) ** 2))


def test_blurred_by_hand():
    const = torch.full((3, 9, 10), 0.7)
    assert torch.allclose(blurred(const), const)  # replicate padding: nothing from outside
    impulse = torch.zeros(3, 31, 31, dtype=torch.float64)
    impulse[:, 15, 15] = 1.0
    r = np.arange(11) - 5.0
    g = np.exp(-0.5 * (r / 5.0) ** 2)
    g /= g.sum()
    out = blurred(impulse)
    expected = np.zeros((31, 31))
    expected[10:21, 10:21] = np.outer(g, g)
    for ch in range(3):
        np.testing.assert_allclose(out[ch].numpy(), expected, atol=1e-12)


def test_ranking_breaks_ties_by_index():
    m = torch.tensor([[1.0, 3.0], [3.0, 0.0]])
    assert ranking(m).tolist() == [1, 2, 0, 3]


# ----------------------------------------------------------------------------- perturbation


def linear_score(w: torch.Tensor):
    return lambda images: (images * w).sum(dim=(1, 2, 3))


def test_deletion_and_insertion_of_a_linear_score_by_hand():
    pixels = torch.ones(3, 2, 2)
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(3, 2, 2)  # each pixel gives 3 * w
    m = torch.tensor([[0.1, 0.9], [0.5, 0.3]])  # order: w=2, w=3, w=4, w=1
    fr = [0, 0.25, 0.5, 0.75, 1]
    zero = torch.zeros(3, 2, 2)
    xs, dele = perturbation_curve(linear_score(w), pixels, m, "deletion", fr, absent=zero)
    assert xs == fr
    assert dele == pytest.approx([30, 24, 15, 3, 0])
    _, ins = perturbation_curve(linear_score(w), pixels, m, "insertion", fr, absent=zero)
    assert ins == pytest.approx([0, 6, 15, 27, 30])
    assert curve_area(xs, dele) == pytest.approx(0.25 * (15 + 24 + 15 + 3 + 0))
    assert curve_area(xs, ins) == pytest.approx(0.25 * (0 + 6 + 15 + 27 + 15))
    half = torch.full((3, 2, 2), 0.5)  # absent pixels worth half: deletion removes 3w/2
    _, d2 = perturbation_curve(linear_score(w), pixels, m, "deletion", fr, absent=half)
    assert d2 == pytest.approx([30, 27, 22.5, 16.5, 15])


def test_mean_fill_by_hand():
    px = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[4.0, 4.0], [4.0, 4.0]],
                       [[-1.0, 1.0], [0.0, 0.0]]])
    f = mean_fill(px)
    assert f.shape == px.shape
    assert torch.equal(f[0], torch.full((2, 2), 1.5))
    assert torch.equal(f[1], torch.full((2, 2), 4.0))
    assert torch.equal(f[2], torch.zeros(2, 2))
    f[0, 0, 0] = 9.0  # a copy, not a view of one value
    assert f[0, 1, 1] == 1.5 and px[0, 0, 0] == 0.0


def test_blur_keeps_an_objects_color_and_the_mean_fill_removes_it():
    """Why the suite's deletion fills with the mean color: on a red 12x12 square on grey, a
    'redness' score (mean of red minus green over the image) barely moves when the square's
    pixels are replaced by the blurred image (the blur of a uniform square is red inside),
    and drops to the background's value with the mean fill. Hand values: background 0.5,
    square red (1, 0, 0) on a 32x32 image."""
    px = torch.full((3, 32, 32), 0.5)
    px[:, 10:22, 10:22] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    m = torch.zeros(32, 32)
    m[10:22, 10:22] = 1.0
    def redness(images):
        return (images[:, 0] - images[:, 1]).mean(dim=(1, 2))
    frac = [0.0, 144 / 1024]  # exactly the square's pixels
    _, by_blur = perturbation_curve(redness, px, m, "deletion", frac)
    _, by_mean = perturbation_curve(redness, px, m, "deletion", frac, absent=mean_fill(px))
    assert by_blur[0] == pytest.approx(144 / 1024)  # the square's red, spread over the image
    assert by_blur[1] > 0.5 * by_blur[0]  # the blur keeps most of it
    # mean fill: each removed pixel takes the image mean of red - green = 144/1024
    assert by_mean[1] == pytest.approx((144 / 1024) ** 2)


def test_deletion_curve_matches_a_numpy_oracle():
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 10, 10, generator=g, dtype=torch.float64)
    w = torch.randn(3, 10, 10, generator=g, dtype=torch.float64)
    m = torch.rand(10, 10, generator=g, dtype=torch.float64)
    xs, ys = perturbation_curve(linear_score(w), pixels, m)  # default: 11 fractions, blurred
    contrib = ((pixels - blurred(pixels)) * w).sum(0).numpy().reshape(-1)
    order = np.argsort(-m.numpy().reshape(-1), kind="stable")
    total = float((pixels * w).sum())
    assert xs == pytest.approx([i / 10 for i in range(11)])
    expected = [total - contrib[order[:10 * i]].sum() for i in range(11)]
    np.testing.assert_allclose(ys, expected, rtol=1e-10, atol=1e-10)
    # fractions whose f * n falls just below an integer in floating point (0.57 * 100 =
    # 56.99999999999999) still change round(f * n) pixels
    xs, ys = perturbation_curve(linear_score(w), pixels, m, fractions=[0.29, 0.57])
    assert 0.29 * 100 < 29 and 0.57 * 100 < 57
    np.testing.assert_allclose(ys, [total - contrib[order[:29]].sum(),
                                    total - contrib[order[:57]].sum()], rtol=1e-10)
    with pytest.raises(ValueError, match="mode"):
        perturbation_curve(linear_score(w), pixels, m, mode="flip")


def test_curve_area_by_hand():
    assert curve_area([0, 0.5, 1], [0, 0.25, 1]) == pytest.approx(0.375)
    assert curve_area([0, 1, 3], [2, 2, 0]) == pytest.approx(4.0)


# ----------------------------------------------------------------------------- spearman


def test_spearman_against_scipy_with_ties():
    g = np.random.default_rng(0)
    cases = [
        (g.random((6, 7)), g.random((6, 7))),
        (g.integers(0, 4, (50,)).astype(float), g.integers(0, 3, (50,)).astype(float)),
        (g.integers(0, 4, (8, 8)).astype(float), g.random((8, 8))),
    ]
    base = g.random((5, 5))
    cases.append((base, base ** 3 + 2))
    for a, b in cases:
        expected = stats.spearmanr(a.reshape(-1), b.reshape(-1))[0]
        assert spearman(torch.as_tensor(a), torch.as_tensor(b)) == pytest.approx(expected,
                                                                                  abs=1e-12)
    assert spearman(torch.as_tensor(base), torch.as_tensor(-base)) == pytest.approx(-1.0)
    assert math.isnan(spearman(torch.ones(3, 3), torch.rand(3, 3)))


# ----------------------------------------------------------------------------- randomization


def test_colour_net_explains_the_square(data):
    """The fixture model is a real explainer target: right classes, maps on the square."""
    net, x, y, boxes = data
    assert torch.equal(net(x).argmax(1), y)
    maps = gradcam(net, x, y)
    for m, b in zip(maps, boxes):
        assert pointing_hit(m, box_mask(b, (12, 12)))
        assert energy_ratio(m, box_mask(b, (12, 12))) > 4  # chance is 1, the most 144/16 = 9


def test_randomization_check_separates_gradcam_from_an_image_only_map(data):
    net, x, y, _ = data
    state = copy.deepcopy(net.state_dict())
    params = [id(p) for p in net.parameters()]
    assert parameter_stages(net) == ["conv1", "conv2", "fc"]

    cam = randomization_check(net, lambda m: gradcam(m, x, y), seed=0)
    assert [n for n, _ in cam] == ["fc", "conv2", "conv1"]
    rhos = [r for _, r in cam]
    assert all(r == r for r in rhos)
    assert max(rhos) < 0.9 and abs(rhos[-1]) < 0.6, cam

    # a broken "method": the input's brightness, which never looks at the model
    broken = randomization_check(net, lambda m: x.mean(1), seed=0)
    assert [r for _, r in broken] == pytest.approx([1.0, 1.0, 1.0])

    # the model passed in is not changed (values, parameter objects, grads, mode)
    assert [id(p) for p in net.parameters()] == params
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in net.parameters()) and not net.training

    with pytest.raises(ValueError, match="no stage"):
        randomization_check(nn.Sequential(nn.ReLU()), lambda m: x.mean(1))


def test_randomization_is_cascading_from_the_output(data):
    """Step k has the last k+1 stages re-initialized, keeps the earlier steps' draws, and
    leaves the stages before it (and any stage not listed) as trained."""
    net, x, _, _ = data
    seen = []

    def record(m):
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return x.mean(1)

    randomization_check(net, record, seed=0)
    orig, steps = seen[0], seen[1:]
    assert len(steps) == 3
    same = lambda state, stage: all(  # noqa: E731
        torch.equal(state[k], orig[k]) for k in orig if k.startswith(stage + "."))
    for k, done in enumerate((["fc"], ["fc", "conv2"], ["fc", "conv2", "conv1"])):
        for stage in ("conv1", "conv2", "fc"):
            assert same(steps[k], stage) == (stage not in done), (k, stage)
        for stage in done[:-1]:  # randomized at an earlier step: kept, not drawn again
            assert all(torch.equal(steps[k][p], steps[k - 1][p])
                       for p in orig if p.startswith(stage + "."))
    seen.clear()
    out = randomization_check(net, record, stages=["conv2"], seed=0)
    assert [n for n, _ in out] == ["conv2"]
    assert same(seen[1], "conv1") and same(seen[1], "fc") and not same(seen[1], "conv2")


def test_randomize_is_seeded_and_leaves_the_global_rng_alone():
    class WithBare(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.scale = nn.Parameter(torch.linspace(1, 2, 6))  # no reset_parameters covers it

    base = WithBare()
    a, b, c = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    rng = torch.get_rng_state()
    randomize(a, 7)
    randomize(b, 7)
    randomize(c, 8)
    assert torch.equal(torch.get_rng_state(), rng)
    for pa, pb, pc, p0 in zip(a.parameters(), b.parameters(), c.parameters(),
                              base.parameters()):
        assert torch.equal(pa, pb) and not torch.equal(pa, pc) and not torch.equal(pa, p0)
    # a layer with reset_parameters gets exactly its default init under the seed
    conv = nn.Conv2d(3, 4, 3)
    randomize(conv, 11)
    ref = nn.Conv2d(3, 4, 3)
    torch.manual_seed(11)
    ref.reset_parameters()
    torch.set_rng_state(rng)
    assert torch.equal(conv.weight, ref.weight) and torch.equal(conv.bias, ref.bias)


# ----------------------------------------------------------------------------- odd inputs


def refuses(call, match: str) -> None:
    """``call()`` raises an MMCamError matching ``match`` whose message is one line."""
    with pytest.raises(MMCamError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


def test_map_and_mask_or_image_shapes_must_agree():
    m = torch.zeros(4, 4)
    m[0, 0] = 1.0
    mask = box_mask((0, 0, 2, 2), (5, 5))  # 5x5; it holds the peak's position (0, 0)
    refuses(lambda: pointing_hit(m, mask), r"shape \(4, 4\).*\(5, 5\)")
    refuses(lambda: pointing_hit(m, mask.numpy(), slack=2), "shape")
    refuses(lambda: energy_ratio(m, mask), "shape")
    refuses(lambda: energy_ratio(m, mask.T[:4]), "shape")  # (4, 5)
    ones = torch.ones(3, 5, 5)
    refuses(lambda: perturbation_curve(linear_score(ones), ones, m), "shape")
    refuses(lambda: perturbation_curve(linear_score(ones), ones[0], m), r"\(C,H,W\)")
    refuses(lambda: spearman(torch.rand(4, 4), torch.rand(3, 3)), "shape")
    refuses(lambda: spearman(torch.rand(4, 4), torch.rand(2, 8)), "shape")  # same count
    # a map must be (H,W) where a mask or an image says where its pixels are
    refuses(lambda: pointing_hit(m[None], mask[None, :4, :4]), "2-D")
    refuses(lambda: localization_correct(m[None], (0, 0, 1, 1)), "2-D")


def test_empty_maps_are_refused():
    empty = torch.zeros(0, 0)
    no_mask = torch.zeros(0, 0, dtype=torch.bool)
    refuses(lambda: pointing_hit(empty, no_mask), "empty")
    refuses(lambda: localization_correct(empty, (0, 0, 1, 1)), "empty")
    refuses(lambda: energy_ratio(empty, no_mask), "empty")
    refuses(lambda: spearman(empty, empty), "empty")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_maps_are_refused(bad):
    m = torch.rand(6, 6, generator=torch.Generator().manual_seed(0))
    m[0, 0] = bad
    mask = box_mask((0, 0, 2, 2), (6, 6))
    refuses(lambda: pointing_hit(m, mask), "NaN or infinite")
    refuses(lambda: pointing_hit(m.numpy(), mask), "NaN or infinite")
    refuses(lambda: energy_ratio(m, mask), "NaN or infinite")
    refuses(lambda: localization_correct(m, (0, 0, 2, 2)), "NaN or infinite")
    refuses(lambda: spearman(m, torch.rand(6, 6)), "NaN or infinite")
    refuses(lambda: spearman(torch.rand(6, 6), m), "NaN or infinite")
    refuses(lambda: ranking(m), "NaN or infinite")
    ones = torch.ones(3, 6, 6)
    refuses(lambda: perturbation_curve(linear_score(ones), ones, m), "NaN or infinite")


def test_curve_area_refuses_curves_of_different_lengths():
    refuses(lambda: curve_area([0, 0.5, 1], [1, 2]), "length")
    refuses(lambda: curve_area([0, 1], [1, 2, 3]), "length")
    refuses(lambda: curve_area(0.5, [1]), "length")


@pytest.mark.parametrize("fractions", [[-0.5], [], [0.5, 1.5], [float("nan")], ["0.5"],
                                       [[0.1, 0.2]], 0.5])
def test_fractions_must_be_numbers_in_0_1(fractions):
    ones = torch.ones(3, 2, 2)
    refuses(lambda: perturbation_curve(linear_score(ones), ones, torch.rand(2, 2),
                                       fractions=fractions), "fractions")


def test_fractions_may_be_any_iterable_of_numbers_in_0_1():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(3, 2, 2)
    m = torch.tensor([[0.1, 0.9], [0.5, 0.3]])  # as in the hand test above: deletion 30, 15, 0
    zero = torch.zeros(3, 2, 2)
    for fr in ((f for f in (0, 0.5, 1)), np.array([0.0, 0.5, 1.0]), (0, 0.5, 1)):
        xs, ys = perturbation_curve(linear_score(w), torch.ones(3, 2, 2), m, fractions=fr,
                                    absent=zero)
        assert xs == [0, 0.5, 1] and ys == pytest.approx([30, 15, 0])


def test_numpy_maps_are_accepted_everywhere():
    m = np.array([[1.0, 2.0], [3.0, 4.0]])
    diag = np.array([[True, False], [False, True]])
    assert pointing_hit(m, diag) and not pointing_hit(m, ~diag)  # the peak 4 is at (1, 1)
    assert pointing_hit(m.astype(np.float32), torch.as_tensor(diag))
    assert energy_ratio(m, diag) == pytest.approx((5 / 10) / 0.5)
    assert energy_ratio(m, torch.as_tensor(~diag)) == pytest.approx((5 / 10) / 0.5)
    # the blob of test_localization_box_of_a_known_blob: its 15% box is (5, 7, 16, 18)
    blob = _gaussian(10, 12, 3.0).numpy()
    assert localization_correct(blob, (5, 7, 16, 18))
    assert not localization_correct(blob, (9, 7, 20, 18))
    g = np.random.default_rng(2)
    a, b = g.random((5, 5)), g.random((5, 5))
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel())[0], abs=1e-12)
    assert ranking(np.array([[1.0, 3.0], [3.0, 0.0]])).tolist() == [1, 2, 0, 3]
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(3, 2, 2)
    _, ys = perturbation_curve(linear_score(w), torch.ones(3, 2, 2),
                               np.array([[0.1, 0.9], [0.5, 0.3]]), "deletion",
                               [0, 0.25, 0.5, 0.75, 1], absent=torch.zeros(3, 2, 2))
    assert ys == pytest.approx([30, 24, 15, 3, 0])  # the hand values above


def test_uint8_pixels_are_taken_as_their_float_values():
    g = torch.Generator().manual_seed(2)
    px = torch.randint(0, 256, (3, 10, 10), generator=g, dtype=torch.uint8)
    w = torch.randn(3, 10, 10, generator=g, dtype=torch.float64)
    m = torch.rand(10, 10, generator=g, dtype=torch.float64)
    xs, ys = perturbation_curve(linear_score(w), px, m)  # the blurred fill
    assert ys == perturbation_curve(linear_score(w), px.float(), m)[1]
    # the numpy oracle of test_deletion_curve_matches_a_numpy_oracle, in float64
    p = px.double()
    contrib = ((p - blurred(p)) * w).sum(0).numpy().reshape(-1)
    order = np.argsort(-m.numpy().reshape(-1), kind="stable")
    total = float((p * w).sum())
    expected = [total - contrib[order[:10 * i]].sum() for i in range(11)]
    np.testing.assert_allclose(ys, expected, rtol=0, atol=1e-3)  # float32 blur of 0..255
    # the fills take integer pixels as floats too: hand values
    small = torch.tensor([[[0, 1], [2, 3]]] * 3, dtype=torch.uint8)
    assert torch.equal(mean_fill(small), torch.full((3, 2, 2), 1.5))
    assert torch.equal(blurred(torch.full((3, 4, 5), 7, dtype=torch.uint8)),
                       torch.full((3, 4, 5), 7.0))


def test_randomization_check_refuses_unknown_stages(data):
    net, x, _, _ = data
    calls = []

    def maps_of(m):
        calls.append(1)
        return x.mean(1)

    refuses(lambda: randomization_check(net, maps_of, stages=["conv2", "nope"]),
            r"'nope'.*conv1, conv2, fc")
    assert calls == []  # refused before any map is computed
    nested = nn.Sequential(OrderedDict(body=nn.Sequential(nn.Conv2d(3, 2, 1)), act=nn.ReLU()))
    out = randomization_check(nested, lambda m: m(x).mean(1), stages=["body.0"])
    assert [n for n, _ in out] == ["body.0"]  # a dotted submodule path is a stage too


def test_pointing_hit_constant_map_is_a_miss():
    corner = box_mask((0, 0, 1, 1), (6, 6))  # holds the first pixel, argmax's pick on ties
    everywhere = torch.ones(6, 6, dtype=torch.bool)
    for v in (0.5, 3.0):
        assert not pointing_hit(torch.full((6, 6), v), corner)
        assert not pointing_hit(torch.full((6, 6), v), everywhere, slack=3)
        assert not pointing_hit(np.full((6, 6), v), everywhere)
    m = torch.full((6, 6), 0.5)
    m[0, 0] = 0.6  # one pixel above the rest: a location again
    assert pointing_hit(m, corner)


# ----------------------------------------------------------------------------- Quantus oracle


@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


def test_pointing_game_matches_quantus(quantus, data):
    net, _, _, _ = data
    g = torch.Generator().manual_seed(3)
    n = 40
    x = torch.rand(n, 3, 12, 12, generator=g)
    maps = torch.rand(n, 12, 12, generator=g, dtype=torch.float64)  # unique maxima
    masks = torch.zeros(n, 12, 12, dtype=torch.bool)
    for i in range(n):
        x0, y0, w, h = (int(v) for v in torch.randint(0, 6, (4,), generator=g))
        masks[i, y0:y0 + h + 2, x0:x0 + w + 2] = True
    ours = [pointing_hit(maps[i], masks[i]) for i in range(n)]
    theirs = quantus.PointingGame(abs=False, normalise=False, disable_warnings=True)(
        model=net, x_batch=x.numpy(), y_batch=np.zeros(n, int), a_batch=maps[:, None].numpy(),
        s_batch=masks[:, None].numpy(), channel_first=True)
    assert 5 < sum(ours) < n - 5  # both hits and misses are exercised
    assert ours == [bool(t) for t in theirs]
    # documented difference: with tied maxima Quantus hits if any of them is in the mask,
    # mmcam follows the first one (row-major)
    tie = torch.zeros(1, 12, 12, dtype=torch.float64)
    tie[0, 0, 11] = tie[0, 8, 2] = 1.0
    mask = box_mask((0, 6, 5, 12), (12, 12))
    q = quantus.PointingGame(abs=False, normalise=False, disable_warnings=True)(
        model=net, x_batch=x[:1].numpy(), y_batch=np.zeros(1, int),
        a_batch=tie[:, None].numpy(), s_batch=mask[None, None].numpy(), channel_first=True)
    assert bool(q[0]) and not pointing_hit(tie[0], mask)


def test_relevance_mass_matches_quantus(quantus, data):
    net, x, y, boxes = data
    cams = gradcam(net, x, y).double()
    g = torch.Generator().manual_seed(5)
    maps = torch.cat([cams, torch.rand(8, 12, 12, generator=g, dtype=torch.float64)])
    masks = torch.stack([box_mask(b, (12, 12)) for b in boxes] * 2)
    xx = torch.cat([x, x])
    theirs = quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True)(
        model=net, x_batch=xx.numpy(), y_batch=np.zeros(16, int),
        a_batch=maps[:, None].numpy(), s_batch=masks[:, None].numpy(), channel_first=True)
    ours = [energy_ratio(m, k) * float(k.double().mean()) for m, k in zip(maps, masks)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_spearman_matches_quantus(quantus):
    from quantus.functions.similarity_func import correlation_spearman

    g = np.random.default_rng(1)
    a = g.integers(0, 5, (6, 64)).astype(float)  # heavy ties
    b = np.concatenate([g.random((3, 64)), g.integers(0, 3, (3, 64)).astype(float)])
    batched = correlation_spearman(a, b, batched=True)
    for i in range(6):
        ours = spearman(torch.as_tensor(a[i]), torch.as_tensor(b[i]))
        assert ours == pytest.approx(correlation_spearman(a[i], b[i]), abs=1e-12)
        assert ours == pytest.approx(batched[i], abs=1e-12)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_randomization_matches_quantus_mprt(quantus, data):
    net, x, y, _ = data

    def explain(model, inputs, targets, **_):
        return gradcam(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()[:, None]

    qseed = 3

    def mprt(order):
        scores = quantus.MPRT(layer_order=order, seed=qseed, abs=False, normalise=False,
                              disable_warnings=True)(
            model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None,
            explain_func=explain, channel_first=True, device="cpu")
        return {k: np.asarray(v, float) for k, v in scores.items()}

    independent = mprt("independent")
    assert list(independent) == ["original", "conv1", "conv2", "fc"]
    assert np.allclose(independent["original"], 1.0)
    maps_of = lambda m: gradcam(m, x, y)  # noqa: E731
    for name in ("conv1", "conv2", "fc"):
        [(stage, ours)] = randomization_check(net, maps_of, stages=[name], seed=qseed + 1)
        assert stage == name
        assert ours == pytest.approx(np.nanmean(independent[name]), abs=1e-9), name
    assert np.isnan(independent["fc"]).any()  # the nan-dropping convention is exercised
    cascade = mprt("top_down")
    first = randomization_check(net, maps_of, seed=qseed + 1)[0]
    assert first[0] == "fc"
    assert first[1] == pytest.approx(np.nanmean(cascade["fc"]), abs=1e-9)


def test_deletion_curve_matches_quantus_pixel_flipping(quantus, data):
    net, x, y, _ = data
    g = torch.Generator().manual_seed(9)
    cams = gradcam(net, x, y).double()
    # Grad-CAM has flat zero regions: break ties so both orders are unique
    maps = torch.cat([cams + 1e-6 * torch.rand(8, 12, 12, generator=g, dtype=torch.float64),
                      torch.rand(8, 12, 12, generator=g, dtype=torch.float64)])
    xx, yy = torch.cat([x, x]), torch.cat([y, y])
    step = 12  # pixels per step: 12 steps over 144 pixels
    theirs = quantus.PixelFlipping(features_in_step=3 * step, perturb_baseline=0.0, abs=False,
                                   normalise=False, disable_warnings=True)(
        model=net, x_batch=xx.numpy(), y_batch=yy.numpy(), a_batch=maps[:, None].numpy(),
        channel_first=True, softmax=False)
    theirs = np.asarray(theirs)
    assert theirs.shape == (16, 12)
    fractions = [k * step / 144 for k in range(1, 13)]
    worst = 0.0
    for i in range(16):
        _, ours = perturbation_curve(lambda im, c=int(yy[i]): net(im)[:, c], xx[i], maps[i],
                                     fractions=fractions, absent=torch.zeros(3, 12, 12))
        worst = max(worst, float(np.abs(np.asarray(ours) - theirs[i]).max()))
    assert worst < 1e-6
    # the curves fall: deleting the explained pixels first removes the evidence
    with torch.no_grad():
        full = net(x)[torch.arange(8), y].numpy()
    assert (theirs[:8, 1] < 0.5 * full).all()
