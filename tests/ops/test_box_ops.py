"""IoU, area, clipping and format conversion in normalised yxyx."""

import numpy as np
import pytest
import tensorflow as tf

from tfssd.ops import box_ops


def test_iou_hand_computed():
    a = tf.constant([[0.0, 0.0, 1.0, 1.0]])
    b = tf.constant([[0.5, 0.5, 1.5, 1.5], [0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0],
                     [0.0, 0.0, 0.5, 1.0]])
    # overlap 0.25 of union 1.75; identical; disjoint; half of the unit box.
    np.testing.assert_allclose(box_ops.iou(a, b).numpy(), [[1 / 7, 1.0, 0.0, 0.5]], rtol=1e-6)


def test_iou_properties_on_random_boxes():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 1, (2, 50, 4)).astype(np.float32)
    boxes = np.concatenate([np.minimum(corners[..., :2], corners[..., 2:]),
                            np.maximum(corners[..., :2], corners[..., 2:])], axis=-1)
    forward = box_ops.iou(boxes[0], boxes[1]).numpy()
    backward = box_ops.iou(boxes[1], boxes[0]).numpy()
    np.testing.assert_allclose(forward, backward.T, rtol=1e-6)
    assert forward.min() >= 0 and forward.max() <= 1
    np.testing.assert_allclose(np.diag(box_ops.iou(boxes[0], boxes[0]).numpy()), 1.0, rtol=1e-5)


def test_degenerate_boxes_give_zero_not_nan():
    point = tf.constant([[0.5, 0.5, 0.5, 0.5]])
    assert box_ops.iou(point, point).numpy()[0, 0] == 0.0
    assert box_ops.area(tf.constant([[0.6, 0.6, 0.4, 0.4]])).numpy()[0] == 0.0


def test_clip_and_conversions():
    boxes = tf.constant([[-0.2, 0.1, 1.3, 0.9]])
    np.testing.assert_allclose(box_ops.clip(boxes).numpy(), [[0.0, 0.1, 1.0, 0.9]])
    np.testing.assert_allclose(box_ops.xyxy_to_yxyx(tf.constant([[1.0, 2.0, 3.0, 4.0]])).numpy(),
                               [[2.0, 1.0, 4.0, 3.0]])
    cy, cx, h, w = box_ops.to_center(tf.constant([[0.2, 0.4, 0.6, 1.0]]))
    np.testing.assert_allclose([cy.numpy()[0], cx.numpy()[0], h.numpy()[0], w.numpy()[0]],
                               [0.4, 0.7, 0.4, 0.6], rtol=1e-6)
    np.testing.assert_allclose(box_ops.from_center(cy, cx, h, w).numpy(), [[0.2, 0.4, 0.6, 1.0]],
                               rtol=1e-6)


def test_bad_last_dimension_is_refused():
    with pytest.raises(ValueError, match="last dimension of 4"):
        box_ops.area(tf.zeros([3, 5]))
