"""MXNet's detection list (.lst) and RecordIO (.rec) files as conversion items, without mxnet.

A .lst line: ``index<TAB>A<TAB>B<TAB>[A - 2 more header values<TAB>]objects<TAB>path`` with
header width A, object width B (5: class, xmin, ymin, xmax, ymax; 6 adds difficult) and corners
normalised to [0, 1].

A .rec file (dmlc RecordIO) is a sequence of records: uint32 magic 0xced7230a, uint32 holding a
continuation flag (upper 3 bits) and the length (lower 29), the data, padding to 4 bytes. A
record whose data contains the magic number is written in parts (flag 1 first, 2 middle, 3
last) with the magic dropped at each split. MXNet's image records start with an IRHeader (uint32
flag, float32 label, uint64 id, uint64 id2); a flag > 0 is the number of float32 label values
that follow it; the image bytes come last. The .idx file (record offsets) and the .lst file
that im2rec leaves beside a .rec are not needed.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from tfssd.data.sources import SourceDataError, SourceImage, SourceObject

RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_IR_HEADER = struct.Struct("<IfQQ")


class MXNetFormatError(SourceDataError):
    """A .lst or .rec file that does not follow MXNet's layout."""


def label_objects(label: np.ndarray, where: str) -> list[SourceObject]:
    """A flat MXNet detection label ``[A, B, header..., objects...]`` -> normalised objects."""
    if len(label) < 2:
        raise MXNetFormatError(f"{where}: label too short ({len(label)} values)")
    header, width = int(label[0]), int(label[1])
    if header < 2 or width < 5 or (len(label) - header) % width:
        raise MXNetFormatError(f"{where}: header width {header} and object width {width} do not "
                               f"fit a label of {len(label)} values")
    objects = []
    for row in np.reshape(label[header:], (-1, width)):
        if row[0] < 0:  # -1 padding
            continue
        objects.append(SourceObject(label=int(round(row[0])), xmin=float(row[1]),
                                    ymin=float(row[2]), xmax=float(row[3]), ymax=float(row[4]),
                                    difficult=width > 5 and row[5] > 0.5))
    return objects


def read_lst(lst_path: str, images_root: str) -> list[SourceImage]:
    """An im2rec detection list -> items with normalised boxes."""
    items = []
    with open(lst_path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            where = f"{lst_path} line {number}"
            try:
                label = np.array([float(p) for p in parts[1:-1]], np.float64)
                objects = label_objects(label, where)
            except (ValueError, MXNetFormatError) as e:
                items.append(SourceImage(name=f"line {number}", error=str(e)))
                continue
            path = os.path.join(images_root, parts[-1])
            items.append(SourceImage(name=os.path.basename(parts[-1]), path=path,
                                     objects=objects, normalized_boxes=True))
    return items


def read_recordio(rec_path: str):
    """Yields the records of a dmlc RecordIO file (or FIFO), joining multi-part records."""
    with open(rec_path, "rb") as f:
        yield from read_record_stream(f, rec_path)


def read_record_stream(stream, where: str):
    """Yields the records of a binary stream of dmlc RecordIO; ``where`` names it in errors.

    Reads sequentially (no seek), so a pipe works as well as a file.
    """
    parts: list[bytes] = []
    offset = 0
    while True:
        head = stream.read(8)
        if not head:
            break
        if len(head) < 8:
            raise MXNetFormatError(f"{where}: truncated record header at byte {offset}")
        magic, length_and_flag = struct.unpack("<II", head)
        if magic != RECORDIO_MAGIC:
            raise MXNetFormatError(f"{where}: no RecordIO magic at byte {offset}")
        flag, length = length_and_flag >> 29, length_and_flag & ((1 << 29) - 1)
        data = stream.read(length)
        if len(data) < length:
            raise MXNetFormatError(f"{where}: record at byte {offset} is truncated")
        padding = (4 - length % 4) % 4
        stream.read(padding)
        offset += 8 + length + padding
        if flag == 0:
            yield data
        elif flag == 1:
            parts = [data]
        elif flag in (2, 3):
            parts.append(data)
            if flag == 3:
                yield _MAGIC_BYTES.join(parts)
        else:
            raise MXNetFormatError(f"{where}: bad continuation flag at byte {offset}")


def unpack_image_record(record: bytes) -> tuple[np.ndarray, int, bytes]:
    """An MXNet image record -> (label float32 [N], image id, image bytes)."""
    flag, scalar, image_id, _ = _IR_HEADER.unpack_from(record)
    body = record[_IR_HEADER.size:]
    if flag > 0:
        label = np.frombuffer(body[:4 * flag], np.float32)
        body = body[4 * flag:]
    else:
        label = np.array([scalar], np.float32)
    return label, image_id, body


def read_rec(rec_path: str) -> list[SourceImage]:
    """An im2rec detection RecordIO file -> items holding their image bytes."""
    return image_records(read_recordio(rec_path), os.path.basename(rec_path))


def image_records(records, base: str) -> list[SourceImage]:
    """im2rec detection records -> items holding their image bytes; ``base`` names them."""
    return list(iter_image_records(records, base))


def iter_image_records(records, base: str):
    """Yields im2rec detection records as items, one at a time (a Pipe-mode stream)."""
    for number, record in enumerate(records):
        yield image_item(record, base, number)


def image_item(record: bytes, base: str, number: int) -> SourceImage:
    """One im2rec detection record (the ``number``-th of ``base``) -> an item, or its error."""
    try:
        label, image_id, image = unpack_image_record(record)
        name = f"{base}#{image_id}"
        return SourceImage(name=name, data=image, normalized_boxes=True,
                           objects=label_objects(label.astype(np.float64), name))
    except (struct.error, ValueError, MXNetFormatError) as e:
        return SourceImage(name=f"{base} record {number}", error=str(e))
