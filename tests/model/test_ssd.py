"""The SSD network: published anchor counts, output shapes, any input size, Keras names."""

import keras
import numpy as np
import pytest

from tfssd.model import ssd as ssd_lib


@pytest.mark.parametrize("base,size,maps,count", [
    ("vgg-16", 300, [38, 19, 10, 5, 3, 1], 8732),
    ("vgg-16", 512, [64, 32, 16, 8, 4, 2, 1], 24564),
    ("resnet-50", 300, [19, 10, 5, 3, 1], 2234),
    ("resnet-50", 512, [32, 16, 8, 4, 2, 1], 6132),
])
def test_feature_maps_and_anchor_counts(base, size, maps, count):
    ssd = ssd_lib.ssd_network(base, 20, size, width_multiplier=0.125)
    assert [h for h, _ in ssd.feature_map_sizes] == maps
    assert ssd.num_anchors == count
    outputs = ssd.model.output
    assert tuple(outputs["cls_logits"].shape) == (None, count, 21)
    assert tuple(outputs["box_deltas"].shape) == (None, count, 4)


@pytest.mark.parametrize("size", [301, 333, 400, 448, 600])
def test_other_input_sizes_are_consistent(size):
    ssd = ssd_lib.ssd_network("vgg-16", 3, size, width_multiplier=0.0625)
    assert ssd.feature_map_sizes[-1] == (1, 1)
    per_location = ssd_lib.anchors_lib.num_anchors_per_location(
        ssd_lib.anchors_lib.ssd_aspect_ratios(len(ssd.feature_map_sizes)))
    assert ssd.num_anchors == sum(h * w * k for (h, w), k in zip(ssd.feature_map_sizes,
                                                                 per_location))
    assert ssd.model.output["cls_logits"].shape[1] == ssd.num_anchors
    centres = (ssd.anchors[:, :2] + ssd.anchors[:, 2:]) / 2
    assert centres.min() > 0 and centres.max() < 1


def test_full_width_vgg16_matches_the_published_size():
    ssd = ssd_lib.ssd_network("vgg-16", 20, 300)
    assert abs(ssd.model.count_params() - 26.29e6) < 0.01e6  # SSD300: 26.3 M parameters
    names = {layer.name for layer in ssd.model.layers}
    assert {"conv1_1", "conv4_3", "conv4_3_norm", "fc6", "fc7", "conv8_2", "conv11_2"} <= names


def test_resnet50_has_keras_applications_layers():
    ours = ssd_lib.ssd_network("resnet-50", 20, 300).model
    reference = keras.applications.ResNet50(weights=None, include_top=False,
                                            input_shape=(300, 300, 3))
    for layer in reference.layers:
        if layer.weights:
            mine = ours.get_layer(layer.name)
            assert [w.shape for w in mine.weights] == [w.shape for w in layer.weights]
    batch_norms = [layer for layer in ours.layers
                   if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(batch_norms) == 53 and not any(layer.trainable for layer in batch_norms)


def test_resnet50_from_scratch_trains_synchronized_batch_norm():
    ours = ssd_lib.ssd_network("resnet-50", 20, 300, width_multiplier=0.0625,
                               train_batch_norm=True).model
    batch_norms = [layer for layer in ours.layers
                   if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(layer.trainable and layer.synchronized for layer in batch_norms)


def test_forward_pass_is_finite():
    ssd = ssd_lib.ssd_network("vgg-16", 4, 300, width_multiplier=0.0625)
    out = ssd.model(np.random.default_rng(0).uniform(0, 255, (2, 300, 300, 3)).astype("float32"))
    assert np.all(np.isfinite(out["cls_logits"])) and np.all(np.isfinite(out["box_deltas"]))
