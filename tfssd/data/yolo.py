"""YOLO (Ultralytics) text labels as conversion items.

The layout: an images folder and a labels folder; image ``NAME.<ext>`` (any of
``IMAGE_EXTENSIONS``, case-insensitive) has its objects in ``NAME.txt`` in the labels folder,
one object a line. Only the files directly in the images folder are read, and every image with
the same ``NAME`` shares ``NAME.txt``, as in Ultralytics. Without a labels folder, it is the
images folder's path with its last ``images`` component replaced by ``labels``
(``data/images/train2017`` -> ``data/labels/train2017``), as Ultralytics finds it.

A label line is one of:

* ``class cx cy w h``: exactly 5 numbers, the box's centre and size as fractions of the image
  width and height. The item's corners are ``cx -+ w / 2`` and ``cy -+ h / 2``.
* ``class x1 y1 x2 y2 x3 y3 ...``: an odd number of at least 7 numbers, a segmentation polygon
  (or an oriented box's 4 corners) of fractions; the object is the polygon's bounding box, as
  Ultralytics' detection datasets take it.

Anything else is refused with the file and the line: 6 values (a prediction with a trailing
confidence is not ground truth), other counts, values that are not finite numbers, a class id
that is not a whole number or is outside the class names, a negative width or height, and
corners or points outside [0, 1] by more than ``TOLERANCE`` (such files are usually in pixels;
within it the values are rounding and are clipped to [0, 1]). One bad line makes the whole
image an item with ``error`` set, so the converter skips and reports it (or stops under
``strict``) instead of training on half its objects. A missing or empty label file is an image
without objects, kept as a negative. A label file without an image is reported as an item with
``error`` set (``classes.txt``, which labelling tools write beside the labels, excepted).

Class names are not in the label files; they come from an Ultralytics ``data.yaml``
(``read_data_yaml``) or from the user. Pose labels (``kpt_shape`` in data.yaml: keypoints after
the box) are not read: their lines would pass for polygons.
"""

from __future__ import annotations

import math
import os

import yaml

from tfssd.data.sources import SourceDataError, SourceImage, SourceObject

IMAGE_EXTENSIONS = frozenset({".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff",
                              ".webp"})
LABEL_EXTENSION = ".txt"
TOLERANCE = 1e-3  # how far outside [0, 1] a normalised coordinate may be rounded
_IGNORED_LABEL_FILES = {"classes.txt"}


class YOLOFormatError(SourceDataError):
    """A data.yaml without usable class names, or a layout whose labels cannot be found."""


class _BadLine(ValueError):
    """One label line that is not a YOLO object; the message says what was expected."""


def default_labels_dir(images_dir: str) -> str | None:
    """The labels folder Ultralytics pairs with ``images_dir``, or None if there is none.

    The last path component named ``images`` becomes ``labels``: ``data/images/train2017`` ->
    ``data/labels/train2017``, ``data/images`` -> ``data/labels``.
    """
    parts = os.path.normpath(images_dir).split(os.sep)
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            return os.sep.join(parts) or os.sep
    return None


def read_data_yaml(path: str) -> list[str]:
    """Class names by id from an Ultralytics data.yaml.

    ``names`` is a list (``[person, bicycle]``) or a mapping of ids from 0 without gaps
    (``{0: person, 1: bicycle}``); an ``nc`` entry, where present, must equal their count.

    Raises:
      YOLOFormatError: the file is not YAML, has no usable ``names``, or describes keypoints.
      OSError: the file cannot be read.
    """
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise YOLOFormatError(f"{path}: not YAML ({e})") from None
    if not isinstance(data, dict) or "names" not in data:
        raise YOLOFormatError(f"{path}: expected a mapping with 'names:' (a list of class names "
                              "or a mapping of class id -> name)")
    if "kpt_shape" in data:
        raise YOLOFormatError(f"{path}: a pose dataset (kpt_shape); its label lines carry "
                              "keypoints after the box, which this converter does not read")
    names = data["names"]
    if isinstance(names, dict):
        try:
            by_id = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
            raise YOLOFormatError(f"{path}: 'names:' keys must be class ids 0, 1, ..., got "
                                  f"{list(names)}") from None
        ids = sorted(by_id)
        if ids != list(range(len(ids))):
            raise YOLOFormatError(f"{path}: 'names:' class ids must run 0..{len(ids) - 1} "
                                  f"without gaps, got {ids}")
        names = [by_id[i] for i in ids]
    if not isinstance(names, list) or not names:
        raise YOLOFormatError(f"{path}: 'names:' must be a non-empty list of class names or a "
                              f"mapping of class id -> name, got {names!r}")
    unnamed = [i for i, name in enumerate(names) if name is None or isinstance(name, (dict, list))]
    if unnamed:
        raise YOLOFormatError(f"{path}: class ids {unnamed} have no name")
    if "nc" in data and data["nc"] != len(names):
        raise YOLOFormatError(f"{path}: nc: {data['nc']} but 'names:' lists {len(names)} "
                              "classes")
    return [str(name) for name in names]


def _number(token: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise _BadLine(f"{token!r} is not a number") from None
    if not math.isfinite(value):
        raise _BadLine(f"{token!r} is not a finite number")
    return value


def _in_unit_range(values: list[float], what: str) -> list[float]:
    """Clips values within ``TOLERANCE`` of [0, 1]; refuses the line for any further out."""
    outside = [v for v in values if not -TOLERANCE <= v <= 1 + TOLERANCE]
    if outside:
        shown = ", ".join(f"{v:.6g}" for v in values)
        raise _BadLine(f"{what} ({shown}) outside [0, 1] by more than {TOLERANCE:g}; expected "
                       "coordinates as fractions of the image size")
    return [min(max(v, 0.0), 1.0) for v in values]


def parse_line(text: str, num_classes: int | None = None) -> SourceObject:
    """One label line -> an object with corners as fractions of the image size.

    Args:
      text: ``class cx cy w h`` or ``class x1 y1 x2 y2 x3 y3 ...`` (normalised).
      num_classes: class ids must be below it; None: any id from 0.

    Returns:
      A SourceObject whose label is the int class id and whose corners are normalised
      [xmin, ymin, xmax, ymax].

    Raises:
      ValueError: the line is not a YOLO object; the message says what was expected.
    """
    tokens = text.split()
    if len(tokens) != 5 and (len(tokens) < 7 or len(tokens) % 2 == 0):
        hint = " (a trailing confidence? predictions are not labels)" if len(tokens) == 6 else ""
        raise _BadLine(f"{len(tokens)} values{hint}; expected 5 (class cx cy w h) or an odd "
                       "number of at least 7 (class x1 y1 x2 y2 x3 y3 ..., a polygon)")
    values = [_number(token) for token in tokens]
    class_value = values[0]
    if class_value != int(class_value):
        raise _BadLine(f"class id {tokens[0]!r} is not a whole number")
    class_id = int(class_value)
    if class_id < 0 or (num_classes is not None and class_id >= num_classes):
        known = f"0..{num_classes - 1}" if num_classes else "none"
        raise _BadLine(f"class id {class_id} outside the class names (ids {known})")
    if len(values) == 5:
        cx, cy, w, h = values[1:]
        if w < 0 or h < 0:
            raise _BadLine(f"negative width or height ({w:.6g}, {h:.6g}); expected class cx cy "
                           "w h with w, h >= 0")
        corners = _in_unit_range([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2],
                                 "box corners xmin, ymin, xmax, ymax")
    else:
        points = _in_unit_range(values[1:], "polygon points")
        xs, ys = points[0::2], points[1::2]
        corners = [min(xs), min(ys), max(xs), max(ys)]
    return SourceObject(class_id, *corners)


def read_labels(label_path: str, num_classes: int | None = None) -> list[SourceObject]:
    """The objects of one label file (blank lines skipped).

    Raises:
      ValueError: ``"<label_path>:<line>: <what is wrong>"`` for the first bad line, with a
        count of any further ones; the file cannot be decoded as UTF-8.
      OSError: the file cannot be read.
    """
    objects, errors = [], []
    with open(label_path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                objects.append(parse_line(line, num_classes))
            except _BadLine as e:
                errors.append(f"{label_path}:{number}: {e}")
    if errors:
        more = f" (and {len(errors) - 1} more bad lines)" if len(errors) > 1 else ""
        raise ValueError(errors[0] + more)
    return objects


def _image_item(image_path: str, label_path: str, num_classes: int | None) -> SourceImage:
    item = SourceImage(name=os.path.basename(image_path), path=image_path,
                       normalized_boxes=True)
    if not os.path.exists(label_path):
        return item  # Ultralytics' convention: no label file, no objects
    try:
        item.objects = read_labels(label_path, num_classes)
    except UnicodeDecodeError as e:
        item.error = f"{label_path}: not UTF-8 text ({e.reason} at byte {e.start})"
    except OSError as e:
        item.error = f"{label_path}: {e.strerror or e}"
    except ValueError as e:
        item.error = str(e)
    return item


def read_yolo(images_dir: str, labels_dir: str | None = None,
              num_classes: int | None = None) -> list[SourceImage]:
    """The images of a YOLO dataset with their objects, sorted by name.

    Args:
      images_dir: folder of the images.
      labels_dir: folder of the ``.txt`` label files; default ``default_labels_dir``.
      num_classes: the number of class names; class ids in the files must be below it.

    Returns:
      One item per image (``normalized_boxes=True``, labels are int class ids), with ``error``
      set where its label file has a bad line, and one item with ``error`` set per label file
      without an image.

    Raises:
      YOLOFormatError: no labels folder is given and none can be derived, or it is missing.
      OSError: ``images_dir`` cannot be listed.
    """
    if labels_dir is None:
        labels_dir = default_labels_dir(images_dir)
        if labels_dir is None:
            raise YOLOFormatError(f"{images_dir} has no 'images' path component to replace with "
                                  "'labels'; give the labels folder")
    if not os.path.isdir(labels_dir):
        raise YOLOFormatError(f"labels folder {labels_dir} does not exist")
    image_files = [n for n in os.listdir(images_dir)
                   if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
                   and os.path.isfile(os.path.join(images_dir, n))]
    stems = {os.path.splitext(n)[0] for n in image_files}
    items = [_image_item(os.path.join(images_dir, n),
                         os.path.join(labels_dir, os.path.splitext(n)[0] + LABEL_EXTENSION),
                         num_classes) for n in image_files]
    for name in os.listdir(labels_dir):
        stem, extension = os.path.splitext(name)
        if extension != LABEL_EXTENSION or stem in stems or name in _IGNORED_LABEL_FILES:
            continue
        path = os.path.join(labels_dir, name)
        items.append(SourceImage(name=name, error=f"label file {path} has no image in "
                                                  f"{images_dir}"))
    return sorted(items, key=lambda item: item.name)
