"""VOC mAP: hand-computed goldens, difficult boxes, and pycocotools as the reference."""

import numpy as np
import pytest

from tfssd.evaluation.voc_ap import DetectionEvaluator, average_precision

BOX = np.array([0.1, 0.1, 0.4, 0.4])


def test_average_precision_hand_computed():
    # Ranked: TP, FP, TP with 2 ground truths -> recall 0.5, 0.5, 1; precision 1, 0.5, 2/3.
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert average_precision(recall, precision, "allpoint") == pytest.approx(0.5 + 0.5 * 2 / 3)
    # 11-point: recalls 0..0.5 (6 points) -> 1; 0.6..1.0 (5 points) -> 2/3.
    assert average_precision(recall, precision, "11point") == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_evaluator_matching_rules():
    evaluator = DetectionEvaluator(num_classes=2, iou_threshold=0.5, method="allpoint")
    # Image 0: one object of class 0, detected twice (second is a duplicate -> FP).
    evaluator.add_image([BOX, BOX + 0.01], [0.9, 0.8], [0, 0], [BOX], [0])
    # Image 1: one object of class 0 missed; a class-1 detection on nothing (FP for class 1).
    evaluator.add_image([[0.6, 0.6, 0.9, 0.9]], [0.7], [1], [BOX], [0])
    result = evaluator.result()
    # Class 0: TP (0.9), FP (0.8); 2 objects -> recall 0.5, precision 1 then 0.5 -> AP 0.5.
    assert result.ap[0] == pytest.approx(0.5)
    assert np.isnan(result.ap[1])  # no ground truth of class 1: left out of the mean
    assert result.mean_ap == pytest.approx(0.5)
    np.testing.assert_array_equal(result.num_ground_truth, [2, 0])


def test_difficult_objects_are_ignored():
    evaluator = DetectionEvaluator(num_classes=1, method="allpoint")
    far = np.array([0.6, 0.6, 0.9, 0.9])
    evaluator.add_image([BOX, far], [0.9, 0.8], [0, 0], [BOX, far], [0, 0], [True, False])
    result = evaluator.result()
    assert result.num_ground_truth[0] == 1 and result.ap[0] == pytest.approx(1.0)


def test_matches_pycocotools_ap50():
    """Our all-point VOC AP against pycocotools' AP at IoU 0.5 on identical detections.

    Ground-truth boxes never overlap each other, so both implementations match detections the
    same way and only the interpolation differs: COCO samples precision at 101 recall points,
    VOC integrates the envelope exactly. Tolerance: 0.01 per class (one recall step of COCO's
    grid), observed below that. Boxes are random floats, so no IoU is exactly 0.5 (VOC counts
    IoU > 0.5, COCO >= 0.5).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    size = 100.0
    images, annotations, detections = [], [], []
    ours = DetectionEvaluator(num_classes=3, iou_threshold=0.5, method="allpoint")
    for image_id in range(1, 41):
        gt_boxes, gt_classes = [], []
        for cell in rng.permutation(16)[:rng.integers(1, 6)]:  # a 4x4 grid: no overlaps
            y, x = divmod(int(cell), 4)
            top, left = y * 25 + rng.uniform(0, 5), x * 25 + rng.uniform(0, 5)
            gt_boxes.append([top, left, top + rng.uniform(10, 20), left + rng.uniform(10, 20)])
            gt_classes.append(int(rng.integers(3)))
        det_boxes, det_scores, det_classes = [], [], []
        for box, cls in zip(gt_boxes, gt_classes):
            for _ in range(rng.integers(0, 3)):  # 0-2 noisy detections per object
                det_boxes.append(np.array(box) + rng.normal(0, 3, 4))
                det_scores.append(float(rng.uniform()))
                det_classes.append(cls if rng.uniform() < 0.8 else int(rng.integers(3)))
        for _ in range(rng.integers(0, 3)):  # background false positives
            top, left = rng.uniform(0, 80, 2)
            det_boxes.append(np.array([top, left, top + 15, left + 15]))
            det_scores.append(float(rng.uniform()))
            det_classes.append(int(rng.integers(3)))
        images.append({"id": image_id, "width": size, "height": size})
        for box, cls in zip(gt_boxes, gt_classes):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": cls + 1, "iscrowd": 0,
                                "bbox": [box[1], box[0], box[3] - box[1], box[2] - box[0]],
                                "area": (box[3] - box[1]) * (box[2] - box[0])})
        for box, score, cls in zip(det_boxes, det_scores, det_classes):
            detections.append({"image_id": image_id, "category_id": cls + 1, "score": score,
                               "bbox": [box[1], box[0], box[3] - box[1], box[2] - box[0]]})
        ours.add_image(np.reshape(det_boxes, (-1, 4)) / size, det_scores, det_classes,
                       np.array(gt_boxes) / size, gt_classes)
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c} for c in (1, 2, 3)]}
    coco.createIndex()
    evaluation = COCOeval(coco, coco.loadRes(detections), "bbox")
    evaluation.params.iouThrs = np.array([0.5])
    evaluation.params.maxDets = [1000]
    evaluation.params.areaRng = [[0, 1e10]]
    evaluation.params.areaRngLbl = ["all"]
    evaluation.evaluate()
    evaluation.accumulate()
    precision = evaluation.eval["precision"][0, :, :, 0, 0]  # [recall points, classes]
    coco_ap = [np.mean(precision[:, c][precision[:, c] > -1]) for c in range(3)]
    np.testing.assert_allclose(ours.result().ap, coco_ap, atol=0.01)
