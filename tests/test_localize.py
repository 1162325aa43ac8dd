"""15%-of-max localization boxes and box IoU on maps with known answers."""

import numpy as np
import pytest
import torch

from mmcam.cam import box_iou, localize


def test_largest_of_two_blobs_wins():
    m = torch.zeros(20, 30)
    m[2:5, 3:6] = 10.0  # small blob (9 px) holds the max
    m[10:18, 12:27] = 2.0  # large blob (120 px), above 15% of 10
    assert localize(m) == [(12, 10, 27, 18)]


def test_threshold_edge_is_inclusive():
    m = torch.zeros(10, 10)
    m[0, 0] = 100.0
    m[0, 1] = 15.0  # exactly 15% -> kept, joins the max
    m[0, 2] = 14.999  # below -> dropped
    assert localize(m) == [(0, 0, 2, 1)]
    assert localize(m, threshold=0.1) == [(0, 0, 3, 1)]


def test_diagonal_pixels_are_connected_and_batches_work():
    m = torch.zeros(2, 6, 6)
    m[0, 0, 0] = m[0, 1, 1] = m[0, 2, 2] = 1.0  # one 8-connected diagonal segment
    m[0, 5, 4:6] = 1.0  # 2-pixel segment
    assert localize(m) == [(0, 0, 3, 3), None]


def test_matches_scipy_label_on_random_maps():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.random((6, 32, 40)) ** 4)
    for m, box in zip(maps, localize(maps)):
        mask = m.numpy() >= 0.15 * m.numpy().max()
        lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
        sizes = np.bincount(lab.ravel())[1:]
        if (sizes == sizes.max()).sum() > 1:
            continue  # ties: our rule differs from scipy's numbering
        ys, xs = np.nonzero(lab == sizes.argmax() + 1)
        assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_box_iou():
    assert box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 2, 2), (2, 2, 4, 4)) == 0.0


def test_tie_goes_to_the_segment_with_the_last_pixel():
    m = torch.zeros(8, 8)
    m[1, 1:3] = 1.0  # two 2-pixel segments of equal size
    m[5, 4:6] = 1.0
    assert localize(m) == [(4, 5, 6, 6)]


def test_u_shape_merges_into_one_segment():
    m = torch.zeros(6, 7)
    m[0:5, 1] = 1.0  # left arm
    m[0:5, 5] = 1.0  # right arm, joined only at the bottom row
    m[4, 1:6] = 1.0
    m[0, 3] = 1.0  # an isolated pixel between the arms
    assert localize(m) == [(1, 0, 6, 5)]


def test_float32_maps_cut_exactly_as_in_float64():
    """float32 maps are compared with the smallest float32 >= 0.15 * max instead of being
    converted to float64: every mask pixel must be the float64 comparison's, also for values
    one float32 step either side of the threshold."""
    from mmcam.cam import _cut

    g = torch.Generator().manual_seed(0)
    maps = torch.rand(64, 9, 11, generator=g)
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    t = 0.15 * peak.double()
    near = t.float()
    for k, v in enumerate((near, torch.nextafter(near, near + 1), torch.nextafter(near, near - 1))):
        maps[:, k, 0] = v[:, 0, 0]
    cut = _cut(t, torch.float32)
    assert torch.equal(maps >= cut, maps.double() >= t)
    assert ((maps >= cut) != (maps.double() >= 0)).any()  # the cut does remove pixels
    boxes64 = [localize(m.double()[None])[0] for m in maps]  # float64 path, one map at a time
    assert localize(maps) == boxes64
