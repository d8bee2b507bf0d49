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

Pipe mode gives one FIFO per pass over the channel, ``<channel>_0``, ``<channel>_1``, ... The
training channel is streamed (``PipeStream``): the input pipeline reads the pipes one after
another, converting each image in memory under the bad-data policy, and nothing is staged on
the volume. Any other Pipe-mode channel (validation, which is read several times per epoch) is
read once from ``<channel>_0`` and converted to local TFRecords.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import os
import shutil
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from tfssd.config.sagemaker_container import Channel, ContainerPaths
from tfssd.data import mxnet_formats, sagemaker_formats
from tfssd.data.sources import SourceDataError, SourceImage
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
STREAM_SUFFIX = ".pipe.json"  # a PipeStream's description: the training "file" streamed
PIPE_WAIT_SECONDS = 600.0  # how long the next pass's FIFO may take to appear
_HEAD_BYTES = 64  # enough for a RecordIO header, an IRHeader and an image signature


class ChannelError(SourceDataError):
    """A channel whose description or data tfssd cannot use; the message names the channel."""


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
    if _tfrecord_framed(head):
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


def _tfrecord_framed(head: bytes) -> bool:
    """Whether ``head`` starts as a TFRecord file: uint64 length, then its masked CRC-32C."""
    if len(head) < 12:
        return False
    (crc,) = struct.unpack("<I", head[8:12])
    return crc == masked_crc32c(head[:8])


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C (Castagnoli), rotated and offset ("masked")."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


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
                items = mxnet_formats.image_records(_checked_im2rec(records, channel.name),
                                                    channel.name)
            return ChannelData(fmt, items, detected=detected)
        files, skipped = _data_files(source, channel.name)
        records = _checked_im2rec(_records(files), channel.name)
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


def _checked_im2rec(records: Iterable[bytes], channel: str):
    """Passes im2rec records on, refusing a stream that is another format from its first."""
    for number, record in enumerate(records):
        if number == 0 and (signature_format(record) or record[:1] == b"{"):
            raise ChannelError(
                f"channel {channel!r}: inputdataconfig.json says application/x-recordio "
                "without a record wrapper (MXNet im2rec RecordIO), but its first record is a "
                f"bare {'image' if signature_format(record) else 'JSON document'}: for an "
                "augmented manifest set RecordWrapperType to RecordIO")
        yield record


# Pipe mode ---------------------------------------------------------------------------------


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` of ``items`` (the last one shorter)."""
    while chunk := list(itertools.islice(items, size)):
        yield chunk


_PEEKED: dict[str, _PrefixedStream] = {}  # pipes whose first bytes detect_format has read
_NEXT_PASS: dict[str, int] = {}  # by pipe prefix: the pass a new reader of a stream starts at


class _PrefixedStream:
    """A binary stream whose first bytes were already read (``prefix``) and are served again."""

    def __init__(self, raw, prefix: bytes):
        self._raw, self._prefix = raw, prefix

    def read(self, size: int = -1) -> bytes:
        if not self._prefix:
            return self._raw.read(size)
        if size < 0:
            data, self._prefix = self._prefix + self._raw.read(), b""
            return data
        data, self._prefix = self._prefix[:size], self._prefix[size:]
        return data + (self._raw.read(size - len(data)) if size > len(data) else b"")

    def close(self) -> None:
        self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_pipe(path: str, wait_seconds: float = PIPE_WAIT_SECONDS):
    """Opens the FIFO of one pass (``<channel>_<k>``), waiting for SageMaker to create it.

    Raises:
      ChannelError: the FIFO did not appear within ``wait_seconds``.
    """
    peeked = _PEEKED.pop(path, None)
    if peeked is not None:
        return peeked
    deadline = time.monotonic() + wait_seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise ChannelError(f"{path} did not appear within {wait_seconds:.0f} s (SageMaker "
                               "creates a Pipe-mode channel's FIFO for each pass)")
        time.sleep(0.1)
    return open(path, "rb", buffering=1 << 20)  # blocks until SageMaker's writer opens it


def peek_pipe(path: str, size: int) -> bytes:
    """The first ``size`` bytes of the FIFO ``path`` (fewer at its end); they stay readable."""
    stream = open_pipe(path)
    head = stream.read(size)
    _PEEKED[path] = _PrefixedStream(stream, head)
    return head


def read_tfrecord_stream(stream, where: str) -> Iterator[bytes]:
    """Yields the records of a TFRecord byte stream, read sequentially (a pipe works).

    A record: uint64 length, uint32 masked CRC-32C of the length, the data, uint32 masked CRC
    of the data (checked by the input pipeline's parse, not here).
    """
    offset = 0
    while True:
        head = stream.read(12)
        if not head:
            return
        if len(head) < 12 or not _tfrecord_framed(head):
            raise ChannelError(f"{where}: no TFRecord record header at byte {offset}")
        (length,) = struct.unpack("<Q", head[:8])
        data = stream.read(length)
        if len(data) < length or len(stream.read(4)) < 4:
            raise ChannelError(f"{where}: record at byte {offset} is truncated")
        offset += 16 + length
        yield data


@dataclasses.dataclass(frozen=True)
class PipeStream:
    """A Pipe-mode training channel streamed pass after pass into the input pipeline.

    Saved as ``<channel>.pipe.json`` (``STREAM_SUFFIX``); that file stands for the channel's
    training files, and ``tfssd.data.pipeline`` streams it (``examples``).

    Pass k is the FIFO ``<pipe_prefix>_<k>``, read whole, to its end, before pass k + 1 is
    opened: the passes form one stream of images, from which the input pipeline cuts its epochs
    by count (steps per epoch times the global batch), as the learning-rate schedule counts
    steps. When a pass holds num_training_samples images an epoch is a pass; when it holds fewer
    an epoch reads into the next pass, when more the next epoch starts inside this one (a
    warning says so after the first pass). Nothing is dropped and nothing is read twice.

    Memory: one chunk of images being converted (``CHUNK`` items, with the decoded image of
    each of ``workers`` threads) plus what the input pipeline holds (see
    ``pipeline.build_train_dataset``); nothing grows with the channel's size.
    """

    channel: str
    format: str  # RECORDIO, MANIFEST or TFRECORD
    pipe_prefix: str  # the data folder's <channel>: pass k is <pipe_prefix>_<k>
    class_names: tuple[str, ...]
    label_width: int
    epochs: int
    num_training_samples: int

    CHUNK = 64  # images converted together (by a thread pool), then handed on

    def pipe(self, k: int) -> str:
        return f"{self.pipe_prefix}_{k}"

    def save(self, folder: str) -> str:
        """Writes the description into ``folder``; returns its path. A job starts at pass 0."""
        _NEXT_PASS.pop(self.pipe_prefix, None)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, self.channel + STREAM_SUFFIX)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(self), f, indent=2)
        return path

    @classmethod
    def load(cls, path: str) -> PipeStream:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return cls(**{**data, "class_names": tuple(data["class_names"])})

    def _items(self, stream, k: int, names_by_id: dict[int, str]
               ) -> Iterator[SourceImage | bytes]:
        """Pass k's images as items (TFRecord: serialized examples as they are); a manifest's
        class-map names go into ``names_by_id``."""
        where, base = self.pipe(k), os.path.basename(self.pipe(k))
        if self.format == TFRECORD:
            yield from read_tfrecord_stream(stream, where)
            return
        records = mxnet_formats.read_record_stream(stream, where)
        if self.format == RECORDIO:
            for number, record in enumerate(_checked_im2rec(records, self.channel)):
                yield mxnet_formats.image_item(record, base, number)
        else:
            yield from iter_manifest_items(records, base, names_by_id)

    def examples(self, skip: int = 0, limit: int | None = None, spare: int = 0,
                 report: Callable[[str], None] = print, workers: int | None = None
                 ) -> Iterator[bytes]:
        """Yields serialized tfssd examples, pass after pass, converted in memory.

        Each image goes through the bad-data policy (data/item_policy.py) as in a conversion;
        a skipped image is left out and named, with the reason, in the pass's summary, which
        ``report`` receives when the pass has been read.

        Args:
          skip: images of the first pass to pass over unconverted (a resumed job's position in
            its epoch; SageMaker starts a new job at ``<channel>_0`` again).
          limit: examples the run needs; once yielded, no further pass is opened: the current
            one gives up to ``spare`` more, and the rest of it is read unconverted (so that
            SageMaker sees the pipe consumed).
          spare: examples beyond ``limit`` taken from the pass that reaches it.
          report: receives one text per pass: what was read, converted and skipped.
          workers: threads converting images; default min(4, CPUs).
        """
        from tfssd.data import conversion, item_policy  # TensorFlow
        from tfssd.ops.image_check import DEFAULT_MAX_PIXELS

        names = list(self.class_names)
        index = {name: i for i, name in enumerate(names)}

        def convert(item: SourceImage) -> item_policy.ItemResult:
            return item_policy.process(item, index, len(names), self.label_width, False,
                                       DEFAULT_MAX_PIXELS)

        yielded = 0
        first = _NEXT_PASS.get(self.pipe_prefix, 0)
        with concurrent.futures.ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
            for k in itertools.count(first):
                _NEXT_PASS[self.pipe_prefix] = k + 1
                summary = conversion.ConversionSummary(class_names=names)
                summary.files = ["the input pipeline, in memory (nothing staged)"]
                passed_over = skip if k == 0 else 0
                drained = 0
                started = time.time()
                with open_pipe(self.pipe(k)) as stream:
                    names_by_id: dict[int, str] = {}
                    items = self._items(stream, k, names_by_id)
                    for _ in itertools.islice(items, passed_over):
                        pass
                    chunks = _chunks(items, self.CHUNK)
                    chunk = next(chunks, [])
                    if not chunk:
                        report(self._pass_text(k, summary, passed_over, drained, names_by_id))
                    while chunk:
                        following = next(chunks, [])  # read ahead: the pass's end is known first
                        records = []
                        if limit is not None and yielded >= limit + spare:
                            drained += len(chunk)
                        elif self.format == TFRECORD:
                            records = chunk
                            summary.images_read += len(chunk)
                        else:
                            for result in pool.map(convert, chunk):
                                summary.images_read += 1
                                summary.max_label_width = max(summary.max_label_width,
                                                              result.label_width)
                                if result.skip_reason:
                                    summary.skipped.append((result.name, result.skip_reason))
                                    continue
                                conversion._account(summary, result)  # noqa: SLF001
                                records.append(result.record)
                        summary.images_written += len(records)
                        if not following:
                            summary.seconds = time.time() - started
                            report(self._pass_text(k, summary, passed_over, drained,
                                                   names_by_id))
                        for record in records:
                            yield record
                            yielded += 1
                        chunk = following
                if not summary.images_written and not passed_over and not drained:
                    raise ChannelError(f"channel {self.channel!r}: pass {k} ({self.pipe(k)}) "
                                       "holds no usable image (the summary above says why)")
                if limit is not None and yielded >= limit:
                    return

    def _pass_text(self, k: int, summary, passed_over: int, drained: int,
                   names_by_id: dict[int, str]) -> str:
        text = (f"Channel {self.channel}: {summary.images_read} images ({self.format}, Pipe "
                f"mode) of pass {k} ({self.pipe(k)}), converted in memory")
        if passed_over:
            text += (f"; the first {passed_over} images passed over unconverted (the resumed "
                     "epoch's position)")
        if drained:
            text += f"; {drained} more read to the pipe's end, unused (the run needs no more)"
        named = sagemaker_formats.class_names(names_by_id)
        if k == 0 and named and named != list(self.class_names[:len(named)]):
            summary.notes.append(
                f"the manifest's class-map names the classes {named}, the model "
                f"{list(self.class_names)}: a streamed channel's names are not known before "
                "training, so they come from the validation channel, else the class ids")
        text += ":\n" + summary.format()
        written = summary.images_written
        if k == 0 and not passed_over and not drained and written != self.num_training_samples:
            text += (f"\nnum_training_samples={self.num_training_samples} but the pass held "
                     f"{written} usable images: epochs are cut from the stream of passes by "
                     "count, so an epoch "
                     + ("reads into the next pass." if written < self.num_training_samples
                        else "ends inside a pass and the next one starts there."))
        return text


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
