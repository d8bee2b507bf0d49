"""Custom layers: L2 normalisation and the shifted-matmul dilated convolution."""

import keras
import numpy as np

from tfssd.model.layers import CaffePreprocessing, L2Normalization, ShiftedDilatedConv2D


def test_l2_normalization_scales_unit_vectors():
    x = np.array([[[[3.0, 4.0], [0.0, 0.0]]]], np.float32)
    out = L2Normalization(scale_init=20.0)(x).numpy()
    np.testing.assert_allclose(out[0, 0, 0], [12.0, 16.0], rtol=1e-6)
    np.testing.assert_array_equal(out[0, 0, 1], [0.0, 0.0])


def test_caffe_preprocessing():
    x = np.array([[[[123.68, 116.779, 103.939]]]], np.float32)
    np.testing.assert_allclose(CaffePreprocessing()(x).numpy(), 0.0, atol=1e-4)


def test_shifted_dilated_conv_equals_keras_conv2d():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 19, 13, 6)).astype(np.float32)
    reference = keras.layers.Conv2D(5, 3, dilation_rate=6, padding="same", activation="relu")
    ours = ShiftedDilatedConv2D(5, 3, dilation_rate=6, activation="relu")
    reference.build(x.shape)
    ours.build(x.shape)
    ours.set_weights([w + 0.1 for w in reference.get_weights()])
    reference.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours(x).numpy(), reference(x).numpy(), atol=1e-5)
