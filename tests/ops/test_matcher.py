"""Anchor matching: every ground truth gets an anchor, then IoU above the threshold."""

import numpy as np
import tensorflow as tf

from tfssd.ops import matcher

ANCHORS = tf.constant([[0.0, 0.0, 0.5, 0.5],    # 0
                       [0.0, 0.5, 0.5, 1.0],    # 1
                       [0.5, 0.0, 1.0, 0.5],    # 2
                       [0.5, 0.5, 1.0, 1.0],    # 3
                       [0.0, 0.0, 0.45, 0.5]])  # 4: IoU 0.9 with anchor 0


def test_threshold_and_best_anchor():
    gt = tf.constant([[0.0, 0.0, 0.5, 0.5],      # IoU 1 with anchor 0, 0.9 with anchor 4
                      [0.5, 0.5, 0.8, 0.8]])     # best IoU 0.36 (anchor 3): below 0.5
    matched = matcher.match(gt, ANCHORS).numpy()
    np.testing.assert_array_equal(matched, [0, -1, -1, 1, 0])


def test_every_ground_truth_gets_an_anchor():
    rng = np.random.default_rng(2)
    anchors = rng.uniform(0, 1, (200, 4)).astype(np.float32)
    anchors = np.concatenate([np.minimum(anchors[:, :2], anchors[:, 2:]),
                              np.maximum(anchors[:, :2], anchors[:, 2:])], 1)
    centres = rng.uniform(0.1, 0.9, (20, 2))
    gt = np.concatenate([centres - 0.01, centres + 0.01], 1).astype(np.float32)  # tiny boxes
    matched = matcher.match(tf.constant(gt), tf.constant(anchors)).numpy()
    overlaps = matcher.box_ops.iou(gt, anchors).numpy()
    reachable = {g for g in range(20) if overlaps[g].max() > 0}
    assert reachable <= set(matched[matched >= 0].tolist())


def test_no_ground_truth_is_all_background():
    matched = matcher.match(tf.zeros([0, 4]), ANCHORS).numpy()
    np.testing.assert_array_equal(matched, [matcher.UNMATCHED] * 5)


def test_two_objects_with_the_same_best_anchor_each_get_one():
    anchors = tf.constant([[0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.6, 0.6], [0.6, 0.6, 1.0, 1.0]])
    gt = tf.constant([[0.0, 0.0, 0.35, 0.35], [0.05, 0.05, 0.4, 0.4]])  # both best on anchor 0
    matched = matcher.match(gt, anchors).numpy()
    assert sorted(matched[:2].tolist()) == [0, 1] and matched[2] == -1
