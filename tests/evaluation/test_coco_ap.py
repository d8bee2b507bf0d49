"""COCO metrics through pycocotools: box conversion and hand-computed AP goldens."""

import math

import numpy as np
import pytest

from tfssd.evaluation.coco_ap import COCOEvaluator, to_coco_boxes

LARGE = np.array([0.25, 0.25, 0.75, 0.75])  # 100 x 100 px on a 200 x 200 image: "large"
SMALL = np.array([0.0, 0.0, 0.1, 0.1])  # 20 x 20 px there: "small"
# LARGE moved right by 20 px: IoU = 80 * 100 / (2 * 100 * 100 - 80 * 100) = 2/3, a match at
# the IoU thresholds 0.5, 0.55, 0.6 and 0.65, and not at 0.7 ... 0.95.
SHIFTED = LARGE + np.array([0.0, 0.1, 0.0, 0.1])


def test_normalised_yxyx_to_pixel_xywh():
    boxes = to_coco_boxes([[0.1, 0.2, 0.5, 0.6]], height=100, width=200)
    np.testing.assert_allclose(boxes, [[40.0, 10.0, 80.0, 40.0]])


def test_a_perfect_detector_scores_one():
    evaluator = COCOEvaluator(num_classes=2)
    evaluator.add_image(200, 200, [LARGE, SMALL], [0.9, 0.8], [0, 1], [LARGE, SMALL], [0, 1])
    medium = [0.2, 0.2, 0.4, 0.8]  # 60 x 60 px on a 300 (high) x 100 image
    evaluator.add_image(300, 100, [medium], [0.7], [1], [medium], [1])
    result = evaluator.result()
    for name in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100"):
        assert result.stats[name] == pytest.approx(1.0), name
    np.testing.assert_allclose(result.ap_per_class, [1.0, 1.0])


def test_a_known_shift_splits_ap50_and_ap75():
    evaluator = COCOEvaluator(num_classes=1)
    evaluator.add_image(200, 200, [SHIFTED], [0.9], [0], [LARGE], [0])
    result = evaluator.result()
    assert result.ap50 == pytest.approx(1.0)
    assert result.ap75 == pytest.approx(0.0)
    assert result.ap == pytest.approx(0.4)  # 4 of the 10 IoU thresholds
    assert result.stats["AP_large"] == pytest.approx(0.4)
    assert math.isnan(result.stats["AP_small"]) and math.isnan(result.stats["AP_medium"])


def test_sizes_and_ranking_hand_computed():
    """A small object found exactly (score 0.9) and a large one found shifted (0.8), one class.

    IoU 0.5 to 0.65: both are true positives, AP 1. IoU 0.7 to 0.95: the first detection gives
    recall 1/2 at precision 1, the second is a false positive; COCO samples precision at the
    101 recalls 0, 0.01, ..., 1, of which 51 lie at or below 1/2: AP 51/101.
    """
    evaluator = COCOEvaluator(num_classes=1)
    evaluator.add_image(200, 200, [SMALL, SHIFTED], [0.9, 0.8], [0, 0], [SMALL, LARGE], [0, 0])
    result = evaluator.result()
    assert result.ap == pytest.approx((4 * 1.0 + 6 * 51 / 101) / 10)
    assert result.ap50 == pytest.approx(1.0)
    assert result.ap75 == pytest.approx(51 / 101)
    assert result.stats["AP_small"] == pytest.approx(1.0)
    assert result.stats["AP_large"] == pytest.approx(0.4)


def test_difficult_objects_count_neither_way():
    far = np.array([0.6, 0.6, 0.9, 0.9])
    evaluator = COCOEvaluator(num_classes=1)
    # The detection on the difficult object ranks first: as a false positive it would halve AP.
    evaluator.add_image(200, 200, [far, LARGE], [0.95, 0.9], [0, 0], [LARGE, far], [0, 0],
                        [False, True])
    assert evaluator.result().ap == pytest.approx(1.0)


def test_padded_batches_and_classes_without_ground_truth():
    evaluator = COCOEvaluator(num_classes=3)
    detections = {
        "detection_boxes": np.stack([[LARGE, SMALL, np.zeros(4)], [LARGE, np.zeros(4),
                                                                   np.zeros(4)]]),
        "detection_scores": np.array([[0.9, 0.5, 0.0], [0.8, 0.0, 0.0]]),
        "detection_classes": np.array([[0, 2, 0], [0, 0, 0]], np.float32),
        "num_detections": np.array([2, 1], np.float32),
    }
    ground_truth = {
        "gt_boxes": np.stack([[LARGE, np.zeros(4)], [LARGE, np.zeros(4)]]),
        "gt_classes": np.array([[0, -1], [0, -1]]),
        "gt_difficult": np.zeros((2, 2), bool),
    }
    evaluator.add_batch(detections, ground_truth, [(200, 200), (100, 400)])
    result = evaluator.result()
    assert evaluator.num_images == 2
    assert result.ap_per_class[0] == pytest.approx(1.0)
    assert np.isnan(result.ap_per_class[1]) and np.isnan(result.ap_per_class[2])
    assert result.ap == pytest.approx(1.0)  # class 2's detection has no ground truth to miss
    assert "AP@[.5:.95] 1.0000" in result.format(["a", "b", "c"])


@pytest.mark.slow
def test_training_logs_coco_metrics_to_tensorboard(shapes_tfrecords, tmp_path):
    import dataclasses

    import tensorflow as tf

    from tests.training.test_training import tiny_config
    from tfssd import training
    from tfssd.training.distribution import Cluster

    config = tiny_config(shapes_tfrecords, tmp_path / "run", epochs=1)
    config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, coco_metrics=True))
    training.train(config, tf.distribute.get_strategy(), Cluster())
    tags = set()
    for path in tf.io.gfile.glob(str(tmp_path / "run" / "validation" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    assert {"mAP", "COCO/AP", "COCO/AP50", "COCO/AP75"} <= tags
