"""Pascal VOC mean average precision, in NumPy.

As the VOC devkit: detections of a class are ranked by score over all images; a detection is a
true positive when its best-overlapping ground truth of that class has IoU above the threshold
and was not already taken, a false positive otherwise; detections whose best match is a
"difficult" ground truth count neither way, and difficult boxes are not in the recall's
denominator. AP is the area under the precision envelope (all-point, VOC2010+) or the mean of
the envelope at recalls 0, 0.1, ..., 1 (11-point, VOC2007, used by the published SSD figures).
Boxes are normalised yxyx, so IoU has no "+1" pixel term. A class without ground truth has an
AP of NaN and is left out of the mean.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def pairwise_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of each of ``boxes1 [K, 4]`` with each of ``boxes2 [M, 4]`` (yxyx) -> [K, M]; an
    inverted box has no area, and IoU is 0 where the union is empty."""
    a, b = boxes1[:, None, :], boxes2[None, :, :]
    height = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    width = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = height * width

    def area(boxes):
        return (np.clip(boxes[..., 2] - boxes[..., 0], 0, None)
                * np.clip(boxes[..., 3] - boxes[..., 1], 0, None))

    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of ``box [4]`` with each of ``boxes [N, 4]`` (yxyx) -> [N]: pairwise_iou's row,
    written out for match_ranked's one call per detection (twice as fast on a few boxes)."""
    height = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    width = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = height * width
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def average_precision(recall: np.ndarray, precision: np.ndarray, method: str = "allpoint"
                      ) -> float:
    """AP from a ranked list's recall and precision (each [N], recall non-decreasing)."""
    if method == "11point":
        return float(np.mean([np.max(precision[recall >= t], initial=0.0)
                              for t in np.linspace(0, 1, 11)]))
    if method != "allpoint":
        raise ValueError(f"method must be 11point or allpoint, got {method!r}")
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    changes = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[changes + 1] - recall[changes]) * envelope[changes + 1]))


@dataclasses.dataclass(frozen=True)
class ClassMatches:
    """One class's detections ranked by score over all images, each judged by VOC's rule."""

    scores: np.ndarray  # float [N], non-increasing
    true_pos: np.ndarray  # float [N], 1 where the detection is a true positive
    false_pos: np.ndarray  # float [N], 1 where a false positive; both 0: ignored (difficult)
    num_ground_truth: int  # objects in the recall's denominator

    def recall_precision(self) -> tuple[np.ndarray, np.ndarray]:
        """Recall and precision [N] after each ranked detection (cumulative)."""
        tp, fp = np.cumsum(self.true_pos), np.cumsum(self.false_pos)
        recall = tp / max(self.num_ground_truth, 1)
        return recall, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)


def match_ranked(detections, ground_truth: dict, iou_threshold: float,
                 ignore_unmatched=None) -> ClassMatches:
    """VOC's matching of one class: detections by falling score, each to its best ground truth.

    Args:
      detections: (image, score, box [4] normalised yxyx) tuples of the class.
      ground_truth: image -> (boxes [M, 4] normalised yxyx, ignored bool [M]) of the class;
        ignored boxes (difficult) are out of the recall's denominator, and a detection whose
        best match is one counts neither way.
      iou_threshold: a match needs IoU above it.
      ignore_unmatched: optional ``boxes [K, 4] -> bool [K]``: detections that count neither
        way when they are not a true positive.
    """
    dets = sorted(detections, key=lambda d: -d[1])  # stable, as the devkit's sort
    num_gt = sum(int(np.sum(~ignored)) for _, ignored in ground_truth.values())
    taken = {i: np.zeros(len(ignored), bool) for i, (_, ignored) in ground_truth.items()}
    true_pos, false_pos = np.zeros(len(dets)), np.zeros(len(dets))
    for k, (image, _, box) in enumerate(dets):
        boxes, ignored = ground_truth.get(image, (np.zeros((0, 4)), np.zeros(0, bool)))
        if len(boxes) == 0:
            false_pos[k] = 1
            continue
        overlaps = box_iou(box, boxes)
        best = int(np.argmax(overlaps))
        if overlaps[best] > iou_threshold:
            if ignored[best]:
                continue
            if not taken[image][best]:
                true_pos[k], taken[image][best] = 1, True
            else:
                false_pos[k] = 1
        else:
            false_pos[k] = 1
    if ignore_unmatched is not None and len(dets):
        skip = np.asarray(ignore_unmatched(np.stack([d[2] for d in dets])), bool)
        false_pos[skip] = 0
    return ClassMatches(np.array([d[1] for d in dets], np.float64), true_pos, false_pos, num_gt)


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    mean_ap: float  # NaN when no class has ground truth
    ap: np.ndarray  # float [num_classes], NaN for classes without ground truth
    num_ground_truth: np.ndarray  # int [num_classes], difficult boxes not counted
    num_detections: np.ndarray  # int [num_classes]
    # Other figures measured alongside (name -> value), e.g. COCO's "COCO/AP50".
    extra_metrics: dict = dataclasses.field(default_factory=dict)

    def format(self, class_names=None) -> str:
        lines = [f"mAP {self.mean_ap:.4f}"]
        for c, ap in enumerate(self.ap):
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            lines.append(f"  {c:3d} {name:20s} AP {ap:.4f}  ({self.num_ground_truth[c]} objects, "
                         f"{self.num_detections[c]} detections)")
        return "\n".join(lines)


class DetectionEvaluator:
    """Accumulates detections and ground truth image by image, then computes VOC AP per class."""

    def __init__(self, num_classes: int, iou_threshold: float = 0.5, method: str = "11point"):
        self.num_classes = num_classes
        self.iou_threshold = iou_threshold
        self.method = method
        self._detections = []  # (image, class, score, box)
        self._ground_truth = []  # per image: (boxes [M, 4], classes [M], difficult [M])

    def add_image(self, det_boxes, det_scores, det_classes, gt_boxes, gt_classes,
                  gt_difficult=None) -> None:
        """Adds one image: detections ([K, 4], [K], [K]) and ground truth ([M, 4], [M], [M])."""
        image = len(self._ground_truth)
        gt_classes = np.asarray(gt_classes, np.int64).reshape(-1)
        gt_difficult = (np.zeros(len(gt_classes), bool) if gt_difficult is None
                        else np.asarray(gt_difficult, bool).reshape(-1))
        self._ground_truth.append((np.asarray(gt_boxes, np.float64).reshape(-1, 4), gt_classes,
                                   gt_difficult))
        for box, score, cls in zip(np.asarray(det_boxes, np.float64).reshape(-1, 4),
                                   np.asarray(det_scores).reshape(-1),
                                   np.asarray(det_classes).reshape(-1)):
            self._detections.append((image, int(cls), float(score), box))

    def add_batch(self, detections: dict, ground_truth: dict) -> None:
        """Adds padded batches, as the post-processing and the evaluation dataset produce them.

        Args:
          detections: detection_boxes [B, K, 4], detection_scores [B, K],
            detection_classes [B, K], num_detections [B].
          ground_truth: gt_boxes [B, M, 4], gt_classes [B, M] (-1 padding), gt_difficult [B, M].
        """
        detections = {k: np.asarray(v) for k, v in detections.items()}
        ground_truth = {k: np.asarray(v) for k, v in ground_truth.items()}
        for b, n in enumerate(detections["num_detections"].astype(int)):
            real = ground_truth["gt_classes"][b] >= 0
            self.add_image(detections["detection_boxes"][b, :n],
                           detections["detection_scores"][b, :n],
                           detections["detection_classes"][b, :n],
                           ground_truth["gt_boxes"][b][real], ground_truth["gt_classes"][b][real],
                           ground_truth["gt_difficult"][b][real])

    @property
    def num_images(self) -> int:
        return len(self._ground_truth)

    def images(self) -> list[tuple[np.ndarray, ...]]:
        """Per image, in the order added: (det_boxes [K, 4], det_scores [K], det_classes [K],
        gt_boxes [M, 4], gt_classes [M], gt_difficult [M]); boxes normalised yxyx."""
        per_image = [([], [], []) for _ in self._ground_truth]
        for image, cls, score, box in self._detections:
            per_image[image][0].append(box)
            per_image[image][1].append(score)
            per_image[image][2].append(cls)
        return [(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64),
                 np.asarray(classes, np.int64), *truth)
                for (boxes, scores, classes), truth in zip(per_image, self._ground_truth)]

    def class_matches(self, class_id: int, ignored: list[np.ndarray] | None = None,
                      ignore_unmatched=None) -> ClassMatches:
        """VOC matching of one class's detections over all images (see ``match_ranked``).

        Args:
          class_id: the class.
          ignored: per image, bool [M] over all its ground truth: boxes to leave out of the
            recall (as difficult ones are); None: the difficult flags alone.
          ignore_unmatched: a function ``boxes [K, 4] -> bool [K]``: detections that count
            neither way when they match nothing (COCO's rule for object sizes); None: none.
        """
        gt = {}
        for i, (boxes, classes, difficult) in enumerate(self._ground_truth):
            skip = difficult if ignored is None else (difficult | ignored[i])
            gt[i] = (boxes[classes == class_id], skip[classes == class_id])
        dets = [(image, score, box) for image, cls, score, box in self._detections
                if cls == class_id]
        return match_ranked(dets, gt, self.iou_threshold, ignore_unmatched)

    def result(self) -> EvaluationResult:
        ap = np.full(self.num_classes, np.nan)
        num_gt = np.zeros(self.num_classes, int)
        num_det = np.zeros(self.num_classes, int)
        for c in range(self.num_classes):
            matches = self.class_matches(c)
            num_gt[c] = matches.num_ground_truth
            num_det[c] = len(matches.scores)
            if num_gt[c] == 0:
                continue
            ap[c] = average_precision(*matches.recall_precision(), self.method)
        mean_ap = float(np.nanmean(ap)) if np.any(~np.isnan(ap)) else float("nan")
        return EvaluationResult(mean_ap, ap, num_gt, num_det)
