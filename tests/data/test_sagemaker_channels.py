"""SageMaker channels: which format inputdataconfig.json describes, and an augmented manifest's
records grouped into images (the job tests, tests/training/test_sagemaker_job.py, run them all
through real FIFOs and files)."""

import io
import json

import pytest

from tests.data import format_writers
from tfssd.config.sagemaker_container import Channel
from tfssd.data import mxnet_formats, sagemaker_channels
from tfssd.data.sagemaker_channels import ChannelError

JPEG = format_writers._jpeg(16, 8, 0)


def _channels(**specs):
    return {name: Channel(name, *spec) for name, spec in specs.items()}


@pytest.mark.parametrize("specs, expected", [
    ({"train": ("application/x-recordio", "File", "None")}, "recordio"),
    ({"train": ("application/x-recordio", "Pipe", "None")}, "recordio"),
    ({"train": ("application/x-recordio", "Pipe", "RecordIO")}, "augmented_manifest"),
    ({"train": ("image/png", "File", "None"),
      "train_annotation": ("application/json", "File", "None")}, "image_json"),
    ({"train": ("", "File", "None")}, "tfrecord"),
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
    label = mxnet_formats.pack_image_record([2, 5, 0, 0.1, 0.1, 0.5, 0.5], 0, JPEG)
    with pytest.raises(ChannelError, match="leave RecordWrapperType None"):
        sagemaker_channels.manifest_records([label], "train")


def test_written_records_read_back_and_match_an_independent_writer():
    aligned = JPEG + b"\0" * (-len(JPEG) % 4)
    data = aligned + b"\x0a\x23\xd7\xce" + b"tail"  # the magic, 4-aligned: split in 2 parts
    ours, theirs = io.BytesIO(), io.BytesIO()
    mxnet_formats.write_record(ours, data)
    assert len(ours.getvalue()) == 8 + len(aligned) + 8 + 4
    format_writers._write_recordio_record(theirs, data)
    assert ours.getvalue() == theirs.getvalue()
    ours.seek(0)
    assert list(mxnet_formats.read_record_stream(ours, "x")) == [data]
