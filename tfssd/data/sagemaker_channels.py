"""A SageMaker training job's channels, in SageMaker's algorithm's formats, as SageMaker delivers
them (File or Pipe mode), read into conversion items.

The format of a channel comes from inputdataconfig.json and is checked against the data:

* ``application/x-recordio`` without a record wrapper: MXNet im2rec RecordIO (detection labels
  in the image records), File mode (the channel's ``.rec`` files) or Pipe mode;
* ``RecordWrapperType: RecordIO``: an augmented manifest in Pipe mode, each manifest line sent
  as one record per attribute in ``AttributeNames`` order: the image (``source-ref``) first,
  then its label JSON (``bounding-box``), optionally its metadata JSON (the ``class-map``);
* ``image/jpeg``, ``image/png``, ``application/x-image``: images with one JSON each, in the
  ``<channel>_annotation`` channel, File mode;
* ``application/x-tfrecord`` (or no content type): tfssd's own TFRecords, used as they are in
  File mode, copied from the pipe in Pipe mode.

A Pipe-mode channel is read once, from its first FIFO (``<channel>_0``): tfssd converts it to
local TFRecords and trains on those for every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterable, Mapping

from tfssd.config.sagemaker_container import Channel, ContainerPaths
from tfssd.data import mxnet_formats, sagemaker_formats
from tfssd.data.sources import SourceDataError, SourceImage
from tfssd.ops.image_check import signature_format

RECORDIO = "recordio"
MANIFEST = "augmented_manifest"
IMAGE_JSON = "image_json"
TFRECORD = "tfrecord"
IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
TFRECORD_TYPES = ("", "application/x-tfrecord")
ANNOTATION_SUFFIX = "_annotation"


class ChannelError(SourceDataError):
    """A channel whose description or data tfssd cannot use; the message names the channel."""


@dataclasses.dataclass(frozen=True)
class ChannelData:
    """What a channel holds: conversion items, or TFRecord files to use as they are."""

    format: str
    items: list[SourceImage] = dataclasses.field(default_factory=list)
    class_names: list[str] | None = None  # as the format provides them (by class id)
    tfrecord_files: tuple[str, ...] = ()


def channel_format(channel: Channel, channels: Mapping[str, Channel]) -> str:
    """The format of ``channel`` from its description (see the module docstring)."""
    where = f"channel {channel.name!r} (inputdataconfig.json)"
    if channel.record_wrapper == "RecordIO":
        if channel.input_mode != "Pipe":
            raise ChannelError(f"{where}: RecordWrapperType RecordIO (an augmented manifest) "
                               f"needs TrainingInputMode Pipe, not {channel.input_mode}")
        return MANIFEST
    if channel.content_type == "application/x-recordio":
        return RECORDIO
    if channel.content_type in IMAGE_TYPES:
        annotations = channel.name + ANNOTATION_SUFFIX
        if annotations not in channels:
            raise ChannelError(f"{where}: ContentType {channel.content_type} needs the channel "
                               f"{annotations!r} with one JSON per image")
        if channel.input_mode == "Pipe" or channels[annotations].input_mode == "Pipe":
            raise ChannelError(f"{where}: images with JSON annotations are read in File mode; "
                               "in Pipe mode use an augmented manifest or RecordIO")
        return IMAGE_JSON
    if channel.content_type in TFRECORD_TYPES:
        return TFRECORD
    raise ChannelError(f"{where}: ContentType {channel.content_type!r}; expected "
                       f"application/x-recordio, {', '.join(IMAGE_TYPES)} (with a "
                       f"{channel.name}{ANNOTATION_SUFFIX} channel), an augmented manifest "
                       "(RecordWrapperType RecordIO, Pipe mode) or application/x-tfrecord")


def read_channel(paths: ContainerPaths, channel: Channel, channels: Mapping[str, Channel],
                 work_dir: str) -> ChannelData:
    """Reads ``channel`` as SageMaker delivers it; ``work_dir`` takes a piped TFRecord stream."""
    fmt = channel_format(channel, channels)
    pipe = channel.input_mode == "Pipe"
    source = paths.pipe(channel.name) if pipe else paths.channel_dir(channel.name)
    if not os.path.exists(source):
        raise ChannelError(f"channel {channel.name!r}: {source} does not exist (SageMaker puts "
                           f"a {channel.input_mode}-mode channel there)")
    if fmt == TFRECORD:
        if not pipe:
            return ChannelData(fmt, tfrecord_files=_files(source))
        os.makedirs(work_dir, exist_ok=True)
        copy = os.path.join(work_dir, f"{channel.name}.tfrecord")
        with open(source, "rb") as stream, open(copy, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
        return ChannelData(fmt, tfrecord_files=(copy,))
    if fmt == IMAGE_JSON:
        items, names = sagemaker_formats.read_image_json(
            source, paths.channel_dir(channel.name + ANNOTATION_SUFFIX))
        if not items:
            raise ChannelError(f"channel {channel.name + ANNOTATION_SUFFIX!r}: no .json files in "
                               f"{paths.channel_dir(channel.name + ANNOTATION_SUFFIX)}")
        return ChannelData(fmt, items, names or None)
    if fmt == RECORDIO:
        sources = [source] if pipe else list(_files(source))
        records = _checked_im2rec(_records(sources), channel)
        return ChannelData(fmt, mxnet_formats.image_records(records, channel.name))
    with open(source, "rb") as stream:
        items, names = manifest_records(mxnet_formats.read_record_stream(stream, source),
                                        channel.name)
    return ChannelData(fmt, items, names or None)


def _files(folder: str) -> tuple[str, ...]:
    """Every file under ``folder`` (SageMaker keeps the S3 keys' sub-folders), sorted."""
    found = [os.path.join(d, name) for d, _, names in os.walk(folder) for name in names
             if not name.startswith(".")]
    return tuple(sorted(found))


def _records(sources: list[str]):
    for source in sources:
        yield from mxnet_formats.read_recordio(source)


def _checked_im2rec(records: Iterable[bytes], channel: Channel):
    """Passes im2rec records on, refusing a stream that is another format from its first."""
    for number, record in enumerate(records):
        if number == 0 and (signature_format(record) or record[:1] == b"{"):
            raise ChannelError(
                f"channel {channel.name!r}: inputdataconfig.json says application/x-recordio "
                "without a record wrapper (MXNet im2rec RecordIO), but its first record is a "
                f"bare {'image' if signature_format(record) else 'JSON document'}: for an "
                "augmented manifest set RecordWrapperType to RecordIO")
        yield record


def manifest_records(records: Iterable[bytes], channel: str
                     ) -> tuple[list[SourceImage], list[str]]:
    """An augmented manifest's records (image, label JSON[, metadata JSON], ...) -> items.

    Returns (items, class names by id from any ``class-map`` metadata record).
    """
    items: list[SourceImage] = []
    names_by_id: dict[int, str] = {}
    image: tuple[int, bytes] | None = None
    labels: list[dict] = []

    def finish():
        if image is None:
            return
        number, data = image
        name = f"{channel} image {len(items)} (record {number})"
        boxes = next((j for j in labels if "annotations" in j), None)
        if boxes is None:
            items.append(SourceImage(name=name, error=f"{name}: no label record with "
                                                      "'annotations' follows the image"))
            return
        try:
            objects = sagemaker_formats.annotation_objects(boxes.get("annotations", []))
        except (KeyError, TypeError, ValueError) as e:
            items.append(SourceImage(name=name, error=f"{name}: bad annotations: {e!r}"))
            return
        items.append(SourceImage(name=name, data=data, objects=objects,
                                 annotated_size=sagemaker_formats.annotated_size(
                                     boxes.get("image_size"))))

    for number, record in enumerate(records):
        if signature_format(record):
            finish()
            image, labels = (number, record), []
            continue
        try:
            document = json.loads(record)
        except (UnicodeDecodeError, json.JSONDecodeError):
            if not items and image is None:
                raise ChannelError(
                    f"channel {channel!r}: RecordWrapperType RecordIO says an augmented "
                    f"manifest, but record {number} is neither an image nor JSON: for MXNet "
                    "im2rec RecordIO leave RecordWrapperType None") from None
            document = None
        if image is None:
            raise ChannelError(f"channel {channel!r}: record {number} comes before any image; "
                               "list the image attribute (source-ref) first in AttributeNames")
        if isinstance(document, dict):
            labels.append(document)
            class_map = document.get("class-map")
            if isinstance(class_map, dict):
                sagemaker_formats.merge_names(
                    names_by_id, {int(k): str(v) for k, v in class_map.items()},
                    f"channel {channel!r} record {number}")
    finish()
    return items, sagemaker_formats.class_names(names_by_id)
