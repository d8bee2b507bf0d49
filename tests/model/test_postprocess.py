"""Post-processing: decoding, per-class NMS, score floor and fixed-size padding."""

import numpy as np
import tensorflow as tf

from tfssd.model.postprocess import postprocess
from tfssd.ops import box_coder

ANCHORS = np.array([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.6, 0.6, 0.9, 0.9],
                    [0.0, 0.0, 1.0, 1.0]], np.float32)


def _logits(probabilities):
    return tf.math.log(tf.constant([probabilities], tf.float32) + 1e-12)


def test_per_class_nms_and_padding():
    # Anchors 0 and 1 overlap (IoU ~0.9): same class -> one survives; anchor 2 is another class.
    logits = _logits([[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.3, 0.0, 0.7], [1.0, 0.0, 0.0]])
    out = postprocess(logits, tf.zeros((1, 4, 4)), ANCHORS, nms_threshold=0.45,
                      max_detections=5)
    n = int(out["num_detections"][0])
    assert n == 2
    np.testing.assert_allclose(out["detection_scores"][0, :n], [0.9, 0.7], rtol=1e-4)
    np.testing.assert_array_equal(out["detection_classes"][0, :n], [0, 1])  # ids from 0
    np.testing.assert_allclose(out["detection_boxes"][0, :n], ANCHORS[[0, 2]], atol=1e-6)
    assert out["detection_boxes"].shape == (1, 5, 4)
    np.testing.assert_array_equal(out["detection_scores"][0, n:], 0.0)


def test_overlapping_boxes_of_different_classes_both_stay():
    logits = _logits([[0.1, 0.9, 0.0], [0.2, 0.0, 0.8], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    out = postprocess(logits, tf.zeros((1, 4, 4)), ANCHORS, nms_threshold=0.45)
    assert int(out["num_detections"][0]) == 2


def test_boxes_are_decoded_and_clipped():
    target = np.array([[0.2, 0.3, 0.6, 0.8]], np.float32)
    deltas = np.zeros((1, 4, 4), np.float32)
    deltas[0, 0] = box_coder.encode(target, ANCHORS[:1]).numpy()[0]
    deltas[0, 3] = [0.0, 0.0, 5.0, 5.0]  # far larger than the image
    logits = _logits([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    out = postprocess(logits, tf.constant(deltas), ANCHORS, nms_threshold=0.45)
    boxes = out["detection_boxes"][0, :2].numpy()
    np.testing.assert_allclose(boxes[np.argmin(boxes[:, 0] == 0)], target[0], atol=1e-5)
    assert boxes.min() >= 0 and boxes.max() <= 1


def test_score_floor():
    logits = _logits([[0.995, 0.005], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    out = postprocess(logits, tf.zeros((1, 4, 4)), ANCHORS, nms_threshold=0.45)
    assert int(out["num_detections"][0]) == 0
