"""The TFRecord schema: labels in SageMaker's layout, written and read back."""

import numpy as np
import pytest
import tensorflow as tf

from tfssd.data import schema


def _example(label, filename="img.jpg"):
    return schema.serialize_example(b"\xff\xd8fake", "jpeg", filename, 10, 20, label)


def test_label_layout():
    label = schema.make_label([3, 0], [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    np.testing.assert_allclose(label, [2, 5, 3, 0.1, 0.2, 0.3, 0.4, 0, 0.5, 0.6, 0.7, 0.8])
    marked = schema.make_label([1], [[0.1, 0.2, 0.3, 0.4]], difficult=[True])
    np.testing.assert_allclose(marked, [2, 6, 1, 0.1, 0.2, 0.3, 0.4, 1])
    assert schema.label_width_needed(10) == 52  # SageMaker's example: 10 objects need 52


def test_written_and_read_back(tmp_path):
    path = str(tmp_path / "x.tfrecord")
    label = schema.make_label([2, 1], [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.9, 1.0]],
                              difficult=[False, True])
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(_example(label, "a.jpg"))
        writer.write(_example(schema.make_label([], np.zeros((0, 4))), "empty.jpg"))
    assert schema.count_records(path) == 2
    first, second = [schema.parse_example(r) for r in tf.data.TFRecordDataset(path)]
    assert first["filename"].numpy() == b"a.jpg"
    boxes, classes, difficult = schema.label_to_objects(first["label"])
    np.testing.assert_allclose(boxes.numpy(), [[0.2, 0.1, 0.4, 0.3], [0.6, 0.5, 1.0, 0.9]])
    np.testing.assert_array_equal(classes.numpy(), [2, 1])
    np.testing.assert_array_equal(difficult.numpy(), [False, True])
    boxes, classes, _ = schema.label_to_objects(second["label"])
    assert boxes.shape == (0, 4) and classes.shape == (0,)


def test_padding_is_ignored():
    label = schema.make_label([4], [[0.1, 0.2, 0.3, 0.4]])  # 2 + 5 values, padded to 20
    label = tf.constant(np.concatenate([label, np.full(20 - len(label), schema.PAD_VALUE)]),
                        tf.float32)
    boxes, classes, _ = schema.label_to_objects(label)
    np.testing.assert_array_equal(classes.numpy(), [4])


def test_label_too_wide_names_the_record():
    label = tf.constant(schema.make_label([0] * 3, np.tile([[0.1, 0.1, 0.2, 0.2]], (3, 1))))
    schema.check_label_width(label, 17, tf.constant("fits.jpg"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="crowded.jpg") as raised:
        schema.check_label_width(label, 16, tf.constant("crowded.jpg"))
    assert "label_width=16" in str(raised.value) and "17" in str(raised.value)


def test_count_records_detects_truncation(tmp_path):
    path = tmp_path / "x.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for _ in range(3):
            writer.write(b"payload" * 10)
    assert schema.count_records(str(path)) == 3
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        schema.count_records(str(path))
