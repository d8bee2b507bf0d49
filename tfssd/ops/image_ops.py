"""Image decoding and resizing shared by the input pipeline and the serving graph."""

import tensorflow as tf


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """JPEG, PNG, GIF or BMP bytes -> uint8 [H, W, 3] (grayscale and RGBA become RGB)."""
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
