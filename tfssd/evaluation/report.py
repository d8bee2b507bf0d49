"""The figures of an evaluation report, in NumPy: PR and F1 curves, confusion, AP by object size.

Everything is computed from a ``DetectionEvaluator`` that has seen the images, with VOC's
matching (tfssd/evaluation/voc_ap.py): a detection is a true positive of its class when its
best-overlapping ground truth of that class has IoU above the evaluation's threshold and is not
taken yet; difficult objects count neither way. Boxes are normalised [ymin, xmin, ymax, xmax].

* PR curve of a class: precision and recall of the detections scoring at least t, for every
  score t a detection has; F1 = 2PR / (P + R). "overall" pools all classes' detections (micro
  average). The best threshold is the score that maximises F1.
* Confusion matrix at a score threshold: rows are the ground truth's class, columns the
  detection's, and the last row and column are background: a missed object (matched by no
  detection) goes to the background column, a false detection (matching no object) to the
  background row. Detections first match objects of their own class (VOC's rule, so the
  diagonal is VOC's true positives), then the remaining ones match any remaining object with
  IoU above the threshold (a confusion of classes).
* Object size as COCO defines it, but on the box's area in pixels of the network's input
  (``image_shape`` x ``image_shape``): small below 32² = 1024, medium from 32² to 96² = 9216,
  large from 96². AP by size leaves the objects of the other sizes out, as difficult ones, and
  ignores unmatched detections of the other sizes (COCO's rule).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np

from tfssd.evaluation.voc_ap import (
    ClassMatches,
    DetectionEvaluator,
    average_precision,
    pairwise_iou,
)

SMALL_AREA = 32 ** 2  # pixels² at the network input: below is small (COCO's bound)
LARGE_AREA = 96 ** 2  # from here on large; in between medium
SIZES = ("small", "medium", "large")
OVERALL = "overall"


@dataclasses.dataclass(frozen=True)
class PRCurve:
    """Operating points of one class (or all): one per distinct detection score, falling."""

    thresholds: np.ndarray  # float [N], the score cut-offs, decreasing
    precision: np.ndarray  # float [N], of the detections scoring >= the threshold
    recall: np.ndarray  # float [N]
    f1: np.ndarray  # float [N]
    num_ground_truth: int

    def best(self) -> dict:
        """The point of maximal F1 (the highest threshold among ties); zeros when empty."""
        if len(self.f1) == 0 or self.num_ground_truth == 0:
            return {"threshold": None, "f1": 0.0, "precision": 0.0, "recall": 0.0}
        k = int(np.argmax(self.f1))
        return {"threshold": float(self.thresholds[k]), "f1": float(self.f1[k]),
                "precision": float(self.precision[k]), "recall": float(self.recall[k])}

    def at(self, threshold: float) -> tuple[float, float, float]:
        """(precision, recall, f1) of the detections scoring at least ``threshold``."""
        k = np.searchsorted(-self.thresholds, -threshold, side="right") - 1
        if k < 0:
            return 0.0, 0.0, 0.0
        return float(self.precision[k]), float(self.recall[k]), float(self.f1[k])


def pr_curve(matches: ClassMatches) -> PRCurve:
    """The PR curve of ranked matches; detections of equal score enter together."""
    recall, precision = matches.recall_precision()
    if len(matches.scores):
        last_of_score = np.append(matches.scores[1:] != matches.scores[:-1], True)
        recall, precision = recall[last_of_score], precision[last_of_score]
        thresholds = matches.scores[last_of_score]
    else:
        thresholds = np.zeros(0)
    if matches.num_ground_truth == 0:
        recall = np.zeros_like(recall)
    total = precision + recall
    f1 = np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), 0.0)
    return PRCurve(thresholds, precision, recall, f1, matches.num_ground_truth)


def pooled(matches: list[ClassMatches]) -> ClassMatches:
    """All classes' ranked matches as one ranking (micro average)."""
    scores = np.concatenate([m.scores for m in matches] + [np.zeros(0)])
    order = np.argsort(-scores, kind="stable")
    return ClassMatches(scores[order],
                        np.concatenate([m.true_pos for m in matches] + [np.zeros(0)])[order],
                        np.concatenate([m.false_pos for m in matches] + [np.zeros(0)])[order],
                        sum(m.num_ground_truth for m in matches))


def pr_curves(evaluator: DetectionEvaluator) -> dict:
    """Class id (and OVERALL) -> PRCurve."""
    matches = [evaluator.class_matches(c) for c in range(evaluator.num_classes)]
    curves = {c: pr_curve(m) for c, m in enumerate(matches)}
    curves[OVERALL] = pr_curve(pooled(matches))
    return curves


def confusion_matrix(images, num_classes: int, iou_threshold: float, score_threshold: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Confusion of classes at ``score_threshold`` (see the module docstring).

    Args:
      images: ``DetectionEvaluator.images()``: per image (det_boxes [K, 4], det_scores [K],
        det_classes [K], gt_boxes [M, 4], gt_classes [M], gt_difficult [M]).
      num_classes: C; class C of the result is background.
      iou_threshold: a match needs IoU above it.
      score_threshold: detections scoring below it are left out.

    Returns:
      int [C + 1, C + 1] (rows: ground truth, columns: detection), and int [I, 3]: per image
      its missed objects, false detections and confusions of class.
    """
    background = num_classes
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    errors = np.zeros((len(images), 3), np.int64)
    for i, (det_boxes, scores, det_classes, gt_boxes, gt_classes, difficult) in enumerate(images):
        keep = (scores >= score_threshold) & (det_classes >= 0) & (det_classes < num_classes)
        order = np.argsort(-scores[keep], kind="stable")
        boxes, classes = det_boxes[keep][order], det_classes[keep][order]
        difficult = np.asarray(difficult, bool)
        taken = np.zeros(len(gt_classes), bool)
        overlaps = pairwise_iou(boxes, gt_boxes)  # [K, M]
        left = []  # detections not matched to an object of their class
        for k, cls in enumerate(classes):
            same = np.where(gt_classes == cls, overlaps[k], -1.0)
            best = int(np.argmax(same)) if len(same) else 0
            if len(same) and same[best] > iou_threshold:
                if difficult[best]:
                    continue  # counts neither way, as in VOC
                if not taken[best]:
                    taken[best] = True
                    matrix[cls, cls] += 1
                    continue
            left.append(k)
        for k in left:
            free = np.where(~taken & ~difficult, overlaps[k], -1.0)
            best = int(np.argmax(free)) if len(free) else 0
            if len(free) and free[best] > iou_threshold:
                taken[best] = True
                matrix[gt_classes[best], classes[k]] += 1
                errors[i, 2] += 1
            else:
                matrix[background, classes[k]] += 1
                errors[i, 1] += 1
        missed = gt_classes[~taken & ~difficult]
        missed = missed[(missed >= 0) & (missed < num_classes)]
        np.add.at(matrix, (missed, background), 1)
        errors[i, 0] = len(missed)
    return matrix, errors


def size_category(boxes: np.ndarray, image_shape: int) -> np.ndarray:
    """int [N]: 0 small, 1 medium, 2 large, for ``boxes [N, 4]`` (normalised yxyx) on an
    ``image_shape`` x ``image_shape`` input; areas below 32² px are small, from 96² large."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    area = (np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0,
                                                                    None) * image_shape ** 2)
    return np.digitize(area, [SMALL_AREA, LARGE_AREA])


def by_size(evaluator: DetectionEvaluator, image_shape: int,
            score_threshold: float | None = None) -> dict:
    """AP and recall per object size at the network input (see the module docstring).

    Returns:
      size name -> {"objects": int, "mAP": float (NaN without objects), "ap": [C] per class,
      "recall": with every detection, "recall_at_threshold": with those scoring at least
      ``score_threshold`` (None when it is None)}.
    """
    truth = [gt_boxes for _, _, _, gt_boxes, _, _ in evaluator.images()]
    categories = [size_category(boxes, image_shape) for boxes in truth]
    figures = {}
    for k, name in enumerate(SIZES):
        ignored = [category != k for category in categories]
        matches = [evaluator.class_matches(
            c, ignored, lambda boxes, k=k: size_category(boxes, image_shape) != k)
            for c in range(evaluator.num_classes)]
        ap = [average_precision(*m.recall_precision(), evaluator.method)
              if m.num_ground_truth else float("nan") for m in matches]
        everything = pooled(matches)
        objects = everything.num_ground_truth
        found = everything.true_pos
        at_threshold = (None if score_threshold is None or not objects else
                        float(found[everything.scores >= score_threshold].sum() / objects))
        figures[name] = {
            "objects": int(objects),
            "mAP": float(np.nanmean(ap)) if objects else float("nan"),
            "ap": [float(a) for a in ap],
            "recall": float(found.sum() / objects) if objects else float("nan"),
            "recall_at_threshold": at_threshold}
    return figures


@dataclasses.dataclass
class ReportFigures:
    """All the figures of a report."""

    class_names: list[str]
    iou_threshold: float
    image_shape: int
    curves: dict  # class id or OVERALL -> PRCurve
    best_threshold: float  # maximises the overall F1 (0 when nothing was detected)
    confusion: np.ndarray  # int [C + 1, C + 1] at best_threshold
    image_errors: np.ndarray  # int [I, 3]: misses, false detections, confusions per image
    sizes: dict  # by_size's result at best_threshold


def compute(evaluator: DetectionEvaluator, class_names: list[str], image_shape: int,
            sizes: bool = True) -> ReportFigures:
    """The figures of ``evaluator``'s images; ``image_shape``: side of the network input.

    ``sizes=False`` skips the figures by object size (empty dict), a third of the time.
    """
    names = [class_names[c] if c < len(class_names) else str(c)
             for c in range(evaluator.num_classes)]
    curves = pr_curves(evaluator)
    best = curves[OVERALL].best()["threshold"]
    threshold = 0.0 if best is None else best
    confusion, errors = confusion_matrix(evaluator.images(), evaluator.num_classes,
                                         evaluator.iou_threshold, threshold)
    return ReportFigures(names, evaluator.iou_threshold, image_shape, curves, threshold,
                         confusion, errors,
                         by_size(evaluator, image_shape, threshold) if sizes else {})


def curve_name(figures: ReportFigures, key) -> str:
    return OVERALL if key == OVERALL else figures.class_names[key]


def write_tables(figures: ReportFigures, out_dir: str) -> list[str]:
    """pr_curve.csv, f1.csv, confusion_matrix.csv, by_size.json and report.json in ``out_dir``.

    Returns the paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, name) for name in (
        "pr_curve.csv", "f1.csv", "confusion_matrix.csv", "by_size.json", "report.json")]
    with open(paths[0], "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["class", "threshold", "precision", "recall", "f1"])
        for key, curve in figures.curves.items():
            for row in zip(curve.thresholds, curve.precision, curve.recall, curve.f1):
                out.writerow([curve_name(figures, key)] + [f"{v:.6g}" for v in row])
    grid = np.round(np.linspace(0, 1, 101), 2)
    with open(paths[1], "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["threshold"] + [curve_name(figures, k) for k in figures.curves])
        for t in grid:
            out.writerow([f"{t:.2f}"] + [f"{c.at(t)[2]:.6g}" for c in figures.curves.values()])
    labels = figures.class_names + ["background"]
    with open(paths[2], "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["ground truth \\ detection"] + labels)
        for label, row in zip(labels, figures.confusion):
            out.writerow([label] + [int(v) for v in row])
    with open(paths[3], "w") as f:
        json.dump(_finite({"image_shape": figures.image_shape,
                           "area_bounds_px": [SMALL_AREA, LARGE_AREA],
                           "score_threshold": figures.best_threshold,
                           "sizes": figures.sizes}), f, indent=2)
    with open(paths[4], "w") as f:
        json.dump(_finite(summary(figures)), f, indent=2)
    return paths


def summary(figures: ReportFigures) -> dict:
    """report.json's content: the best thresholds, per class and overall, and the totals."""
    errors = figures.image_errors.sum(axis=0) if len(figures.image_errors) else np.zeros(3)
    return {
        "iou_threshold": figures.iou_threshold,
        "image_shape": figures.image_shape,
        "images": len(figures.image_errors),
        "best_threshold": {curve_name(figures, k): {**c.best(), "objects": c.num_ground_truth}
                           for k, c in figures.curves.items()},
        "at_best_overall_threshold": {
            "score_threshold": figures.best_threshold,
            "missed_objects": int(errors[0]), "false_detections": int(errors[1]),
            "class_confusions": int(errors[2])},
    }


def _finite(value):
    """NaN -> None, so the JSON is standard."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
