"""ImageNet initialisation from keras.applications-style h5 files the tests write themselves."""

import os

import h5py
import numpy as np
import pytest

from tfssd.model import ssd as ssd_lib
from tfssd.model import vgg16, weights


def _write_keras_h5(path, layers: dict) -> None:
    """A file in the layout of keras.applications' notop weights (legacy Keras h5)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode() for name in layers]
        for name, arrays in layers.items():
            group = f.create_group(name)
            names = [f"{name}/{kind}:0" for kind in ("kernel", "bias")[:len(arrays)]]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for n, array in zip(names, arrays):
                group.create_dataset(n, data=array)


def _random_like(model, layer_names, rng):
    return {k: [rng.normal(size=w.shape).astype(np.float32) for w in model.get_layer(v).weights]
            for k, v in layer_names.items()}


def test_vgg16_keras_names_map_onto_ssd_layers(tmp_path):
    # Width 0.125 keeps the file small; the structure and the names are those of Keras' file.
    model = ssd_lib.ssd_network("vgg-16", 3, 300, width_multiplier=0.125).model
    rng = np.random.default_rng(0)
    arrays = _random_like(model, vgg16.KERAS_LAYER_NAMES, rng)
    arrays = {"input_1": [], **arrays}  # Keras' files list weightless layers too
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _write_keras_h5(path, arrays)
    fc6_before = model.get_layer("fc6").get_weights()[0].copy()
    loaded = weights.load_imagenet_weights(model, "vgg-16", str(path))
    assert sorted(loaded) == sorted(vgg16.KERAS_LAYER_NAMES.values())  # 13 conv layers
    for keras_name, ssd_name in vgg16.KERAS_LAYER_NAMES.items():
        for got, want in zip(model.get_layer(ssd_name).get_weights(), arrays[keras_name]):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model.get_layer("fc6").get_weights()[0], fc6_before)


def test_resnet50_loads_by_keras_names(tmp_path):
    model = ssd_lib.ssd_network("resnet-50", 3, 300, width_multiplier=0.125).model
    names = [layer.name for layer in model.layers
             if layer.weights and layer.name.startswith(("conv1_", "conv2_", "conv3_", "conv4_",
                                                         "conv5_"))]
    rng = np.random.default_rng(1)
    arrays = {}
    for name in names:
        arrays[name] = [rng.normal(size=w.shape).astype(np.float32)
                        for w in model.get_layer(name).weights]
    path = tmp_path / "resnet.h5"
    with h5py.File(path, "w") as f:  # BatchNorm layers carry 4 arrays
        f.attrs["layer_names"] = [n.encode() for n in arrays]
        for name, values in arrays.items():
            group = f.create_group(name)
            labels = [f"{name}/w{i}:0" for i in range(len(values))]
            group.attrs["weight_names"] = [n.encode() for n in labels]
            for label, value in zip(labels, values):
                group.create_dataset(label, data=value)
    loaded = weights.load_imagenet_weights(model, "resnet-50", str(path))
    assert len(loaded) == len(arrays) == 106
    np.testing.assert_array_equal(model.get_layer("conv5_block3_3_bn").get_weights()[3],
                                  arrays["conv5_block3_3_bn"][3])


def test_wrong_shapes_are_refused(tmp_path):
    model = ssd_lib.ssd_network("vgg-16", 3, 300, width_multiplier=0.125).model
    wide = ssd_lib.ssd_network("vgg-16", 3, 300, width_multiplier=0.25).model
    path = tmp_path / "w.h5"
    _write_keras_h5(path, _random_like(wide, vgg16.KERAS_LAYER_NAMES, np.random.default_rng(2)))
    with pytest.raises(weights.PretrainedWeightsError, match="block1_conv1 has shapes"):
        weights.load_imagenet_weights(model, "vgg-16", str(path))


def test_offline_without_the_file_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    unreachable = weights.WeightsFile("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                      "http://127.0.0.1:9/vgg16.h5", "0" * 32)
    monkeypatch.setitem(weights.IMAGENET_WEIGHTS, "vgg-16", unreachable)
    with pytest.raises(weights.PretrainedWeightsError) as raised:
        weights.locate_weights("vgg-16")
    message = str(raised.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "keras" / "models") in message
    assert "--use_pretrained_model=0" in message and "--pretrained_weights" in message
    assert not list((tmp_path / "keras" / "models").glob("*"))  # no partial download left


def test_weights_baked_into_an_image_need_no_download(tmp_path, monkeypatch):
    """docker/Dockerfile bakes the files into a folder and names it in TFSSD_IMAGENET_WEIGHTS;
    a network-isolated job then finds them there, and never reaches the (unreachable) URL."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv(weights.BAKED_WEIGHTS_VARIABLE, str(tmp_path / "baked"))
    spec = weights.IMAGENET_WEIGHTS["resnet-50"]
    monkeypatch.setitem(weights.IMAGENET_WEIGHTS, "resnet-50", weights.WeightsFile(
        spec.filename, "http://127.0.0.1:9/resnet50.h5", spec.md5))
    with pytest.raises(weights.PretrainedWeightsError, match="Download failed"):
        weights.locate_weights("resnet-50")  # not baked: the download is tried
    (tmp_path / "baked").mkdir()
    (tmp_path / "baked" / spec.filename).write_bytes(b"weights")
    assert weights.locate_weights("resnet-50", download=False) == str(
        tmp_path / "baked" / spec.filename)


def test_cached_file_is_hash_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / weights.IMAGENET_WEIGHTS["resnet-50"].filename).write_bytes(b"junk")
    with pytest.raises(weights.PretrainedWeightsError, match="corrupt"):
        weights.locate_weights("resnet-50")


def _keras_applications_file(tmp_path, name):
    """A file written by Keras' own legacy-h5 writer from keras.applications' model.

    It has the structure of the ImageNet "notop" downloads (random values: nothing is
    downloaded). The writer is a private Keras function, hence the skip if it moves.
    """
    legacy = pytest.importorskip("keras.src.legacy.saving.legacy_h5_format")
    import keras

    builder = {"vgg-16": keras.applications.VGG16, "resnet-50": keras.applications.ResNet50}
    reference = builder[name](weights=None, include_top=False, input_shape=(300, 300, 3))
    path = tmp_path / weights.IMAGENET_WEIGHTS[name].filename
    with h5py.File(path, "w") as f:
        legacy.save_weights_to_hdf5_group(f, reference)
    return str(path), reference


@pytest.mark.slow
@pytest.mark.parametrize("base", ["vgg-16", "resnet-50"])
def test_file_written_by_keras_loads_into_every_layer(tmp_path, base, absl_lines):
    path, reference = _keras_applications_file(tmp_path, base)
    model = ssd_lib.ssd_network(base, 20, 300).model
    loaded = weights.load_imagenet_weights(model, base, path)
    # The run's log says which file initialised the backbone, and how many layers it set.
    assert any(line.startswith(f"Backbone initialised from ImageNet weights {path}: "
                               f"{len(loaded)} layers") for line in absl_lines), absl_lines
    names = vgg16.KERAS_LAYER_NAMES if base == "vgg-16" else {
        layer.name: layer.name for layer in reference.layers if layer.weights}
    assert sorted(loaded) == sorted(names.values())
    for keras_name, ours in names.items():
        for got, want in zip(model.get_layer(ours).get_weights(),
                             reference.get_layer(keras_name).get_weights()):
            np.testing.assert_array_equal(got, want)


def test_sagemakers_networks_start_from_mxnet_imagenet_files_by_layer_name(tmp_path):
    """An MXNet ImageNet file (a backbone's parameters, MXNet's names and NCHW shapes) sets the
    backbone of SageMaker's VGG-16 and leaves the rest; without a file the message says which."""
    from tests.model.params_writer import dump_params
    from tfssd.model import sagemaker_networks
    from tfssd.model.ssd import ssd_network

    ssd = ssd_network("sagemaker-vgg-16", 3, 300, width_multiplier=0.0625)
    shapes = sagemaker_networks.mxnet_parameter_shapes(ssd.model)
    rng = np.random.default_rng(0)
    backbone = {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()
                if n.startswith(("conv", "fc"))}  # vgg16_reduced's own layers, no heads
    path = tmp_path / "vgg16_reduced-0000.params"
    path.write_bytes(dump_params(
        {**{f"arg:{n}": v for n, v in backbone.items()}, "arg:fc8_weight": np.zeros((2, 2))}))
    before = ssd.model.get_layer("multi_feat_2_conv_3x3_conv").get_weights()

    loaded = weights.load_imagenet_weights(ssd.model, "sagemaker-vgg-16", str(path))
    assert "conv1_1" in loaded and "fc7" in loaded and len(loaded) == 15  # 13 conv + fc6, fc7
    kernel = ssd.model.get_layer("conv5_3").get_weights()[0]
    np.testing.assert_array_equal(kernel, backbone["conv5_3_weight"].transpose(2, 3, 1, 0))
    after = ssd.model.get_layer("multi_feat_2_conv_3x3_conv").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # not in the file: kept

    with pytest.raises(weights.PretrainedWeightsError, match="vgg16_reduced-0000.params as "
                                                             "--pretrained_weights=FILE"):
        weights.load_imagenet_weights(ssd.model, "sagemaker-vgg-16", None)


def test_the_image_bakes_the_weights_where_training_looks():
    dockerfile = open(os.path.join(os.path.dirname(__file__), "..", "..", "docker",
                                   "Dockerfile")).read()
    assert f"ENV {weights.BAKED_WEIGHTS_VARIABLE}=/opt/tfssd-imagenet" in dockerfile
    assert "bake_imagenet_weights" in dockerfile and "ARG IMAGENET_WEIGHTS=1" in dockerfile
    # Inference pipelines and multi-container endpoints need this label.
    assert "LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in dockerfile
