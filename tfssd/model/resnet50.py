"""ResNet-50 (v1) with keras.applications' structure and layer names.

He et al. (2016). Same layers and names as ``keras.applications.ResNet50`` (stride on the first
1x1 convolution of a block, biases on convolutions), so its ImageNet weights load by name.

BatchNorm: frozen (inference mode, not trained) when the backbone starts from ImageNet, the
usual choice for detection, whose batches are small. From scratch that would leave 50 layers
without any normalisation (frozen BatchNorm with fresh statistics is the identity; measured:
logits with standard deviation 13 at initialisation, and a loss that exploded to 1e11 in three
steps), so there BatchNorm trains, with statistics synchronized over replicas so that all
workers keep the same model.
"""

from __future__ import annotations

from keras import layers

from tfssd.model.vgg16 import scaled

_BN_EPSILON = 1.001e-5
# (stage name, bottleneck channels, blocks, stride of the first block)
_STAGES = (("conv2", 64, 3, 1), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 2))


def _batch_norm(name: str, trainable: bool):
    return layers.BatchNormalization(epsilon=_BN_EPSILON, trainable=trainable,
                                     synchronized=trainable, name=name)


def _block(x, channels: int, stride: int, projection: bool, name: str, train_bn: bool):
    if projection:
        shortcut = layers.Conv2D(4 * channels, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = _batch_norm(f"{name}_0_bn", train_bn)(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(channels, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = _batch_norm(f"{name}_1_bn", train_bn)(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(channels, 3, padding="same", name=f"{name}_2_conv")(x)
    x = _batch_norm(f"{name}_2_bn", train_bn)(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * channels, 1, name=f"{name}_3_conv")(x)
    x = _batch_norm(f"{name}_3_bn", train_bn)(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def resnet50_features(images, width_multiplier: float = 1.0,
                      train_batch_norm: bool = False) -> dict:
    """Builds ResNet-50 on ``images`` (preprocessed, [B, S, S, 3]).

    Args:
      images: the preprocessed input, a Keras tensor.
      width_multiplier: scales every layer's channels.
      train_batch_norm: False freezes BatchNorm (for ImageNet weights); True trains it with
        statistics synchronized over replicas (from scratch).

    Returns:
      {"conv4_block6_out": stride-16 map, "conv5_block3_out": stride-32 map}, Keras tensors.
    """
    x = layers.ZeroPadding2D(3, name="conv1_pad")(images)
    x = layers.Conv2D(scaled(64, width_multiplier), 7, strides=2, name="conv1_conv")(x)
    x = _batch_norm("conv1_bn", train_batch_norm)(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    features = {}
    for stage, channels, blocks, stride in _STAGES:
        for b in range(1, blocks + 1):
            x = _block(x, scaled(channels, width_multiplier), stride if b == 1 else 1,
                       projection=b == 1, name=f"{stage}_block{b}", train_bn=train_batch_norm)
        features[f"{stage}_block{blocks}_out"] = x
    return {k: features[k] for k in ("conv4_block6_out", "conv5_block3_out")}
