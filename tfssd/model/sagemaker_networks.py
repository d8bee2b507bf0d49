"""SageMaker Object Detection's two SSD networks, layer for layer, with MXNet's layer names.

SageMaker's built-in algorithm (MXNet) builds its networks as Apache MXNet's SSD example does
(example/ssd/symbol: its modules symbol_factory, common, resnet and vgg16_reduced):

- ``sagemaker-resnet-50``: MXNet's ResNet-50 v2 (pre-activation bottleneck units
  ``stage{1..4}_unit{k}``, stride on the 3x3 convolution, an input BatchNorm ``bn_data`` with a
  fixed gamma, BatchNorm eps 2e-5), tapped at ``_plus12`` (stride 16) and ``_plus15`` (stride 32),
  plus four extra layers ``multi_feat_2..5`` (1x1, then a 3x3 of stride 2 with padding 1): six
  maps, any input size.
- ``sagemaker-vgg-16``: ``vgg16_reduced`` (pool3 rounds up, pool5 3x3 stride 1, fc6 a 3x3
  dilated by 6, fc7 a 1x1), tapped at ``relu4_3`` (L2-normalised, learned scale) and ``relu7``,
  plus four extra layers (six maps) below 448 pixels, five (seven maps) from 448.

Keras layers carry MXNet's names (``_plus12`` as ``mx_plus12``: TensorFlow names cannot start
with "_"). Heads: per map a 3x3 ``<map>_cls_pred_conv`` and ``<map>_loc_pred_conv``; anchors
are MXNet's MultiBoxPrior (tfssd/model/multibox.py) with the sizes and ratios below (or those of
an imported graph). Input: RGB minus the mean pixel (123, 117, 104), not scaled, as the MXNet SSD
example's training, evaluation and demo scripts feed it (its --mean-r/g/b defaults; the ImageNet
mean 123.68, 116.779, 103.939 moves a trained model's detections). Detections as MXNet's
MultiBoxDetection (tfssd/model/postprocess.py: one class per anchor). Trained with the
algorithm's loss normalisation (tfssd/model/losses.py, ``MXNET_VALID``).
Convolutions pad symmetrically as MXNet does (explicit zero padding before a strided one).
BatchNorm is frozen (inference mode), as for tfssd's own ResNet-50 with ImageNet weights.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from tfssd.model import losses, multibox, postprocess
from tfssd.model.layers import L2Normalization, ShiftedDilatedConv2D
from tfssd.model.vgg16 import scaled

NETWORKS = {"sagemaker-resnet-50": "resnet-50", "sagemaker-vgg-16": "vgg-16"}
MEAN_RGB = (123.0, 117.0, 104.0)
BN_EPSILON = 2e-5
_SCALES_6 = (0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05)
_SCALES_7 = (0.07, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05)
_RATIOS_4 = (1.0, 2.0, 0.5)
_RATIOS_6 = (1.0, 2.0, 0.5, 3.0, 1.0 / 3)


def layout(network: str, image_size: int) -> dict:
    """The example's symbol_factory settings: extra layers (filters, stride, pad) and anchors
    (per map: sizes, ratios, steps) of ``network`` ("resnet-50" or "vgg-16")."""
    if network == "resnet-50":
        extra = [(512, 2, 1), (256, 2, 1), (256, 2, 1), (128, 2, 1)]
        scales, ratios, steps = _SCALES_6, [_RATIOS_4] + [_RATIOS_6] * 3 + [_RATIOS_4] * 2, None
    elif network == "vgg-16" and image_size >= 448:
        extra = [(512, 2, 1), (256, 2, 1), (256, 2, 1), (256, 2, 1), (256, 1, 1)]
        scales, ratios = _SCALES_7, [_RATIOS_4] + [_RATIOS_6] * 4 + [_RATIOS_4] * 2
        steps = [s / 512 for s in (8, 16, 32, 64, 128, 256, 512)] if image_size == 512 else None
    elif network == "vgg-16":
        extra = [(512, 2, 1), (256, 2, 1), (256, 1, 0), (256, 1, 0)]
        scales, ratios = _SCALES_6, [_RATIOS_4] + [_RATIOS_6] * 3 + [_RATIOS_4] * 2
        steps = [s / 300 for s in (8, 16, 32, 64, 100, 300)] if image_size == 300 else None
    else:
        raise ValueError(f"no SageMaker network {network!r}")
    anchors = [dict(sizes=(scales[k], math.sqrt(scales[k] * scales[k + 1])), ratios=ratios[k],
                    steps=(steps[k], steps[k]) if steps else (-1.0, -1.0))
               for k in range(len(ratios))]
    return {"extra": extra, "anchors": anchors}


def keras_name(mxnet_name: str) -> str:
    """A Keras (TensorFlow) name cannot start with "_": ``_plus12`` becomes ``mx_plus12``."""
    return "mx" + mxnet_name if mxnet_name.startswith("_") else mxnet_name


def mxnet_name(layer_name: str) -> str:
    """The inverse of ``keras_name``."""
    return layer_name[2:] if layer_name.startswith("mx_") else layer_name


@keras.saving.register_keras_serializable(package="tfssd")
class MeanSubtraction(keras.layers.Layer):
    """RGB in [0, 255] -> RGB minus MXNet's SSD mean pixel, inside the model (and so in
    serving)."""

    def call(self, images):
        return images - ops.convert_to_tensor(MEAN_RGB, images.dtype)


def _conv(x, name, filters, kernel, stride=1, pad=0, bias=True, relu=None, dilation=1):
    """MXNet's Convolution (symmetric padding ``pad``), then an optional ReLU named ``relu``."""
    if dilation > 1:
        x = ShiftedDilatedConv2D(filters, kernel, dilation_rate=dilation, use_bias=bias,
                                 name=name)(x)
    elif stride == 1 and 2 * pad == kernel - 1:
        x = layers.Conv2D(filters, kernel, padding="same", use_bias=bias, name=name)(x)
    else:
        if pad:
            x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        x = layers.Conv2D(filters, kernel, strides=stride, use_bias=bias, name=name)(x)
    return layers.Activation("relu", name=relu)(x) if relu else x


def _bn(x, name, fix_gamma=False):
    # Frozen as built; ssd.py lets it train from scratch, synchronized over replicas then.
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.9, scale=not fix_gamma,
                                     synchronized=True, trainable=False, name=name)(x)


def _resnet50_v2(x, width_multiplier):
    filters = [scaled(f, width_multiplier) for f in (64, 256, 512, 1024, 2048)]
    x = _bn(x, "bn_data", fix_gamma=True)
    x = _conv(x, "conv0", filters[0], 7, 2, 3, bias=False)
    x = layers.Activation("relu", name="relu0")(_bn(x, "bn0"))
    x = layers.ZeroPadding2D(1, name="pooling0_pad")(x)  # after a ReLU: as MXNet's -inf padding
    x = layers.MaxPooling2D(3, strides=2, name="pooling0")(x)
    taps, plus = {}, 0
    for stage, units in enumerate((3, 4, 6, 3)):
        out = filters[stage + 1]
        for unit in range(units):
            name = f"stage{stage + 1}_unit{unit + 1}"
            stride = 2 if stage > 0 and unit == 0 else 1
            act1 = layers.Activation("relu", name=f"{name}_relu1")(_bn(x, f"{name}_bn1"))
            y = _conv(act1, f"{name}_conv1", int(out * 0.25), 1, bias=False)
            y = layers.Activation("relu", name=f"{name}_relu2")(_bn(y, f"{name}_bn2"))
            y = _conv(y, f"{name}_conv2", int(out * 0.25), 3, stride, 1, bias=False)
            y = layers.Activation("relu", name=f"{name}_relu3")(_bn(y, f"{name}_bn3"))
            y = _conv(y, f"{name}_conv3", out, 1, bias=False)
            shortcut = x if unit else _conv(act1, f"{name}_sc", out, 1, stride, bias=False)
            x = layers.Add(name=keras_name(f"_plus{plus}"))([y, shortcut])
            taps[f"_plus{plus}"] = x
            plus += 1
    return [("_plus12", taps["_plus12"]), ("_plus15", taps["_plus15"])]


def _vgg16_reduced(x, width_multiplier):
    taps = []
    for block, (convs, channels) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512),
                                               (3, 512)), start=1):
        for c in range(1, convs + 1):
            x = _conv(x, f"conv{block}_{c}", scaled(channels, width_multiplier), 3, 1, 1,
                      relu=f"relu{block}_{c}")
        if block == 4:
            # In float32 under any precision: a sum of squares of large activations.
            norm = L2Normalization(name="relu4_3_norm", dtype="float32")(x)
            taps.append(("relu4_3", norm))
        if block < 5:  # pool3 rounds up (MXNet's "full" convention), the others down
            x = layers.MaxPooling2D(2, strides=2, padding="same" if block == 3 else "valid",
                                    name=f"pool{block}")(x)
    x = layers.MaxPooling2D(3, strides=1, padding="same", name="pool5")(x)
    x = _conv(x, "fc6", scaled(1024, width_multiplier), 3, 1, 6, relu="relu6", dilation=6)
    taps.append(("relu7", _conv(x, "fc7", scaled(1024, width_multiplier), 1, relu="relu7")))
    return taps


def build(base_network: str, num_classes: int, image_size: int,
          width_multiplier: float = 1.0, priors: list[dict] | None = None):
    """SageMaker's SSD as a Keras model, freshly initialised.

    Args:
      base_network: "sagemaker-resnet-50" or "sagemaker-vgg-16".
      num_classes: object classes, background not counted.
      image_size: side of the square input.
      width_multiplier: scales every layer's channels but the heads' (1: SageMaker's).
      priors: per map, MultiBoxPrior's settings (sizes, ratios, steps, offsets, clip) to use
        instead of the example's (an imported graph's own); the heads follow their counts.

    Returns:
      (model, anchors float32 [A, 4] normalised yxyx, feature names, feature map sizes). The
      model maps images (float32 [B, S, S, 3], RGB in [0, 255]) to {"cls_logits" [B, A, C + 1],
      "box_deltas" [B, A, 4] (dy, dx, dh, dw)}.
    """
    if base_network not in NETWORKS:
        raise ValueError(f"base_network must be one of {sorted(NETWORKS)}, got {base_network!r}")
    network = NETWORKS[base_network]
    spec = layout(network, image_size)
    if priors is not None:
        if len(priors) != len(spec["anchors"]):
            raise ValueError(f"{len(priors)} MultiBoxPrior settings for {len(spec['anchors'])} "
                             "feature maps")
        spec["anchors"] = [{**dict(offsets=(0.5, 0.5), clip=False), **p} for p in priors]
    images = keras.Input((image_size, image_size, 3), name="images")
    x = MeanSubtraction(name="preprocess")(images)
    features = (_resnet50_v2 if network == "resnet-50" else _vgg16_reduced)(x, width_multiplier)
    x = features[-1][1]
    for k, (filters, stride, pad) in enumerate(spec["extra"], start=len(features)):
        filters = scaled(filters, width_multiplier)
        x = _conv(x, f"multi_feat_{k}_conv_1x1_conv",
                  max(scaled(128, width_multiplier), filters // 2), 1,
                  relu=f"multi_feat_{k}_conv_1x1_relu")
        if min(x.shape[1:3]) + 2 * pad < 3:  # vgg16_reduced's unpadded 3x3 layers
            raise ValueError(f"image_shape {image_size} is too small for {base_network}")
        x = _conv(x, f"multi_feat_{k}_conv_3x3_conv", filters, 3, stride, pad,
                  relu=f"multi_feat_{k}_conv_3x3_relu")
        features.append((f"multi_feat_{k}_conv_3x3_relu", x))
    sizes = tuple((int(f.shape[1]), int(f.shape[2])) for _, f in features)
    cls_outputs, box_outputs, anchors = [], [], []
    for (name, feature), prior, size in zip(features, spec["anchors"], sizes):
        per_location = len(prior["sizes"]) + len(prior["ratios"]) - 1
        head = keras_name(name)
        cls = _conv(feature, f"{head}_cls_pred_conv", per_location * (num_classes + 1), 3, 1, 1)
        box = _conv(feature, f"{head}_loc_pred_conv", per_location * 4, 3, 1, 1)
        cls_outputs.append(layers.Reshape((-1, num_classes + 1), name=f"{head}_cls_flat")(cls))
        box_outputs.append(layers.Reshape((-1, 4), name=f"{head}_loc_flat")(box))
        anchors.append(multibox.multibox_prior(
            *size, prior["sizes"], prior["ratios"], prior["steps"],
            prior.get("offsets", (0.5, 0.5)), prior.get("clip", False)))
    outputs = {"cls_logits": layers.Concatenate(axis=1, name="cls_logits",
                                                dtype="float32")(cls_outputs),
               "box_deltas": layers.Concatenate(axis=1, name="box_deltas",
                                                dtype="float32")(box_outputs)}
    model = keras.Model(images, outputs, name=f"ssd{image_size}_{base_network.replace('-', '')}")
    model.multibox_detection = postprocess.MultiBoxDetection()  # MXNet's detection semantics
    model.loss_normalisation = losses.MXNET_VALID  # as the algorithm trains it
    anchors = multibox.xyxy_to_yxyx(np.concatenate(anchors)).astype(np.float32)
    return model, anchors, tuple(n for n, _ in features), sizes


def mxnet_parameter_shapes(model: keras.Model) -> dict[str, tuple[int, ...]]:
    """The MXNet parameters (arguments and auxiliary states, unprefixed) that ``model``'s
    weights come from, with MXNet's shapes (NCHW kernels)."""
    shapes = {}
    for layer in model.layers:
        name = mxnet_name(layer.name)
        if isinstance(layer, layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            shapes[f"{name}_weight"] = (cout, cin, kh, kw)
            if layer.use_bias:
                shapes[f"{name}_bias"] = (cout,)
        elif isinstance(layer, layers.BatchNormalization):
            (channels,) = layer.moving_mean.shape
            for suffix in ("gamma", "beta", "moving_mean", "moving_var"):
                shapes[f"{name}_{suffix}"] = (channels,)
        elif isinstance(layer, L2Normalization):
            shapes[f"{name[:-len('_norm')]}_scale"] = (1, layer.scale.shape[0], 1, 1)
    return shapes


def load_mxnet_weights(model: keras.Model, params: dict[str, np.ndarray],
                       skip_missing: bool = False) -> list[str]:
    """Sets ``model``'s weights from MXNet's (unprefixed names, arguments and auxiliary states
    together). Kernels go from (out, in, h, w) to (h, w, in, out); box heads' channels go to
    tfssd's (dy, dx, dh, dw) order; a fixed-gamma BatchNorm's gamma (unused by MXNet) is skipped.

    Args:
      skip_missing: leave layers whose parameters ``params`` lacks as they are (an ImageNet
        backbone file has no heads); else a missing parameter raises KeyError.

    Returns:
      The names of the layers set.

    Raises:
      KeyError, ValueError: a parameter is missing or has another shape (check the shapes with
        ``mxnet_parameter_shapes`` first for a readable refusal).
    """
    loaded = []
    for layer in model.layers:
        if skip_missing and not layer.weights:
            continue
        try:
            _set_layer(layer, params)
        except KeyError:
            if not skip_missing:
                raise
            continue
        if layer.weights:
            loaded.append(layer.name)
    return loaded


def _set_layer(layer, params: dict[str, np.ndarray]) -> None:
    """One layer's weights from MXNet's parameters (KeyError: one is missing)."""
    name = mxnet_name(layer.name)
    if isinstance(layer, layers.Conv2D):
        kernel = np.transpose(params[f"{name}_weight"], (2, 3, 1, 0))
        values = [kernel] + ([params[f"{name}_bias"]] if layer.use_bias else [])
        if name.endswith("_loc_pred_conv"):
            order = multibox.loc_channels_to_tfssd(kernel.shape[-1] // 4)
            values = [v[..., order] for v in values]
        layer.set_weights(values)
    elif isinstance(layer, layers.BatchNormalization):
        names = (["gamma"] if layer.scale else []) + ["beta", "moving_mean", "moving_var"]
        layer.set_weights([params[f"{name}_{n}"] for n in names])
    elif isinstance(layer, L2Normalization):
        layer.set_weights([params[f"{name[:-len('_norm')]}_scale"].reshape(-1)])
