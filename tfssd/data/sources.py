"""What every source format reads its annotations into: images with their objects, in pixels."""

from __future__ import annotations

import dataclasses


class SourceDataError(ValueError):
    """Source data tfssd cannot use; the message names the file (and line or record)."""


class ConversionError(SourceDataError):
    """A bad item under ``strict``, or an unusable class map."""


class ReaderOptionError(SourceDataError):
    """A reader was not given what its format needs (a file, a folder, class names)."""


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
