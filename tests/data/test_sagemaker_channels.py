"""SageMaker channels: which format inputdataconfig.json describes (or the data shows, without a
ContentType), an augmented manifest's records grouped into images, im2rec's side files, and a
Pipe-mode channel streamed pass after pass through real FIFOs (the job tests,
tests/training/test_sagemaker_job.py and test_sagemaker_pipe.py, train through them)."""

import io
import json
import os
import struct

import pytest

from tests import sagemaker_fixtures as sm
from tests.data import format_writers
from tfssd.config.sagemaker_container import Channel, ContainerPaths
from tfssd.data import mxnet_formats, sagemaker_channels, sagemaker_pipes, sagemaker_stream
from tfssd.data.sagemaker_pipes import ChannelError

JPEG = format_writers._jpeg(16, 8, 0)


def _channels(**specs):
    return {name: Channel(name, *spec) for name, spec in specs.items()}


@pytest.mark.parametrize("specs, expected", [
    ({"train": ("application/x-recordio", "File", "None")}, "recordio"),
    ({"train": ("application/x-recordio", "Pipe", "None")}, "recordio"),
    ({"train": ("application/x-recordio", "Pipe", "RecordIO")}, "augmented_manifest"),
    ({"train": ("image/png", "File", "None"),
      "train_annotation": ("application/json", "File", "None")}, "image_json"),
    ({"train": ("", "File", "None")}, "detect"),
    ({"train": ("application/x-tfrecord", "Pipe", "None")}, "tfrecord"),
])
def test_the_format_comes_from_content_type_and_wrapper(specs, expected):
    channels = _channels(**specs)
    assert sagemaker_channels.channel_format(channels["train"], channels) == expected


@pytest.mark.parametrize("specs, message", [
    ({"train": ("application/x-recordio", "File", "RecordIO")}, "needs TrainingInputMode Pipe"),
    ({"train": ("image/jpeg", "File", "None")}, "needs the channel 'train_annotation'"),
    ({"train": ("image/jpeg", "Pipe", "None"),
      "train_annotation": ("application/json", "Pipe", "None")}, "read in File mode"),
    ({"train": ("text/csv", "File", "None")}, "ContentType 'text/csv'; expected"),
])
def test_a_description_tfssd_cannot_use_is_refused_naming_the_channel(specs, message):
    channels = _channels(**specs)
    with pytest.raises(ChannelError, match=message):
        sagemaker_channels.channel_format(channels["train"], channels)


def _label(*boxes):
    return json.dumps({"image_size": [{"width": 16, "height": 8, "depth": 3}],
                       "annotations": [{"class_id": c, "left": x, "top": 1, "width": 4,
                                        "height": 2} for c, x in boxes]}).encode()


def test_manifest_records_group_into_images_with_their_labels_and_class_names():
    metadata = json.dumps({"class-map": {"0": "cat", "1": "dog"}}).encode()
    records = [JPEG, _label((1, 2)), metadata, JPEG, _label(), JPEG, metadata]
    items, names = sagemaker_channels.manifest_records(records, "train")
    assert names == ["cat", "dog"]
    assert [len(i.objects) for i in items[:2]] == [1, 0] and items[0].data == JPEG
    o = items[0].objects[0]
    assert (o.label, o.xmin, o.ymin, o.xmax, o.ymax) == (1, 2.0, 1.0, 6.0, 3.0)
    assert items[0].annotated_size == (16, 8)
    assert "no label record with 'annotations'" in items[2].error  # metadata alone: skipped


def test_manifest_records_in_the_wrong_order_or_format_are_refused():
    with pytest.raises(ChannelError, match="list the image attribute .source-ref. first"):
        sagemaker_channels.manifest_records([_label(), JPEG], "train")
    label = format_writers.pack_image_record([2, 5, 0, 0.1, 0.1, 0.5, 0.5], 0, JPEG)
    with pytest.raises(ChannelError, match="leave RecordWrapperType None"):
        sagemaker_channels.manifest_records([label], "train")


def test_a_record_holding_the_magic_is_written_in_parts_and_read_back_whole():
    aligned = JPEG + b"\0" * (-len(JPEG) % 4)
    data = aligned + b"\x0a\x23\xd7\xce" + b"tail"  # the magic, 4-aligned: split in 2 parts
    out = io.BytesIO()
    format_writers.write_record(out, data)
    written = out.getvalue()
    # By hand: part 1 (flag 1) is the aligned JPEG, the magic is dropped, part 2 (flag 3) "tail".
    assert len(written) == 8 + len(aligned) + 8 + 4
    assert struct.unpack_from("<II", written) == (0xCED7230A, 1 << 29 | len(aligned))
    assert struct.unpack_from("<II", written, 8 + len(aligned)) == (0xCED7230A, 3 << 29 | 4)
    assert written[-4:] == b"tail"
    out.seek(0)
    assert list(mxnet_formats.read_record_stream(out, "x")) == [data]


def _record(data):
    out = io.BytesIO()
    format_writers.write_record(out, data)
    return out.getvalue()


def _im2rec(count, bad=()):
    """``count`` im2rec records (image id = index), one box each; ids in ``bad`` hold a JPEG
    cut short, which the bad-data policy skips."""
    out = io.BytesIO()
    for i in range(count):
        image = JPEG[:40] if i in bad else JPEG
        format_writers.write_record(out, format_writers.pack_image_record(
            [2, 5, i % 2, 0.1, 0.2, 0.6, 0.7], i, image))
    return out.getvalue()


def _tfrecord_bytes(records):
    import tensorflow as tf

    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"tfssd-test-{os.getpid()}.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    with open(path, "rb") as f:
        data = f.read()
    os.remove(path)
    return data


def _job(tmp_path, specs, files=None):
    """A container's data folder: ``files`` {relative path: bytes}; returns (paths, channels)."""
    paths = ContainerPaths(str(tmp_path))
    for relative, data in (files or {}).items():
        path = os.path.join(paths.data_dir, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return paths, _channels(**specs)


@pytest.mark.parametrize("files, annotations, expected", [
    ({"train/part-0.rec": _im2rec(2), "train/part-0.idx": b"0\t0\n",
      "train/part-0.lst": b"0\t2\t5\t0\t0.1\t0.1\t0.5\t0.5\ta.jpg\n"}, False, "recordio"),
    ({"train/a.jpg": JPEG}, True, "image_json"),
])
def test_a_channel_without_content_type_is_read_by_its_data(files, annotations, expected,
                                                            tmp_path):
    specs = {"train": ("", "File", "None")}
    if annotations:
        specs["train_annotation"] = ("", "File", "None")
    paths, channels = _job(tmp_path, specs, files)
    fmt, _ = sagemaker_channels.detect_format(paths, channels["train"], channels)
    assert fmt == expected


def test_a_tfrecord_channel_without_content_type_is_used_as_it_is(tmp_path):
    data = _tfrecord_bytes([b"one", b"two"])
    paths, channels = _job(tmp_path, {"train": ("", "File", "None")},
                           {"train/train-00000.tfrecord": data})
    read = sagemaker_channels.read_channel(paths, channels["train"], channels, str(tmp_path))
    assert read.format == "tfrecord" and "TFRecord framing" in read.detected
    assert read.tfrecord_files == (os.path.join(paths.data_dir, "train", "train-00000.tfrecord"),)
    assert list(sagemaker_pipes.read_tfrecord_stream(io.BytesIO(data), "x")) == [b"one", b"two"]


@pytest.mark.parametrize("files, message", [
    ({"train/a.csv": b"file,label\na.jpg,0\n"}, "starts with bytes 66 69 6c 65"),
    ({"train/a.json": b'{"source-ref": "s3://b/a.jpg"}\n'}, "holds JSON text"),
    ({"train/a.jpg": JPEG}, "JPEG image, which needs the channel 'train_annotation'"),
    ({"train/part-0.rec": _record(JPEG) + _record(b'{"annotations": []}')},
     "an augmented manifest's records (a bare image first), which SageMaker streams in Pipe"),
    ({"train/part-0.idx": b"0\t0\n"}, "only im2rec's side files"),
])
def test_data_that_is_no_format_tfssd_reads_is_refused_naming_the_channel(files, message,
                                                                          tmp_path):
    paths, channels = _job(tmp_path, {"train": ("", "File", "None")}, files)
    with pytest.raises(ChannelError, match="channel 'train'") as raised:
        sagemaker_channels.read_channel(paths, channels["train"], channels, str(tmp_path))
    assert message in str(raised.value)
    if "none of the formats" in str(raised.value):
        assert "application/x-recordio" in str(raised.value)  # the content types it reads


def test_im2rec_side_files_beside_the_rec_are_skipped(tmp_path):
    paths, channels = _job(tmp_path, {"train": ("application/x-recordio", "File", "None")}, {
        "train/part-0.rec": _im2rec(3), "train/part-0.idx": b"0\t0\n1\t40\n",
        "train/sub/part-0.lst": b"0\t2\t5\t0\t0.1\t0.1\t0.5\t0.5\ta.jpg\n"})
    read = sagemaker_channels.read_channel(paths, channels["train"], channels, str(tmp_path))
    assert [i.name for i in read.items] == ["train#0", "train#1", "train#2"]
    assert not any(i.error for i in read.items)
    assert sorted(os.path.basename(f) for f in read.skipped_files) == ["part-0.idx",
                                                                      "part-0.lst"]


def test_a_pipe_without_content_type_is_detected_and_read_whole(tmp_path):
    """detect_format reads the first bytes of train_0; the reader after it still gets them."""
    paths, channels = _job(tmp_path, {"train": ("", "Pipe", "None")})
    os.makedirs(paths.data_dir)
    writer = sm.PipeWriter(paths.pipe("train"), _im2rec(4), timeout=60)
    read = sagemaker_channels.read_channel(paths, channels["train"], channels, str(tmp_path))
    writer.join(timeout=10)
    assert read.format == "recordio" and [i.name for i in read.items] == [
        f"train#{i}" for i in range(4)]


def test_a_piped_channel_streams_pass_after_pass_under_the_bad_data_policy(tmp_path,
                                                                          monkeypatch):
    import tensorflow as tf

    monkeypatch.setattr(sagemaker_stream.PipeStream, "CHUNK", 2)
    prefix = str(tmp_path / "train")
    data = _im2rec(5, bad={2})
    writers = [sm.PipeWriter(f"{prefix}_{k}", data, timeout=60) for k in range(3)]
    stream = sagemaker_stream.PipeStream("train", sagemaker_channels.RECORDIO, prefix,
                                         ("a", "b"), 350, epochs=2, num_training_samples=4)
    reports = []
    try:
        # A resumed job: 1 image of pass 0 passed over, then 6 examples wanted.
        examples = list(stream.examples(skip=1, limit=6, report=reports.append, workers=2))
    finally:
        os.remove(f"{prefix}_2")
    for writer in writers:
        writer.join(timeout=10)
    names = [tf.train.Example.FromString(e).features.feature["image/filename"].bytes_list
             .value[0].decode() for e in examples]
    assert names == ["train_0#1", "train_0#3", "train_0#4", "train_1#0", "train_1#1",
                     "train_1#3"]
    assert [w.written for w in writers] == [len(data), len(data), 0]  # pass 1 read to its end
    assert len(reports) == 2
    assert "the first 1 images passed over unconverted" in reports[0]
    assert "images: 4 read, 3 written, 1 skipped" in reports[0]
    assert "train_0#2: corrupt or truncated image" in reports[0]
    assert "1 more read to the pipe's end, unused" in reports[1]


def test_a_piped_manifest_and_piped_tfrecords_stream_too(tmp_path):
    """An augmented manifest's records become examples; a TFRecord pass passes as it is."""
    import tensorflow as tf

    prefix = str(tmp_path / "manifest")
    metadata = json.dumps({"class-map": {"0": "cat", "1": "dog"}}).encode()
    records = [JPEG, _label((1, 2)), metadata, JPEG, _label((0, 4), (1, 8))]
    data = b"".join(_record(r) for r in records)
    writer = sm.PipeWriter(f"{prefix}_0", data, timeout=60)
    stream = sagemaker_stream.PipeStream("train", sagemaker_channels.MANIFEST, prefix,
                                         ("0", "1"), 350, epochs=1, num_training_samples=2)
    reports = []
    examples = list(stream.examples(limit=2, report=reports.append))
    assert "the manifest's class-map names the classes ['cat', 'dog'], the model ['0', '1']" \
        in reports[0]  # names come before training, from validation or the ids
    writer.join(timeout=10)
    labels = [list(tf.train.Example.FromString(e).features.feature["image/label"]
                   .float_list.value) for e in examples]
    assert [len(label) for label in labels] == [2 + 5, 2 + 10]  # header, then 5 per box

    prefix = str(tmp_path / "tfrecords")
    writer = sm.PipeWriter(f"{prefix}_0", _tfrecord_bytes([b"a", b"b", b"c"]), timeout=60)
    stream = sagemaker_stream.PipeStream("train", sagemaker_channels.TFRECORD, prefix, (),
                                         350, epochs=1, num_training_samples=3)
    reports = []
    assert list(stream.examples(limit=3, report=reports.append)) == [b"a", b"b", b"c"]
    writer.join(timeout=10)
    assert "images: 3 read, 3 written" in reports[0]


def test_a_piped_validation_channel_reads_its_next_pass_whole_at_each_reading(tmp_path,
                                                                            monkeypatch):
    """Each reading of streamed validation data (``pipeline.validation_records``, an iteration
    of ``build_eval_dataset``'s dataset) reads the next pass; a reader given up early reads the
    rest of its pass unused (passes larger than the FIFO's and the reader's buffers), and no
    pass is opened ahead of its reading."""
    from tfssd.data import pipeline

    monkeypatch.setattr(sagemaker_stream.PipeStream, "CHUNK", 2)
    big = format_writers._jpeg(16, 8, 0, trailing=b"\1" * 400_000)
    out = io.BytesIO()
    for i in range(5):
        format_writers.write_record(out, format_writers.pack_image_record(
            [2, 5, i % 2, 0.1, 0.2, 0.6, 0.7], i, big))
    data = out.getvalue()
    prefix = str(tmp_path / "validation")
    writers = [sm.PipeWriter(f"{prefix}_{k}", data, timeout=60) for k in range(4)]
    stream = sagemaker_stream.PipeStream("validation", sagemaker_channels.RECORDIO, prefix,
                                         ("a", "b"), 350, epochs=0, num_training_samples=0)
    files = (stream.save(str(tmp_path / "stream")),)
    assert pipeline.is_stream(files)
    try:
        assert len(list(pipeline.validation_records(files))) == 5  # validation_0
        records = pipeline.validation_records(files)  # validation_1, given up after one
        next(records)
        records.close()
        dataset = pipeline.build_eval_dataset(files, image_size=32, label_width=350,
                                              batch_size=2)
        names = [name.decode() for batch in dataset for name in batch["filename"].numpy()]
    finally:
        os.remove(f"{prefix}_3")
    for writer in writers:
        writer.join(timeout=10)
    assert names == [f"validation_2#{i}" for i in range(5)]
    assert [w.written for w in writers] == [len(data)] * 3 + [0]
