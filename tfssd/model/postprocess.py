"""Detections from the network's outputs: decode boxes, softmax, per-class NMS, fixed size.

As SSD's detection output: the 400 best-scoring anchors of each class enter non-maximum
suppression (as the MXNet and torchvision SSDs do), scores below 0.01 are dropped, and at most
200 detections per image remain, padded to a fixed size for serving.

SageMaker's networks (and models imported from the algorithm) detect as MXNet's
``_contrib_MultiBoxDetection`` does (src/operator/contrib/multibox_detection.cc): each anchor
takes only its best class, so it never yields two detections and a box whose anchor prefers
another class never suppresses it; boxes are clipped to the image before NMS; the ``nms_topk``
best anchors (by that score) enter NMS; with ``force_suppress`` any class suppresses any other.
A model carries these settings as its ``multibox_detection`` attribute (``MultiBoxDetection``).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfssd.ops import box_coder

PRE_NMS_TOP_K = 400


@dataclasses.dataclass(frozen=True)
class MultiBoxDetection:
    """MXNet's MultiBoxDetection settings beyond the thresholds (its defaults but nms_topk,
    which SageMaker's graph sets to 400)."""

    nms_topk: int = PRE_NMS_TOP_K  # <= 0: every anchor
    clip: bool = True
    force_suppress: bool = False


def postprocess(cls_logits: tf.Tensor, box_deltas: tf.Tensor, anchors: tf.Tensor, *,
                nms_threshold: float = 0.45, score_threshold: float = 0.01,
                max_detections: int = 200, pre_nms_top_k: int = PRE_NMS_TOP_K
                ) -> dict[str, tf.Tensor]:
    """Turns network outputs into detections.

    Args:
      cls_logits: float32 [B, A, num_classes + 1], class 0 is background.
      box_deltas: float32 [B, A, 4], encoded (dy, dx, dh, dw).
      anchors: float32 [A, 4], normalised yxyx.
      nms_threshold: IoU above which a lower-scored box of the same class is suppressed.
      score_threshold: detections scoring below this are dropped.
      max_detections: detections kept per image.
      pre_nms_top_k: candidates per class entering NMS.

    Returns:
      detection_boxes: float32 [B, max_detections, 4], normalised yxyx clipped to [0, 1].
      detection_scores: float32 [B, max_detections], descending; 0 on padding.
      detection_classes: float32 [B, max_detections], class ids from 0; 0 on padding.
      num_detections: int32 [B], valid entries of each row.
    """
    with tf.name_scope("postprocess"):
        boxes = box_coder.decode(tf.cast(box_deltas, tf.float32), anchors)  # [B, A, 4]
        scores = tf.nn.softmax(tf.cast(cls_logits, tf.float32), axis=-1)[:, :, 1:]  # [B, A, C]
        top_k = min(pre_nms_top_k, int(anchors.shape[0]))
        # Per class, only the best anchors are NMS candidates: [B, C, K].
        top_scores, top_index = tf.math.top_k(tf.transpose(scores, [0, 2, 1]), k=top_k)
        candidate_boxes = tf.gather(boxes, top_index, batch_dims=1)  # [B, C, K, 4]
        nmsed = tf.image.combined_non_max_suppression(
            boxes=tf.transpose(candidate_boxes, [0, 2, 1, 3]),  # [B, K, C, 4]
            scores=tf.transpose(top_scores, [0, 2, 1]),  # [B, K, C]
            max_output_size_per_class=max_detections, max_total_size=max_detections,
            iou_threshold=nms_threshold, score_threshold=score_threshold, clip_boxes=True)
        return {"detection_boxes": nmsed.nmsed_boxes,
                "detection_scores": nmsed.nmsed_scores,
                "detection_classes": nmsed.nmsed_classes,
                "num_detections": nmsed.valid_detections}


def multibox_detection(cls_logits: tf.Tensor, box_deltas: tf.Tensor, anchors: tf.Tensor, *,
                       nms_threshold: float = 0.45, score_threshold: float = 0.01,
                       max_detections: int = 200,
                       mxnet: MultiBoxDetection = MultiBoxDetection()) -> dict[str, tf.Tensor]:
    """``postprocess`` as MXNet's MultiBoxDetection (see the module docstring): same arguments
    and outputs; ``mxnet`` holds its other settings. An anchor below ``score_threshold`` with its
    best class yields nothing; at most ``max_detections`` of MXNet's detections are kept."""
    with tf.name_scope("multibox_detection"):
        boxes = box_coder.decode(tf.cast(box_deltas, tf.float32), anchors)  # [B, A, 4]
        if mxnet.clip:
            boxes = tf.clip_by_value(boxes, 0.0, 1.0)
        probabilities = tf.nn.softmax(tf.cast(cls_logits, tf.float32), axis=-1)[:, :, 1:]
        num_classes = int(probabilities.shape[-1])
        best_scores = tf.reduce_max(probabilities, axis=-1)  # [B, A]
        best_classes = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        num_anchors = int(anchors.shape[0])
        top_k = min(mxnet.nms_topk, num_anchors) if mxnet.nms_topk > 0 else num_anchors
        top_scores, top_index = tf.math.top_k(best_scores, k=top_k)  # ties: lower anchor first
        candidate_boxes = tf.gather(boxes, top_index, batch_dims=1)  # [B, K, 4]
        candidate_classes = tf.gather(best_classes, top_index, batch_dims=1)  # [B, K]
        # TF's NMS visits tied scores in no set order; MXNet in the candidates' (a stable sort).
        # NMS ranks by ``ranked``: the scores made strictly decreasing in their last bits (a
        # tie moves by at most its rank in ulps), which also names each kept candidate.
        ranked = _strictly_decreasing(top_scores)
        if mxnet.force_suppress:
            scores = ranked[:, :, None]  # one NMS over all classes
        else:  # each candidate competes only in its best class
            scores = tf.one_hot(candidate_classes, num_classes) * ranked[:, :, None]
        nmsed = tf.image.combined_non_max_suppression(
            boxes=candidate_boxes[:, :, None, :], scores=scores,
            max_output_size_per_class=max_detections, max_total_size=max_detections,
            iou_threshold=nms_threshold, score_threshold=score_threshold, clip_boxes=False)
        index = tf.argmax(tf.cast(nmsed.nmsed_scores[:, :, None] == ranked[:, None], tf.int32),
                          axis=-1, output_type=tf.int32)  # [B, max_detections]
        valid = tf.range(max_detections)[None, :] < nmsed.valid_detections[:, None]
        classes = tf.where(valid, tf.cast(tf.gather(candidate_classes, index, batch_dims=1),
                                          tf.float32), 0.0)
        return {"detection_boxes": nmsed.nmsed_boxes,
                "detection_scores": tf.where(valid, tf.gather(top_scores, index, batch_dims=1),
                                             0.0),
                "detection_classes": classes,
                "num_detections": nmsed.valid_detections}


def _strictly_decreasing(scores: tf.Tensor) -> tf.Tensor:
    """float32 [B, K] sorted descending, >= 0 -> the same, strictly decreasing where positive:
    as int32 bits (monotone for non-negative floats), b'_r = min_{j <= r}(b_j + j) - r, so that
    b'_r <= b_r - (number of ties before r within that run). The prefix minimum in log2(K)
    steps of shifted minima."""
    rank = tf.range(int(scores.shape[-1]))
    prefix = tf.bitcast(scores, tf.int32) + rank[None]
    shift = 1
    while shift < int(scores.shape[-1]):
        earlier = tf.pad(prefix[:, :-shift], [[0, 0], [shift, 0]], constant_values=tf.int32.max)
        prefix = tf.minimum(prefix, earlier)
        shift *= 2
    return tf.bitcast(tf.maximum(prefix - rank[None], 0), tf.float32)


def detect(model, images: tf.Tensor, anchors: tf.Tensor, **settings) -> dict[str, tf.Tensor]:
    """The one detection path of training, evaluation and the export: network, then post-processing.

    Args:
      model: images float32 [B, S, S, 3] RGB -> {"cls_logits", "box_deltas"} (a Keras SSD); one
        with a ``multibox_detection`` attribute (SageMaker's networks) detects as MXNet does.
      images: float32 [B, S, S, 3], RGB in [0, 255].
      anchors: float32 [A, 4], normalised yxyx.
      **settings: ``postprocess``'s keyword arguments (thresholds, maximum detections).

    Returns:
      ``postprocess``'s detections.
    """
    outputs = model(images, training=False)
    mxnet = getattr(model, "multibox_detection", None)
    if isinstance(mxnet, MultiBoxDetection):
        return multibox_detection(outputs["cls_logits"], outputs["box_deltas"], anchors,
                                  mxnet=mxnet, **settings)
    return postprocess(outputs["cls_logits"], outputs["box_deltas"], anchors, **settings)
