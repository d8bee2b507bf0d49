"""Importing a SageMaker Object Detection model.tar.gz (MXNet): tfssd model directory and export.

The artifacts are the narrow fixtures that MXNet 1.9.1 made (tests/fixtures/sagemaker/, the
ResNet-50 trained by MXNet); the checks compare with the detections MXNet computed on its
images, and edit the graphs (as JSON) into variants the importer must refuse or accept.
"""

import copy
import io
import json
import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from tests.model.params_writer import dump_params
from tfssd import api
from tfssd.config.run_config import RUN_FILE
from tfssd.deploy import sagemaker_import
from tfssd.deploy.trained_ssd import load_trained_ssd
from tfssd.model import multibox, mxnet_params
from tfssd.model.postprocess import MultiBoxDetection
from tfssd.model.ssd import ssd_network

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "sagemaker")
FIXTURE = os.path.join(FIXTURES, "resnet50_narrow")
VGG16 = os.path.join(FIXTURES, "vgg16_narrow")
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
    """The SavedModel's serving signature on the fixture's images gives MXNet's detections
    (the fixture was trained by MXNet): its 50 best, each with the same class, score and box
    (xmin, ymin, xmax, ymax -> yxyx)."""
    images = np.load(os.path.join(FIXTURE, "images.npy"))
    mx = np.load(os.path.join(FIXTURE, "outputs.npz"))["detections"]
    serving = tf.saved_model.load(imported.export_dir).signatures["serving_images"]
    found = serving(images=tf.constant(images))
    for i in range(len(images)):
        ours = np.concatenate([found["detection_classes"][i, :, None].numpy(),
                               found["detection_scores"][i, :, None].numpy(),
                               found["detection_boxes"][i].numpy()[:, [1, 0, 3, 2]]], 1)
        theirs = mx[i][mx[i][:, 0] >= 0][:50]
        matched = [np.abs(ours - d).max(axis=1).min() < 1e-4 for d in theirs]
        assert all(matched), np.mean(matched)
        np.testing.assert_allclose(ours[:len(theirs), 1], theirs[:, 1], atol=1e-4)


def graph_with(change, fixture=FIXTURE):
    with open(os.path.join(fixture, "model_algo_1-symbol.json"), encoding="utf-8") as f:
        graph = json.load(f)
    change({n["name"]: n for n in graph["nodes"]})
    return json.dumps(graph).encode()


def parts(fixture, change=lambda nodes: None):
    """(graph, params, hyperparameters) of a fixture whose graph ``change`` edited."""
    graph = mxnet_params.parse_symbol(graph_with(change, fixture).decode())
    args, aux = mxnet_params.split_params(
        mxnet_params.load_params(os.path.join(fixture, "model_algo_1-0000.params")))
    with open(os.path.join(fixture, "hyperparams.json"), encoding="utf-8") as f:
        return graph, {**args, **aux}, json.load(f)


@pytest.mark.parametrize("change, message", [
    (lambda nodes: nodes["stage3_unit1_conv2"]["attrs"].update(stride="(1, 1)"),
     r"stage3_unit1_conv2: stride=\(1, 1\), tfssd's \(2, 2\)"),
    (lambda nodes: nodes["_plus15_anchors"]["attrs"].update(sizes="(0.25,0.3,0.4)"),
     r"_plus15_cls_pred_conv: num_filter=24, tfssd's 28"),
    (lambda nodes: nodes["_plus3"].update(op="elemwise_sub"),
     r"takes _plus3 \(elemwise_sub\) where tfssd's takes _plus3 \(elemwise_add\)"),
    (lambda nodes: nodes["stage2_unit1_sc"]["inputs"].__setitem__(0, nodes[
        "stage2_unit1_bn1"]["inputs"][0]),
     "stage2_unit1_sc takes _plus2 where tfssd's graph takes stage2_unit1_relu1"),
    (lambda nodes: nodes["cls_prob"]["attrs"].update(normalization="batch"),
     "cls_prob: normalization=batch, tfssd's valid"),
    (lambda nodes: nodes["bn0"]["attrs"].update(eps="0.001"), "bn0: eps=0.001, tfssd's 2e-05"),
    (lambda nodes: nodes["detection"]["attrs"].update(variances="(0.1, 0.1, 0.1, 0.1)"),
     r"detection: variances=\(0.1, 0.1, 0.1, 0.1\), tfssd's \(0.1, 0.1, 0.2, 0.2\)"),
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
                   {"model_algo_1-0000.params": dump_params(changed)})
    with pytest.raises(sagemaker_import.SageMakerImportError) as error:
        sagemaker_import.import_sagemaker_model(tar, str(tmp_path / "model"))
    assert "weights missing: stage1_unit1_bn2_moving_var" in str(error.value)
    assert "multi_feat_3_conv_1x1_conv_weight: shape (8, 64, 3, 3)" in str(error.value)


@pytest.fixture(scope="module")
def vgg16():
    graph, params, hyper = parts(VGG16)
    geometry = sagemaker_import.recognise(graph, params, hyper)
    return sagemaker_import._build(geometry, graph), params


@pytest.mark.parametrize("node, attrs, message", [
    ("pool5", {"pool_type": "avg"}, "pool5: pool_type=avg, tfssd's max"),
    ("relu7", {"act_type": "sigmoid"}, "relu7: act_type=sigmoid, tfssd's relu"),
    ("pool3", {"pooling_convention": "valid"}, "pool3: pooling_convention=valid, tfssd's full"),
    ("pool3", {"pad": "(1, 1)"}, r"pool3: pad=(1, 1), tfssd's (0, 0)"),
    ("relu4_3_norm", {"mode": "instance"}, "relu4_3_norm: mode=instance, tfssd's channel"),
])
def test_vgg16_variants_are_refused(vgg16, node, attrs, message):
    ssd, params = vgg16
    graph, _, _ = parts(VGG16)
    assert sagemaker_import.differences(graph, params, ssd) == []
    graph, _, _ = parts(VGG16, lambda nodes: nodes[node]["attrs"].update(attrs))
    assert sagemaker_import.differences(graph, params, ssd) == [message]


def test_anchors_come_from_the_graph():
    """The older MXNet example writes sizes rounded to 3 digits ((.1,.141), (.2,.272), ...):
    accepted, with the anchors of those sizes, not of tfssd's table."""
    def older_example(nodes):
        for node in nodes.values():
            if node["op"] == "_contrib_MultiBoxPrior":
                sizes = mxnet_params.parse_tuple(node["attrs"]["sizes"])
                node["attrs"]["sizes"] = "(" + ",".join(f"{v:.3g}" for v in sizes) + ")"

    graph, params, hyper = parts(FIXTURE, older_example)
    assert graph["nodes"][[n["name"] for n in graph["nodes"]].index("_plus12_anchors")][
        "attrs"]["sizes"] == "(0.1,0.141)"
    geometry = sagemaker_import.recognise(graph, params, hyper)
    ssd = sagemaker_import._build(geometry, graph)
    assert sagemaker_import.differences(graph, params, ssd) == []
    table = ssd_network(**geometry).anchors
    first = multibox.multibox_prior(8, 8, (0.1, 0.141), (1.0, 2.0, 0.5))  # _plus12: 8 x 8
    np.testing.assert_allclose(ssd.anchors[:len(first)], multibox.xyxy_to_yxyx(first))
    assert np.abs(ssd.anchors - table).max() > 1e-4


def test_detection_settings_come_from_the_graph():
    graph, params, hyper = parts(FIXTURE, lambda nodes: nodes["detection"]["attrs"].update(
        threshold="0.2", nms_topk="50", clip="False", force_suppress="True",
        nms_threshold="0.3"))
    ssd = sagemaker_import._build(sagemaker_import.recognise(graph, params, hyper), graph)
    assert sagemaker_import.differences(graph, params, ssd) == []
    assert ssd.model.multibox_detection == MultiBoxDetection(nms_topk=50, clip=False,
                                                             force_suppress=True)
    assert sagemaker_import.detection_settings(graph) == {"nms_threshold": 0.3,
                                                          "score_threshold": 0.2}


def test_the_image_size_is_given_or_refused():
    graph, params, _ = parts(FIXTURE)
    with pytest.raises(sagemaker_import.SageMakerImportError, match="no hyperparams.json with "
                       "image_shape: give the image_shape"):
        sagemaker_import.recognise(graph, params, {})
    assert sagemaker_import.recognise(graph, params, {}, image_size=160)["image_size"] == 160


def test_an_artifact_without_hyperparams_imports_at_the_image_shape_given(tmp_path):
    """The image size is not in the graph: without hyperparams.json it is asked for, and the
    API (as tfssd-import-sagemaker --image_shape) takes it."""
    archive = str(tmp_path / "model.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        for name in ARTIFACT_FILES[:2]:
            tar.add(os.path.join(FIXTURE, name), arcname=name)
    with pytest.raises(ValueError, match="no hyperparams.json with image_shape"):
        api.import_sagemaker(archive, str(tmp_path / "refused"))
    imported = api.import_sagemaker(archive, str(tmp_path / "model"), image_shape=128)
    with open(os.path.join(imported.model_dir, RUN_FILE), encoding="utf-8") as f:
        assert json.load(f)["image_size"] == 128
