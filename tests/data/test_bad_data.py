"""The bad-data policy: each defect is skipped and reported, fixed and counted, or refused."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.data import format_writers as fw
from tfssd import training
from tfssd.config import run_config as config_lib
from tfssd.data import coco, conversion, mxnet_formats, sagemaker_formats, schema, voc
from tfssd.training.distribution import Cluster


def _image_file(tmp_path, name, mode="RGB", fmt="JPEG", size=(64, 32)):
    image = Image.new(mode, size, {"RGB": (200, 10, 10), "L": 128, "CMYK": (0, 255, 255, 0),
                                   "RGBA": (1, 2, 3, 128), "P": 5}[mode])
    path = tmp_path / name
    image.save(path, format=fmt)
    return str(path)


def _item(path, *boxes, name=None):
    return conversion.SourceImage(name=name or os.path.basename(path), path=path,
                               objects=[conversion.SourceObject(*b) for b in boxes])


def _convert(tmp_path, items, **kwargs):
    return conversion.convert(items, str(tmp_path / "out" / "t"), **kwargs)


def _labels(tmp_path):
    path = str(tmp_path / "out" / "t-00000-of-00001.tfrecord")
    return [schema.parse_example(r)["label"].numpy() for r in tf.data.TFRecordDataset(path)]


def test_corrupt_and_truncated_images_are_skipped(tmp_path):
    good = _image_file(tmp_path, "good.jpg")
    data = open(good, "rb").read()
    (tmp_path / "truncated.jpg").write_bytes(data[:len(data) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    summary = _convert(tmp_path, [_item(good, ("cat", 1, 1, 9, 9)),
                                  _item(str(tmp_path / "truncated.jpg"), ("cat", 1, 1, 9, 9)),
                                  _item(str(tmp_path / "garbage.jpg"), ("cat", 1, 1, 9, 9))])
    assert summary.images_written == 1
    reasons = dict(summary.skipped)
    assert reasons["truncated.jpg"].startswith("corrupt or truncated image")
    assert reasons["garbage.jpg"].startswith("corrupt or truncated image")


def test_missing_image_file(tmp_path):
    summary = _convert(tmp_path, [_item(str(tmp_path / "nowhere.jpg"), ("cat", 1, 1, 9, 9))])
    (name, reason), = summary.skipped
    assert name == "nowhere.jpg" and reason.startswith("missing or unreadable image file")


def test_boxes_outside_are_clipped_and_degenerate_ones_dropped(tmp_path):
    path = _image_file(tmp_path, "a.jpg", size=(64, 32))
    summary = _convert(tmp_path, [_item(path, ("cat", -4, 2, 70, 30),  # clipped to the image
                                        ("cat", 10, 10, 10, 20),  # zero width
                                        ("cat", 30, 20, 20, 25),  # inverted
                                        ("cat", 70, 40, 80, 50))])  # entirely outside
    assert summary.boxes_written == 1 and summary.boxes_clipped == 2
    assert summary.boxes_dropped == {"zero-area or inverted": 2, "outside the image": 1}
    np.testing.assert_allclose(_labels(tmp_path)[0], [2, 5, 0, 0, 2 / 32, 1, 30 / 32])


def test_unknown_class_skips_the_image(tmp_path):
    path = _image_file(tmp_path, "a.jpg")
    summary = _convert(tmp_path, [_item(path, ("cat", 1, 1, 9, 9), ("zebra", 1, 1, 9, 9))],
                       class_names=["cat", "dog"])
    (name, reason), = summary.skipped
    assert reason == "unknown class 'zebra' (known: cat, dog)"


@pytest.mark.parametrize("mode,fmt,reencoded", [
    ("L", "JPEG", "L JPEG to RGB JPEG"), ("CMYK", "JPEG", "CMYK JPEG to RGB JPEG"),
    ("RGBA", "PNG", "RGBA PNG to RGB JPEG"), ("P", "PNG", "P PNG to RGB JPEG"),
    ("RGB", "BMP", "RGB BMP to RGB JPEG"), ("RGB", "PNG", None)])
def test_image_kinds_become_three_channel_jpeg_or_png(tmp_path, mode, fmt, reencoded):
    path = _image_file(tmp_path, f"a.{fmt.lower()}", mode, fmt)
    summary = _convert(tmp_path, [_item(path, ("cat", 1, 1, 9, 9))])
    assert summary.images_written == 1
    assert dict(summary.images_reencoded) == ({reencoded: 1} if reencoded else {})
    record = next(iter(tf.data.TFRecordDataset(str(tmp_path / "out" /
                                                   "t-00000-of-00001.tfrecord"))))
    image = tf.io.decode_image(schema.parse_example(record)["image_bytes"])
    assert image.shape == (32, 64, 3)


def test_too_many_objects_for_label_width(tmp_path):
    path = _image_file(tmp_path, "crowd.jpg")
    boxes = [("cat", i, 1, i + 2, 9) for i in range(10)]
    summary = _convert(tmp_path, [_item(path, *boxes)], label_width=51)
    assert summary.skipped == [("crowd.jpg", "10 objects need label_width >= 52, more than "
                                             "label_width=51")]
    assert _convert(tmp_path, [_item(path, *boxes)], label_width=52).images_written == 1


def test_strict_stops_naming_the_item_and_leaves_no_output(tmp_path):
    good = _image_file(tmp_path, "good.jpg")
    with pytest.raises(conversion.ConversionError, match="nowhere.jpg: missing"):
        _convert(tmp_path, [_item(good, ("cat", 1, 1, 9, 9)),
                            _item(str(tmp_path / "nowhere.jpg"), ("cat", 1, 1, 9, 9))],
                 strict=True)
    assert not os.path.exists(tmp_path / "out" / "t-00000-of-00001.tfrecord")
    assert not list((tmp_path / "out").glob("*.incomplete"))
    with pytest.raises(conversion.ConversionError, match="zero-area"):
        _convert(tmp_path, [_item(good, ("cat", 5, 5, 5, 9))], strict=True)


def test_unreadable_annotations_in_every_format(tmp_path):
    images = str(tmp_path / "images")
    pictures = fw.tiny_dataset(images)
    fw.write_voc(pictures, str(tmp_path / "voc"))
    (tmp_path / "voc" / "Annotations" / "img1.xml").write_text("<annotation><object>")
    items = voc.read_voc(str(tmp_path / "voc" / "Annotations"), images)
    fw.write_sagemaker_json(pictures, str(tmp_path / "ann"))
    (tmp_path / "ann" / "img1.json").write_text("{not json")
    json_items, _ = sagemaker_formats.read_image_json(images, str(tmp_path / "ann"))
    fw.write_manifest(pictures, str(tmp_path / "m"))
    lines = (tmp_path / "m").read_text().splitlines()
    (tmp_path / "m").write_text("\n".join([lines[0], "{broken", lines[2]]) + "\n")
    manifest_items, _ = sagemaker_formats.read_manifest(str(tmp_path / "m"), str(tmp_path))
    fw.write_lst(pictures, str(tmp_path / "l"))
    lines = (tmp_path / "l").read_text().splitlines()
    (tmp_path / "l").write_text("\n".join([lines[0], "1\t2\t5\t0\t0.1\tx", lines[2]]) + "\n")
    lst_items = mxnet_formats.read_lst(str(tmp_path / "l"), images)
    for name, got in (("voc", items), ("sagemaker_json", json_items),
                      ("manifest", manifest_items), ("lst", lst_items)):
        summary = conversion.convert(got, str(tmp_path / name / "t"), class_names=fw.CLASS_NAMES)
        assert summary.images_written == 2, name
        (_, reason), = summary.skipped
        assert reason.startswith("unreadable annotation"), (name, reason)
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(coco.COCOFormatError, match="not COCO"):
        coco.read_coco(str(tmp_path / "bad.json"), images)
    (tmp_path / "bad.rec").write_bytes(b"\x00" * 16)
    with pytest.raises(mxnet_formats.MXNetFormatError, match="no RecordIO magic at byte 0"):
        mxnet_formats.read_rec(str(tmp_path / "bad.rec"))


def test_every_written_record_trains(tmp_path, shapes_voc):
    """Whatever a converter writes decodes, fits its label width and has valid boxes."""
    items = voc.read_voc(os.path.join(shapes_voc, "Annotations"),
                         os.path.join(shapes_voc, "JPEGImages"))
    summary = _convert(tmp_path, items)
    for label in _labels(tmp_path):
        boxes, classes, _ = (t.numpy() for t in schema.label_to_objects(label))
        assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[:, 2:] > boxes[:, :2])
        assert len(label) <= summary.max_label_width


# -- at training time --------------------------------------------------------------------


def _records_with_a_corrupt_image(tmp_path, shapes_tfrecords):
    path = str(tmp_path / "mixed-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for index, record in enumerate(tf.data.TFRecordDataset(shapes_tfrecords["train"][0])):
            if index == 5:
                label = schema.make_label([0], [[0.1, 0.1, 0.5, 0.5]])
                writer.write(schema.serialize_example(b"\xff\xd8\xff broken", "jpeg",
                                                      "broken.jpg", 30, 30, label))
            writer.write(record.numpy())
    return path


def _config(tmp_path, files, validation, **data):
    return config_lib.Config(
        model=config_lib.ModelConfig(num_classes=3, image_size=128, width_multiplier=0.0625,
                                     use_pretrained_model=False),
        data=config_lib.DataConfig(train_files=(files,), validation_files=validation,
                                   **data),
        train=config_lib.TrainConfig(num_training_samples=12, epochs=1, mini_batch_size=4,
                                     model_dir=str(tmp_path / "run"), seed=0))


@pytest.mark.slow
def test_undecodable_record_stops_training_naming_it(tmp_path, shapes_tfrecords):
    path = _records_with_a_corrupt_image(tmp_path, shapes_tfrecords)
    config = _config(tmp_path, path, ())
    with pytest.raises(training.TrainingError) as raised:
        training.train(config, tf.distribute.get_strategy(), Cluster())
    message = str(raised.value)
    assert f"{path} record 5 (image broken.jpg)" in message
    assert "--skip_corrupt_records" in message


@pytest.mark.slow
def test_skip_corrupt_records_trains_past_it(tmp_path, shapes_tfrecords):
    path = _records_with_a_corrupt_image(tmp_path, shapes_tfrecords)
    config = _config(tmp_path, path, shapes_tfrecords["validation"], skip_corrupt_records=True)
    result = training.train(config, tf.distribute.get_strategy(), Cluster())
    assert result.global_step == 3


@pytest.mark.slow
def test_truncated_tfrecord_file_is_named_at_start(tmp_path, shapes_tfrecords):
    path = str(tmp_path / "cut-00000-of-00001.tfrecord")
    data = open(shapes_tfrecords["train"][0], "rb").read()
    open(path, "wb").write(data[:len(data) - 100])
    with pytest.raises(training.TrainingError, match=f"Unusable training file: {path}: truncated"):
        training.Trainer(_config(tmp_path, path, ()), tf.distribute.get_strategy(), Cluster())


def test_mismatched_class_count_is_refused(tmp_path, shapes_tfrecords):
    config = _config(tmp_path, shapes_tfrecords["train"][0], (),
                     class_map_file=os.path.join(shapes_tfrecords["dir"], "class_map.json"))
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, num_classes=4))
    with pytest.raises(training.TrainingError, match="lists 3 classes but num_classes=4"):
        training.Trainer(config, tf.distribute.get_strategy(), Cluster())
