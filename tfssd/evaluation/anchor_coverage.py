"""Anchor coverage: how well SSD's default boxes fit a data set's objects, at an input size.

For each ground-truth box, the best IoU any anchor reaches. A box whose best IoU is not above
the matching threshold (SageMaker's ``overlap_threshold``, 0.5; the matcher needs IoU > it)
gets only the one anchor the bipartite step forces on it (tfssd/ops/matcher.py), with a poor
fit, so a large share of them means the network sees few positive examples of such objects.
What would raise the share is computed, not guessed: the same boxes against the anchors of
other input sizes.

Anchors are the network's own, those its training, decoding and exports use
(``tfssd.model.ssd.network_anchors``: SSD's rule of tfssd/ops/anchors.py for tfssd's networks,
MXNet's MultiBoxPrior with the algorithm's sizes, ratios and steps for SageMaker's), unclipped,
as the matcher sees them. Object sizes follow COCO's bounds on the box's area in pixels of the
network input (tfssd/evaluation/report.py): small below 32², large from 96².
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfssd.evaluation.report import SIZES, size_category
from tfssd.evaluation.voc_ap import pairwise_iou

_CHUNK = 256  # ground-truth boxes per IoU block: [256, A] float32 stays under ~60 MB


def network_anchors(base_network: str, image_shape: int) -> np.ndarray:
    """float32 [A, 4], normalised yxyx: the anchors of SSD on ``base_network`` (any of
    ``tfssd.config.run_config.BASE_NETWORKS``) at input side ``image_shape`` (8732 for vgg-16 at
    300, 24564 at 512).

    Raises:
      ValueError: an unknown base_network, or an image_shape too small for the network.
    """
    from tfssd.model.ssd import network_anchors as model_anchors

    if image_shape < 32:
        raise ValueError(f"image_shape={image_shape}: expected at least 32")
    return model_anchors(base_network, image_shape)


def best_iou(gt_boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """float [G]: the highest IoU of each of ``gt_boxes [G, 4]`` with any of ``anchors [A, 4]``
    (both normalised yxyx)."""
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    anchors = np.asarray(anchors, np.float32).reshape(-1, 4)
    best = np.zeros(len(gt_boxes), np.float32)
    for start in range(0, len(gt_boxes), _CHUNK):  # [chunk, A] at a time
        boxes = gt_boxes[start:start + _CHUNK]
        best[start:start + len(boxes)] = (pairwise_iou(boxes, anchors).max(axis=1)
                                          if anchors.size else 0)
    return best


@dataclasses.dataclass(frozen=True)
class Coverage:
    """Coverage of one set of boxes by one network's anchors."""

    image_shape: int
    num_anchors: int
    best_iou: np.ndarray  # float [G]
    below: float  # share of boxes whose best IoU is not above the threshold (NaN: no boxes)
    below_by_size: dict  # size name -> (share below, boxes of that size)


def coverage(gt_boxes: np.ndarray, anchors: np.ndarray, image_shape: int,
             overlap_threshold: float = 0.5, size_shape: int | None = None) -> Coverage:
    """The share of ``gt_boxes [G, 4]`` (normalised yxyx) that no anchor fits with IoU above
    ``overlap_threshold`` (the matcher's rule), overall and by object size.

    ``size_shape``: the input side the sizes are measured at (default ``image_shape``); fixing
    it compares the same objects across input sizes.
    """
    ious = best_iou(gt_boxes, anchors)
    missed = ious <= overlap_threshold
    categories = size_category(gt_boxes, size_shape or image_shape)
    by_size = {}
    for k, name in enumerate(SIZES):
        chosen = categories == k
        by_size[name] = (float(missed[chosen].mean()) if chosen.any() else float("nan"),
                         int(chosen.sum()))
    return Coverage(image_shape, len(anchors), ious,
                    float(missed.mean()) if len(ious) else float("nan"), by_size)


def compare_shapes(gt_boxes: np.ndarray, base_network: str, image_shapes, size_shape: int,
                   overlap_threshold: float = 0.5) -> list[Coverage]:
    """``coverage`` of the same boxes at each of ``image_shapes``, sizes measured at
    ``size_shape`` throughout."""
    return [coverage(gt_boxes, network_anchors(base_network, shape), shape, overlap_threshold,
                     size_shape) for shape in image_shapes]


def read_boxes(files, input_format: str = "tfssd") -> np.ndarray:
    """float32 [G, 4], normalised yxyx: every object's box in TFRecord ``files``."""
    import tensorflow as tf

    from tfssd.data import schema

    parse = schema.PARSERS[input_format]
    boxes = [np.zeros((0, 4), np.float32)]
    for serialized in tf.data.TFRecordDataset(list(files)):
        found, _, _ = schema.label_to_objects(parse(serialized)["label"])
        boxes.append(found.numpy().astype(np.float32).reshape(-1, 4))
    return np.concatenate(boxes)


def format_table(results: list[Coverage], base_network: str, overlap_threshold: float,
                 size_shape: int) -> str:
    """The comparison as text lines, one per input size."""
    lines = [f"anchor coverage of {len(results[0].best_iou) if results else 0} boxes, "
             f"{base_network}: share of boxes whose best anchor IoU <= {overlap_threshold:g} "
             f"(object sizes at {size_shape}x{size_shape}: small < 32², large >= 96² px)",
             f"{'image_shape':>11} {'anchors':>8} {'median IoU':>10} {'all':>7} "
             + " ".join(f"{s:>16}" for s in SIZES)]
    for result in results:
        median = float(np.median(result.best_iou)) if len(result.best_iou) else float("nan")
        cells = [f"{share:7.1%} of {count:<6d}" if count else f"{'-':>16}"
                 for share, count in result.below_by_size.values()]
        lines.append(f"{result.image_shape:>11d} {result.num_anchors:>8d} {median:>10.3f} "
                     f"{result.below:>7.1%} " + " ".join(cells))
    return "\n".join(lines)
