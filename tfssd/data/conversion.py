"""Conversion of annotated images (from any source format) into tfssd's sharded TFRecords.

Every source format reads its annotations into ``SourceImage`` items; this module applies one
bad-data policy to all of them and writes the records:

* an unreadable annotation, a missing image file, an image that fails to decode (checked by
  decoding it fully), an unknown class or a label longer than ``label_width``: the image is
  skipped and reported, or, with ``strict``, the conversion stops naming the item;
* a box partly outside the image is clipped and counted; a zero-area or inverted box is dropped
  and counted (with ``strict`` it stops the conversion);
* grayscale, CMYK, palette or RGBA images and formats other than JPEG and PNG are re-encoded as
  3-channel JPEG and counted;
* ``difficult`` objects are kept and marked (object width 6), or dropped on request.

Output files are written under temporary names and renamed when the conversion succeeds, so a
failed run leaves no partial dataset behind. ``class_map.json`` is written beside them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from tfssd.config import CLASS_MAP_NAME
from tfssd.data import schema

TINY_BOX_PIXELS = 2.0
_KEPT_FORMATS = {"JPEG": "jpeg", "PNG": "png"}


class ConversionError(ValueError):
    """A bad item under ``strict``, or an unusable class map."""


@dataclasses.dataclass
class SourceObject:
    """One annotated object; corners in pixels, continuous coordinates, origin top left."""

    label: str | int  # class name, or class id from 0
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool = False


@dataclasses.dataclass
class SourceImage:
    """One image as a source format describes it."""

    name: str  # shown in messages and stored as image/filename
    path: str | None = None  # the image file, or
    data: bytes | None = None  # the image bytes
    objects: list[SourceObject] = dataclasses.field(default_factory=list)
    annotated_size: tuple[int, int] | None = None  # (width, height) the annotation states
    error: str | None = None  # why the annotation could not be read
    normalized_boxes: bool = False  # corners are fractions of the image size, not pixels


@dataclasses.dataclass
class ConversionSummary:
    """What a conversion read, wrote, fixed and skipped."""

    class_names: list[str]
    images_read: int = 0
    images_written: int = 0
    images_without_objects: int = 0
    boxes_per_class: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    difficult_boxes: int = 0
    boxes_clipped: int = 0
    tiny_boxes: int = 0
    boxes_dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    images_reencoded: collections.Counter = dataclasses.field(
        default_factory=collections.Counter)
    size_mismatches: int = 0
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    max_label_width: int = schema.HEADER_WIDTH
    files: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def boxes_written(self) -> int:
        return sum(self.boxes_per_class.values())

    def format(self) -> str:
        """A human-readable account of every image and box."""
        rate = self.images_read / self.seconds if self.seconds else 0.0
        lines = [
            f"images: {self.images_read} read, {self.images_written} written, "
            f"{len(self.skipped)} skipped ({self.seconds:.1f} s, {rate:.0f} images/s)",
            f"boxes written: {self.boxes_written} ({self.difficult_boxes} marked difficult); "
            f"{self.boxes_clipped} clipped to the image; {self.tiny_boxes} under "
            f"{TINY_BOX_PIXELS:g} px wide or tall (kept)",
            f"images without objects (kept as negatives): {self.images_without_objects}",
            f"largest label width needed: {self.max_label_width}",
        ]
        for reason, count in sorted(self.boxes_dropped.items()):
            lines.append(f"boxes dropped, {reason}: {count}")
        for reason, count in sorted(self.images_reencoded.items()):
            lines.append(f"images re-encoded, {reason}: {count}")
        if self.size_mismatches:
            lines.append(f"annotation size differs from the image (the image's was used): "
                         f"{self.size_mismatches}")
        lines.append("boxes per class:")
        for class_id, name in enumerate(self.class_names):
            lines.append(f"  {class_id:3d} {name}: {self.boxes_per_class.get(class_id, 0)}")
        if self.skipped:
            lines.append("skipped images:")
            lines.extend(f"  {name}: {reason}" for name, reason in self.skipped)
        lines.append("wrote: " + ", ".join(self.files))
        return "\n".join(lines)


@dataclasses.dataclass
class _Result:
    """One item after the policy: a record to write, or the reason it was skipped."""

    name: str
    record: bytes | None = None
    skip_reason: str | None = None
    classes: list[int] = dataclasses.field(default_factory=list)
    difficult: int = 0
    clipped: int = 0
    tiny: int = 0
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    reencoded: str | None = None
    size_mismatch: bool = False
    label_width: int = schema.HEADER_WIDTH


def read_class_map(path: str) -> list[str]:
    """class_map.json ({"0": "name", ...}, ids contiguous from 0) -> names by id."""
    with open(path, encoding="utf-8") as f:
        mapping = json.load(f)
    try:
        ids = sorted(int(k) for k in mapping)
    except (TypeError, ValueError):
        raise ConversionError(f"{path}: expected an object of class id -> name") from None
    if ids != list(range(len(ids))):
        raise ConversionError(f"{path}: class ids must run 0..{len(ids) - 1}, got {ids}")
    return [str(mapping[str(i)]) for i in ids]


def write_class_map(path: str, class_names: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump({str(i): name for i, name in enumerate(class_names)}, f, indent=2)
        f.write("\n")


def resolve_class_names(items: Sequence[SourceImage], output_dir: str,
                        class_names: Sequence[str] | None,
                        provided_names: Sequence[str] | None = None) -> list[str]:
    """The class names of a conversion, by class id.

    In order: the caller's ``class_names`` (which must equal an existing class_map.json in the
    output folder); else the existing class map, extended by ``provided_names`` (the names a
    format carries, such as COCO categories) where they agree on every shared id; else
    ``provided_names``; else the names found in the annotations, sorted, so that separate
    conversions of train and validation agree.
    """
    existing_path = os.path.join(output_dir, CLASS_MAP_NAME)
    existing = read_class_map(existing_path) if os.path.isfile(existing_path) else None
    if class_names is not None:
        if existing is not None and list(existing) != list(class_names):
            raise ConversionError(
                f"{existing_path} lists other classes ({existing}) than given ({class_names}); "
                "use another output directory or remove it")
        return list(class_names)
    if existing is not None:
        provided = list(provided_names or [])
        clashes = [f"{i}: {a!r} there, {b!r} here" for i, (a, b) in
                   enumerate(zip(existing, provided)) if a != b]
        if clashes:
            raise ConversionError(f"{existing_path} disagrees with these annotations on class "
                                  f"ids ({'; '.join(clashes)}); use another output directory")
        return existing + provided[len(existing):]
    if provided_names:
        return list(provided_names)
    names = {o.label for item in items for o in item.objects if isinstance(o.label, str)}
    ids = {o.label for item in items for o in item.objects if isinstance(o.label, int)}
    if names and ids:
        raise ConversionError("the annotations mix class names and numeric ids")
    if ids:
        return [str(i) for i in range(max(ids) + 1)]
    return sorted(names)


def _read_image_bytes(item: SourceImage) -> bytes:
    if item.data is not None:
        return item.data
    with open(item.path, "rb") as f:
        return f.read()


def _prepare_image(data: bytes) -> tuple[bytes, str, int, int, str | None]:
    """Decodes fully (catching corrupt and truncated files) and normalises to RGB JPEG/PNG.

    Returns:
      (bytes, format, width, height, why it was re-encoded or None).
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        source_format, mode = image.format, image.mode
        width, height = image.size
        if source_format in _KEPT_FORMATS and mode == "RGB":
            return data, _KEPT_FORMATS[source_format], width, height, None
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), "jpeg", width, height, f"{mode} {source_format} to RGB JPEG"


def _process(item: SourceImage, class_index: dict, num_classes: int, label_width: int,
             drop_difficult: bool) -> _Result:
    result = _Result(item.name)
    if item.error:
        result.skip_reason = f"unreadable annotation: {item.error}"
        return result
    try:
        data = _read_image_bytes(item)
    except OSError as e:
        result.skip_reason = f"missing or unreadable image file {item.path}: {e.strerror or e}"
        return result
    try:
        data, image_format, width, height, result.reencoded = _prepare_image(data)
    except Exception as e:  # PIL raises many types for bad data
        result.skip_reason = f"corrupt or truncated image: {e}"
        return result
    if item.annotated_size and tuple(item.annotated_size) != (width, height) and all(
            item.annotated_size):
        result.size_mismatch = True

    classes, boxes, difficult = [], [], []
    for obj in item.objects:
        class_id = class_index.get(obj.label) if isinstance(obj.label, str) else obj.label
        if class_id is None or not 0 <= class_id < num_classes:
            result.skip_reason = (f"unknown class {obj.label!r} (known: "
                                  f"{', '.join(class_index) or num_classes})")
            return result
        if obj.difficult and drop_difficult:
            result.dropped["difficult (dropped on request)"] += 1
            continue
        corners = np.array([obj.xmin, obj.ymin, obj.xmax, obj.ymax], np.float64)
        if item.normalized_boxes:
            corners = corners * [width, height, width, height]
        if not np.all(np.isfinite(corners)):
            result.dropped["non-finite coordinates"] += 1
            continue
        if corners[2] <= corners[0] or corners[3] <= corners[1]:
            result.dropped["zero-area or inverted"] += 1
            continue
        clipped = np.clip(corners, 0, [width, height, width, height])
        if not np.array_equal(clipped, corners):
            result.clipped += 1
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            result.dropped["outside the image"] += 1
            continue
        if min(clipped[2] - clipped[0], clipped[3] - clipped[1]) < TINY_BOX_PIXELS:
            result.tiny += 1
        classes.append(class_id)
        boxes.append(clipped / [width, height, width, height])
        difficult.append(bool(obj.difficult))

    marked = any(difficult)
    label = schema.make_label(classes, np.reshape(boxes, (-1, 4)), difficult if marked else None)
    result.label_width = len(label)
    if len(label) > label_width:
        result.skip_reason = (f"{len(classes)} objects need label_width >= {len(label)}, more "
                              f"than label_width={label_width}")
        return result
    result.record = schema.serialize_example(data, image_format, item.name, height, width, label)
    result.classes, result.difficult = classes, sum(difficult)
    return result


def _shard_names(output_prefix: str, num_shards: int) -> list[str]:
    return [f"{output_prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def convert(items: Iterable[SourceImage], output_prefix: str, *,
            class_names: Sequence[str] | None = None,
            provided_names: Sequence[str] | None = None, num_shards: int | None = None,
            label_width: int = 350, strict: bool = False, drop_difficult: bool = False,
            drop_empty: bool = False, workers: int | None = None,
            progress: Callable[[int, int, float], None] | None = None
            ) -> ConversionSummary:
    """Applies the bad-data policy to ``items`` and writes sharded TFRecords.

    Args:
      items: the source images with their annotations.
      output_prefix: shards are ``{prefix}-00000-of-0000N.tfrecord``; class_map.json goes in
        the prefix's directory.
      class_names: names by class id, as the user gave them.
      provided_names: names by class id that the source format carries.
        See ``resolve_class_names`` for how these and an existing class_map.json combine.
      num_shards: default one per 1000 images.
      label_width: images whose label is longer are skipped (or stop the run with ``strict``).
      strict: stop at the first bad item or dropped box instead of skipping it.
      drop_difficult: drop objects marked difficult instead of keeping and marking them.
      drop_empty: skip images without objects instead of keeping them as negatives.
      workers: threads decoding images; default the number of CPUs.
      progress: called now and then with (images done, images in all, images/s).

    Returns:
      The summary of what was read, written, fixed and skipped.
    """
    started = time.time()
    items = list(items)
    output_dir = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(output_dir, exist_ok=True)
    class_names = resolve_class_names(items, output_dir, class_names, provided_names)
    class_index = {name: i for i, name in enumerate(class_names)}
    summary = ConversionSummary(class_names=list(class_names))
    num_shards = num_shards or max(1, math.ceil(len(items) / 1000))
    final_names = _shard_names(output_prefix, num_shards)
    temp_names = [f"{name}.incomplete" for name in final_names]
    writers = [tf.io.TFRecordWriter(name) for name in temp_names]

    def work(item):
        return _process(item, class_index, len(class_names), label_width, drop_difficult)

    written = 0
    try:
        with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as pool:
            for result in _in_chunks(pool, work, items):
                summary.images_read += 1
                reason = result.skip_reason
                if reason is None and drop_empty and not result.classes:
                    reason = "no objects (dropped on request)"
                if strict and (reason or result.dropped):
                    raise ConversionError(
                        f"{result.name}: {reason or dict(result.dropped)} (--strict)")
                summary.boxes_dropped.update(result.dropped)
                if reason:
                    summary.skipped.append((result.name, reason))
                else:
                    writers[written % num_shards].write(result.record)
                    written += 1
                    summary.boxes_per_class.update(result.classes)
                    summary.difficult_boxes += result.difficult
                    summary.boxes_clipped += result.clipped
                    summary.tiny_boxes += result.tiny
                    summary.images_without_objects += not result.classes
                    summary.size_mismatches += result.size_mismatch
                    summary.max_label_width = max(summary.max_label_width, result.label_width)
                    if result.reencoded:
                        summary.images_reencoded[result.reencoded] += 1
                if progress and (summary.images_read % 500 == 0
                                 or summary.images_read == len(items)):
                    rate = summary.images_read / max(time.time() - started, 1e-9)
                    progress(summary.images_read, len(items), rate)
    except BaseException:
        for writer, name in zip(writers, temp_names):
            writer.close()
            os.remove(name)
        raise
    for writer in writers:
        writer.close()
    for temp, final in zip(temp_names, final_names):
        os.replace(temp, final)
    write_class_map(os.path.join(output_dir, CLASS_MAP_NAME), class_names)
    summary.images_written = written
    summary.files = final_names + [os.path.join(output_dir, CLASS_MAP_NAME)]
    summary.seconds = time.time() - started
    return summary


def print_progress(done: int, total: int, rate: float) -> None:
    """Progress on stderr: rewritten in place on a terminal, one line each otherwise."""
    line = f"converted {done}/{total} images ({rate:.0f} images/s)"
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line + ("\n" if done == total else ""))
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _in_chunks(pool: concurrent.futures.Executor, fn, items: Sequence, size: int = 256):
    """pool.map over bounded chunks, so that decoded images never pile up in memory."""
    for start in range(0, len(items), size):
        yield from pool.map(fn, items[start:start + size])
