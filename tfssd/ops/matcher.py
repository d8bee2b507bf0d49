"""Matching of anchors to ground-truth boxes.

SSD paper, Sec. 2.2 "Matching strategy", as the authors' Caffe code does it: first a greedy
bipartite matching gives every ground truth its own anchor (repeatedly the highest-IoU pair of
a ground truth and an anchor both still free), so two nearby objects never compete for one
anchor; then every other anchor whose best IoU with any ground truth exceeds the threshold is
matched to that ground truth. The rest is background.
"""

import tensorflow as tf

from tfssd.ops import box_ops

BACKGROUND = 0  # class index of background in the heads; object class c is c + 1
UNMATCHED = -1  # matched_gt_index of an anchor left to background


def _bipartite(overlaps: tf.Tensor) -> tf.Tensor:
    """Greedy bipartite matching of ``overlaps [G, A]``: the ground truth of each anchor or -1."""
    num_gt, num_anchors = tf.shape(overlaps)[0], tf.shape(overlaps)[1]

    def body(i, overlaps, assigned):
        flat = tf.argmax(tf.reshape(overlaps, [-1]), output_type=tf.int32)
        gt, anchor = flat // num_anchors, flat % num_anchors
        found = overlaps[gt, anchor] > 0  # a ground truth overlapping no anchor stays unmatched
        assigned = tf.tensor_scatter_nd_update(
            assigned, [[anchor]], [tf.where(found, gt, assigned[anchor])])
        taken = (tf.range(num_gt)[:, None] == gt) | (tf.range(num_anchors)[None, :] == anchor)
        return i + 1, tf.where(taken, -1.0, overlaps), assigned

    _, _, assigned = tf.while_loop(
        lambda i, *_: i < tf.minimum(num_gt, num_anchors), body,
        [tf.constant(0), overlaps, tf.fill([num_anchors], tf.constant(UNMATCHED, tf.int32))])
    return assigned


def match(gt_boxes: tf.Tensor, anchors: tf.Tensor, iou_threshold: float = 0.5) -> tf.Tensor:
    """Index of the ground truth each anchor is matched to.

    Args:
      gt_boxes: float32 [G, 4], normalised yxyx; G may be 0.
      anchors: float32 [A, 4], normalised yxyx.
      iou_threshold: an anchor whose best IoU is above this is matched.

    Returns:
      matched_gt_index: int32 [A], in [0, G) or UNMATCHED. Every ground truth that overlaps
      any anchor is the match of at least one anchor.
    """
    with tf.name_scope("match"):
        num_anchors = tf.shape(anchors)[0]

        def _match():
            overlaps = box_ops.iou(gt_boxes, anchors)  # [G, A]
            best_gt = tf.argmax(overlaps, axis=0, output_type=tf.int32)  # [A]
            by_threshold = tf.where(tf.reduce_max(overlaps, axis=0) > iou_threshold, best_gt,
                                    UNMATCHED)
            bipartite = _bipartite(overlaps)
            return tf.where(bipartite != UNMATCHED, bipartite, by_threshold)

        return tf.cond(tf.shape(gt_boxes)[0] > 0, _match,
                       lambda: tf.fill([num_anchors], tf.constant(UNMATCHED, tf.int32)))
