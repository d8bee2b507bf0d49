"""Image decoding and resizing shared by the input pipeline and the serving graph."""

import tensorflow as tf


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """JPEG (MPO too: its first image), PNG, GIF (its first frame), BMP or WebP bytes -> uint8
    [H, W, 3] (grayscale and RGBA become RGB)."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize(image: tf.Tensor, output_size: int) -> tf.Tensor:
    """Resizes ``image [H, W, 3]`` (any aspect ratio) to float32 [S, S, 3], values in [0, 255].

    SSD resizes without keeping the aspect ratio, so normalised boxes are unchanged by it and
    detections map straight back onto the original image. Half-pixel centres, bilinear.
    """
    return tf.image.resize(tf.cast(image, tf.float32), [output_size, output_size],
                           method="bilinear", antialias=False)


def _unsigned(data: tf.Tensor, offset: int, length: int, little_endian: bool) -> tf.Tensor:
    """The unsigned integer of ``length`` bytes at ``offset`` of a string, as int64."""
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(data, offset, length), tf.uint8), tf.int64)
    weights = tf.constant([256 ** i for i in range(length)], tf.int64)
    return tf.reduce_sum(raw * (weights if little_endian else tf.reverse(weights, [0])))


def declared_pixels(image_bytes: tf.Tensor) -> tf.Tensor:
    """Width x height as a JPEG, PNG, GIF, BMP or WebP header declares it (int64 scalar), 0 if
    unknown.

    Read from the header alone, so that a limit can refuse an image before it is decoded (a
    small PNG can declare 40000 x 40000 pixels). These are all the formats ``decode_image``
    reads; a GIF is decoded at its logical screen size, one frame only.
    """
    magic = tf.strings.substr(image_bytes, 0, 4)
    long_enough = tf.strings.length(image_bytes) >= 26

    def jpeg():
        shape = tf.cast(tf.io.extract_jpeg_shape(image_bytes), tf.int64)
        return shape[0] * shape[1]

    def png():
        return _unsigned(image_bytes, 16, 4, False) * _unsigned(image_bytes, 20, 4, False)

    def gif():
        return _unsigned(image_bytes, 6, 2, True) * _unsigned(image_bytes, 8, 2, True)

    def bmp():  # height may be stored negative (top-down rows)
        height = _unsigned(image_bytes, 22, 4, True)
        height = tf.where(height >= 2 ** 31, 2 ** 32 - height, height)
        return _unsigned(image_bytes, 18, 4, True) * height

    def webp():  # RIFF....WEBP, then a VP8 (lossy), VP8L (lossless) or VP8X (extended) chunk
        chunk = tf.strings.substr(image_bytes, 12, 4)

        def lossy():  # 14-bit width and height after the key frame's start code
            return ((_unsigned(image_bytes, 26, 2, True) % 16384)
                    * (_unsigned(image_bytes, 28, 2, True) % 16384))

        def lossless():  # after the 0x2f signature: 14 bits width - 1, 14 bits height - 1
            bits = _unsigned(image_bytes, 21, 4, True)
            return (bits % 16384 + 1) * ((bits // 16384) % 16384 + 1)

        def extended():  # the canvas: 24 bits width - 1, 24 bits height - 1
            return ((_unsigned(image_bytes, 24, 3, True) + 1)
                    * (_unsigned(image_bytes, 27, 3, True) + 1))

        return tf.case([(chunk == b"VP8 ", lossy), (chunk == b"VP8L", lossless),
                        (chunk == b"VP8X", extended)],
                       default=lambda: tf.constant(0, tf.int64))

    is_webp = tf.logical_and(tf.strings.length(image_bytes) >= 30, tf.logical_and(
        magic == b"RIFF", tf.strings.substr(image_bytes, 8, 4) == b"WEBP"))
    return tf.case([
        (tf.strings.substr(magic, 0, 3) == b"\xff\xd8\xff", jpeg),
        (tf.logical_and(long_enough, magic == b"\x89PNG"), png),
        (tf.logical_and(long_enough, tf.strings.substr(magic, 0, 3) == b"GIF"), gif),
        (tf.logical_and(long_enough, tf.strings.substr(magic, 0, 2) == b"BM"), bmp),
        (is_webp, webp),
    ], default=lambda: tf.constant(0, tf.int64))


def decode_image_within(image_bytes: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """``decode_image``, refusing (InvalidArgumentError) an image declaring over ``max_pixels``,
    or one whose size its header does not tell (no format that ``decode_image`` reads)."""
    if not max_pixels:
        return decode_image(image_bytes)
    pixels = declared_pixels(image_bytes)
    known = tf.debugging.assert_positive(
        pixels, message="Not a JPEG, PNG, GIF, BMP or WebP image whose header gives its size; "
                        "it was not decoded")
    check = tf.debugging.assert_less_equal(
        pixels, tf.constant(max_pixels, tf.int64),
        message=f"The image declares more than {max_pixels} pixels (width x height), the limit "
                "this model was exported with; it was not decoded")
    with tf.control_dependencies([known, check]):
        return decode_image(image_bytes)
