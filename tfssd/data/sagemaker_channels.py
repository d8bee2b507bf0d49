"""A SageMaker training job's channels, in SageMaker's algorithm's formats, as SageMaker delivers
them (File or Pipe mode), read into conversion items or streamed pass after pass.

The format of a channel comes from inputdataconfig.json and is checked against the data:

* ``application/x-recordio`` without a record wrapper: MXNet im2rec RecordIO (detection labels
  in the image records), File mode (the channel's ``.rec`` files; im2rec's ``.idx`` and
  ``.lst`` beside them are skipped) or Pipe mode;
* ``RecordWrapperType: RecordIO``: an augmented manifest in Pipe mode, each manifest line sent
  as one record per attribute in ``AttributeNames`` order: the image (``source-ref``) first,
  then its label JSON (``bounding-box``), optionally its metadata JSON (the ``class-map``);
* ``image/jpeg``, ``image/png``, ``application/x-image``: images with one JSON each, in the
  ``<channel>_annotation`` channel, File mode;
* ``application/x-tfrecord``: tfssd's own TFRecords, used as they are in File mode;
* no ``ContentType``: the format is read from the data's first bytes (``detect_format``):
  RecordIO's magic number (im2rec records, or an augmented manifest's when the first record is
  a bare image), TFRecord framing (a length and its checksum), an image with a
  ``<channel>_annotation`` channel; anything else is refused, naming the channel and the
  content types tfssd reads.

Pipe mode gives one FIFO per pass over the channel, ``<channel>_0``, ``<channel>_1``, ...
(opened by data/sagemaker_pipes.py). The training and validation channels are streamed
(``PipeStream``, data/sagemaker_stream.py): the input pipelines read the pipes one after
another, converting each image in memory under the bad-data policy, and nothing is staged on
the volume. Otherwise (``read_channel`` without ``stream``: under dist_async) a Pipe-mode
channel is read once from ``<channel>_0`` and converted to local TFRecords.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
from collections.abc import Iterable, Iterator, Mapping

from tfssd.config.sagemaker_container import Channel, ContainerPaths
from tfssd.data import mxnet_formats, sagemaker_formats
from tfssd.data.sagemaker_pipes import ChannelError, open_pipe, peek_pipe, tfrecord_framed
from tfssd.data.sources import SourceImage
from tfssd.ops.image_check import signature_format

RECORDIO = "recordio"
MANIFEST = "augmented_manifest"
IMAGE_JSON = "image_json"
TFRECORD = "tfrecord"
DETECT = "detect"  # no ContentType: detect_format reads the format from the data
IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
TFRECORD_TYPES = ("application/x-tfrecord",)
ANNOTATION_SUFFIX = "_annotation"
IM2REC_SIDE_FILES = (".idx", ".lst")  # what im2rec writes beside a .rec: not records
_HEAD_BYTES = 64  # enough for a RecordIO header, an IRHeader and an image signature


@dataclasses.dataclass(frozen=True)
class ChannelData:
    """What a channel holds: conversion items, TFRecord files to use as they are, or (streamed)
    nothing read yet: its passes are read by the input pipeline (``PipeStream``)."""

    format: str
    items: list[SourceImage] = dataclasses.field(default_factory=list)
    class_names: list[str] | None = None  # as the format provides them (by class id)
    tfrecord_files: tuple[str, ...] = ()
    streamed: bool = False
    detected: str | None = None  # no ContentType: how the format was recognised
    skipped_files: tuple[str, ...] = ()  # im2rec side files beside the .rec files


def _expected(channel: str) -> str:
    return (f"application/x-recordio (MXNet im2rec RecordIO), {', '.join(IMAGE_TYPES)} (with a "
            f"{channel}{ANNOTATION_SUFFIX} channel), an augmented manifest (RecordWrapperType "
            "RecordIO, Pipe mode) or application/x-tfrecord")


def channel_format(channel: Channel, channels: Mapping[str, Channel]) -> str:
    """The format of ``channel`` from its description (see the module docstring); ``DETECT``
    when it has no ContentType."""
    where = f"channel {channel.name!r} (inputdataconfig.json)"
    if channel.record_wrapper == "RecordIO":
        if channel.input_mode != "Pipe":
            raise ChannelError(f"{where}: RecordWrapperType RecordIO (an augmented manifest) "
                               f"needs TrainingInputMode Pipe, not {channel.input_mode}")
        return MANIFEST
    if channel.content_type == "application/x-recordio":
        return RECORDIO
    if channel.content_type in IMAGE_TYPES:
        _check_image_channel(channel, channels, f"{where}: ContentType {channel.content_type}")
        return IMAGE_JSON
    if channel.content_type in TFRECORD_TYPES:
        return TFRECORD
    if not channel.content_type:
        return DETECT
    raise ChannelError(f"{where}: ContentType {channel.content_type!r}; expected "
                       + _expected(channel.name))


def _check_image_channel(channel: Channel, channels: Mapping[str, Channel], what: str) -> None:
    annotations = channel.name + ANNOTATION_SUFFIX
    if annotations not in channels:
        raise ChannelError(f"{what} needs the channel {annotations!r} with one JSON per image")
    if channel.input_mode == "Pipe" or channels[annotations].input_mode == "Pipe":
        raise ChannelError(f"channel {channel.name!r} (inputdataconfig.json): images with JSON "
                           "annotations are read in File mode; in Pipe mode use an augmented "
                           "manifest or RecordIO")


def detect_format(paths: ContainerPaths, channel: Channel, channels: Mapping[str, Channel]
                  ) -> tuple[str, str]:
    """The format of a channel without ContentType, from its first bytes: (format, why).

    In Pipe mode the first bytes of ``<channel>_0`` are kept and handed to whoever opens that
    pipe next (``open_pipe``), so nothing of the stream is lost.

    Raises:
      ChannelError: the data is none of the formats tfssd reads (the message names the channel,
        the file and the content types it could have).
    """
    if channel.input_mode == "Pipe":
        where = paths.pipe(channel.name)
        head = peek_pipe(where, _HEAD_BYTES)
    else:
        files, _ = _data_files(paths.channel_dir(channel.name), channel.name)
        where = files[0]
        with open(where, "rb") as f:
            head = f.read(_HEAD_BYTES)
    refuse = (f"channel {channel.name!r}: inputdataconfig.json gives no ContentType and "
              f"{where}")
    if head[:4] == struct.pack("<I", mxnet_formats.RECORDIO_MAGIC):
        first = head[8:]
        if signature_format(first) or first[:1] == b"{":
            if channel.input_mode != "Pipe":
                raise ChannelError(f"{refuse} holds an augmented manifest's records (a bare "
                                   "image first), which SageMaker streams in Pipe mode: use "
                                   "TrainingInputMode Pipe with RecordWrapperType RecordIO")
            return MANIFEST, "RecordIO records, the first a bare image: an augmented manifest"
        return RECORDIO, "RecordIO records with an image header: MXNet im2rec RecordIO"
    if tfrecord_framed(head):
        return TFRECORD, "TFRecord framing (a record length and its checksum)"
    if signature_format(head):
        _check_image_channel(channel, channels, f"{refuse} starts with a "
                                                f"{signature_format(head)} image, which")
        return IMAGE_JSON, (f"{signature_format(head)} images with the "
                            f"{channel.name}{ANNOTATION_SUFFIX} channel")
    what = ("is empty" if not head else "holds JSON text" if head.lstrip()[:1] in (b"{", b"[")
            else f"starts with bytes {head[:8].hex(' ')}")
    raise ChannelError(f"{refuse} {what}: none of the formats tfssd reads. Set the channel's "
                       f"ContentType: {_expected(channel.name)}")


def read_channel(paths: ContainerPaths, channel: Channel, channels: Mapping[str, Channel],
                 work_dir: str, stream: bool = False) -> ChannelData:
    """Reads ``channel`` as SageMaker delivers it; ``work_dir`` takes a piped TFRecord stream.

    With ``stream`` a Pipe-mode channel is not read here: its ChannelData says ``streamed``, and
    ``PipeStream`` reads its passes during training.
    """
    fmt = channel_format(channel, channels)
    pipe = channel.input_mode == "Pipe"
    source = paths.pipe(channel.name) if pipe else paths.channel_dir(channel.name)
    if not os.path.exists(source):  # SageMaker creates <channel>_0 before the job starts
        raise ChannelError(f"channel {channel.name!r}: {source} does not exist (SageMaker puts "
                           f"a {channel.input_mode}-mode channel there)")
    detected = None
    if fmt == DETECT:
        fmt, detected = detect_format(paths, channel, channels)
    if pipe and stream:
        return ChannelData(fmt, streamed=True, detected=detected)
    if fmt == TFRECORD:
        if not pipe:
            return ChannelData(fmt, tfrecord_files=_files(source), detected=detected)
        os.makedirs(work_dir, exist_ok=True)
        copy = os.path.join(work_dir, f"{channel.name}.tfrecord")
        with open_pipe(source) as piped, open(copy, "wb") as out:
            shutil.copyfileobj(piped, out, 1 << 20)
        return ChannelData(fmt, tfrecord_files=(copy,), detected=detected)
    if fmt == IMAGE_JSON:
        items, names = sagemaker_formats.read_image_json(
            source, paths.channel_dir(channel.name + ANNOTATION_SUFFIX))
        if not items:
            raise ChannelError(f"channel {channel.name + ANNOTATION_SUFFIX!r}: no .json files in "
                               f"{paths.channel_dir(channel.name + ANNOTATION_SUFFIX)}")
        return ChannelData(fmt, items, names or None, detected=detected)
    if fmt == RECORDIO:
        if pipe:
            with open_pipe(source) as piped:
                records = mxnet_formats.read_record_stream(piped, source)
                items = mxnet_formats.image_records(checked_im2rec(records, channel.name),
                                                    channel.name)
            return ChannelData(fmt, items, detected=detected)
        files, skipped = _data_files(source, channel.name)
        records = checked_im2rec(_records(files), channel.name)
        return ChannelData(fmt, mxnet_formats.image_records(records, channel.name),
                           detected=detected, skipped_files=skipped)
    with open_pipe(source) as piped:
        items, names = manifest_records(mxnet_formats.read_record_stream(piped, source),
                                        channel.name)
    return ChannelData(fmt, items, names or None, detected=detected)


def _files(folder: str) -> tuple[str, ...]:
    """Every file under ``folder`` (SageMaker keeps the S3 keys' sub-folders), sorted."""
    found = [os.path.join(d, name) for d, _, names in os.walk(folder) for name in names
             if not name.startswith(".")]
    return tuple(sorted(found))


def _data_files(folder: str, channel: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(data files, im2rec side files) of a File-mode channel; refuses one without data."""
    files = _files(folder)
    data = tuple(f for f in files if not f.lower().endswith(IM2REC_SIDE_FILES))
    if not data:
        raise ChannelError(f"channel {channel!r}: no data files in {folder}"
                           + (f" (only im2rec's side files: {', '.join(files)})" if files
                              else ""))
    return data, tuple(f for f in files if f not in data)


def _records(sources: Iterable[str]):
    for source in sources:
        yield from mxnet_formats.read_recordio(source)


def checked_im2rec(records: Iterable[bytes], channel: str):
    """Passes im2rec records on, refusing a stream that is another format from its first."""
    for number, record in enumerate(records):
        if number == 0 and (signature_format(record) or record[:1] == b"{"):
            raise ChannelError(
                f"channel {channel!r}: inputdataconfig.json says application/x-recordio "
                "without a record wrapper (MXNet im2rec RecordIO), but its first record is a "
                f"bare {'image' if signature_format(record) else 'JSON document'}: for an "
                "augmented manifest set RecordWrapperType to RecordIO")
        yield record


def manifest_records(records: Iterable[bytes], channel: str
                     ) -> tuple[list[SourceImage], list[str]]:
    """An augmented manifest's records (image, label JSON[, metadata JSON], ...) -> items.

    Returns (items, class names by id from any ``class-map`` metadata record).
    """
    names_by_id: dict[int, str] = {}
    items = list(iter_manifest_items(records, channel, names_by_id))
    return items, sagemaker_formats.class_names(names_by_id)


def iter_manifest_items(records: Iterable[bytes], channel: str, names_by_id: dict[int, str]
                        ) -> Iterator[SourceImage]:
    """Yields an augmented manifest's images one at a time (a Pipe-mode stream); the names of a
    ``class-map`` metadata record are merged into ``names_by_id`` as they come."""
    image: tuple[int, bytes] | None = None
    labels: list[dict] = []
    count = 0

    def finish(number: int, data: bytes) -> SourceImage:
        name = f"{channel} image {count} (record {number})"
        boxes = next((j for j in labels if "annotations" in j), None)
        if boxes is None:
            return SourceImage(name=name, error=f"{name}: no label record with 'annotations' "
                                                "follows the image")
        try:
            objects = sagemaker_formats.annotation_objects(boxes.get("annotations", []))
        except (KeyError, TypeError, ValueError) as e:
            return SourceImage(name=name, error=f"{name}: bad annotations: {e!r}")
        return SourceImage(name=name, data=data, objects=objects,
                           annotated_size=sagemaker_formats.annotated_size(
                               boxes.get("image_size")))

    for number, record in enumerate(records):
        if signature_format(record):
            if image is not None:
                yield finish(*image)
                count += 1
            image, labels = (number, record), []
            continue
        try:
            document = json.loads(record)
        except (UnicodeDecodeError, json.JSONDecodeError):
            if not count and image is None:
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
    if image is not None:
        yield finish(*image)
