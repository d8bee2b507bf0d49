"""Centre-size encoding with variances: golden and round trip."""

import math

import numpy as np
import tensorflow as tf

from tfssd.ops import box_coder


def test_encode_hand_computed():
    anchor = tf.constant([[0.4, 0.4, 0.6, 0.6]])  # centre (0.5, 0.5), size 0.2 x 0.2
    box = tf.constant([[0.45, 0.4, 0.65, 0.8]])  # centre (0.55, 0.6), size 0.2 x 0.4
    np.testing.assert_allclose(box_coder.encode(box, anchor).numpy(),
                               [[0.05 / 0.2 / 0.1, 0.1 / 0.2 / 0.1, 0.0, math.log(2) / 0.2]],
                               rtol=1e-5, atol=1e-6)


def test_decode_inverts_encode():
    rng = np.random.default_rng(1)
    def boxes(n):
        centre = rng.uniform(0.1, 0.9, (n, 2))
        size = rng.uniform(0.02, 0.8, (n, 2))
        return np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)
    gt, anchors = boxes(500), boxes(500)
    decoded = box_coder.decode(box_coder.encode(gt, anchors), anchors).numpy()
    np.testing.assert_allclose(decoded, gt, atol=1e-5)


def test_degenerate_box_encodes_finitely():
    deltas = box_coder.encode(tf.constant([[0.5, 0.5, 0.5, 0.5]]),
                              tf.constant([[0.4, 0.4, 0.6, 0.6]]))
    assert np.all(np.isfinite(deltas.numpy()))
