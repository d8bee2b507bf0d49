"""SSD data augmentation: photometric distortion, zoom-out, IoU-constrained crop, flip.

SSD paper, Sec. 2.2 "Data augmentation" and Sec. 3.6 (zoom-out "expansion"), with the sampler
settings of the authors' Caffe models. The geometric steps are worked out on boxes only: they
come down to one sampling window in the coordinates of the original image (outside [0, 1] where
the image was expanded, with reversed x where it was flipped), and a single
``tf.image.crop_and_resize`` then produces the output image. That never materialises the up to
4x4 larger expanded canvas. The fill of the expansion is the mean pixel, as in SSD.

All randomness is stateless and derived from a per-example seed, so an example is augmented the
same way on every run, worker count and restart.
"""

from __future__ import annotations

import tensorflow as tf

from tfssd.ops import box_ops

MEAN_RGB = (123.0, 117.0, 104.0)  # SSD's fill for expanded canvases
MAX_EXPANSION = 4.0
EXPAND_PROBABILITY = 0.5
FLIP_PROBABILITY = 0.5
CROP_MIN_IOUS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.0)  # 0.0: any crop (SSD's "max_jaccard 1.0")
CROP_TRIALS = 50
CROP_SCALE = (0.3, 1.0)
CROP_ASPECT = (0.5, 2.0)


def _uniform(seed, shape=(), minval=0.0, maxval=1.0):
    return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval)


def _seeds(seed: tf.Tensor, count: int) -> list[tf.Tensor]:
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=count))


def photometric_distort(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """SSD's photometric distortion of ``image: float32 [H, W, 3]`` with values in [0, 255].

    Brightness +-32, contrast and saturation x[0.5, 1.5], hue +-18 degrees, each applied with
    probability 0.5; contrast comes first or last with equal probability.
    """
    s = _seeds(seed, 9)

    def maybe(seed_index, value, identity):
        return tf.where(_uniform(s[seed_index]) < 0.5, value, identity)

    brightness = maybe(0, _uniform(s[1], minval=-32.0, maxval=32.0), 0.0)
    contrast = maybe(2, _uniform(s[3], minval=0.5, maxval=1.5), 1.0)
    saturation = maybe(4, _uniform(s[5], minval=0.5, maxval=1.5), 1.0)
    hue = maybe(6, _uniform(s[7], minval=-18.0 / 360, maxval=18.0 / 360), 0.0)
    contrast_first = _uniform(s[8]) < 0.5

    image = tf.clip_by_value(image + brightness, 0.0, 255.0)
    image = tf.cond(contrast_first, lambda: tf.image.adjust_contrast(image, contrast),
                    lambda: image)
    # HSV conversions are scale-free, so these work on [0, 255] values.
    image = tf.image.adjust_saturation(image, saturation)
    image = tf.image.adjust_hue(image, hue)
    image = tf.cond(contrast_first, lambda: image,
                    lambda: tf.image.adjust_contrast(image, contrast))
    return tf.clip_by_value(image, 0.0, 255.0)


def sample_crop(boxes: tf.Tensor, canvas_hw: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """SSD's IoU-constrained crop sampler.

    For each minimum IoU in CROP_MIN_IOUS, up to CROP_TRIALS crops (sides 0.3..1 of the canvas,
    aspect ratio 0.5..2 in pixels) are drawn; a crop qualifies when some box overlaps it with at
    least that IoU and at least one box centre lies inside it. One option is then chosen
    uniformly among the whole canvas and the first qualifying crop of each minimum IoU.

    Args:
      boxes: float32 [N, 4], normalised yxyx in canvas coordinates; N may be 0.
      canvas_hw: float32 [2], the canvas size in pixels (for the aspect ratio).
      seed: int [2].

    Returns:
      float32 [4], the chosen crop, yxyx in canvas coordinates.
    """
    s = _seeds(seed, 5)
    shape = (len(CROP_MIN_IOUS), CROP_TRIALS)
    height = _uniform(s[0], shape, *CROP_SCALE)
    width = _uniform(s[1], shape, *CROP_SCALE)
    top = _uniform(s[2], shape) * (1.0 - height)
    left = _uniform(s[3], shape) * (1.0 - width)
    crops = tf.stack([top, left, top + height, left + width], axis=-1)  # [M, T, 4]
    aspect = (width * canvas_hw[1]) / (height * canvas_hw[0])
    valid = (aspect >= CROP_ASPECT[0]) & (aspect <= CROP_ASPECT[1])

    flat = tf.reshape(crops, [-1, 4])
    overlaps = tf.reshape(box_ops.iou(flat, boxes), [*shape, tf.shape(boxes)[0]])  # [M, T, N]
    min_iou = tf.constant(CROP_MIN_IOUS)[:, None, None]
    centre_y = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_x = (boxes[:, 1] + boxes[:, 3]) / 2
    centre_inside = ((centre_y > crops[..., 0:1]) & (centre_y < crops[..., 2:3])
                     & (centre_x > crops[..., 1:2]) & (centre_x < crops[..., 3:4]))  # [M, T, N]
    has_boxes = tf.shape(boxes)[0] > 0
    satisfied = tf.reduce_any(overlaps >= min_iou, axis=-1) & tf.reduce_any(centre_inside, -1)
    valid &= satisfied | ~has_boxes

    first = tf.argmax(tf.cast(valid, tf.int32), axis=1, output_type=tf.int32)  # [M]
    chosen = tf.gather(crops, first, batch_dims=1)  # [M, 4]
    options = tf.concat([[[0.0, 0.0, 1.0, 1.0]], chosen], axis=0)
    option_valid = tf.concat([[True], tf.reduce_any(valid, axis=1)], axis=0)
    logits = tf.where(option_valid, 0.0, -1e9)[None, :]
    pick = tf.random.stateless_categorical(logits, 1, seed=s[4], dtype=tf.int32)[0, 0]
    return options[pick]


def _window_to_crop_box(window: tf.Tensor, image_hw: tf.Tensor, output_size: int) -> tf.Tensor:
    """A window in continuous image coordinates -> the box ``crop_and_resize`` expects.

    ``crop_and_resize`` maps box coordinate y to pixel index y * (H - 1) and puts output pixels
    on a grid that includes both ends. Solving for the box that samples output pixel i at the
    continuous point window_start + (i + 0.5) / S * window_size (half-pixel centres, as
    ``tf.image.resize``) keeps augmented and plain resized images aligned with their boxes.
    """
    size = tf.cast(output_size, tf.float32)
    hw = tf.tile(image_hw, [2])  # [H, W, H, W]
    start, end = window[:2], window[2:]
    extent = (end - start) * image_hw
    first = start * image_hw - 0.5 + 0.5 * extent / size
    last = start * image_hw - 0.5 + (size - 0.5) * extent / size
    return tf.concat([first, last], axis=0) / tf.maximum(hw - 1.0, 1.0)


def ssd_augment(image: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor, difficult: tf.Tensor,
                seed: tf.Tensor, output_size: int):
    """Augments one training example as SSD does and resizes it to the network input.

    Args:
      image: uint8 or float32 [H, W, 3], RGB, values in [0, 255].
      boxes: float32 [N, 4], normalised yxyx.
      classes: int32 [N].
      difficult: bool [N].
      seed: int32 or int64 [2], this example's seed.
      output_size: side of the square output.

    Returns:
      image: float32 [output_size, output_size, 3], values in [0, 255].
      boxes: float32 [K, 4], normalised yxyx in [0, 1], K <= N (objects whose centre left the
        crop are dropped).
      classes: int32 [K].
      difficult: bool [K].
    """
    s = _seeds(tf.cast(seed, tf.int64), 6)
    image_hw = tf.cast(tf.shape(image)[:2], tf.float32)

    # Zoom out: the image sits at `offset` (in image units) inside a canvas `ratio` times larger.
    expand = _uniform(s[0]) < EXPAND_PROBABILITY
    ratio = tf.where(expand, _uniform(s[1], minval=1.0, maxval=MAX_EXPANSION), 1.0)
    offset = _uniform(s[2], [2]) * (ratio - 1.0)  # [dy, dx]
    shift = tf.tile(offset, [2])
    canvas_boxes = (boxes + shift) / ratio

    crop = sample_crop(canvas_boxes, image_hw * ratio, s[3])
    centre_y = (canvas_boxes[:, 0] + canvas_boxes[:, 2]) / 2
    centre_x = (canvas_boxes[:, 1] + canvas_boxes[:, 3]) / 2
    keep = ((centre_y > crop[0]) & (centre_y < crop[2])
            & (centre_x > crop[1]) & (centre_x < crop[3]))
    crop_hw = tf.tile(crop[2:] - crop[:2], [2])
    boxes = box_ops.clip((tf.boolean_mask(canvas_boxes, keep) - tf.tile(crop[:2], [2])) / crop_hw)
    classes = tf.boolean_mask(classes, keep)
    difficult = tf.boolean_mask(difficult, keep)

    window = crop * ratio - shift  # the crop in the original image's coordinates
    flip = _uniform(s[4]) < FLIP_PROBABILITY
    boxes = tf.where(flip, tf.stack([boxes[:, 0], 1.0 - boxes[:, 3],
                                     boxes[:, 2], 1.0 - boxes[:, 1]], axis=-1), boxes)

    crop_box = _window_to_crop_box(window, image_hw, output_size)
    # crop_and_resize flips the sample when x2 < x1.
    crop_box = tf.where(flip, tf.gather(crop_box, [0, 3, 2, 1]), crop_box)
    mean = tf.constant(MEAN_RGB)
    centred = tf.cast(image, tf.float32) - mean  # so that the fill (0) becomes the mean pixel
    resized = tf.image.crop_and_resize(centred[None], crop_box[None], [0],
                                       [output_size, output_size], extrapolation_value=0.0)[0]
    image = photometric_distort(resized + mean, s[5])
    return image, boxes, classes, difficult
