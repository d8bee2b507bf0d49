"""ResNet-50 (v1) with keras.applications' structure and layer names, BatchNorm frozen.

He et al. (2016). Same layers and names as ``keras.applications.ResNet50`` (stride on the first
1x1 convolution of a block, biases on convolutions), so its ImageNet weights load by name.
BatchNorm layers are frozen: they run in inference mode and are not trained, because Keras
keeps batch statistics per replica and detection batches are small (see DESIGN.md).
"""

from __future__ import annotations

from keras import layers

from tfssd.model.vgg16 import scaled

_BN_EPSILON = 1.001e-5
# (stage name, bottleneck channels, blocks, stride of the first block)
_STAGES = (("conv2", 64, 3, 1), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 2))


def _frozen_batch_norm(name: str):
    return layers.BatchNormalization(epsilon=_BN_EPSILON, trainable=False, name=name)


def _block(x, channels: int, stride: int, projection: bool, name: str):
    if projection:
        shortcut = layers.Conv2D(4 * channels, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = _frozen_batch_norm(f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(channels, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = _frozen_batch_norm(f"{name}_1_bn")(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(channels, 3, padding="same", name=f"{name}_2_conv")(x)
    x = _frozen_batch_norm(f"{name}_2_bn")(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * channels, 1, name=f"{name}_3_conv")(x)
    x = _frozen_batch_norm(f"{name}_3_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def resnet50_features(images, width_multiplier: float = 1.0) -> dict:
    """Builds ResNet-50 on ``images`` (preprocessed, [B, S, S, 3]).

    Returns:
      {"conv4_block6_out": stride-16 map, "conv5_block3_out": stride-32 map}, Keras tensors.
    """
    x = layers.ZeroPadding2D(3, name="conv1_pad")(images)
    x = layers.Conv2D(scaled(64, width_multiplier), 7, strides=2, name="conv1_conv")(x)
    x = _frozen_batch_norm("conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    features = {}
    for stage, channels, blocks, stride in _STAGES:
        for b in range(1, blocks + 1):
            x = _block(x, scaled(channels, width_multiplier), stride if b == 1 else 1,
                       projection=b == 1, name=f"{stage}_block{b}")
        features[f"{stage}_block{blocks}_out"] = x
    return {k: features[k] for k in ("conv4_block6_out", "conv5_block3_out")}
