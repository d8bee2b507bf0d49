"""The SSD network: backbone, extra feature layers, prediction heads, and its anchors.

SSD paper (Liu et al., 2016), Fig. 2 and Sec. 2.1. Feature maps come from the backbone (VGG-16:
conv4_3 with L2 normalisation and fc7; ResNet-50: its stage-4 and stage-5 outputs) and from
extra layers added until the map is 1x1: a 1x1 reduction and then a stride-2 3x3 convolution
while the map is at least 6 wide, an unpadded 3x3 for widths 3 to 5, and an unpadded 2x2 at
width 2. For VGG-16 this gives SSD300's conv8_2..conv11_2 (maps 38, 19, 10, 5, 3, 1: 8732
anchors) and SSD512's conv8_2..conv12_2 (64, 32, 16, 8, 4, 2, 1: 24564 anchors), and it works
for any input size. Anchors follow from the maps' actual sizes (tfssd/ops/anchors.py).
"""

from __future__ import annotations

import dataclasses
import functools

import keras
import numpy as np
from keras import layers

from tfssd.config import precision
from tfssd.config.run_config import BASE_NETWORKS, ModelConfig
from tfssd.model import freezing, sagemaker_networks, weights
from tfssd.model.layers import CaffePreprocessing, L2Normalization
from tfssd.model.resnet50 import resnet50_features
from tfssd.model.vgg16 import scaled, vgg16_features
from tfssd.ops import anchors as anchors_lib

_THINNEST = 1e-3  # a width multiplier that leaves every layer at its minimum, 8 channels


@dataclasses.dataclass(frozen=True)
class SSD:
    """A built SSD network and the constants that go with it.

    ``model`` maps images (float32 [B, S, S, 3], RGB in [0, 255]) to {"cls_logits": float32
    [B, A, num_classes + 1] (class 0 is background), "box_deltas": float32 [B, A, 4]}.
    """

    model: keras.Model
    anchors: np.ndarray  # float32 [A, 4], normalised yxyx
    feature_names: tuple[str, ...]
    feature_map_sizes: tuple[tuple[int, int], ...]
    base_network: str
    num_classes: int
    image_size: int
    width_multiplier: float = 1.0
    train_batch_norm: bool = False

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    def in_precision(self, policy: str) -> SSD:
        """The same network with the same weights, computing in Keras policy ``policy``.

        For a reduced-precision export: the weights are copied (float32 either way).
        """
        with precision.policy_scope(policy):
            twin = ssd_network(self.base_network, self.num_classes, self.image_size,
                               self.width_multiplier, self.train_batch_norm)
        twin.model.set_weights(self.model.get_weights())
        for source, target in zip(self.model.layers, twin.model.layers):
            target.trainable = source.trainable
        return twin


def _extra_layers(x, first_index: int, width_multiplier: float) -> list[tuple[str, object]]:
    """Extra feature layers after the backbone, until the map is 1x1 (see module docstring)."""
    features = []
    index = first_index
    size = x.shape[1]
    while size > 1:
        reduce, expand = (256, 512) if not features else (128, 256)
        x = layers.Conv2D(scaled(reduce, width_multiplier), 1, activation="relu",
                          name=f"conv{index}_1")(x)
        if size >= 6:
            conv = dict(kernel_size=3, strides=2, padding="same")
        else:
            conv = dict(kernel_size=min(3, size), padding="valid")
        x = layers.Conv2D(scaled(expand, width_multiplier), activation="relu",
                          name=f"conv{index}_2", **conv)(x)
        features.append((f"conv{index}_2", x))
        size = x.shape[1]
        index += 1
    return features


def _heads(features, anchors_per_location, num_classes: int):
    """3x3 convolutional class and box predictors on each feature map (SSD paper, Sec. 2.1).

    Named ``mbox_conf_<feature>`` and ``mbox_loc_<feature>``, so that a freeze pattern aimed at
    the backbone (``^conv4_.*``) never catches a head.
    """
    cls_outputs, box_outputs = [], []
    for (name, feature), num_anchors in zip(features, anchors_per_location):
        cls = layers.Conv2D(num_anchors * (num_classes + 1), 3, padding="same",
                            name=f"mbox_conf_{name}")(feature)
        box = layers.Conv2D(num_anchors * 4, 3, padding="same", name=f"mbox_loc_{name}")(feature)
        # [B, H, W, K * D] -> [B, H * W * K, D]: the anchors' order (row, column, box).
        cls_outputs.append(layers.Reshape((-1, num_classes + 1), name=f"mbox_conf_{name}_flat")(
            cls))
        box_outputs.append(layers.Reshape((-1, 4), name=f"mbox_loc_{name}_flat")(box))
    # The outputs are float32 under any precision: the loss and the decoding need its range.
    cls_logits = layers.Concatenate(axis=1, name="cls_logits", dtype="float32")(cls_outputs)
    box_deltas = layers.Concatenate(axis=1, name="box_deltas", dtype="float32")(box_outputs)
    return cls_logits, box_deltas


def ssd_network(base_network: str, num_classes: int, image_size: int = 300,
                width_multiplier: float = 1.0, train_batch_norm: bool = False) -> SSD:
    """Builds SSD with freshly initialised weights.

    Args:
      base_network: "vgg-16" or "resnet-50"; or SageMaker's own networks, "sagemaker-vgg-16"
        or "sagemaker-resnet-50" (tfssd/model/sagemaker_networks.py, for imported models).
      num_classes: object classes, background not counted.
      image_size: side of the square input (>= 300 for SageMaker; smaller works for tests).
      width_multiplier: scales the channels of the backbone and extra layers.
      train_batch_norm: ResNet-50 (tfssd's or SageMaker's) only: train BatchNorm (from scratch)
        instead of freezing it.
    """
    if base_network in sagemaker_networks.NETWORKS:  # SageMaker's own (MXNet) networks
        model, anchors, names, sizes = sagemaker_networks.build(base_network, num_classes,
                                                                image_size, width_multiplier)
        for layer in model.layers:  # frozen as built (MXNet's statistics), trained from scratch
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = train_batch_norm
        return SSD(model=model, anchors=anchors, feature_names=names, feature_map_sizes=sizes,
                   base_network=base_network, num_classes=num_classes, image_size=image_size,
                   width_multiplier=width_multiplier)
    images = keras.Input((image_size, image_size, 3), name="images")
    x = CaffePreprocessing(name="preprocess")(images)
    if base_network == "vgg-16":
        backbone = vgg16_features(x, width_multiplier)
        # In float32 under any precision: a sum of squares of conv4_3's large activations.
        norm = L2Normalization(name="conv4_3_norm", dtype="float32")(backbone["conv4_3"])
        features = [("conv4_3_norm", norm), ("fc7", backbone["fc7"])]
        features += _extra_layers(backbone["fc7"], 8, width_multiplier)
    elif base_network == "resnet-50":
        backbone = resnet50_features(x, width_multiplier, train_batch_norm)
        features = list(backbone.items())
        features += _extra_layers(backbone["conv5_block3_out"], 6, width_multiplier)
    else:
        raise ValueError(f"base_network must be one of {', '.join(BASE_NETWORKS)}, got "
                         f"{base_network!r}")
    sizes = tuple((int(f.shape[1]), int(f.shape[2])) for _, f in features)
    aspect_ratios = anchors_lib.ssd_aspect_ratios(len(features))
    cls_logits, box_deltas = _heads(features, anchors_lib.num_anchors_per_location(aspect_ratios),
                                    num_classes)
    model = keras.Model(images, {"cls_logits": cls_logits, "box_deltas": box_deltas},
                        name=f"ssd{image_size}_{base_network.replace('-', '')}")
    anchors = anchors_lib.generate_anchors(sizes, anchors_lib.ssd_scales(len(features)),
                                           aspect_ratios)
    return SSD(model=model, anchors=anchors, feature_names=tuple(n for n, _ in features),
               feature_map_sizes=sizes, base_network=base_network, num_classes=num_classes,
               image_size=image_size, width_multiplier=width_multiplier,
               train_batch_norm=train_batch_norm)


@functools.cache
def network_anchors(base_network: str, image_size: int) -> np.ndarray:
    """The anchors of ``ssd_network(base_network, ..., image_size)`` at any width and class count:
    those its training, decoding and exports use. float32 [A, 4], normalised yxyx, read-only.

    For tools that need the anchors and not the network (tfssd-inspect --coverage). They follow
    from the feature maps' sizes alone, which neither the width nor the classes change, so the
    network is built at its thinnest (8 channels a layer): a fraction of the full one's time.

    Raises:
      ValueError: an unknown base_network, or an image_size too small for it.
    """
    anchors = ssd_network(base_network, num_classes=1, image_size=image_size,
                          width_multiplier=_THINNEST).anchors
    anchors.setflags(write=False)
    return anchors


def build_ssd(config: ModelConfig, load_pretrained: bool = True) -> SSD:
    """The SSD a config describes: ImageNet backbone weights if asked for, layers frozen by regex.

    ResNet-50's BatchNorm is frozen when the backbone starts from ImageNet and trains when it
    starts from scratch (see tfssd/model/resnet50.py).

    Args:
      config: the model configuration.
      load_pretrained: False skips the ImageNet weights (when a checkpoint will overwrite them).
    """
    ssd = ssd_network(config.base_network, config.num_classes, config.image_size,
                      config.width_multiplier, train_batch_norm=not config.use_pretrained_model)
    if config.use_pretrained_model and load_pretrained:
        weights.load_imagenet_weights(ssd.model, config.base_network, config.pretrained_weights)
    if config.freeze_layer_pattern:
        freezing.freeze_layers(ssd.model, config.freeze_layer_pattern)
    return ssd
