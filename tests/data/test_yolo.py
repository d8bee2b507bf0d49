"""YOLO (Ultralytics) labels: boxes, polygons, class names, and the bad-data policy."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.data import format_writers as fw
from tests.data.test_formats import _records
from tests.processes import run_python_concurrently
from tfssd.data import conversion, schema, voc, yolo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def dataset(tmp_path):
    """The tiny dataset in Ultralytics' layout: (root, images dir, labels dir)."""
    root = tmp_path / "yolo"
    fw.write_yolo(fw.tiny_dataset(str(tmp_path / "pictures")), str(root))
    return root, str(root / "images"), str(root / "labels")


def _labels(prefix):
    """{image file name: flat label} of the records written under ``prefix``."""
    labels = {}
    for path in sorted(glob.glob(prefix + "-*.tfrecord")):
        for serialized in tf.data.TFRecordDataset(path):
            parsed = schema.parse_example(serialized)
            labels[parsed["filename"].numpy().decode()] = parsed["label"].numpy()
    return labels


def _convert(tmp_path, images, labels, **kwargs):
    items = yolo.read_yolo(images, labels, num_classes=len(fw.CLASS_NAMES))
    return conversion.convert(items, str(tmp_path / "out" / "train"),
                              provided_names=fw.CLASS_NAMES, **kwargs)


def _image(path, width=64, height=32, fmt="JPEG"):
    Image.new("RGB", (width, height), (30, 120, 200)).save(path, format=fmt)


def _folders_with_one_image(tmp_path):
    """images/ holding a.jpg (64 x 32) and an empty labels/."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    _image(images / "a.jpg", 64, 32)
    return images, labels


def test_golden_box_and_polygon(tmp_path):
    images, labels = _folders_with_one_image(tmp_path)
    # Centre (24, 16) px, size 32 x 24 px of a 64 x 32 image -> corners (8, 4)-(40, 28) px.
    # The polygon (32, 0), (64, 16), (32, 32) px has the bounding box (32, 0)-(64, 32) px.
    (labels / "a.txt").write_text("0 0.375 0.5 0.5 0.75\n\n1 0.5 0 1 0.5 0.5 1\n")
    summary = _convert(tmp_path, str(images), str(labels))
    assert summary.images_written == 1 and summary.boxes_written == 2
    assert summary.class_names == fw.CLASS_NAMES
    np.testing.assert_allclose(_labels(str(tmp_path / "out" / "train"))["a.jpg"],
                               [2, 5, 0, 0.125, 0.125, 0.625, 0.875, 1, 0.5, 0, 1, 1])


def test_the_same_records_as_voc(tmp_path, dataset):
    root, images, labels = dataset
    summary = _convert(tmp_path, images, labels)
    assert summary.images_written == 3 and summary.boxes_written == 3
    pictures = fw.tiny_dataset(str(tmp_path / "voc_images"))
    fw.write_voc(pictures, str(tmp_path / "voc"))
    conversion.convert(voc.read_voc(str(tmp_path / "voc" / "Annotations"), images),
                       str(tmp_path / "voc_out" / "train"))
    got, want = _records(str(tmp_path / "out" / "train")), _records(
        str(tmp_path / "voc_out" / "train"))
    assert len(got) == 3 and got == want


def test_missing_or_empty_label_file_is_an_image_without_objects(tmp_path, dataset):
    _, images, labels = dataset
    os.remove(os.path.join(labels, "img0.txt"))
    assert os.path.getsize(os.path.join(labels, "img2.txt")) == 0
    summary = _convert(tmp_path, images, labels)
    assert summary.images_written == 3 and not summary.skipped
    assert summary.images_without_objects == 2 and summary.boxes_written == 1
    written = _labels(str(tmp_path / "out" / "train"))
    assert written["img0.jpg"].tolist() == [2, 5] and written["img2.jpg"].tolist() == [2, 5]


BAD_LINES = [
    ("0 0.5 0.5 0.2", "4 values; expected 5 (class cx cy w h) or an odd number of at least 7"),
    ("0 0.5 0.5 0.2 0.2 0.9", "6 values (a trailing confidence? predictions are not labels)"),
    ("0 0.1 0.1 0.2 0.1 0.2 0.2 0.3", "8 values; expected 5"),
    ("0 0.5 abc 0.2 0.2", "'abc' is not a number"),
    ("0 0.5 nan 0.2 0.2", "'nan' is not a finite number"),
    ("0.5 0.5 0.5 0.2 0.2", "class id '0.5' is not a whole number"),
    ("2 0.5 0.5 0.2 0.2", "class id 2 outside the class names (ids 0..1)"),
    ("-1 0.5 0.5 0.2 0.2", "class id -1 outside the class names"),
    ("0 0.5 0.5 -0.2 0.2", "negative width or height (-0.2, 0.2)"),
    ("0 32 16 8 8", "box corners xmin, ymin, xmax, ymax (28, 12, 36, 20) outside [0, 1] by "
                    "more than 0.001; expected coordinates as fractions of the image size"),
    ("0 0.5 0.5 1.004 0.5", "box corners xmin, ymin, xmax, ymax (-0.002, 0.25, 1.002, 0.75)"),
    ("1 0.1 0.1 1.5 0.1 0.5 0.5", "polygon points (0.1, 0.1, 1.5, 0.1, 0.5, 0.5) outside"),
]


@pytest.mark.parametrize("line,message", BAD_LINES)
def test_bad_line_is_reported_by_file_and_line(tmp_path, dataset, line, message):
    _, images, labels = dataset
    path = os.path.join(labels, "img0.txt")
    with open(path, "a") as f:
        f.write(line + "\n")
    summary = _convert(tmp_path, images, labels)
    assert summary.images_written == 2
    (name, reason), = summary.skipped
    assert name == "img0.jpg"
    assert reason.startswith(f"unreadable annotation: {path}:3: {message}"), reason
    with pytest.raises(conversion.ConversionError, match="img0.jpg: .*img0.txt:3: "):
        _convert(tmp_path / "strict", images, labels, strict=True)
    assert not glob.glob(str(tmp_path / "strict" / "out" / "*"))


def test_only_the_first_bad_line_is_shown_with_a_count(tmp_path, dataset):
    _, images, labels = dataset
    path = os.path.join(labels, "img1.txt")
    with open(path, "a") as f:
        f.write("x\n0 1 2\n7 0.5 0.5 0.1 0.1\n")
    (item,) = [i for i in yolo.read_yolo(images, labels, num_classes=2) if i.name == "img1.jpg"]
    assert item.error == (f"{path}:2: 1 values; expected 5 (class cx cy w h) or an odd number "
                          "of at least 7 (class x1 y1 x2 y2 x3 y3 ..., a polygon) "
                          "(and 2 more bad lines)")


def test_rounding_outside_the_image_is_clipped(tmp_path):
    images, labels = _folders_with_one_image(tmp_path)
    (labels / "a.txt").write_text("1 0.5 0.5 1.0008 0.5\n0 0.5 0.5 1.0 0.0\n")
    (item,) = yolo.read_yolo(str(images), str(labels))
    assert item.error is None and item.normalized_boxes
    assert [(o.label, o.xmin, o.ymin, o.xmax, o.ymax) for o in item.objects] == [
        (1, 0.0, 0.25, 1.0, 0.75), (0, 0.0, 0.5, 1.0, 0.5)]
    summary = _convert(tmp_path, str(images), str(labels))
    # The zero-height box goes the way of every format's: dropped and counted.
    assert summary.boxes_written == 1 and summary.boxes_clipped == 0
    assert summary.boxes_dropped == {"zero-area or inverted": 1}


def test_parse_line_accepts_whole_float_class_ids_and_any_id_without_names():
    obj = yolo.parse_line("3.0 0.5 0.5 0.5 0.5\r\n")
    assert (obj.label, obj.xmin, obj.ymin, obj.xmax, obj.ymax) == (3, 0.25, 0.25, 0.75, 0.75)
    with pytest.raises(ValueError, match="class id 3 outside the class names"):
        yolo.parse_line("3 0.5 0.5 0.5 0.5", num_classes=3)


def test_label_file_without_image_is_reported(tmp_path, dataset):
    _, images, labels = dataset
    os.remove(os.path.join(images, "img1.jpg"))
    with open(os.path.join(labels, "classes.txt"), "w") as f:  # labelImg writes one
        f.write("cat\ndog\n")
    items = yolo.read_yolo(images, labels, num_classes=2)
    assert [i.name for i in items] == ["img0.jpg", "img1.txt", "img2.jpg"]
    summary = _convert(tmp_path, images, labels)
    assert summary.images_written == 2
    assert summary.skipped == [("img1.txt", f"unreadable annotation: label file "
                                            f"{os.path.join(labels, 'img1.txt')} has no image "
                                            f"in {images}")]
    with pytest.raises(conversion.ConversionError, match="img1.txt: .*has no image"):
        _convert(tmp_path / "strict", images, labels, strict=True)


def test_image_extensions_any_case_and_other_files_ignored(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    _image(images / "B.PNG", fmt="PNG")
    _image(images / "c.bmp", fmt="BMP")
    _image(images / "a.JpEg")
    (images / "notes.json").write_text("{}")
    (images / "sub.jpg").mkdir()
    for stem in ("a", "B", "c"):
        (labels / f"{stem}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    items = yolo.read_yolo(str(images), str(labels))
    assert [i.name for i in items] == ["B.PNG", "a.JpEg", "c.bmp"]
    assert all(len(i.objects) == 1 and i.error is None for i in items)
    summary = _convert(tmp_path, str(images), str(labels))
    assert summary.images_written == 3 and summary.images_reencoded == {
        "RGB BMP to RGB JPEG": 1}


def test_default_labels_dir():
    join = os.path.join
    assert yolo.default_labels_dir(join("data", "images", "train2017")) == join(
        "data", "labels", "train2017")
    assert yolo.default_labels_dir(join("images", "x", "images", "val")) == join(
        "images", "x", "labels", "val")
    assert yolo.default_labels_dir(join("/d", "images") + os.sep) == join("/d", "labels")
    assert yolo.default_labels_dir(join("data", "my_images")) is None


def test_labels_dir_derived_or_refused(tmp_path, dataset):
    _, images, _ = dataset
    items = yolo.read_yolo(images)
    assert sum(len(i.objects) for i in items) == 3
    with pytest.raises(yolo.YOLOFormatError, match="no 'images' path component"):
        yolo.read_yolo(str(tmp_path / "pictures"))
    with pytest.raises(yolo.YOLOFormatError, match="labels folder .*nowhere does not exist"):
        yolo.read_yolo(images, str(tmp_path / "nowhere"))


@pytest.mark.parametrize("text", [
    "names: [person, bicycle, car]\n",
    "path: ../datasets/coco128\nnames:\n  0: person\n  1: bicycle\n  2: car\n",
    "nc: 3\nnames:\n  2: car\n  0: person\n  1: bicycle\n",
    "names: {'0': person, '1': bicycle, '2': car}\n",
])
def test_read_data_yaml_names_as_list_or_mapping(tmp_path, text):
    path = tmp_path / "data.yaml"
    path.write_text(text)
    assert yolo.read_data_yaml(str(path)) == ["person", "bicycle", "car"]


@pytest.mark.parametrize("text,message", [
    ("names:\n  0: person\n  2: car\n",
     r"'names:' class ids must run 0..1 without gaps, got \[0, 2\]"),
    ("names:\n  1: person\n  2: car\n",
     r"'names:' class ids must run 0..1 without gaps, got \[1, 2\]"),
    ("names: {a: person}\n", "'names:' keys must be class ids"),
    ("nc: 4\nnames: [a, b]\n", "nc: 4 but 'names:' lists 2 classes"),
    ("train: images\n", "expected a mapping with 'names:'"),
    ("names: []\n", "'names:' must be a non-empty list"),
    ("names:\n  0: person\n  1:\n", r"class ids \[1\] have no name"),
    ("names: [a]\nkpt_shape: [17, 3]\n", "a pose dataset"),
    ("names: [a\n", "not YAML"),
])
def test_read_data_yaml_refuses_unusable_names(tmp_path, text, message):
    path = tmp_path / "data.yaml"
    path.write_text(text)
    with pytest.raises(yolo.YOLOFormatError, match=f"{path}: {message}"):
        yolo.read_data_yaml(str(path))


def test_data_yaml_written_by_the_writer(dataset):
    root, _, _ = dataset
    assert yolo.read_data_yaml(str(root / "data.yaml")) == fw.CLASS_NAMES


def test_unreadable_label_file_is_reported(tmp_path, dataset):
    _, images, labels = dataset
    with open(os.path.join(labels, "img1.txt"), "wb") as f:
        f.write(b"\xff\xfe0 0.5 0.5 0.1 0.1\n")
    (item,) = [i for i in yolo.read_yolo(images, labels) if i.name == "img1.jpg"]
    assert item.error.startswith(f"{os.path.join(labels, 'img1.txt')}: not UTF-8 text")


def _run(*argv):
    return subprocess.run([sys.executable, "-m", "tfssd.cli.convert", *argv], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


@pytest.mark.slow
def test_cli_converts_yolo(tmp_path, dataset):
    root, images, labels = dataset
    result = _run("--format=yolo", f"--images_dir={images}", f"--data_yaml={root}/data.yaml",
                  f"--output={tmp_path}/data/train")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "images: 3 read, 3 written, 0 skipped" in result.stdout
    assert "boxes written: 3 (0 marked difficult)" in result.stdout
    assert "    0 cat: 1\n    1 dog: 2\n" in result.stdout
    assert os.path.isfile(tmp_path / "data" / "train-00000-of-00001.tfrecord")
    class_map = json.loads((tmp_path / "data" / "class_map.json").read_text())
    assert class_map == {"0": "cat", "1": "dog"}
    # --class_names instead of data.yaml, with the labels folder given and one label bad.
    with open(os.path.join(labels, "img1.txt"), "a") as f:
        f.write("1 0.5 0.5 0.2\n")
    result = _run("--format=yolo", f"--images_dir={images}", f"--labels_dir={labels}",
                  "--class_names=cat,dog", f"--output={tmp_path}/other/train")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "images: 3 read, 2 written, 1 skipped" in result.stdout
    assert f"  img1.jpg: unreadable annotation: {labels}/img1.txt:2: 4 values" in result.stdout
    result = _run("--format=yolo", f"--images_dir={images}", f"--labels_dir={labels}",
                  "--class_names=cat,dog", f"--output={tmp_path}/strict/train", "--strict")
    assert result.returncode == 1
    assert f"error: img1.jpg: unreadable annotation: {labels}/img1.txt:2: " in result.stderr
    assert not os.path.exists(tmp_path / "strict")  # nothing left behind


@pytest.mark.slow
def test_cli_yolo_usage_errors(tmp_path, dataset):
    root, images, _ = dataset
    (root / "bad.yaml").write_text("names:\n  0: cat\n  2: dog\n")
    convert = ["-m", "tfssd.cli.convert", "--format=yolo"]
    no_names, no_labels, result = run_python_concurrently(
        [*convert, f"--images_dir={images}", f"--output={tmp_path}/x"],
        [*convert, f"--images_dir={tmp_path}/pictures", f"--data_yaml={root}/data.yaml",
         f"--output={tmp_path}/x"],
        [*convert, f"--images_dir={images}", f"--data_yaml={root}/bad.yaml",
         f"--output={tmp_path}/x"], cwd=ROOT)
    assert no_names.returncode != 0
    assert "--format=yolo needs --data_yaml or --class_names" in no_names.stderr
    assert no_labels.returncode != 0 and "--format=yolo needs --labels_dir" in no_labels.stderr
    assert result.returncode == 1
    assert f"error: {root}/bad.yaml: 'names:' class ids must run 0..1" in result.stderr
