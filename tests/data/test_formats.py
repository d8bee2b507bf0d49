"""Every input format converts, and the same dataset gives identical records in all of them."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.data import format_writers as fw
from tfssd.data import coco, conversion, mxnet_formats, sagemaker_formats, schema, voc


@pytest.fixture
def tiny(tmp_path):
    images = str(tmp_path / "images")
    return tmp_path, images, fw.tiny_dataset(images)


def _records(prefix):
    records = []
    for path in sorted(glob.glob(prefix + "-*.tfrecord")):
        for serialized in tf.data.TFRecordDataset(path):
            example = tf.train.Example.FromString(serialized.numpy())
            records.append({key: (list(value.bytes_list.value) or list(value.float_list.value)
                                  or list(value.int64_list.value))
                            for key, value in example.features.feature.items()})
    return records


def _convert_all(tmp_path, images, pictures):
    out = tmp_path / "out"
    results = {}

    def run(name, items, provided=None):
        summary = conversion.convert(items, str(out / name / "train"), provided_names=provided)
        results[name] = (summary, _records(str(out / name / "train")))

    fw.write_voc(pictures, str(tmp_path / "voc"))
    run("voc", voc.read_voc(str(tmp_path / "voc" / "Annotations"), images))
    fw.write_coco(pictures, str(tmp_path / "coco.json"))
    items, names, _ = coco.read_coco(str(tmp_path / "coco.json"), images)
    run("coco", items, names)
    fw.write_sagemaker_json(pictures, str(tmp_path / "annotations"))
    run("sagemaker_json", *sagemaker_formats.read_image_json(images, str(tmp_path / "annotations")))
    fw.write_manifest(pictures, str(tmp_path / "train.manifest"))
    run("manifest", *sagemaker_formats.read_manifest(str(tmp_path / "train.manifest"),
                                                     str(tmp_path)))
    fw.write_lst(pictures, str(tmp_path / "train.lst"))
    run("lst", mxnet_formats.read_lst(str(tmp_path / "train.lst"), images))
    fw.write_rec(pictures, str(tmp_path / "train.rec"))
    run("recordio", mxnet_formats.read_rec(str(tmp_path / "train.rec")))
    return results


def test_the_same_dataset_gives_identical_records_in_every_format(tiny):
    tmp_path, images, pictures = tiny
    results = _convert_all(tmp_path, images, pictures)
    reference = results["voc"][1]
    assert len(reference) == 3
    np.testing.assert_allclose(reference[0]["image/label"],
                               [2, 5, 0, 0.125, 0.125, 0.625, 0.875, 1, 0.5, 0, 1, 0.5])
    assert reference[0]["image/encoded"] == [pictures[0].data]
    for name, (summary, records) in results.items():
        assert summary.images_written == 3 and summary.boxes_written == 3, name
        for got, want in zip(records, reference):
            if name == "recordio":  # RecordIO keeps no file name
                got, want = ({k: v for k, v in r.items() if k != "image/filename"}
                             for r in (got, want))
            assert got == want, name
    for name in ("voc", "coco", "sagemaker_json", "manifest"):
        assert results[name][0].class_names == fw.CLASS_NAMES, name
    assert results["lst"][0].class_names == ["0", "1"]


def test_recordio_multi_part_records_are_joined(tiny):
    tmp_path, _, pictures = tiny
    fw.write_rec(pictures, str(tmp_path / "x.rec"))
    raw = (tmp_path / "x.rec").read_bytes()
    first_flag = int.from_bytes(raw[4:8], "little") >> 29
    assert first_flag == 1  # the writer really split the first record
    records = list(mxnet_formats.read_recordio(str(tmp_path / "x.rec")))
    assert len(records) == 3
    label, image_id, image = mxnet_formats.unpack_image_record(records[0])
    assert image == pictures[0].data and image_id == 0 and label[:2].tolist() == [2, 5]


def test_coco_crowd_boxes_and_empty_images(tmp_path, tiny):
    _, images, pictures = tiny
    fw.write_coco(pictures, str(tmp_path / "c.json"))
    data = __import__("json").loads((tmp_path / "c.json").read_text())
    data["annotations"].append({"id": 99, "image_id": 2, "category_id": 3, "iscrowd": 1,
                                "bbox": [1, 1, 10, 10], "area": 100})
    (tmp_path / "c.json").write_text(__import__("json").dumps(data))
    items, names, crowd = coco.read_coco(str(tmp_path / "c.json"), images)
    assert crowd == 1 and names == fw.CLASS_NAMES
    assert [len(i.objects) for i in items] == [2, 1, 0]
    kept = conversion.convert(items, str(tmp_path / "a" / "t"), provided_names=names)
    assert kept.images_written == 3 and kept.images_without_objects == 1
    dropped = conversion.convert(items, str(tmp_path / "b" / "t"), provided_names=names,
                              drop_empty=True)
    assert dropped.images_written == 2 and dropped.skipped == [("img2.jpg",
                                                                "no objects (dropped on request)")]


def test_voc_difficult_objects_are_marked_or_dropped(tmp_path, tiny):
    _, images, pictures = tiny
    fw.write_voc(pictures, str(tmp_path / "voc"))
    xml = tmp_path / "voc" / "Annotations" / "img0.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>",
                                           "<difficult>1</difficult>", 1))
    items = voc.read_voc(str(tmp_path / "voc" / "Annotations"), images)
    marked = conversion.convert(items, str(tmp_path / "a" / "t"))
    assert marked.difficult_boxes == 1
    label = _records(str(tmp_path / "a" / "t"))[0]["image/label"]
    assert label[:2] == [2, 6] and label[7] == 1 and label[13] == 0
    _, _, difficult = schema.label_to_objects(tf.constant(label))
    assert difficult.numpy().tolist() == [True, False]
    dropped = conversion.convert(items, str(tmp_path / "b" / "t"), drop_difficult=True)
    assert dropped.boxes_written == 2 and dropped.boxes_dropped == {
        "difficult (dropped on request)": 1}


def test_manifest_attribute_and_paths(tmp_path, tiny):
    _, images, pictures = tiny
    fw.write_manifest(pictures, str(tmp_path / "m"), attribute="my-labels")
    items, names = sagemaker_formats.read_manifest(str(tmp_path / "m"), str(tmp_path))
    assert names == fw.CLASS_NAMES and items[0].path == os.path.join(str(tmp_path), "images",
                                                                      "img0.jpg")
    flat, _ = sagemaker_formats.read_manifest(str(tmp_path / "m"), images)  # files in the root
    assert os.path.isfile(flat[0].path)
    assert sagemaker_formats.resolve_source_ref("s3://b/a/x.jpg", "/r") == "/r/a/x.jpg"


def test_odapi_records_read_like_tfssd_records(tiny, tmp_path):
    _, _, pictures = tiny
    path = str(tmp_path / "odapi.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for p in pictures:
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[p.data])),
                "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[p.file.encode()])),
                "image/source_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"1"])),
            }
            for key, values in (("xmin", [b.x0 / p.width for b in p.boxes]),
                                ("ymin", [b.y0 / p.height for b in p.boxes]),
                                ("xmax", [b.x1 / p.width for b in p.boxes]),
                                ("ymax", [b.y1 / p.height for b in p.boxes])):
                feature[f"image/object/bbox/{key}"] = tf.train.Feature(
                    float_list=tf.train.FloatList(value=values))
            feature["image/object/class/label"] = tf.train.Feature(
                int64_list=tf.train.Int64List(value=[b.class_id + 1 for b in p.boxes]))
            writer.write(tf.train.Example(features=tf.train.Features(
                feature=feature)).SerializeToString())
    assert schema.detect_format(path) == "odapi"
    parsed = [schema.parse_odapi_example(r) for r in tf.data.TFRecordDataset(path)]
    boxes, classes, _ = schema.label_to_objects(parsed[0]["label"])
    np.testing.assert_allclose(boxes.numpy(), [[0.125, 0.125, 0.875, 0.625],
                                               [0.0, 0.5, 0.5, 1.0]])
    assert classes.numpy().tolist() == [0, 1] and parsed[2]["label"].shape == (2,)
