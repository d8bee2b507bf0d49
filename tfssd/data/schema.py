"""tfssd's TFRecord schema: an encoded image and a flat label in SageMaker/MXNet's layout.

A label is ``[A, B, <A - 2 more header values>, object, object, ...]`` with header width ``A``
(2 here) and object width ``B``: 5 for ``class, xmin, ymin, xmax, ymax``, or 6 with a trailing
``difficult`` flag. Coordinates are corners normalised to [0, 1]; class ids start at 0. The
input pipeline pads labels with -1 to ``label_width``, as SageMaker's algorithm does.

Features of a tf.train.Example:
  image/encoded   bytes, JPEG or PNG
  image/format    bytes, b"jpeg" or b"png"
  image/filename  bytes, the source image's name (used in error messages)
  image/height    int64, pixels
  image/width     int64, pixels
  image/label     float list, the flat label above

The TF Object Detection API's schema (``image/object/bbox/{xmin,ymin,xmax,ymax}`` normalised,
``image/object/class/label`` from 1, optional ``image/object/difficult``) is read directly too:
``parse_odapi_example`` turns it into the same flat label, so such datasets train unconverted.
"""

from __future__ import annotations

import struct

import numpy as np
import tensorflow as tf

HEADER_WIDTH = 2
OBJECT_WIDTH = 5
OBJECT_WIDTH_WITH_DIFFICULT = 6
PAD_VALUE = -1.0

IMAGE_KEY = "image/encoded"
FORMAT_KEY = "image/format"
FILENAME_KEY = "image/filename"
HEIGHT_KEY = "image/height"
WIDTH_KEY = "image/width"
LABEL_KEY = "image/label"


def make_label(classes, boxes_xyxy, difficult=None) -> np.ndarray:
    """Builds a flat label.

    Args:
      classes: int [N], class ids from 0.
      boxes_xyxy: float [N, 4], normalised [xmin, ymin, xmax, ymax].
      difficult: optional bool [N]; when given the object width is 6.

    Returns:
      float32 [2 + N * B], B = 5, or 6 with ``difficult``.
    """
    classes = np.asarray(classes, np.float32).reshape(-1, 1)
    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    columns = [classes, boxes]
    if difficult is not None:
        columns.append(np.asarray(difficult, np.float32).reshape(-1, 1))
    objects = np.concatenate(columns, axis=1)
    return np.concatenate([[HEADER_WIDTH, objects.shape[1]], objects.ravel()]).astype(np.float32)


def label_width_needed(num_objects: int, object_width: int = OBJECT_WIDTH) -> int:
    """Floats a label of ``num_objects`` takes: header plus objects."""
    return HEADER_WIDTH + num_objects * object_width


def serialize_example(image_bytes: bytes, image_format: str, filename: str, height: int,
                      width: int, label: np.ndarray) -> bytes:
    """One tf.train.Example in tfssd's schema, serialised."""
    feature = {
        IMAGE_KEY: _bytes_feature(image_bytes),
        FORMAT_KEY: _bytes_feature(image_format.encode()),
        FILENAME_KEY: _bytes_feature(filename.encode()),
        HEIGHT_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[height])),
        WIDTH_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[width])),
        LABEL_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=list(label))),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


_FEATURES = {
    IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    FILENAME_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    LABEL_KEY: tf.io.VarLenFeature(tf.float32),
}


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialised example.

    Returns:
      {"image_bytes": string [], "filename": string [], "label": float32 [L]}.
    """
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    return {"image_bytes": parsed[IMAGE_KEY], "filename": parsed[FILENAME_KEY],
            "label": tf.sparse.to_dense(parsed[LABEL_KEY], default_value=PAD_VALUE)}


_ODAPI_FEATURES = {
    IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    FILENAME_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/difficult": tf.io.VarLenFeature(tf.int64),
}


def parse_odapi_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses a TF Object Detection API example into tfssd's form (see ``parse_example``).

    Class labels count from 1 there and from 0 here; the label gets object width 6 (difficult).
    """
    parsed = tf.io.parse_single_example(serialized, _ODAPI_FEATURES)
    dense = {k: tf.sparse.to_dense(v) for k, v in parsed.items() if isinstance(v, tf.SparseTensor)}
    classes = tf.cast(dense["image/object/class/label"] - 1, tf.float32)
    count = tf.shape(classes)[0]
    difficult = dense["image/object/difficult"]
    difficult = tf.cond(tf.shape(difficult)[0] == count,
                        lambda: tf.cast(difficult, tf.float32), lambda: tf.zeros([count]))
    objects = tf.stack([classes] + [dense[f"image/object/bbox/{k}"] for k in
                                    ("xmin", "ymin", "xmax", "ymax")] + [difficult], axis=1)
    label = tf.concat([[float(HEADER_WIDTH), float(OBJECT_WIDTH_WITH_DIFFICULT)],
                       tf.reshape(objects, [-1])], axis=0)
    return {"image_bytes": parsed[IMAGE_KEY], "filename": parsed[FILENAME_KEY], "label": label}


PARSERS = {"tfssd": parse_example, "odapi": parse_odapi_example}


def detect_format(path: str) -> str:
    """"tfssd" or "odapi", from the feature keys of the first record of ``path``.

    Raises:
      ValueError: the file is empty or its records follow neither schema.
    """
    for record in tf.data.TFRecordDataset(path).take(1):
        keys = set(tf.train.Example.FromString(record.numpy()).features.feature)
        if LABEL_KEY in keys:
            return "tfssd"
        if IMAGE_KEY in keys and ("image/object/class/label" in keys or
                                  "image/object/bbox/xmin" in keys or "image/source_id" in keys):
            return "odapi"
        raise ValueError(f"{path}: records have neither tfssd's features ({LABEL_KEY}) nor the "
                         f"TF Object Detection API's; found {sorted(keys)}")
    raise ValueError(f"{path}: no records")


def resolve_format(files: tuple[str, ...], input_format: str) -> str:
    """``input_format``, or for "auto" the schema of the files (which must all share one)."""
    if input_format != "auto":
        return input_format
    formats = {path: detect_format(path) for path in files}
    if len(set(formats.values())) > 1:
        raise ValueError("the files mix schemas: " + ", ".join(f"{p}: {f}" for p, f in
                                                               formats.items()))
    return next(iter(formats.values()))


def check_label_width(label: tf.Tensor, label_width: int, filename: tf.Tensor) -> tf.Operation:
    """Asserts that ``label [L]`` fits in ``label_width`` floats; the error names the record."""
    length = tf.shape(label)[0]
    return tf.debugging.Assert(
        length <= label_width,
        [f"A record's label does not fit in label_width={label_width}: record (source image)",
         filename, "needs label_width of at least", length], summarize=3)


def label_to_objects(label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Splits a flat label (possibly padded with -1) into its objects.

    Args:
      label: float32 [L], ``[A, B, header..., objects...]``.

    Returns:
      boxes: float32 [N, 4], normalised yxyx.
      classes: int32 [N], from 0.
      difficult: bool [N], False when the object width is 5.
    """
    header_width = tf.cast(label[0], tf.int32)
    object_width = tf.cast(label[1], tf.int32)
    body = label[header_width:]
    usable = tf.shape(body)[0] // object_width * object_width  # drops a ragged -1 tail
    objects = tf.reshape(body[:usable], [-1, object_width])
    objects = tf.boolean_mask(objects, objects[:, 0] >= 0)  # padding has class -1
    classes = tf.cast(tf.round(objects[:, 0]), tf.int32)
    xmin, ymin, xmax, ymax = objects[:, 1], objects[:, 2], objects[:, 3], objects[:, 4]
    difficult = tf.cond(object_width > OBJECT_WIDTH,
                        lambda: objects[:, OBJECT_WIDTH] > 0.5,
                        lambda: tf.zeros_like(classes, tf.bool))
    return tf.stack([ymin, xmin, ymax, xmax], axis=-1), classes, difficult


def count_records(path: str) -> int:
    """Number of records in a TFRecord file, found by seeking over the record bodies.

    Each record is: uint64 length, uint32 crc of the length, data, uint32 crc of the data.
    """
    count = 0
    with tf.io.gfile.GFile(path, "rb") as f:
        size = f.size()
        position = 0
        while position < size:
            header = f.read(12)
            if len(header) < 12:
                raise ValueError(f"{path}: truncated TFRecord after {count} records")
            (length,) = struct.unpack("<Q", header[:8])
            position += 12 + length + 4
            if position > size:
                raise ValueError(f"{path}: truncated TFRecord: record {count} runs past the end")
            f.seek(position)
            count += 1
    return count
