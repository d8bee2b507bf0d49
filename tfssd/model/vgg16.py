"""VGG-16 as SSD uses it, with the layer names of the original SSD (Caffe) model.

Simonyan & Zisserman (2015), modified as in SSD paper Sec. 3: pool5 becomes 3x3 stride 1, and
the fully connected fc6/fc7 become a 3x3 convolution dilated by 6 and a 1x1 convolution, both
of 1024 channels. Pooling uses "same" padding, so 300 -> 150 -> 75 -> 38 as Caffe's ceil mode.
"""

from __future__ import annotations

from keras import layers

from tfssd.model.layers import ShiftedDilatedConv2D

# (block, convolutions, channels) of VGG-16.
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))

# keras.applications VGG16 layer -> SSD layer, for ImageNet weights (fc6/fc7 have no match).
KERAS_LAYER_NAMES = {f"block{b}_conv{c}": f"conv{b}_{c}"
                     for b, convs, _ in _BLOCKS for c in range(1, convs + 1)}


def scaled(channels: int, width_multiplier: float) -> int:
    """Channels of a layer at ``width_multiplier`` (at least 8)."""
    return max(8, int(round(channels * width_multiplier)))


def vgg16_features(images, width_multiplier: float = 1.0) -> dict:
    """Builds SSD's VGG-16 on ``images`` (preprocessed, [B, S, S, 3]).

    Returns:
      {"conv4_3": stride-8 map, "fc7": stride-16 map}, Keras tensors.
    """
    x = images
    features = {}
    for block, convs, channels in _BLOCKS:
        for c in range(1, convs + 1):
            x = layers.Conv2D(scaled(channels, width_multiplier), 3, padding="same",
                              activation="relu", name=f"conv{block}_{c}")(x)
        if block == 4:
            features["conv4_3"] = x
        if block < 5:
            x = layers.MaxPooling2D(2, strides=2, padding="same", name=f"pool{block}")(x)
        else:
            x = layers.MaxPooling2D(3, strides=1, padding="same", name="pool5")(x)
    x = ShiftedDilatedConv2D(scaled(1024, width_multiplier), 3, dilation_rate=6,
                             activation="relu", name="fc6")(x)
    features["fc7"] = layers.Conv2D(scaled(1024, width_multiplier), 1, activation="relu",
                                    name="fc7")(x)
    return features
