"""Conversion of annotated images (from any source format) into tfssd's sharded TFRecords.

Every source format reads its annotations into ``SourceImage`` items (sources.py); this module
runs the one bad-data policy (item_policy.py) over them, writes the records and sums up what
was kept, fixed, dropped and skipped, naming the first images of each kind. With ``strict``
the first skipped image, dropped or clipped box, or EXIF decision stops the conversion, naming
the image.

Output files are written under temporary names and renamed when the conversion succeeds, so a
failed run leaves no partial dataset behind (nor an output folder it created). ``class_map.json``
is written beside them."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import tensorflow as tf

from tfssd.config.run_config import CLASS_MAP_NAME
from tfssd.data import item_policy, schema
from tfssd.data.sources import ConversionError, SourceImage, SourceObject  # noqa: F401
from tfssd.ops.image_check import DEFAULT_MAX_PIXELS

EXAMPLES = 5  # images named per kind of fix or drop


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
    orientations: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    # The first images of each kind of fix or drop, by the summary line that counts them.
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    max_label_width: int = schema.HEADER_WIDTH
    files: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)  # the source format's remarks

    def note(self, kind: str, name: str) -> None:
        names = self.examples.setdefault(kind, [])
        if len(names) < EXAMPLES and name not in names:
            names.append(name)

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
            f"{item_policy.TINY_BOX_PIXELS:g} px wide or tall (kept)",
            f"images without objects (kept as negatives): {self.images_without_objects}",
            f"largest label width needed: {self.max_label_width} (images skipped for a long "
            "label included)",
        ]
        for kind in ("clipped", "tiny"):
            if kind in self.examples:
                lines.append(f"  {kind}: {self._named(kind)}")
        for reason, count in sorted(self.boxes_dropped.items()):
            lines.append(f"boxes dropped, {reason}: {count} ({self._named(reason)})")
        for reason, count in sorted(self.images_reencoded.items()):
            lines.append(f"images re-encoded, {reason}: {count}")
        for decision, count in sorted(self.orientations.items()):
            lines.append(f"{decision}: {count} ({self._named(decision)})")
        if self.size_mismatches:
            lines.append(f"annotation size differs from the image (the image's was used): "
                         f"{self.size_mismatches} ({self._named('size')})")
        lines.append("boxes per class:")
        for class_id, name in enumerate(self.class_names):
            lines.append(f"  {class_id:3d} {name}: {self.boxes_per_class.get(class_id, 0)}")
        if self.skipped:
            lines.append("skipped images:")
            lines.extend(f"  {name}: {reason}" for name, reason in self.skipped)
        lines.append("wrote: " + ", ".join(self.files))
        lines.extend(self.notes)
        return "\n".join(lines)

    def _named(self, kind: str) -> str:
        names = self.examples.get(kind, [])
        return ", ".join(names) + (", ..." if len(names) == EXAMPLES else "")


def read_class_map(path: str) -> list[str]:
    """class_map.json ({"0": "name", ...}, ids contiguous from 0) -> names by id."""
    try:
        with open(path, encoding="utf-8") as f:
            mapping = json.load(f)
    except OSError as e:
        raise ConversionError(f"{path}: cannot read the class map ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e}); expected an object of class id "
                              '-> name such as {"0": "cat", "1": "dog"}') from None
    try:
        if not isinstance(mapping, dict):
            raise TypeError
        ids = sorted(int(k) for k in mapping)
    except (TypeError, ValueError):
        raise ConversionError(f"{path}: expected an object of class id -> name such as "
                              '{"0": "cat", "1": "dog"}') from None
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


def _shard_names(output_prefix: str, num_shards: int) -> list[str]:
    return [f"{output_prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def convert(items: Iterable[SourceImage], output_prefix: str, *,
            class_names: Sequence[str] | None = None,
            provided_names: Sequence[str] | None = None, num_shards: int | None = None,
            label_width: int = 350, strict: bool = False, drop_difficult: bool = False,
            drop_empty: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
            workers: int | None = None,
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
      strict: stop at the first skipped image, dropped or clipped box, or EXIF decision.
      drop_difficult: drop objects marked difficult instead of keeping and marking them.
      drop_empty: skip images without objects instead of keeping them as negatives.
      max_pixels: images declaring more pixels are skipped before they are decoded.
      workers: threads decoding images; default the number of CPUs.
      progress: called now and then with (images done, images in all, images/s).

    Returns:
      The summary of what was read, written, fixed and skipped.
    """
    started = time.time()
    items = list(items)
    output_dir = os.path.dirname(os.path.abspath(output_prefix))
    created = not os.path.isdir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    class_names = resolve_class_names(items, output_dir, class_names, provided_names)
    class_index = {name: i for i, name in enumerate(class_names)}
    summary = ConversionSummary(class_names=list(class_names))
    num_shards = num_shards or max(1, math.ceil(len(items) / 1000))
    final_names = _shard_names(output_prefix, num_shards)
    temp_names = [f"{name}.incomplete" for name in final_names]
    writers = [tf.io.TFRecordWriter(name) for name in temp_names]

    def work(item):
        return item_policy.process(item, class_index, len(class_names), label_width,
                                   drop_difficult, max_pixels)

    written = 0
    try:
        with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as pool:
            for result in _in_chunks(pool, work, items):
                summary.images_read += 1
                reason = result.skip_reason
                if reason is None and drop_empty and not result.classes:
                    reason = "no objects (dropped on request)"
                if strict:
                    _stop_if_not_clean(result, reason)
                summary.max_label_width = max(summary.max_label_width, result.label_width)
                if reason:
                    summary.skipped.append((result.name, reason))
                    continue
                writers[written % num_shards].write(result.record)
                written += 1
                _account(summary, result)
                if progress and (summary.images_read % 500 == 0
                                 or summary.images_read == len(items)):
                    rate = summary.images_read / max(time.time() - started, 1e-9)
                    progress(summary.images_read, len(items), rate)
    except BaseException:
        for writer, name in zip(writers, temp_names):
            writer.close()
            os.remove(name)
        if created and not os.listdir(output_dir):
            os.rmdir(output_dir)
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


def _stop_if_not_clean(result: item_policy.ItemResult, reason: str | None) -> None:
    """--strict: anything but a clean image stops the conversion, naming the image."""
    dropped = {k: n for k, n in result.dropped.items() if "on request" not in k}
    problems = ([reason] if reason else []) + [f"box dropped, {k} ({n})"
                                               for k, n in dropped.items()]
    problems += [f"{result.clipped} box(es) clipped to the image"] if result.clipped else []
    problems += [result.orientation] if result.orientation else []
    if problems:
        raise ConversionError(f"{result.name}: {'; '.join(problems)} (--strict)")


def _account(summary: ConversionSummary, result: item_policy.ItemResult) -> None:
    """Adds a written image's boxes, fixes and drops to the summary."""
    summary.boxes_per_class.update(result.classes)
    summary.difficult_boxes += result.difficult
    summary.boxes_clipped += result.clipped
    summary.tiny_boxes += result.tiny
    summary.images_without_objects += not result.classes
    summary.size_mismatches += result.size_mismatch
    summary.boxes_dropped.update(result.dropped)
    for reason in result.dropped:
        summary.note(reason, result.name)
    for kind, count in (("clipped", result.clipped), ("tiny", result.tiny),
                        ("size", result.size_mismatch)):
        if count:
            summary.note(kind, result.name)
    if result.reencoded:
        summary.images_reencoded[result.reencoded] += 1
    if result.orientation:
        decision = result.orientation.split(" (")[0].split(":")[0]
        summary.orientations[decision] += 1
        summary.note(decision, result.name)


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
