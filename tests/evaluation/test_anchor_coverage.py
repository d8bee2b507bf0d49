"""Anchor coverage: best IoU per box and the shares no anchor fits, worked out by hand."""

import math

import numpy as np
import pytest

from tfssd.evaluation import anchor_coverage

ANCHORS = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], np.float32)
BOXES = np.array([
    [0, 0, 0.5, 0.5],  # anchor 0 itself: IoU 1; 0.25 of a 100x100 input = 2500 px² (medium)
    [0, 0, 0.5, 0.25],  # half of anchor 0: .125 / .25 = 0.5, not above 0.5; 1250 px² (medium)
    [0.25, 0.25, 0.75, 0.75],  # .0625 / (.25 + .25 - .0625) = 1/7 with either; medium
    [0.5, 0.5, 0.6, 0.6],  # inside anchor 1: .01 / .25 = 0.04; 100 px² (small)
], np.float32)


def test_best_iou_by_hand():
    np.testing.assert_allclose(anchor_coverage.best_iou(BOXES, ANCHORS),
                               [1, 0.5, 1 / 7, 0.04], rtol=1e-6)
    assert anchor_coverage.best_iou(np.zeros((0, 4)), ANCHORS).shape == (0,)


def test_shares_not_above_the_threshold_overall_and_by_size():
    result = anchor_coverage.coverage(BOXES, ANCHORS, image_shape=100, overlap_threshold=0.5)
    assert result.below == 3 / 4  # 0.5 (not above), 1/7 and 0.04
    assert result.below_by_size["small"] == (1.0, 1)
    assert result.below_by_size["medium"] == (2 / 3, 3)
    share, count = result.below_by_size["large"]
    assert count == 0 and math.isnan(share)
    # At 0.1 only the small box's 0.04 is left out; sizes measured at 400 make it 1600 px²,
    # medium, and the others large (from 96² = 9216 px²: 0.125 * 400² = 20000).
    result = anchor_coverage.coverage(BOXES, ANCHORS, 100, 0.1, size_shape=400)
    assert result.below == 1 / 4
    assert result.below_by_size["medium"] == (1.0, 1)
    assert result.below_by_size["large"] == (0.0, 3)


@pytest.mark.parametrize("shape, sizes, count", [
    (300, ((38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)), 8732),
    (512, ((64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)), 24564)])
def test_the_network_anchors_without_the_full_network(shape, sizes, count):
    assert anchor_coverage.feature_map_sizes("vgg-16", shape) == sizes
    assert len(anchor_coverage.network_anchors("vgg-16", shape)) == count


def test_a_larger_input_fits_small_objects_better():
    # An object of 0.05 x 0.05 (15 px at 300): SSD300's smallest anchors are 0.1 wide, so at
    # best IoU .0025 / .01 = 0.25; SSD512's 0.07 give .0025 / .0049 = 0.51 when centred on
    # one (conv4_3 of 64 cells: centre (32 + .5) / 64).
    c = 32.5 / 64
    box = np.array([[c - 0.025, c - 0.025, c + 0.025, c + 0.025]], np.float32)
    at_300, at_512 = anchor_coverage.compare_shapes(box, "vgg-16", [300, 512], size_shape=300)
    assert at_300.best_iou[0] == pytest.approx(0.25, abs=0.01) and at_300.below == 1
    assert at_512.best_iou[0] == pytest.approx(0.0025 / 0.0049, rel=1e-4)
    assert at_512.below == 0 and at_512.below_by_size["small"] == (0.0, 1)
    table = anchor_coverage.format_table([at_300, at_512], "vgg-16", 0.5, 300)
    assert "best anchor IoU <= 0.5" in table and table.splitlines()[-1].split()[:2] == [
        "512", "24564"]


def test_an_unknown_network_is_named():
    with pytest.raises(ValueError, match="base_network"):
        anchor_coverage.feature_map_sizes("alexnet", 300)
