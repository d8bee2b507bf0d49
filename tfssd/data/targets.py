"""Classification and box-regression targets of one image, computed inside tf.data.

The model, the loss and the exported graph see only these dense, fixed-shape tensors.
"""

import tensorflow as tf

from tfssd.ops import box_coder, matcher


def encode_targets(gt_boxes: tf.Tensor, gt_classes: tf.Tensor, anchors: tf.Tensor,
                   iou_threshold: float = 0.5) -> tuple[tf.Tensor, tf.Tensor]:
    """Matches anchors to ground truth and encodes what each anchor should predict.

    Args:
      gt_boxes: float32 [G, 4], normalised yxyx; G may be 0.
      gt_classes: int32 [G], class ids from 0.
      anchors: float32 [A, 4], normalised yxyx.
      iou_threshold: matching threshold (SSD: 0.5).

    Returns:
      cls_targets: int32 [A], matcher.BACKGROUND (0) or class id + 1.
      box_targets: float32 [A, 4], encoded (dy, dx, dh, dw); zeros on background anchors.
    """
    matched = matcher.match(gt_boxes, anchors, iou_threshold)
    is_positive = matched != matcher.UNMATCHED
    # Background anchors gather from a dummy last row, so that G == 0 needs no special case.
    num_gt = tf.shape(gt_boxes)[0]
    index = tf.where(is_positive, matched, num_gt)
    boxes = tf.gather(tf.concat([gt_boxes, [[0.0, 0.0, 1.0, 1.0]]], axis=0), index)
    classes = tf.gather(tf.concat([gt_classes + 1, [matcher.BACKGROUND]], axis=0), index)
    box_targets = tf.where(is_positive[:, None], box_coder.encode(boxes, anchors), 0.0)
    return tf.cast(classes, tf.int32), box_targets
