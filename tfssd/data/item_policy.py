"""The bad-data policy for one image of a conversion: what is kept, fixed, dropped or skipped.

Per image (the whole image is skipped, with the reason):
* an unreadable annotation, a missing or unreadable image file, an image that is not an image,
  is truncated or corrupt (every image is decoded fully), or declares more pixels than the
  limit; an unknown class; a label longer than ``label_width``.

Per box (the box is dropped and counted, the image kept):
* non-finite coordinates; zero-area or inverted; degenerate (at most one pixel of area: a
  point annotation); entirely outside the image. A box partly outside is clipped and counted; a
  box under ``TINY_BOX_PIXELS`` wide or tall is kept and counted.

Per image file (fixed and counted):
* EXIF orientation: decoders that read the records (TensorFlow's) ignore it, so an oriented
  image is written as the view its boxes describe. Where the annotation records the image size,
  it decides: the stored size means the stored view, the rotated size the rotated view. Without
  a recorded size (YOLO, manifests without it) the rotated view is taken, as image viewers and
  labelling tools show it. An invalid tag is ignored (the stored view) and reported.
* grayscale, CMYK, palette, RGBA, 16-bit, and formats other than JPEG and PNG become RGB JPEG.
"""

from __future__ import annotations

import collections
import dataclasses
import io

import numpy as np
from PIL import Image, ImageOps

from tfssd.data import schema
from tfssd.data.sources import SourceImage
from tfssd.ops.image_check import ImageError, inspect_image

TINY_BOX_PIXELS = 2.0
DEGENERATE_BOX_AREA = 1.0  # square pixels: a point annotation (VOC's xmin == xmax) or one pixel
_KEPT_FORMATS = {"JPEG": "jpeg", "PNG": "png"}
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)  # orientations that turn the image by 90 degrees


@dataclasses.dataclass
class ItemResult:
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
    orientation: str | None = None  # what was done about an EXIF orientation tag
    size_mismatch: bool = False
    label_width: int = schema.HEADER_WIDTH


def read_image_bytes(item: SourceImage) -> bytes:
    if item.data is not None:
        return item.data
    with open(item.path, "rb") as f:
        return f.read()


def _orient(image: Image.Image, annotated_size: tuple[int, int] | None
            ) -> tuple[Image.Image, str | None]:
    """The view the boxes describe, and what was decided (None: no orientation tag)."""
    tag = image.getexif().get(_EXIF_ORIENTATION)
    if tag is None or tag == 1:
        return image, None
    if not isinstance(tag, int) or not 1 <= tag <= 8:
        return image, f"invalid EXIF orientation {tag!r} ignored (stored view)"
    width, height = image.size
    rotated = (height, width) if tag in _SWAPS_SIDES else (width, height)
    if annotated_size and tuple(annotated_size) == (width, height) != rotated:
        return image, f"EXIF orientation {tag} not applied: the annotation size is the stored one"
    why = "the annotation size is the rotated one" if annotated_size else "no annotation size"
    return ImageOps.exif_transpose(image), f"EXIF orientation {tag} applied ({why})"


def prepare_image(data: bytes, name: str, annotated_size: tuple[int, int] | None,
                  max_pixels: int) -> tuple[bytes, str, int, int, str | None, str | None]:
    """Checks and decodes fully; returns the bytes to store, as RGB JPEG or PNG.

    Returns:
      (bytes, format, width, height, why it was re-encoded or None, the orientation decision
      or None).

    Raises:
      ImageError: not an image, truncated or corrupt, or over ``max_pixels``.
    """
    inspect_image(data, name, max_pixels, decode=False)  # the pixel limit, before decoding
    try:
        with Image.open(io.BytesIO(data)) as stored:
            stored.load()
            image, orientation = _orient(stored, annotated_size)
            source_format, mode = stored.format, stored.mode
            width, height = image.size
            if (source_format in _KEPT_FORMATS and mode == "RGB"
                    and not (orientation and "applied" in orientation)):
                return data, _KEPT_FORMATS[source_format], width, height, None, orientation
            buffer = io.BytesIO()
            if mode.startswith("I"):  # 16-bit (or 32-bit integer) grayscale: scale to 8 bits
                image = Image.fromarray(np.clip(np.asarray(image, np.float64) / 257, 0, 255)
                                        .astype(np.uint8))
            rgb = image.convert("RGB")
            rgb.save(buffer, format="JPEG", quality=95)
    except ImageError:
        raise
    except Exception as e:  # PIL raises many types for bad data
        raise ImageError(f"corrupt or truncated image: {e}") from None
    reason = (f"{mode} {source_format} to RGB JPEG" if (source_format, mode) != ("JPEG", "RGB")
              else "rotated by its EXIF orientation")
    return buffer.getvalue(), "jpeg", width, height, reason, orientation


def _box(obj, item: SourceImage, width: int, height: int, result: ItemResult):
    """The object's normalised [xmin, ymin, xmax, ymax], or None when it is dropped."""
    corners = np.array([obj.xmin, obj.ymin, obj.xmax, obj.ymax], np.float64)
    if item.normalized_boxes:
        corners = corners * [width, height, width, height]
    if not np.all(np.isfinite(corners)):
        result.dropped["non-finite coordinates"] += 1
        return None
    if corners[2] <= corners[0] or corners[3] <= corners[1]:
        result.dropped["zero-area or inverted"] += 1
        return None
    if (corners[2] - corners[0]) * (corners[3] - corners[1]) <= DEGENERATE_BOX_AREA:
        result.dropped["degenerate (a point or a single pixel)"] += 1
        return None
    clipped = np.clip(corners, 0, [width, height, width, height])
    if not np.array_equal(clipped, corners):
        result.clipped += 1
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        result.dropped["outside the image"] += 1
        return None
    if min(clipped[2] - clipped[0], clipped[3] - clipped[1]) < TINY_BOX_PIXELS:
        result.tiny += 1
    return clipped / [width, height, width, height]


def process(item: SourceImage, class_index: dict, num_classes: int, label_width: int,
            drop_difficult: bool, max_pixels: int) -> ItemResult:
    """Applies the policy to one item; the result holds the record or why it was skipped."""
    result = ItemResult(item.name)
    if item.error:
        result.skip_reason = f"unreadable annotation: {item.error}"
        return result
    try:
        data = read_image_bytes(item)
    except OSError as e:
        result.skip_reason = f"missing or unreadable image file {item.path}: {e.strerror or e}"
        return result
    try:
        (data, image_format, width, height, result.reencoded,
         result.orientation) = prepare_image(data, item.name, item.annotated_size, max_pixels)
    except ImageError as e:
        reason = str(e).removeprefix(f"{item.name}: ")
        result.skip_reason = (f"too large: {reason}" if "megapixels" in reason else
                              reason if reason.startswith("corrupt or truncated") else
                              f"corrupt or truncated image: {reason}")
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
        box = _box(obj, item, width, height, result)
        if box is not None:
            classes.append(class_id)
            boxes.append(box)
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
