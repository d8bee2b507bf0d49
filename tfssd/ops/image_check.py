"""Image files checked before anything decodes them: format, declared size, completeness.

A file that is empty, not an image, truncated, or that declares more pixels than a limit is
refused with a message naming it, before a decoder allocates its pixels (a small PNG can
declare 40000 x 40000). Used by the converter, tfssd-predict, tfssd-evaluate and the server;
the serving graph applies the same limit itself (deploy/saved_model.py).
"""

from __future__ import annotations

import dataclasses
import io
import warnings

from PIL import Image

DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels: 10000 x 10000; 300 MB as RGB uint8
# What tf.io.decode_image reads, by PIL's names: MPO is a JPEG holding several images (phone
# cameras write them), of which the first is decoded; of a GIF, the first frame.
SERVED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP")
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"),
               (b"BM", "BMP"), (b"RIFF", "WEBP"))


def signature_format(data: bytes) -> str | None:
    """The image format its first bytes announce (PIL's name: JPEG, PNG, ...), else None."""
    return next((f for magic, f in _SIGNATURES if data.startswith(magic)), None)


class ImageError(ValueError):
    """An image file that cannot be used; the message says why and what was expected."""


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    format: str  # PIL's name: JPEG, PNG, ...
    width: int
    height: int
    mode: str  # PIL's mode: RGB, L, RGBA, CMYK, I;16, ...


def check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    """Refuses an image whose declared size exceeds ``max_pixels`` (0: no limit)."""
    if max_pixels and width * height > max_pixels:
        raise ImageError(f"{name}: declares {width} x {height} pixels "
                         f"({width * height / 1e6:.0f} megapixels), more than the limit of "
                         f"{max_pixels / 1e6:g} megapixels; raise --max_image_pixels if the "
                         "image is genuine")


def _header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header, read by PIL's format plugins without its size limit."""
    for format_id in Image.ID:
        factory, accept = Image.OPEN[format_id]
        if accept is not None and not accept(data[:16]):
            continue
        try:
            return factory(io.BytesIO(data), "").size
        except Exception:  # not this format
            continue
    raise ImageError("the image's header does not parse")


def inspect_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                  decode: bool = True, formats: tuple[str, ...] | None = None) -> ImageInfo:
    """Checks encoded image bytes; returns what they hold.

    Args:
      data: the file's bytes.
      name: shown in messages (a path, a request part).
      max_pixels: the largest width x height accepted (0: no limit); checked from the header,
        before any pixel is decoded.
      decode: decode every pixel too (finds truncated and corrupt files).
      formats: accepted PIL format names (default: any PIL reads).

    Raises:
      ImageError: empty, not an image, a format not in ``formats``, over the pixel limit,
        truncated or corrupt.
    """
    if not data:
        raise ImageError(f"{name}: empty file; expected JPEG or PNG image bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:  # PIL's own limit, above any sensible one
            width, height = _header_size(data)
            check_pixels(width, height, max_pixels or 1, name)
            raise
        except Exception:  # PIL raises several types for what is not an image
            signature = signature_format(data)
            if signature:
                raise ImageError(f"{name}: truncated or corrupt {signature} image (its header "
                                 f"does not parse; {len(data)} bytes)") from None
            head = data[:16]
            kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "binary"
            raise ImageError(f"{name}: not an image ({kind} data starting {head!r}); expected "
                             "JPEG or PNG") from None
        with image:
            info = ImageInfo(image.format or "unknown", image.size[0], image.size[1], image.mode)
            if formats is not None and info.format not in formats:
                raise ImageError(f"{name}: {info.format} image; expected one of "
                                 + ", ".join(formats))
            check_pixels(info.width, info.height, max_pixels, name)
            if decode:
                try:
                    image.load()
                except Exception as e:  # truncated or corrupt data
                    raise ImageError(f"{name}: truncated or corrupt {info.format} image "
                                     f"({e})") from None
    return info
