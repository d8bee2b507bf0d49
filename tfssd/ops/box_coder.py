"""Centre-size box encoding relative to anchors, with SSD's variances.

SSD paper, Eq. 2: offsets of the box centre are divided by the anchor's size and the log of the
size ratio is taken; each is then divided by its variance (0.1 for centres, 0.2 for sizes), as
the authors' Caffe code does, to rescale the regression targets.
"""

import tensorflow as tf

from tfssd.ops import box_ops

VARIANCES = (0.1, 0.1, 0.2, 0.2)
_MIN_SIZE = 1e-6  # keeps log() finite for degenerate boxes


def encode(boxes: tf.Tensor, anchors: tf.Tensor, variances=VARIANCES) -> tf.Tensor:
    """Encodes ``boxes [..., 4]`` against ``anchors [..., 4]`` (both normalised yxyx).

    Returns:
      box_deltas: float32 [..., 4] as (dy, dx, dh, dw).
    """
    with tf.name_scope("encode_boxes"):
        cy, cx, h, w = box_ops.to_center(boxes)
        acy, acx, ah, aw = box_ops.to_center(anchors)
        h, w = tf.maximum(h, _MIN_SIZE), tf.maximum(w, _MIN_SIZE)
        return tf.stack([(cy - acy) / ah / variances[0],
                         (cx - acx) / aw / variances[1],
                         tf.math.log(h / ah) / variances[2],
                         tf.math.log(w / aw) / variances[3]], axis=-1)


def decode(box_deltas: tf.Tensor, anchors: tf.Tensor, variances=VARIANCES) -> tf.Tensor:
    """Inverse of ``encode``: ``box_deltas [..., 4]`` (dy, dx, dh, dw) -> boxes [..., 4] yxyx."""
    with tf.name_scope("decode_boxes"):
        acy, acx, ah, aw = box_ops.to_center(anchors)
        dy, dx, dh, dw = tf.unstack(box_deltas, axis=-1)
        # Bound the exponent so that an untrained head cannot overflow to inf.
        dh = tf.minimum(dh * variances[2], 10.0)
        dw = tf.minimum(dw * variances[3], 10.0)
        return box_ops.from_center(acy + dy * variances[0] * ah, acx + dx * variances[1] * aw,
                                   ah * tf.exp(dh), aw * tf.exp(dw))
