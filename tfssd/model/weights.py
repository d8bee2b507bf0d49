"""ImageNet initialisation of the backbone from keras.applications' "notop" weight files.

The file comes from ``--pretrained_weights`` if given, else from the folder
``$TFSSD_IMAGENET_WEIGHTS`` names (an image's weights, baked at build time by
``bake_imagenet_weights``: network-isolated jobs need no download), else from the Keras cache
(``$KERAS_HOME/models``, default ``~/.keras/models``) where its MD5 is checked, else it is
downloaded there. VGG-16's Keras layer names map onto SSD's (block1_conv1 -> conv1_1, ...);
fc6, fc7, the extra layers and the heads have no ImageNet counterpart and start from scratch.
ResNet-50's names are Keras' own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request

import h5py
import keras
import numpy as np
from absl import logging

from tfssd.model import vgg16

_DOWNLOAD_TIMEOUT_S = 20
BAKED_WEIGHTS_VARIABLE = "TFSSD_IMAGENET_WEIGHTS"  # a folder of the "notop" files (docker/)


class PretrainedWeightsError(RuntimeError):
    """The ImageNet weights are missing, corrupt or do not fit the network."""


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    filename: str
    url: str
    md5: str


_KERAS_APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications"
# SageMaker's MXNet networks start from MXNet's ImageNet files, which the user supplies.
MXNET_IMAGENET_WEIGHTS = {
    "sagemaker-resnet-50": "the MXNet model zoo's ResNet-50 v2 (resnet-50-0000.params)",
    "sagemaker-vgg-16": "the MXNet SSD example's vgg16_reduced-0000.params",
}
IMAGENET_WEIGHTS = {
    "vgg-16": WeightsFile("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                          f"{_KERAS_APPLICATIONS}/vgg16/"
                          "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                          "6d6bbae143d832006294945121d1f1fc"),
    "resnet-50": WeightsFile("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                             f"{_KERAS_APPLICATIONS}/resnet/"
                             "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                             "4d473c1dd8becc155b73f8504c6f6626"),
}


def keras_cache_dir() -> str:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models, default ~/.keras/models."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(home, "models")


def md5_of(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, destination: str) -> None:
    """Downloads to a temporary file, then moves it into place (never a partial file)."""
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=os.path.dirname(destination), suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(
                url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            print(f"Downloading {url}", file=sys.stderr)
            shutil.copyfileobj(response, out, 1 << 20)
        os.replace(temp, destination)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def locate_weights(base_network: str, path: str | None = None, download: bool = True) -> str:
    """Finds (or downloads) the ImageNet weights file of ``base_network``.

    Raises:
      PretrainedWeightsError: with the exact file name, where to put it, and the
        ``--use_pretrained_model=0`` alternative.
    """
    spec = IMAGENET_WEIGHTS[base_network]
    if path:
        if not os.path.isfile(path):
            raise PretrainedWeightsError(f"--pretrained_weights={path}: no such file")
        return path
    baked = os.environ.get(BAKED_WEIGHTS_VARIABLE)
    if baked and os.path.isfile(os.path.join(baked, spec.filename)):
        return os.path.join(baked, spec.filename)  # MD5 checked when it was baked
    cached = os.path.join(keras_cache_dir(), spec.filename)
    if os.path.isfile(cached):
        if md5_of(cached) != spec.md5:
            raise PretrainedWeightsError(
                f"{cached} is corrupt (MD5 {md5_of(cached)}, expected {spec.md5}); delete it so "
                "that it is downloaded again, or put a good copy there")
        return cached
    help_text = (f"The {base_network} ImageNet weights are needed (use_pretrained_model=1) "
                 f"and are not on this machine. Either download\n  {spec.url}\nand put the file "
                 f"{spec.filename} in {keras_cache_dir()}/ (or pass --pretrained_weights=PATH), "
                 f"or train from scratch with --use_pretrained_model=0.")
    if not download:
        raise PretrainedWeightsError(help_text)
    try:
        _download(spec.url, cached)
    except OSError as e:
        raise PretrainedWeightsError(f"Download failed ({e}).\n{help_text}") from None
    if md5_of(cached) != spec.md5:
        os.remove(cached)
        raise PretrainedWeightsError(f"The download of {spec.url} is corrupt.\n{help_text}")
    return cached


def bake_imagenet_weights(directory: str) -> list[str]:
    """Downloads every network's ImageNet file into ``directory``, MD5 checked (an image's
    build step; the image then sets $TFSSD_IMAGENET_WEIGHTS to ``directory``)."""
    paths = []
    for spec in IMAGENET_WEIGHTS.values():
        path = os.path.join(directory, spec.filename)
        if not os.path.isfile(path) or md5_of(path) != spec.md5:
            _download(spec.url, path)
        if md5_of(path) != spec.md5:
            raise PretrainedWeightsError(f"The download of {spec.url} is corrupt")
        paths.append(path)
    return paths


def _attribute_list(group, name: str) -> list[str]:
    """A list attribute of a Keras h5 group; long lists are split over name0, name1, ..."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def load_mxnet_imagenet_weights(model: keras.Model, base_network: str,
                                path: str | None) -> list[str]:
    """Sets the backbone of SageMaker's MXNet network ``model`` from MXNet's ImageNet file at
    ``path`` (MXNET_IMAGENET_WEIGHTS), matched by MXNet's layer names; returns the layers set.

    Raises:
      PretrainedWeightsError: no file given (tfssd does not fetch these), not a .params file, no
        layer of the network in it, or a parameter of another shape.
    """
    from tfssd.model import mxnet_params, sagemaker_networks

    wanted = MXNET_IMAGENET_WEIGHTS[base_network]
    if not path:
        raise PretrainedWeightsError(
            f"base_network={base_network} with use_pretrained_model=1 needs {wanted} as "
            "--pretrained_weights=FILE (tfssd does not download MXNet's files); or train from "
            "scratch (use_pretrained_model=0), or start from a model with --init_from")
    try:
        args, aux = mxnet_params.split_params(mxnet_params.load_params(path))
    except (OSError, ValueError) as e:
        raise PretrainedWeightsError(f"{path}: not an MXNet .params file ({e})") from None
    params = {**args, **aux}
    shapes = sagemaker_networks.mxnet_parameter_shapes(model)
    different = [f"{n}: {tuple(params[n].shape)} there, {shape} here"
                 for n, shape in shapes.items() if n in params and tuple(params[n].shape) != shape]
    if different:
        raise PretrainedWeightsError(
            f"{path}: parameters of other shapes ({'; '.join(different[:5])}); ImageNet weights "
            "need width_multiplier=1")
    loaded = sagemaker_networks.load_mxnet_weights(model, params, skip_missing=True)
    if not loaded:
        raise PretrainedWeightsError(f"{path} holds no parameter of {model.name} (expected "
                                     f"{wanted})")
    logging.info("Backbone initialised from MXNet's ImageNet weights %s: %d layers.", path,
                 len(loaded))
    return loaded


def read_keras_h5(path: str) -> dict[str, list[np.ndarray]]:
    """Layer name -> weight arrays (in the layer's order) of a Keras (legacy h5) weights file."""
    try:
        with h5py.File(path, "r") as f:
            layers = {}
            for layer in _attribute_list(f, "layer_names"):
                group = f[layer]
                layers[layer] = [np.asarray(group[w]) for w in
                                 _attribute_list(group, "weight_names")]
            return layers
    except (OSError, KeyError) as e:
        raise PretrainedWeightsError(f"{path}: not a Keras h5 weights file ({e})") from None


def load_imagenet_weights(model: keras.Model, base_network: str,
                          path: str | None = None) -> list[str]:
    """Sets the backbone of ``model`` to ImageNet weights.

    Returns:
      Names of the model's layers that received weights.

    Raises:
      PretrainedWeightsError: missing file, or a layer whose shapes do not match (as with a
        width_multiplier other than 1).
    """
    if base_network in MXNET_IMAGENET_WEIGHTS:
        return load_mxnet_imagenet_weights(model, base_network, path)
    path = locate_weights(base_network, path)
    arrays = read_keras_h5(path)
    names = vgg16.KERAS_LAYER_NAMES if base_network == "vgg-16" else {n: n for n in arrays}
    loaded = []
    for keras_name, values in arrays.items():
        if not values or keras_name not in names:
            continue
        try:
            layer = model.get_layer(names[keras_name])
        except ValueError:
            raise PretrainedWeightsError(
                f"{path}: layer {keras_name} has no counterpart {names[keras_name]} in "
                f"{model.name}") from None
        expected = [tuple(w.shape) for w in layer.weights]
        if expected != [v.shape for v in values]:
            raise PretrainedWeightsError(
                f"{path}: layer {keras_name} has shapes {[v.shape for v in values]}, "
                f"{layer.name} needs {expected} (ImageNet weights need width_multiplier=1)")
        layer.set_weights(values)
        loaded.append(layer.name)
    expected_layers = set(names.values())
    if base_network == "vgg-16" and set(loaded) != expected_layers:
        raise PretrainedWeightsError(
            f"{path}: no weights for {sorted(expected_layers - set(loaded))}")
    # The run's log says that use_pretrained_model=1 took effect, and with which file.
    logging.info("Backbone initialised from ImageNet weights %s: %d layers (%s ... %s).", path,
                 len(loaded), loaded[0] if loaded else "-", loaded[-1] if loaded else "-")
    return loaded
