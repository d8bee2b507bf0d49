"""Box area, intersection, IoU, clipping and format conversion.

Canonical format: normalised ``[ymin, xmin, ymax, xmax]`` in the last dimension (the order of
``tf.image`` ops). Functions taking another format say so in their names.
"""

import tensorflow as tf


def _check_last_dim(boxes, name: str) -> None:
    shape = tf.TensorShape(boxes.shape)
    if shape.rank is not None and shape[-1] is not None and shape[-1] != 4:
        raise ValueError(f"{name} must have a last dimension of 4, got shape {shape}")


def area(boxes: tf.Tensor) -> tf.Tensor:
    """Areas of ``boxes: float32 [..., 4] yxyx``; inverted boxes have area 0. Returns [...]."""
    _check_last_dim(boxes, "boxes")
    with tf.name_scope("area"):
        ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
        return tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)


def intersection(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tf.Tensor:
    """Pairwise intersection areas of ``boxes1 [N, 4]`` and ``boxes2 [M, 4]`` (yxyx) -> [N, M]."""
    _check_last_dim(boxes1, "boxes1")
    _check_last_dim(boxes2, "boxes2")
    with tf.name_scope("intersection"):
        ymin1, xmin1, ymax1, xmax1 = tf.split(boxes1, 4, axis=-1)  # [N, 1] each
        ymin2, xmin2, ymax2, xmax2 = tf.unstack(boxes2, axis=-1)  # [M] each
        height = tf.maximum(tf.minimum(ymax1, ymax2) - tf.maximum(ymin1, ymin2), 0.0)
        width = tf.maximum(tf.minimum(xmax1, xmax2) - tf.maximum(xmin1, xmin2), 0.0)
        return height * width


def iou(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tf.Tensor:
    """Pairwise IoU of ``boxes1 [N, 4]`` and ``boxes2 [M, 4]`` (yxyx) -> [N, M] in [0, 1].

    A pair whose union is empty has IoU 0.
    """
    with tf.name_scope("iou"):
        inter = intersection(boxes1, boxes2)
        union = area(boxes1)[:, None] + area(boxes2)[None, :] - inter
        return tf.math.divide_no_nan(inter, union)


def clip(boxes: tf.Tensor) -> tf.Tensor:
    """Clips ``boxes [..., 4]`` (normalised yxyx) to the unit square."""
    _check_last_dim(boxes, "boxes")
    with tf.name_scope("clip"):
        return tf.clip_by_value(boxes, 0.0, 1.0)


def to_center(boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """``boxes [..., 4]`` yxyx -> (center_y, center_x, height, width), each [...]."""
    _check_last_dim(boxes, "boxes")
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return (ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin


def from_center(center_y, center_x, height, width) -> tf.Tensor:
    """(center_y, center_x, height, width), each [...] -> boxes [..., 4] yxyx."""
    return tf.stack([center_y - height / 2, center_x - width / 2,
                     center_y + height / 2, center_x + width / 2], axis=-1)


def xyxy_to_yxyx(boxes_xyxy: tf.Tensor) -> tf.Tensor:
    """``[..., 4]`` [xmin, ymin, xmax, ymax] -> [ymin, xmin, ymax, xmax]; also the inverse."""
    _check_last_dim(boxes_xyxy, "boxes_xyxy")
    return tf.gather(boxes_xyxy, [1, 0, 3, 2], axis=-1)


yxyx_to_xyxy = xyxy_to_yxyx  # swapping x and y is its own inverse
