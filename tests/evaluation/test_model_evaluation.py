"""The evaluation flow of tfssd.evaluate: a detector on TFRecords, with goldens a person can check.

The detector here answers each image with its own ground truth (looked up by the encoded
bytes), so the metrics are known by hand: 1 where it answers, 0 where it is silent.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from tfssd.data import schema
from tfssd.evaluation import model_evaluation


class GroundTruthDetector:
    """Called on encoded images [B], returns their ground truth as detections (score 1);
    classes in ``silent`` are left out."""

    path = "ground-truth"

    def __init__(self, files, class_names, image_size=None, silent=()):
        self.class_names, self.image_size = class_names, image_size
        self.truth = {}
        for serialized in tf.data.TFRecordDataset(list(files)):
            example = schema.parse_example(serialized)
            boxes, classes, _ = (t.numpy() for t in schema.label_to_objects(example["label"]))
            keep = ~np.isin(classes, silent)
            self.truth[example["image_bytes"].numpy()] = (boxes[keep], classes[keep])
        self.calls = 0

    def __call__(self, image_bytes):
        self.calls += 1
        found = [self.truth[data] for data in image_bytes.numpy()]
        width = max(1, max(len(classes) for _, classes in found))
        out = {"detection_boxes": np.zeros((len(found), width, 4), np.float32),
               "detection_scores": np.zeros((len(found), width), np.float32),
               "detection_classes": np.zeros((len(found), width), np.float32),
               "num_detections": np.array([len(c) for _, c in found], np.float32)}
        for b, (boxes, classes) in enumerate(found):
            out["detection_boxes"][b, :len(classes)] = boxes
            out["detection_scores"][b, :len(classes)] = 1
            out["detection_classes"][b, :len(classes)] = classes
        return out


def _no_message(error, files, input_format):
    raise AssertionError(f"no data error expected: {error}")


NAMES = ["circle", "square", "triangle"]


def test_a_detector_that_finds_everything_scores_one(shapes_tfrecords):
    files = shapes_tfrecords["validation"]
    detector = GroundTruthDetector(files, NAMES)
    report = model_evaluation.evaluate_model(files, lambda: detector, _no_message,
                                             metrics=["voc", "coco"], batch_size=3)
    assert report.num_images == 8 and detector.calls == 3  # 8 images in batches of 3
    assert report.model_path == "ground-truth" and report.class_names == NAMES
    assert report.voc.mean_ap == pytest.approx(1.0)
    assert report.coco.stats["AP50"] == pytest.approx(1.0)
    assert report.coco.stats["AP"] == pytest.approx(1.0)
    assert report.figures is None


def test_a_silent_class_scores_zero_and_the_report_sizes_objects_at_the_models_side(
        shapes_tfrecords, tmp_path):
    files = shapes_tfrecords["validation"]
    for image_size, image_shape, side in [(None, None, 300), (128, None, 128), (128, 512, 512)]:
        detector = GroundTruthDetector(files, NAMES, image_size, silent=[0])
        report = model_evaluation.evaluate_model(
            files, lambda detector=detector: detector, _no_message, metrics=["voc"],
            report_dir=str(tmp_path / str(side)), image_shape=image_shape)
        assert report.coco is None
        # Every class has objects in these images: AP 0 for circles, 1 for the others.
        np.testing.assert_allclose(report.voc.ap, [0, 1, 1], atol=1e-6)
        assert report.voc.mean_ap == pytest.approx(2 / 3)
        assert report.figures.image_shape == side
        with open(tmp_path / str(side) / "report.json") as f:
            assert json.load(f)["image_shape"] == side


def test_a_bad_file_is_named_before_the_model_is_loaded(shapes_tfrecords, tmp_path):
    other = str(tmp_path / "other.tfrecord")
    with tf.io.TFRecordWriter(other) as writer:
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            "colour": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"blue"]))})
        ).SerializeToString())
    loads = []
    with pytest.raises(ValueError, match="other.tfrecord"):
        model_evaluation.evaluate_model((*shapes_tfrecords["validation"], other),
                                        lambda: loads.append(1), _no_message)
    assert not loads
    with pytest.raises(ValueError, match="metrics=voc,map: expected one or more of voc, coco"):
        model_evaluation.evaluate_model(shapes_tfrecords["validation"], lambda: loads.append(1),
                                        _no_message, metrics=["voc", "map"])
    assert not loads


def test_a_record_the_pipeline_refuses_raises_the_callers_message(shapes_tfrecords):
    files = shapes_tfrecords["validation"]
    seen = []

    def describe(error, where, input_format):
        seen.append((type(error), where, input_format))
        return "described"

    # Every image holds 2 or more objects: 2 + 5 * 2 floats do not fit a label width of 7.
    with pytest.raises(model_evaluation.EvaluationDataError, match="^described$"):
        model_evaluation.evaluate_model(files, lambda: GroundTruthDetector(files, NAMES),
                                        describe, label_width=7)
    assert seen == [(tf.errors.InvalidArgumentError, files, "tfssd")]
