"""Anchor coverage: best IoU per box and the shares no anchor fits, worked out by hand."""

import math

import numpy as np
import pytest

from tfssd.config.run_config import BASE_NETWORKS
from tfssd.evaluation import anchor_coverage
from tfssd.model.ssd import ssd_network

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


# Anchors per network at 300 and 512: SageMaker's VGG-16 has 7 maps from 448 (its 512 has a
# 2x2 map where tfssd's has a 1x1 one: 24576 against 24564).
ANCHOR_COUNTS = {"vgg-16": (8732, 24564), "resnet-50": (2234, 6132),
                 "sagemaker-vgg-16": (8732, 24576), "sagemaker-resnet-50": (2268, 6132)}


def test_every_network_is_counted():
    assert set(ANCHOR_COUNTS) == set(BASE_NETWORKS)


@pytest.mark.parametrize("base_network", BASE_NETWORKS)
def test_the_anchors_are_the_networks_own(base_network):
    """What --coverage measures is what the network trains, decodes and exports with: the
    anchors of the full network (any class count), bit for bit."""
    for shape, count in zip((300, 512), ANCHOR_COUNTS[base_network]):
        anchors = anchor_coverage.network_anchors(base_network, shape)
        model = ssd_network(base_network, num_classes=3, image_size=shape)
        assert len(anchors) == count
        assert anchors.dtype == model.anchors.dtype == np.float32
        np.testing.assert_array_equal(anchors, model.anchors)


def test_sagemaker_vgg16_coverage_by_hand():
    """A 0.1 x 0.1 box centred at the corner (1, 1) of a 300 x 300 input. SageMaker's VGG-16
    steps its first map (38 x 38) by 8 / 300, so its last centre is 37.5 * 8 / 300 = 1 and its
    0.1 square anchor there is the box itself: IoU 1. SSD's rule centres at 37.5 / 38, 1 / 76
    short of 1 on both axes: the best overlap is (0.1 - 1/76)² and the IoU
    (0.1 - 1/76)² / (0.02 - (0.1 - 1/76)²) = 0.6053."""
    box = np.array([[0.95, 0.95, 1.05, 1.05]], np.float32)  # 900 px² at 300: small
    side = 0.1 - 1 / 76
    ssd_iou = side ** 2 / (0.02 - side ** 2)
    assert ssd_iou == pytest.approx(0.6053, abs=1e-4)
    (sagemaker,) = anchor_coverage.compare_shapes(box, "sagemaker-vgg-16", [300], 300, 0.7)
    (tfssd,) = anchor_coverage.compare_shapes(box, "vgg-16", [300], 300, 0.7)
    assert sagemaker.best_iou[0] == pytest.approx(1, abs=1e-5)
    assert tfssd.best_iou[0] == pytest.approx(ssd_iou, rel=1e-4)
    assert sagemaker.below == 0 and sagemaker.below_by_size["small"] == (0.0, 1)
    assert tfssd.below == 1 and tfssd.below_by_size["small"] == (1.0, 1)


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


def test_an_unknown_network_or_a_too_small_input_is_named():
    with pytest.raises(ValueError, match="base_network"):
        anchor_coverage.network_anchors("alexnet", 300)
    with pytest.raises(ValueError, match="image_shape=16"):
        anchor_coverage.network_anchors("vgg-16", 16)
