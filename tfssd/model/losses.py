"""SSD's multibox loss: softmax cross-entropy with hard-negative mining plus smooth L1 on boxes.

SSD paper, Sec. 2.2 "Training objective" and "Hard negative mining": the confidence loss covers
the positive anchors and the negatives with the highest loss, at most 3 per positive in each
image; the localisation loss is smooth L1 over the positives' encoded boxes. The caller divides
the sums by counts of the whole global batch (over all replicas, at least 1), so that the loss
does not depend on how the batch is split; which counts is the model's normalisation:

* ``POSITIVES`` (tfssd's own networks, the SSD paper's 1 / N): both sums by the positives.
* ``MXNET_VALID`` (SageMaker's networks, as its algorithm trains them: MXNet's SSD example's
  ``SoftmaxOutput(normalization='valid')`` and ``MakeLoss(smooth_l1, normalization='valid')``):
  the cross-entropy by the anchors that take part (positives and mined negatives, about 4 per
  positive), the smooth L1 by its non-zero elements (4 per positive). The same learning rate
  then takes steps about 4 times smaller than under ``POSITIVES``.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfssd.ops.matcher import BACKGROUND

NEG_POS_RATIO = 3.0
POSITIVES = "positives"
MXNET_VALID = "mxnet_valid"


@dataclasses.dataclass(frozen=True)
class LossSums:
    """Summed (not yet normalised) losses of a batch, and its number of positive anchors."""

    cls_loss_sum: tf.Tensor  # float32 []
    box_loss_sum: tf.Tensor  # float32 []
    num_positives: tf.Tensor  # float32 []
    num_selected: tf.Tensor  # float32 []: positives and hard negatives (the cross-entropy's terms)
    num_box_terms: tf.Tensor  # float32 []: non-zero smooth L1 elements (4 per positive at most)

    def counts(self, normalisation: str) -> tf.Tensor:
        """float32 [2]: what the cross-entropy and the smooth L1 sums are divided by, under
        ``normalisation`` (POSITIVES or MXNET_VALID), before summing over replicas."""
        if normalisation == POSITIVES:
            return tf.stack([self.num_positives, self.num_positives])
        if normalisation == MXNET_VALID:
            return tf.stack([self.num_selected, self.num_box_terms])
        raise ValueError(f"no loss normalisation {normalisation!r}")


def loss_normalisation(model) -> str:
    """The normalisation ``model`` trains with: its ``loss_normalisation`` attribute (SageMaker's
    networks set MXNET_VALID), else POSITIVES."""
    return getattr(model, "loss_normalisation", POSITIVES)


def smooth_l1(x: tf.Tensor) -> tf.Tensor:
    """0.5 x^2 where |x| < 1, |x| - 0.5 elsewhere (Fast R-CNN, Eq. 3), element-wise."""
    absolute = tf.abs(x)
    return tf.where(absolute < 1.0, 0.5 * tf.square(x), absolute - 0.5)


def multibox_loss(cls_targets: tf.Tensor, box_targets: tf.Tensor, cls_logits: tf.Tensor,
                  box_deltas: tf.Tensor, neg_pos_ratio: float = NEG_POS_RATIO) -> LossSums:
    """Multibox loss sums of a batch.

    Args:
      cls_targets: int32 [B, A], BACKGROUND (0) or class id + 1.
      box_targets: float32 [B, A, 4], encoded boxes (zeros on background anchors).
      cls_logits: float32 [B, A, num_classes + 1].
      box_deltas: float32 [B, A, 4].
      neg_pos_ratio: hard negatives kept per positive, per image.

    Returns:
      LossSums over the batch. An image without positives contributes no loss at all.
    """
    with tf.name_scope("multibox_loss"):
        cls_logits = tf.cast(cls_logits, tf.float32)
        box_deltas = tf.cast(box_deltas, tf.float32)
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=cls_targets, logits=cls_logits)  # [B, A]
        positive = cls_targets != BACKGROUND
        num_positive = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)  # [B]
        num_anchors = tf.shape(cls_targets)[1]
        num_negative = tf.minimum(tf.cast(neg_pos_ratio * tf.cast(num_positive, tf.float32),
                                          tf.int32), num_anchors - num_positive)
        # Rank negatives by their loss (positives last); keep the top num_negative per image.
        negative_loss = tf.where(positive, -1.0, tf.stop_gradient(cross_entropy))
        order = tf.argsort(negative_loss, axis=1, direction="DESCENDING", stable=True)
        rank = tf.argsort(order, axis=1)
        hard_negative = rank < num_negative[:, None]
        selected = tf.cast(positive | hard_negative, tf.float32)
        cls_loss_sum = tf.reduce_sum(cross_entropy * selected)
        box_terms = smooth_l1(box_deltas - box_targets) * tf.cast(positive, tf.float32)[..., None]
        box_loss_sum = tf.reduce_sum(box_terms)
        return LossSums(cls_loss_sum, box_loss_sum,
                        tf.cast(tf.reduce_sum(num_positive), tf.float32),
                        num_selected=tf.stop_gradient(tf.reduce_sum(selected)),
                        num_box_terms=tf.reduce_sum(tf.cast(box_terms > 0.0, tf.float32)))
