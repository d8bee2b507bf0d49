"""Layers of SSD that Keras does not have: input preprocessing and L2 normalisation."""

import keras
from keras import ops

# keras.applications' VGG-16 and ResNet-50 ImageNet weights expect "caffe" inputs: BGR with the
# ImageNet mean subtracted, no scaling.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="tfssd")
class CaffePreprocessing(keras.layers.Layer):
    """RGB in [0, 255] -> BGR minus the ImageNet mean, inside the model (and so in serving).

    Input: float32 [B, H, W, 3], RGB. Output: float32 [B, H, W, 3], mean-subtracted BGR.
    """

    def call(self, images):
        return ops.flip(images, axis=-1) - ops.convert_to_tensor(CAFFE_MEAN_BGR, images.dtype)


@keras.saving.register_keras_serializable(package="tfssd")
class L2Normalization(keras.layers.Layer):
    """Scales each position's channel vector to unit L2 norm, then by a learned per-channel scale.

    ParseNet (Liu et al., 2015), as SSD applies it to conv4_3, whose activations are far larger
    than those of later layers (SSD paper, Sec. 3.1).

    Args:
      scale_init: initial value of the per-channel scale (SSD: 20).
      epsilon: guards the norm of an all-zero vector.

    Input: float32 [B, H, W, C]. Output: same shape.
    """

    def __init__(self, scale_init: float = 20.0, epsilon: float = 1e-10, **kwargs):
        super().__init__(**kwargs)
        self.scale_init = scale_init
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],),
                                     initializer=keras.initializers.Constant(self.scale_init))

    def call(self, inputs):
        squared = ops.sum(ops.square(inputs), axis=-1, keepdims=True)
        return inputs * ops.rsqrt(ops.maximum(squared, self.epsilon)) * self.scale

    def get_config(self):
        return {**super().get_config(), "scale_init": self.scale_init, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="tfssd")
class ShiftedDilatedConv2D(keras.layers.Conv2D):
    """A dilated, stride-1, "same" convolution computed as a sum of shifted 1x1 products.

    Same weights and result as ``keras.layers.Conv2D(..., dilation_rate=r, padding="same")``.
    TensorFlow has no native dilated convolution on CPU and falls back to space-to-batch, which
    pads SSD's 19x19 fc6 input (rate 6) to 36x36 and so computes about 3.6 times the useful
    work; measured on a 2-core CPU, fc6's forward and backward pass drop from 5.0 s to 0.9 s
    (batch 8) this way. Each kernel tap is one matrix product over a shifted window of the
    zero-padded input.

    Input: float32 [B, H, W, C]. Output: float32 [B, H, W, filters].
    """

    def __init__(self, filters, kernel_size, dilation_rate, **kwargs):
        kwargs.update(padding="same", strides=1)
        super().__init__(filters, kernel_size, dilation_rate=dilation_rate, **kwargs)
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError("ShiftedDilatedConv2D needs odd kernel sizes")

    def call(self, inputs):
        (kh, kw), (rh, rw) = self.kernel_size, self.dilation_rate
        height, width = ops.shape(inputs)[1], ops.shape(inputs)[2]
        pad_h, pad_w = rh * (kh - 1) // 2, rw * (kw - 1) // 2
        padded = ops.pad(inputs, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]])
        outputs = None
        for i in range(kh):
            for j in range(kw):
                window = padded[:, i * rh:i * rh + height, j * rw:j * rw + width, :]
                term = ops.matmul(window, self.kernel[i, j])
                outputs = term if outputs is None else outputs + term
        if self.use_bias:
            outputs = outputs + self.bias
        return self.activation(outputs) if self.activation is not None else outputs
