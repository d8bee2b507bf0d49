"""SSD default boxes: published counts and scales, a hand-computed golden, coverage."""

import math

import numpy as np

from tfssd.ops import anchors

SSD300_MAPS = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
SSD512_MAPS = [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


def test_published_anchor_counts():
    assert len(anchors.ssd_anchors(SSD300_MAPS)) == 8732
    assert len(anchors.ssd_anchors(SSD512_MAPS)) == 24564
    assert anchors.num_anchors_per_location(anchors.ssd_aspect_ratios(6)) == (4, 6, 6, 6, 4, 4)
    assert anchors.num_anchors_per_location(anchors.ssd_aspect_ratios(7)) == (
        4, 6, 6, 6, 6, 4, 4)


def test_published_scales():
    # SSD300: conv4_3 at 0.1, then 0.2..0.88 in steps of 0.17 (Caffe model script).
    np.testing.assert_allclose(anchors.ssd_scales(6), [0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05])
    # SSD512: conv4_3 at 0.07, then 0.15..0.9 in steps of 0.15.
    np.testing.assert_allclose(anchors.ssd_scales(7),
                               [0.07, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05])


def test_hand_computed_golden():
    boxes = anchors.generate_anchors([(2, 2)], (0.4, 0.9), ((2.0,),))
    assert boxes.shape == (16, 4)  # 2 x 2 locations, 4 boxes each
    root2 = math.sqrt(2)
    h2, w2 = 0.4 / root2, 0.4 * root2
    expected_first_location = [
        [0.05, 0.05, 0.45, 0.45],  # scale 0.4, centre (0.25, 0.25)
        [-0.05, -0.05, 0.55, 0.55],  # sqrt(0.4 * 0.9) = 0.6
        [0.25 - h2 / 2, 0.25 - w2 / 2, 0.25 + h2 / 2, 0.25 + w2 / 2],  # width / height = 2
        [0.25 - w2 / 2, 0.25 - h2 / 2, 0.25 + w2 / 2, 0.25 + h2 / 2],  # width / height = 1/2
    ]
    np.testing.assert_allclose(boxes[:4], expected_first_location, atol=1e-6)
    # Row-major order: the second location is row 0, column 1 (centre x 0.75).
    np.testing.assert_allclose(boxes[4], [0.05, 0.55, 0.45, 0.95], atol=1e-6)


def test_non_square_map_centres():
    boxes = anchors.generate_anchors([(2, 3)], (0.2, 0.3), ((),))
    centres = (boxes[::2, :2] + boxes[::2, 2:]) / 2
    np.testing.assert_allclose(centres, [[0.25, 1 / 6], [0.25, 0.5], [0.25, 5 / 6],
                                         [0.75, 1 / 6], [0.75, 0.5], [0.75, 5 / 6]], atol=1e-6)


def test_centres_tile_the_image_at_any_size():
    for maps in (SSD300_MAPS, SSD512_MAPS, [(50, 50), (25, 25), (13, 13), (7, 7), (4, 4),
                                            (2, 2), (1, 1)]):
        boxes = anchors.ssd_anchors(maps)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        assert centres.min() > 0 and centres.max() < 1
        first = maps[0][0]
        grid = centres[:first * first * 4].reshape(first, first, 4, 2)
        np.testing.assert_allclose(grid[:, 0, 0, 0], (np.arange(first) + 0.5) / first, atol=1e-6)
        np.testing.assert_allclose(grid[0, :, 0, 1], (np.arange(first) + 0.5) / first, atol=1e-6)
