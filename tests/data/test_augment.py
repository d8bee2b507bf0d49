"""SSD augmentation: boxes stay valid and keep following the pixels they frame."""

import numpy as np
import pytest
import tensorflow as tf

from tfssd.data import augment


def _scene():
    """A grey 120x200 image with a pure red rectangle at rows 30..70, columns 50..150."""
    image = np.full((120, 200, 3), 128, np.uint8)
    image[30:70, 50:150] = (255, 0, 0)
    boxes = np.array([[30 / 120, 50 / 200, 70 / 120, 150 / 200]], np.float32)
    return tf.constant(image), tf.constant(boxes), tf.constant([1]), tf.constant([False])


def test_boxes_stay_in_the_unit_square_and_follow_the_object():
    image, boxes, classes, difficult = _scene()
    kept = 0
    for k in range(40):
        out, out_boxes, out_classes, _ = augment.ssd_augment(image, boxes, classes, difficult,
                                                             tf.constant([7, k]), 96)
        out, out_boxes = out.numpy(), out_boxes.numpy()
        assert out.shape == (96, 96, 3) and out.min() >= 0 and out.max() <= 255
        assert np.all((out_boxes >= 0) & (out_boxes <= 1))
        assert np.all(out_boxes[:, 2:] > out_boxes[:, :2])
        for ymin, xmin, ymax, xmax in out_boxes * 96:
            inner = out[int(ymin) + 3:int(ymax) - 3, int(xmin) + 3:int(xmax) - 3]
            if inner.size:  # photometric changes alter colours, never where red dominates
                red = inner[..., 0] - np.maximum(inner[..., 1], inner[..., 2])
                assert np.median(red) > 40, k
            kept += 1
    assert kept > 20  # most crops keep the object; the sampler requires a centre inside


def test_same_seed_same_result_and_different_seeds_differ():
    image, boxes, classes, difficult = _scene()
    first = augment.ssd_augment(image, boxes, classes, difficult, tf.constant([1, 2]), 64)
    again = augment.ssd_augment(image, boxes, classes, difficult, tf.constant([1, 2]), 64)
    other = augment.ssd_augment(image, boxes, classes, difficult, tf.constant([1, 3]), 64)
    np.testing.assert_array_equal(first[0].numpy(), again[0].numpy())
    assert not np.array_equal(first[0].numpy(), other[0].numpy())


def test_image_without_objects():
    """An image without objects is augmented like any other (SSD trains on crops of background
    too): the crop sampler still crops, within its limits; the outputs are empty with their
    dtypes; and the pixels are those of the image (a uniform mean-grey picture stays uniform
    through every crop, zoom-out fill and distortion)."""
    empty = tf.zeros([0, 4])
    crops = np.array([augment.sample_crop(empty, tf.constant([50.0, 60.0]),
                                          tf.constant([9, k])).numpy() for k in range(40)])
    whole = np.all(crops == [0.0, 0.0, 1.0, 1.0], axis=1)
    # One option in 7 is the whole canvas; the other 6 are crops (no box to satisfy).
    assert 20 <= (~whole).sum() <= 40, crops
    cropped = crops[~whole]
    sides = cropped[:, 2:] - cropped[:, :2]
    assert np.all(cropped >= 0) and np.all(cropped <= 1)
    assert np.all(sides >= augment.CROP_SCALE[0] - 1e-6)
    aspect = sides[:, 1] * 60 / (sides[:, 0] * 50)
    assert np.all((aspect >= augment.CROP_ASPECT[0]) & (aspect <= augment.CROP_ASPECT[1]))
    assert len(np.unique(cropped.round(6), axis=0)) == len(cropped)

    grey = np.array(augment.MEAN_RGB, np.uint8)  # the zoom-out fill's own colour
    for k in range(12):
        out, boxes, classes, difficult = augment.ssd_augment(
            tf.constant(np.broadcast_to(grey, (50, 60, 3))), empty, tf.zeros([0], tf.int32),
            tf.zeros([0], tf.bool), tf.constant([0, k]), 32)
        assert (boxes.dtype, classes.dtype, difficult.dtype) == (tf.float32, tf.int32, tf.bool)
        assert boxes.shape == (0, 4) and classes.shape == (0,) and difficult.shape == (0,)
        out = out.numpy()
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
        assert np.all((out >= 0) & (out <= 255))
        np.testing.assert_allclose(out, np.broadcast_to(out[0, 0], out.shape), atol=1e-3,
                                   err_msg=f"seed {k}: not one colour")
    # A picture with content is really cropped: some seeds give pixels unlike a plain resize.
    image, _, _, _ = _scene()
    plain = tf.image.resize(tf.cast(image, tf.float32), [32, 32]).numpy()
    red = [augment.ssd_augment(image, empty, tf.zeros([0], tf.int32), tf.zeros([0], tf.bool),
                               tf.constant([1, k]), 32)[0].numpy()[..., 0] > 200
           for k in range(12)]
    assert sum(not np.array_equal(r, plain[..., 0] > 200) for r in red) >= 6


def _best_iou(crop: np.ndarray, boxes: np.ndarray) -> float:
    """Largest IoU of ``crop`` with any of ``boxes`` (yxyx), computed here by hand."""
    best = 0.0
    for box in boxes:
        inter = (max(0.0, min(crop[2], box[2]) - max(crop[0], box[0]))
                 * max(0.0, min(crop[3], box[3]) - max(crop[1], box[1])))
        union = ((crop[2] - crop[0]) * (crop[3] - crop[1])
                 + (box[2] - box[0]) * (box[3] - box[1]) - inter)
        best = max(best, inter / union)
    return best


@pytest.mark.parametrize("min_iou", [0.5, 0.7])
def test_crop_sampler_respects_the_minimum_iou(monkeypatch, min_iou):
    """With one minimum IoU, every crop but the whole canvas overlaps a box at least that much
    and holds a box centre."""
    monkeypatch.setattr(augment, "CROP_MIN_IOUS", (min_iou,))
    boxes = np.array([[0.2, 0.2, 0.7, 0.6], [0.5, 0.55, 0.95, 0.9]], np.float32)
    cropped = 0
    for k in range(40):
        crop = augment.sample_crop(tf.constant(boxes), tf.constant([100.0, 100.0]),
                                   tf.constant([3, k])).numpy()
        assert np.all(crop >= 0) and np.all(crop <= 1) and np.all(crop[2:] > crop[:2])
        if np.allclose(crop, [0, 0, 1, 1]):
            continue
        cropped += 1
        assert _best_iou(crop, boxes) >= min_iou - 1e-6, (k, crop)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        assert any(crop[0] < y < crop[2] and crop[1] < x < crop[3] for y, x in centres)
    assert cropped >= 3  # some draws crop (else the loop checked nothing)
