"""A corpus of bad inputs, made here, run through convert, train, evaluate and predict.

Each case asserts the one clear message it gives (naming the file, record, line or flag) and
that nothing else was lost: the other images of a batch are still converted or predicted.
"""

import dataclasses
import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.processes import run_python_concurrently
from tests.training.test_training import tiny_config
from tfssd import training
from tfssd.data import conversion, schema
from tfssd.deploy import saved_model as export
from tfssd.model.ssd import ssd_network
from tfssd.ops.image_check import SERVED_FORMATS, ImageError, inspect_image
from tfssd.ops.image_ops import declared_pixels, decode_image_within
from tfssd.training import state
from tfssd.training.distribution import Cluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*argv, timeout=300):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _png_declaring(width, height):
    """A valid PNG header declaring ``width`` x ``height`` pixels, with almost no data."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 25)) + chunk(b"IEND", b""))


def _encoded(mode="RGB", fmt="JPEG", size=(64, 32), exif_orientation=None):
    colour = {"RGB": (200, 10, 10), "RGBA": (1, 2, 3, 128), "CMYK": (0, 255, 255, 0),
              "I;16": 40000, "L": 128}[mode]
    image = Image.new(mode, size, colour)
    buffer = io.BytesIO()
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(buffer, format=fmt, exif=exif)
    else:
        image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """name -> path of each bad (and one good) image file."""
    root = tmp_path_factory.mktemp("corpus")
    good = _encoded()
    files = {
        "good.jpg": good,
        "truncated.jpg": good[:len(good) // 2],
        "cut_header.jpg": good[:40],
        "empty.jpg": b"",
        "text.jpg": b"hello, this is text\n",
        "alpha.png": _encoded("RGBA", "PNG"),
        "cmyk.jpg": _encoded("CMYK", "JPEG"),
        "sixteen_bit.png": _encoded("I;16", "PNG"),
        "huge.png": _png_declaring(40000, 40000),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return {name: str(root / name) for name in files}


# -- image checks (the converter, predict and the server share them) --------------------------

@pytest.mark.parametrize("name,message", [
    ("empty.jpg", "empty.jpg: empty file; expected JPEG or PNG"),
    ("text.jpg", "text.jpg: not an image (text data starting b'hello, this is t')"),
    ("truncated.jpg", "truncated.jpg: truncated or corrupt JPEG image"),
    ("cut_header.jpg", "cut_header.jpg: truncated or corrupt JPEG image (its header"),
    ("huge.png", "huge.png: declares 40000 x 40000 pixels (1600 megapixels), more than the "
                 "limit of 100 megapixels"),
])
def test_bad_image_files_are_named(corpus, name, message):
    with pytest.raises(ImageError) as raised:
        inspect_image(open(corpus[name], "rb").read(), name)
    assert str(raised.value).startswith(message), str(raised.value)


@pytest.mark.parametrize("name", ["good.jpg", "alpha.png", "cmyk.jpg", "sixteen_bit.png"])
def test_unusual_but_valid_images_pass(corpus, name):
    info = inspect_image(open(corpus[name], "rb").read(), name)
    assert (info.width, info.height) == (64, 32)


def test_declared_size_is_read_from_the_header_before_decoding(corpus):
    assert int(declared_pixels(tf.constant(open(corpus["huge.png"], "rb").read()))) == 40000 ** 2
    for name in ("good.jpg", "alpha.png"):
        assert int(declared_pixels(tf.constant(open(corpus[name], "rb").read()))) == 64 * 32
    with pytest.raises(tf.errors.InvalidArgumentError, match="declares more than 1000000"):
        decode_image_within(tf.constant(open(corpus["huge.png"], "rb").read()), 1_000_000)
    image = decode_image_within(tf.constant(open(corpus["good.jpg"], "rb").read()), 1_000_000)
    assert image.shape == (32, 64, 3)


def _every_decodable_format() -> dict[str, bytes]:
    """One 64 x 32 image in each format TensorFlow decodes, as PIL writes it."""
    image = Image.new("RGB", (64, 32), (200, 10, 10))
    out = {}
    for name, fmt, options in [("jpeg", "JPEG", {}), ("png", "PNG", {}), ("bmp", "BMP", {}),
                               ("gif", "GIF", {}), ("webp_lossy", "WEBP", {}),
                               ("webp_lossless", "WEBP", {"lossless": True}),
                               ("webp_extended", "WEBP", {"exif": Image.Exif().tobytes()}),
                               ("mpo", "MPO", {"save_all": True, "append_images": [image]}),
                               ("gif_frames", "GIF", {"save_all": True, "append_images": [
                                   Image.new("RGB", (64, 32), (0, 0, c)) for c in range(9)]})]:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        out[name] = buffer.getvalue()
    return out


def test_every_format_tensorflow_decodes_is_under_the_pixel_limit():
    """The serving graph's limit covers every format decode_image reads (WebP and MPO too);
    the host's check accepts the same ones."""
    formats = _every_decodable_format()
    assert formats["webp_extended"][12:16] == b"VP8X" and formats["mpo"][:3] == b"\xff\xd8\xff"
    for name, data in formats.items():
        assert int(declared_pixels(tf.constant(data))) == 64 * 32, name
        assert decode_image_within(tf.constant(data), 64 * 32).shape == (32, 64, 3), name
        with pytest.raises(tf.errors.InvalidArgumentError, match="declares more than"):
            decode_image_within(tf.constant(data), 64 * 32 - 1)
        info = inspect_image(data, name, max_pixels=64 * 32, formats=SERVED_FORMATS)
        assert (info.width, info.height) == (64, 32), name
    with pytest.raises(tf.errors.InvalidArgumentError, match="header gives its size"):
        decode_image_within(tf.constant(b"II*\x00" + b"\x00" * 60), 64 * 32)  # a TIFF


# -- the converter ---------------------------------------------------------------------------

def _item(path, *boxes, size=None, name=None):
    return conversion.SourceImage(name=name or os.path.basename(path), path=path,
                                  objects=[conversion.SourceObject(*b) for b in boxes],
                                  annotated_size=size)


def test_converter_names_every_bad_file_and_keeps_the_good_ones(corpus, tmp_path):
    items = [_item(corpus[n], ("cat", 1, 1, 30, 20)) for n in sorted(corpus)]
    summary = conversion.convert(items, str(tmp_path / "t"), class_names=["cat"],
                                 max_pixels=10_000_000)
    reasons = dict(summary.skipped)
    assert set(reasons) == {"truncated.jpg", "cut_header.jpg", "empty.jpg", "text.jpg",
                            "huge.png"}
    assert reasons["huge.png"].startswith("too large: declares 40000 x 40000 pixels")
    assert reasons["empty.jpg"] == ("corrupt or truncated image: empty file; expected JPEG or "
                                    "PNG image bytes")
    assert summary.images_written == 4  # good, alpha, CMYK and 16-bit, as RGB
    assert dict(summary.images_reencoded) == {"RGBA PNG to RGB JPEG": 1,
                                              "CMYK JPEG to RGB JPEG": 1,
                                              "I;16 PNG to RGB JPEG": 1}
    records = list(tf.data.TFRecordDataset(summary.files[0]))
    sixteen = next(schema.parse_example(r) for r in records
                   if schema.parse_example(r)["filename"].numpy() == b"sixteen_bit.png")
    pixels = tf.io.decode_image(sixteen["image_bytes"]).numpy()
    assert abs(int(pixels.mean()) - 40000 // 257) <= 2  # scaled from 16 bits, not clipped


def test_degenerate_nan_and_negative_boxes(corpus, tmp_path):
    good = corpus["good.jpg"]
    summary = conversion.convert(
        [_item(good, ("cat", 10, 10, 10, 10),  # a point box (VOC xmin == xmax, ymin == ymax)
               ("cat", 9, 9, 10, 10),  # one pixel
               ("cat", float("nan"), 1, 5, 5),
               ("cat", -5, -5, 20, 20),  # negative corner: clipped
               ("cat", 2, 2, 3, 12)),  # 1 px wide: tiny, kept
         _item(good, ("cat", 1, 1, 30, 20), name="clean.jpg")],
        str(tmp_path / "t"), class_names=["cat"])
    assert summary.boxes_dropped == {"zero-area or inverted": 1, "non-finite coordinates": 1,
                                     "degenerate (a point or a single pixel)": 1}
    assert summary.boxes_written == 3 and summary.boxes_clipped == 1 and summary.tiny_boxes == 1
    text = summary.format()
    assert "boxes dropped, degenerate (a point or a single pixel): 1 (good.jpg)" in text
    assert "  clipped: good.jpg" in text and "  tiny: good.jpg" in text
    with pytest.raises(conversion.ConversionError,
                       match=r"good.jpg: box dropped, zero-area or inverted \(1\)"):
        conversion.convert([_item(good, ("cat", 10, 10, 10, 10))], str(tmp_path / "s" / "t"),
                           class_names=["cat"], strict=True)
    with pytest.raises(conversion.ConversionError, match=r"good.jpg: 1 box\(es\) clipped"):
        conversion.convert([_item(good, ("cat", -5, 1, 10, 10))], str(tmp_path / "s" / "t"),
                           class_names=["cat"], strict=True)
    assert not os.path.exists(tmp_path / "s")  # nothing left behind, not even the folder


@pytest.mark.parametrize("orientation,size,expected_shape,decision", [
    (6, (32, 64), (64, 32, 3), "EXIF orientation 6 applied"),  # the annotation is rotated
    (6, (64, 32), (32, 64, 3), "EXIF orientation 6 not applied"),  # stored view annotated
    (6, None, (64, 32, 3), "EXIF orientation 6 applied"),  # no size: as viewers show it
    (3, None, (32, 64, 3), "EXIF orientation 3 applied"),
    (9, None, (32, 64, 3), "invalid EXIF orientation 9 ignored"),
])
def test_exif_orientation_decided_by_the_annotated_size(tmp_path, orientation, size,
                                                        expected_shape, decision):
    path = tmp_path / "oriented.jpg"
    path.write_bytes(_encoded(exif_orientation=orientation))
    summary = conversion.convert([_item(str(path), ("cat", 1, 1, 20, 20), size=size)],
                                 str(tmp_path / "t"), class_names=["cat"])
    assert summary.images_written == 1
    assert f"{decision}: 1 (oriented.jpg)" in summary.format()
    record = schema.parse_example(next(iter(tf.data.TFRecordDataset(summary.files[0]))))
    assert tf.io.decode_image(record["image_bytes"]).shape == expected_shape
    with pytest.raises(conversion.ConversionError, match=f"oriented.jpg: .*{decision}"):
        conversion.convert([_item(str(path), ("cat", 1, 1, 20, 20), size=size)],
                           str(tmp_path / "s" / "t"), class_names=["cat"], strict=True)


def test_largest_label_width_counts_the_images_skipped_for_it(corpus, tmp_path):
    crowd = _item(corpus["good.jpg"], *[("cat", i, 1, i + 3, 9) for i in range(20)])
    summary = conversion.convert([crowd], str(tmp_path / "t"), class_names=["cat"],
                                 label_width=52)
    assert summary.images_written == 0 and summary.max_label_width == 102


# -- training ---------------------------------------------------------------------------------

def _records(path, labels):
    """TFRecords of the good shapes image with the given raw labels."""
    data = _encoded()
    with tf.io.TFRecordWriter(path) as writer:
        for i, label in enumerate(labels):
            writer.write(schema.serialize_example(data, "jpeg", f"img{i}.jpg", 32, 64,
                                                  np.asarray(label, np.float32)))
    return path


@pytest.mark.slow
def test_label_beyond_label_width_stops_with_the_width_to_use(tmp_path, shapes_tfrecords):
    crowd = [2, 5] + [0, 0.1, 0.1, 0.2, 0.2] * 80  # 402 floats
    path = _records(str(tmp_path / "crowd-00000-of-00001.tfrecord"), [crowd] * 4)
    train = os.path.join(shapes_tfrecords["dir"], "train-*")
    result = _run("-m", "tfssd.cli.train", "--num_classes=3", "--num_training_samples=8",
                  "--mini_batch_size=4", "--epochs=1", "--use_pretrained_model=0",
                  "--width_multiplier=0.0625", f"--train={train},{path}",
                  f"--model_dir={tmp_path}/run", "--seed=0", "--image_shape=300")
    assert result.returncode == 1
    assert "has a label of 402 floats, longer than label_width=350" in result.stderr
    assert "Pass --label_width=402 or more" in result.stderr
    assert "Traceback" not in result.stderr and "cuInit" not in result.stderr


@pytest.mark.slow
def test_class_id_beyond_num_classes_is_named(tmp_path):
    path = _records(str(tmp_path / "c-00000-of-00001.tfrecord"),
                    [[2, 5, 7, 0.1, 0.1, 0.5, 0.5]] * 4)
    config = tiny_config({"train": (path,), "validation": (), "dir": str(tmp_path)},
                         tmp_path / "run", num_training_samples=4)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                  class_map_file=None))
    with pytest.raises(training.TrainingError, match=r"class id outside 0..2.*img\d.jpg"):
        training.train(config, tf.distribute.get_strategy(), Cluster())


@pytest.mark.slow
def test_validation_without_ground_truth_is_not_measured(tmp_path, shapes_tfrecords):
    empty = _records(str(tmp_path / "v-00000-of-00001.tfrecord"), [[2, 5]] * 4)
    config = tiny_config(shapes_tfrecords, tmp_path / "run", epochs=1)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                  validation_files=(empty,)))
    result = training.train(config, tf.distribute.get_strategy(), Cluster())
    assert result.best_map is None and result.export_path  # the final weights, no NaN "best"
    stopping = dataclasses.replace(config, early_stopping=dataclasses.replace(
        config.early_stopping, enabled=True), train=dataclasses.replace(
        config.train, model_dir=str(tmp_path / "other")))
    with pytest.raises(training.TrainingError, match="holds no ground-truth objects"):
        training.train(stopping, tf.distribute.get_strategy(), Cluster())


def test_classes_without_ground_truth_are_counted(tmp_path):
    path = _records(str(tmp_path / "v-00000-of-00001.tfrecord"),
                    [[2, 5, 0, 0.1, 0.1, 0.5, 0.5], [2, 6, 2, 0.1, 0.1, 0.5, 0.5, 1]])
    from tfssd.evaluation.validation import ground_truth_per_class
    assert ground_truth_per_class((path,), "tfssd", 3).tolist() == [1, 0, 0]  # difficult: 0


@pytest.mark.slow
def test_flags_and_class_map_errors_are_one_line(tmp_path, shapes_tfrecords):
    train = os.path.join(shapes_tfrecords["dir"], "train-*")
    common = ["-m", "tfssd.cli.train", "--num_classes=3", "--num_training_samples=8",
              "--use_pretrained_model=0", "--width_multiplier=0.0625", f"--train={train}",
              f"--model_dir={tmp_path}/run"]
    bad_map = tmp_path / "class_map.json"
    bad_map.write_text("{'0': 'cat'")
    pattern, result = run_python_concurrently(
        [*common, "--freeze_layer_pattern=^nothing_like_this"],
        [*common[:-1], f"--model_dir={tmp_path}/run2", f"--class_map={bad_map}"], cwd=ROOT)
    assert pattern.returncode == 1 and "Traceback" not in pattern.stderr
    assert "--freeze_layer_pattern '^nothing_like_this' matches no layer" in pattern.stderr
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"--class_map: {bad_map}: not valid JSON" in result.stderr


@pytest.mark.slow
def test_a_finished_run_is_not_exported_again(tmp_path, shapes_tfrecords):
    config = tiny_config(shapes_tfrecords, tmp_path / "run", epochs=1)
    first = training.train(config, tf.distribute.get_strategy(), Cluster())
    again = training.train(config, tf.distribute.get_strategy(), Cluster())
    assert again.export_path == first.export_path
    assert sorted(os.listdir(tmp_path / "run" / "export")) == ["1"]


def test_weights_of_another_network_are_refused(tmp_path):
    other = ssd_network("vgg-16", 3, 128, width_multiplier=0.125).model
    path = tf.train.Checkpoint(model=other).save(str(tmp_path / "other" / "ckpt"))
    model = ssd_network("resnet-50", 3, 128, width_multiplier=0.0625).model
    optimizer = tf.keras.optimizers.SGD()
    run_state = state.RunState(tf.distribute.get_strategy())
    checkpoints = state.Checkpoints(model, optimizer, run_state, str(tmp_path / "run"), 1)
    with pytest.raises(training.TrainingError, match="does not hold this network's weights"):
        checkpoints.load_weights(path)


# -- predict and the serving graph ------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    ssd = ssd_network("vgg-16", 3, 128, width_multiplier=0.0625)
    return export.export_saved_model(ssd.model, ssd.anchors, str(tmp_path_factory.mktemp("e")),
                                     image_size=128, class_names=["a", "b", "c"],
                                     nms_threshold=0.45, max_pixels=1_000_000)


@pytest.mark.slow
def test_predict_names_bad_files_and_predicts_the_others(corpus, exported, tmp_path):
    names = ["good.jpg", "empty.jpg", "text.jpg", "truncated.jpg", "huge.png", "alpha.png"]
    result = _run("-m", "tfssd.cli.predict", f"--saved_model={exported}", "--draw_threshold=1.0",
                  "--json", f"--output_dir={tmp_path}", *[corpus[n] for n in names])
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2 and all("prediction" in line for line in lines)  # good, alpha
    for name, message in [("empty.jpg", "empty file"), ("text.jpg", "not an image"),
                          ("truncated.jpg", "truncated or corrupt JPEG"),
                          ("huge.png", "declares 40000 x 40000 pixels")]:
        assert f"{corpus[name]}: {message}" in result.stderr, result.stderr
    assert ("2 of 2 images had no detections at or above --draw_threshold=1 (drawn without "
            "boxes)") in result.stderr
    assert "4 of 6 images could not be predicted" in result.stderr
    assert os.path.isfile(tmp_path / "alpha.png") and os.path.isfile(tmp_path / "good.png")
    assert "Traceback" not in result.stderr and "cuInit" not in result.stderr
    assert "oneDNN" not in result.stderr


def test_serving_graph_refuses_images_over_its_pixel_limit(corpus, exported):
    serve = tf.saved_model.load(exported).signatures["serving_default"]
    good = open(corpus["good.jpg"], "rb").read()
    assert serve(images=tf.constant([good]))["detection_boxes"].shape == (1, 200, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="declares more than 1000000"):
        serve(images=tf.constant([open(corpus["huge.png"], "rb").read()]))


@pytest.mark.slow
def test_unexpected_errors_are_one_line_with_the_traceback_kept(tmp_path):
    bogus = tmp_path / "not_a_model"
    (bogus / "1").mkdir(parents=True)
    (bogus / "1" / "saved_model.pb").write_bytes(b"garbage")
    (tmp_path / "x.jpg").write_bytes(_encoded())
    result = _run("-m", "tfssd.cli.predict", f"--saved_model={bogus}", str(tmp_path / "x.jpg"))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tfssd-predict: unexpected error: ") and "full traceback in" in last
    log = last.split("full traceback in ")[1].split(",")[0]
    assert "Traceback" in open(log).read() and "Traceback" not in result.stderr


@pytest.mark.slow
def test_evaluate_names_a_bad_record(exported, tmp_path):
    good = [2, 5, 0, 0.1, 0.1, 0.5, 0.5]
    path = _records(str(tmp_path / "long-00000-of-00001.tfrecord"),
                    [good, [2, 5] + [0, 0.1, 0.1, 0.5, 0.5] * 80, good])
    result = _run("-m", "tfssd.cli.evaluate", f"--model={exported}", f"--validation={path}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "(image img1.jpg) has a label of 402 floats, longer than label_width=350" in (
        result.stderr)
    broken = str(tmp_path / "broken-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(broken) as writer:
        writer.write(schema.serialize_example(b"\xff\xd8\xff garbage", "jpeg", "bad.jpg", 32, 64,
                                              np.asarray(good, np.float32)))
    result = _run("-m", "tfssd.cli.evaluate", f"--model={exported}", f"--validation={broken}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{broken} record 0 (image bad.jpg)" in result.stderr
