"""COCO detection metrics (AP@[.5:.95], AP50, AP75, AP by object size) through pycocotools.

Lin et al., 2014, "Microsoft COCO", and the reference implementation, pycocotools' COCOeval:
AP is averaged over IoU thresholds 0.5, 0.55, ..., 0.95 and 101 recall points, with at most 100
detections per image; small, medium and large objects are those under 32x32, under 96x96 and
over 96x96 pixels. Boxes arrive as tfssd holds them (normalised yxyx) with each image's size,
and become COCO's absolute [x, y, width, height] pixels, since the size ranges are in pixels.
VOC "difficult" objects become COCO crowd regions: a detection on one counts neither as a true
nor as a false positive, as VOC treats it. Undefined values (no ground truth in a size range)
are NaN, as in tfssd's VOC results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io

import numpy as np

STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def to_coco_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised yxyx [N, 4] -> COCO's absolute [x, y, width, height] pixels [N, 4]."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 1] * width, boxes[:, 0] * height,
                     (boxes[:, 3] - boxes[:, 1]) * width, (boxes[:, 2] - boxes[:, 0]) * height],
                    axis=-1)


@dataclasses.dataclass(frozen=True)
class COCOResult:
    stats: dict[str, float]  # STAT_NAMES -> value; NaN where undefined
    ap_per_class: np.ndarray  # float [num_classes], AP@[.5:.95]; NaN without ground truth

    @property
    def ap(self) -> float:
        return self.stats["AP"]

    @property
    def ap50(self) -> float:
        return self.stats["AP50"]

    @property
    def ap75(self) -> float:
        return self.stats["AP75"]

    def format(self, class_names=None) -> str:
        s = self.stats
        lines = [f"COCO AP@[.5:.95] {s['AP']:.4f}  AP50 {s['AP50']:.4f}  AP75 {s['AP75']:.4f}  "
                 f"AP small {s['AP_small']:.4f}  medium {s['AP_medium']:.4f}  "
                 f"large {s['AP_large']:.4f}  AR100 {s['AR100']:.4f}"]
        for c, ap in enumerate(self.ap_per_class):
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            lines.append(f"  {c:3d} {name:20s} AP@[.5:.95] {ap:.4f}")
        return "\n".join(lines)


class COCOEvaluator:
    """Accumulates images (ground truth and detections), then runs pycocotools' COCOeval."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self._images = []  # {"id", "height", "width"}
        self._ground_truth = []  # COCO annotations
        self._detections = []  # COCO results

    @property
    def num_images(self) -> int:
        return len(self._images)

    def add_image(self, height: int, width: int, det_boxes, det_scores, det_classes, gt_boxes,
                  gt_classes, gt_difficult=None) -> None:
        """Adds one image of ``height`` x ``width`` pixels.

        Args:
          det_boxes, det_scores, det_classes: [K, 4] normalised yxyx, [K], [K] class ids from 0.
          gt_boxes, gt_classes, gt_difficult: [M, 4] normalised yxyx, [M], [M] bool (or None).
        """
        image_id = len(self._images) + 1
        self._images.append({"id": image_id, "height": int(height), "width": int(width)})
        gt_classes = np.asarray(gt_classes, np.int64).reshape(-1)
        difficult = (np.zeros(len(gt_classes), bool) if gt_difficult is None
                     else np.asarray(gt_difficult, bool).reshape(-1))
        for box, cls, crowd in zip(to_coco_boxes(gt_boxes, height, width), gt_classes,
                                   difficult):
            # Annotation ids start at 1: COCOeval takes id 0 for "unmatched".
            self._ground_truth.append({
                "id": len(self._ground_truth) + 1, "image_id": image_id,
                "category_id": int(cls) + 1, "bbox": box.tolist(),
                "area": float(box[2] * box[3]), "iscrowd": int(crowd)})
        for box, score, cls in zip(to_coco_boxes(det_boxes, height, width),
                                   np.asarray(det_scores, np.float64).reshape(-1),
                                   np.asarray(det_classes).reshape(-1)):
            self._detections.append({
                "id": len(self._detections) + 1, "image_id": image_id,
                "category_id": int(cls) + 1, "bbox": box.tolist(),
                "area": float(box[2] * box[3]), "score": float(score), "iscrowd": 0})

    def add_batch(self, detections: dict, ground_truth: dict, image_sizes) -> None:
        """Adds padded batches, as ``DetectionEvaluator.add_batch`` takes them.

        Args:
          detections: detection_boxes [B, K, 4], detection_scores [B, K],
            detection_classes [B, K], num_detections [B].
          ground_truth: gt_boxes [B, M, 4], gt_classes [B, M] (-1 padding), gt_difficult [B, M].
          image_sizes: (height, width) of each image, in pixels.
        """
        detections = {k: np.asarray(v) for k, v in detections.items()}
        ground_truth = {k: np.asarray(ground_truth[k])
                        for k in ("gt_boxes", "gt_classes", "gt_difficult")}
        for b, (n, (height, width)) in enumerate(
                zip(detections["num_detections"].astype(int), image_sizes)):
            real = ground_truth["gt_classes"][b] >= 0
            self.add_image(height, width, detections["detection_boxes"][b, :n],
                           detections["detection_scores"][b, :n],
                           detections["detection_classes"][b, :n],
                           ground_truth["gt_boxes"][b][real], ground_truth["gt_classes"][b][real],
                           ground_truth["gt_difficult"][b][real])

    def result(self) -> COCOResult:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        categories = [{"id": c + 1, "name": str(c)} for c in range(self.num_classes)]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            truth, found = COCO(), COCO()
            truth.dataset = {"images": self._images, "categories": categories,
                             "annotations": self._ground_truth}
            found.dataset = {"images": self._images, "categories": categories,
                             "annotations": self._detections}
            truth.createIndex()
            found.createIndex()
            evaluation = COCOeval(truth, found, iouType="bbox")
            evaluation.params.imgIds = [image["id"] for image in self._images]
            evaluation.params.catIds = [c["id"] for c in categories]
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        stats = {name: float(value) if value >= 0 else float("nan")
                 for name, value in zip(STAT_NAMES, evaluation.stats)}
        # precision: [IoU thresholds, recall points, classes, areas, max detections], -1 where
        # a class has no ground truth; area "all" and 100 detections, as stats[0].
        precision = evaluation.eval["precision"][:, :, :, 0, -1]
        per_class = np.full(self.num_classes, np.nan)
        for c in range(self.num_classes):
            values = precision[:, :, c]
            if np.any(values > -1):
                per_class[c] = float(np.mean(values[values > -1]))
        return COCOResult(stats, per_class)
