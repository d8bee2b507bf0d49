"""Importing a SageMaker Object Detection model.tar.gz (MXNet): tfssd model directory and export.

The artifact is the narrow ResNet-50 fixture that MXNet 1.9.1 made (tests/fixtures/sagemaker/);
the checks compare with the detections MXNet computed on its images.
"""

import copy
import io
import json
import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from tfssd import api
from tfssd.config.run_config import RUN_FILE
from tfssd.deploy import sagemaker_import
from tfssd.deploy.trained_ssd import load_trained_ssd
from tfssd.model import mxnet_params

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "sagemaker",
                       "resnet50_narrow")
ARTIFACT_FILES = ("model_algo_1-symbol.json", "model_algo_1-0000.params", "hyperparams.json")


def make_tar(path, files=None):
    """A SageMaker model.tar.gz of the fixture; ``files`` replaces members' contents."""
    with tarfile.open(path, "w:gz") as tar:
        for name in ARTIFACT_FILES:
            if files and name in files:
                data = files[name]
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.add(os.path.join(FIXTURE, name), arcname=name)
    return str(path)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("sagemaker")
    return api.import_sagemaker(make_tar(root / "model.tar.gz"), str(root / "model"),
                                class_names=["boat", "buoy", "bird"])


def test_model_directory_and_export(imported):
    with open(os.path.join(imported.model_dir, RUN_FILE), encoding="utf-8") as f:
        run = json.load(f)
    assert (run["base_network"], run["num_classes"], run["image_size"],
            run["width_multiplier"]) == ("sagemaker-resnet-50", 3, 128, 1 / 16)
    assert run["class_names"] == ["boat", "buoy", "bird"]
    assert imported.export_dir == os.path.join(imported.model_dir, "export", "1")
    # The model directory rebuilds the network and reads the export's NMS settings.
    trained = load_trained_ssd(imported.model_dir)
    assert (trained.nms_threshold, trained.score_threshold) == (0.45, 0.01)
    assert trained.class_names == ("boat", "buoy", "bird")


def test_served_detections_match_mxnet(imported):
    """The SavedModel's serving signature on the fixture's images finds MXNet's best
    detections, with the same class, score and box (xmin, ymin, xmax, ymax -> yxyx)."""
    images = np.load(os.path.join(FIXTURE, "images.npy"))
    mx = np.load(os.path.join(FIXTURE, "outputs.npz"))["detections"]
    serving = tf.saved_model.load(imported.export_dir).signatures["serving_images"]
    found = serving(images=tf.constant(images))
    for i in range(len(images)):
        ours = np.concatenate([found["detection_classes"][i, :, None].numpy(),
                               found["detection_scores"][i, :, None].numpy(),
                               found["detection_boxes"][i].numpy()[:, [1, 0, 3, 2]]], 1)
        theirs = mx[i][mx[i][:, 0] >= 0][:100]
        matched = [np.abs(ours - d).max(axis=1).min() < 1e-4 for d in theirs]
        assert np.mean(matched) >= 0.9
        assert all(matched[:10])


def graph_with(change):
    with open(os.path.join(FIXTURE, "model_algo_1-symbol.json"), encoding="utf-8") as f:
        graph = json.load(f)
    change({n["name"]: n for n in graph["nodes"]})
    return json.dumps(graph).encode()


@pytest.mark.parametrize("change, message", [
    (lambda nodes: nodes["stage3_unit1_conv2"]["attrs"].update(stride="(1, 1)"),
     r"stage3_unit1_conv2: stride \(1, 1\), tfssd's \(2, 2\)"),
    (lambda nodes: nodes["_plus15_anchors"]["attrs"].update(sizes="(0.25,0.3)"),
     r"_plus15_anchors: sizes \(0.25,0.3\)"),
    (lambda nodes: nodes["bn0"]["attrs"].update(eps="0.001"), "bn0: eps 0.001"),
    (lambda nodes: nodes["detection"]["attrs"].update(force_suppress="True"),
     "force_suppress"),
    (lambda nodes: nodes["bn_data"].update(name="data_norm"), "neither SageMaker's ResNet-50"),
])
def test_other_graphs_are_refused_naming_the_difference(tmp_path, change, message):
    tar = make_tar(tmp_path / "model.tar.gz", {"model_algo_1-symbol.json": graph_with(change)})
    with pytest.raises(sagemaker_import.SageMakerImportError, match=message):
        sagemaker_import.import_sagemaker_model(tar, str(tmp_path / "model"))
    assert not os.path.exists(tmp_path / "model" / RUN_FILE)


def test_weights_of_other_shapes_are_refused(tmp_path):
    params = mxnet_params.load_params(os.path.join(FIXTURE, "model_algo_1-0000.params"))
    changed = copy.copy(params)
    changed["arg:multi_feat_3_conv_1x1_conv_weight"] = np.zeros((8, 64, 3, 3), np.float32)
    del changed["aux:stage1_unit1_bn2_moving_var"]
    tar = make_tar(tmp_path / "model.tar.gz",
                   {"model_algo_1-0000.params": mxnet_params.dump_params(changed)})
    with pytest.raises(sagemaker_import.SageMakerImportError) as error:
        sagemaker_import.import_sagemaker_model(tar, str(tmp_path / "model"))
    assert "weights missing: stage1_unit1_bn2_moving_var" in str(error.value)
    assert "multi_feat_3_conv_1x1_conv_weight: shape (8, 64, 3, 3)" in str(error.value)
