"""Multibox loss: hard negatives at 3:1, smooth L1 on positives, images without objects."""

import numpy as np
import tensorflow as tf

from tfssd.model.losses import multibox_loss, smooth_l1


def test_smooth_l1_hand_computed():
    np.testing.assert_allclose(smooth_l1(tf.constant([-2.0, -0.5, 0.0, 0.5, 3.0])).numpy(),
                               [1.5, 0.125, 0.0, 0.125, 2.5])


def test_hard_negatives_are_the_three_worst_per_positive():
    # One image, 8 anchors, 2 classes + background; anchor 0 is the only positive.
    cls_targets = tf.constant([[1, 0, 0, 0, 0, 0, 0, 0]])
    logits = np.zeros((1, 8, 3), np.float32)
    logits[0, 1:, 1] = [5.0, 1.0, 4.0, 0.5, 3.0, 0.0, 2.0]  # background losses rank 1, 3, 5
    box_targets = tf.zeros((1, 8, 4))
    box_deltas = tf.constant(np.full((1, 8, 4), 0.5, np.float32))
    sums = multibox_loss(cls_targets, box_targets, tf.constant(logits), box_deltas)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(cls_targets, logits).numpy()[0]
    expected = ce[0] + ce[1] + ce[3] + ce[5]  # the positive and the 3 hardest negatives
    np.testing.assert_allclose(sums.cls_loss_sum.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(sums.box_loss_sum.numpy(), 4 * 0.125)  # positive anchor only
    assert sums.num_positives.numpy() == 1


def test_image_without_objects_gives_finite_loss_and_zero_box_loss():
    rng = np.random.default_rng(0)
    sums = multibox_loss(tf.zeros((2, 50), tf.int32), tf.zeros((2, 50, 4)),
                         tf.constant(rng.normal(size=(2, 50, 4)).astype(np.float32)),
                         tf.constant(rng.normal(size=(2, 50, 4)).astype(np.float32)))
    assert np.isfinite(sums.cls_loss_sum.numpy())
    assert sums.box_loss_sum.numpy() == 0.0 and sums.num_positives.numpy() == 0


def test_negatives_are_capped_by_the_anchors_available():
    cls_targets = tf.constant([[1, 1, 1, 0, 0]])  # 3 positives would want 9 negatives
    sums = multibox_loss(cls_targets, tf.zeros((1, 5, 4)), tf.zeros((1, 5, 2)),
                         tf.zeros((1, 5, 4)))
    np.testing.assert_allclose(sums.cls_loss_sum.numpy(), 5 * np.log(2.0), rtol=1e-6)
