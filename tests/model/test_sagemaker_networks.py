"""SageMaker's networks and MXNet's file formats, against what MXNet itself wrote and computed.

The fixtures (tests/fixtures/sagemaker/, see its README) were made by MXNet 1.9.1 with
tools/make_sagemaker_fixture.py (the ResNet-50 trained by MXNet on shapes, so that its BatchNorm
statistics moved; images fed minus the example's mean pixel); MXNet is not needed here.
"""

import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from tests.model.params_writer import dump_params
from tfssd.model import multibox, mxnet_params, sagemaker_networks
from tfssd.model.postprocess import MultiBoxDetection, detect, multibox_detection
from tfssd.ops import box_coder

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "sagemaker")
CASES = {"sagemaker-resnet-50": "resnet50_narrow", "sagemaker-vgg-16": "vgg16_narrow"}


def fixture(name):
    base = os.path.join(FIXTURES, name)
    args, aux = mxnet_params.split_params(
        mxnet_params.load_params(os.path.join(base, "model_algo_1-0000.params")))
    graph = mxnet_params.load_symbol(os.path.join(base, "model_algo_1-symbol.json"))
    return graph, {**args, **aux}, np.load(os.path.join(base, "images.npy")), dict(
        np.load(os.path.join(base, "outputs.npz")))


def test_params_written_by_mxnet_are_read_with_their_names_shapes_and_dtypes():
    graph, params, _, _ = fixture("resnet50_narrow")
    variables = {graph["nodes"][i]["name"] for i in graph["arg_nodes"]} - {"data", "label"}
    assert set(params) == variables  # arguments and auxiliary states (moving mean and var)
    assert params["conv0_weight"].shape == (8, 3, 7, 7)  # (out, in, h, w): 64 / 16 channels
    assert params["bn_data_moving_var"].shape == (3,)
    assert all(v.dtype == np.float32 for v in params.values())
    raw = mxnet_params.load_params(
        os.path.join(FIXTURES, "resnet50_narrow", "model_algo_1-0000.params"))
    assert sum(k.startswith("aux:") for k in raw) == 2 * sum(
        k.endswith("_gamma") for k in params)  # every BatchNorm's moving mean and variance


def test_params_round_trip_and_bad_files_are_refused():
    arrays = {"arg:w": np.arange(6, dtype=np.float32).reshape(2, 3),
              "aux:m": np.array([1.5], np.float64), "arg:i": np.array([[7]], np.int32)}
    read = mxnet_params.parse_params(dump_params(arrays))
    assert list(read) == list(arrays)
    for name, value in arrays.items():
        np.testing.assert_array_equal(read[name], value)
        assert read[name].dtype == value.dtype
    data = dump_params(arrays)
    # The tests' writer (tests/model/params_writer.py) writes what MXNet writes: read back, a
    # file MXNet saved is rewritten byte for byte.
    with open(os.path.join(FIXTURES, "vgg16_narrow", "model_algo_1-0000.params"), "rb") as f:
        saved = f.read()
    assert dump_params(mxnet_params.parse_params(saved)) == saved
    with pytest.raises(mxnet_params.MXNetFormatError, match="truncated"):
        mxnet_params.parse_params(data[:60])
    with pytest.raises(mxnet_params.MXNetFormatError, match="not an MXNet .params"):
        mxnet_params.parse_params(struct.pack("<QQQ", 0x113, 0, 0))
    with pytest.raises(mxnet_params.MXNetFormatError, match="not an MXNet symbol"):
        mxnet_params.parse_symbol("{}")
    assert mxnet_params.parse_tuple("(1,2,0.5,3,0.333333333333)")[-1] == pytest.approx(1 / 3)


@pytest.mark.parametrize("base_network", sorted(CASES))
def test_network_matches_mxnet_outputs(base_network):
    """Anchors, class probabilities and box deltas of tfssd's build of SageMaker's network,
    with the MXNet weights, against MXNet's forward pass on the same images."""
    _, params, images, mx = fixture(CASES[base_network])
    model, anchors, _, _ = sagemaker_networks.build(base_network, 3, images.shape[1], 1 / 16)
    shapes = sagemaker_networks.mxnet_parameter_shapes(model)
    assert shapes == {k: v.shape for k, v in params.items()}
    sagemaker_networks.load_mxnet_weights(model, params)
    outputs = model(images.astype(np.float32), training=False)
    # MXNet's MultiBoxPrior, (xmin, ymin, xmax, ymax) -> tfssd's yxyx.
    np.testing.assert_allclose(anchors, multibox.xyxy_to_yxyx(mx["anchors"][0]), atol=1e-6)
    probabilities = tf.nn.softmax(outputs["cls_logits"]).numpy()
    np.testing.assert_allclose(probabilities, mx["cls_prob"].transpose(0, 2, 1), atol=2e-5)
    # MXNet's (dx, dy, dw, dh) per anchor -> tfssd's (dy, dx, dh, dw).
    deltas = mx["loc_pred"].reshape(len(images), -1, 4)[..., list(multibox.LOC_TO_TFSSD)]
    np.testing.assert_allclose(outputs["box_deltas"], deltas, atol=2e-5, rtol=1e-5)
    # MXNet's MultiBoxDetection, on tfssd's outputs decoded by tfssd's box coder: the same
    # detections (class, score, box) as MXNet's.
    boxes = box_coder.decode(outputs["box_deltas"], tf.constant(anchors)).numpy()
    for i in range(len(images)):
        ours = mxnet_detection(probabilities[i], boxes[i])
        theirs = mx["detections"][i]
        theirs = theirs[theirs[:, 0] >= 0]
        assert len(ours) == len(theirs) > 50
        for detection in theirs:  # tied scores may come in either order
            assert np.abs(ours - detection).max(axis=1).min() < 2e-5, detection
    # Detections as the network's export and evaluation make them: MXNet's MultiBoxDetection
    # (one class per anchor, boxes clipped, the 400 best anchors into NMS), at most 200.
    found = detect(model, images.astype(np.float32), tf.constant(anchors))
    for i in range(len(images)):
        ours = np.concatenate([found["detection_classes"][i, :, None],
                               found["detection_scores"][i, :, None],
                               multibox.xyxy_to_yxyx(found["detection_boxes"][i].numpy())], 1)
        ours = ours[:int(found["num_detections"][i])]
        theirs = mx["detections"][i][:400]  # MXNet's rows past nms_topk are left unsorted
        theirs = theirs[theirs[:, 0] >= 0][:200]
        assert len(ours) == len(theirs) > 20
        np.testing.assert_allclose(np.sort(ours[:, 1])[::-1], theirs[:, 1], atol=2e-5)
        for detection in theirs:
            assert np.abs(ours - detection).max(axis=1).min() < 2e-5, detection


def test_the_imagenet_mean_would_not_reproduce_mxnet(monkeypatch):
    """The fixtures see the mean pixel: with the ImageNet mean (123.68, 116.779, 103.939)
    instead of the MXNet SSD example's (123, 117, 104), the trained fixture's class
    probabilities move 40 times the tolerance above and more."""
    _, params, images, mx = fixture("resnet50_narrow")
    monkeypatch.setattr(sagemaker_networks, "MEAN_RGB", (123.68, 116.779, 103.939))
    model, _, _, _ = sagemaker_networks.build("sagemaker-resnet-50", 3, images.shape[1], 1 / 16)
    sagemaker_networks.load_mxnet_weights(model, params)
    outputs = model(images.astype(np.float32), training=False)
    probabilities = tf.nn.softmax(outputs["cls_logits"]).numpy()
    assert np.abs(probabilities - mx["cls_prob"].transpose(0, 2, 1)).max() > 8e-4


def test_multibox_detection_takes_one_class_per_anchor():
    """Hand-made: anchor 0 prefers class 0 (0.6), anchor 1 (overlapping it) class 1 (0.5) with
    class 0 at 0.4; anchor 2 (apart) class 0 at 0.3. Per-class NMS of every class's scores would
    suppress anchor 1's class-0 box and could keep a second detection for an anchor; MXNet keeps
    one detection per anchor, anchor 1 as class 1. force_suppress: anchor 1 suppressed too."""
    probabilities = np.array([[[0.3, 0.6, 0.1], [0.1, 0.4, 0.5], [0.6, 0.3, 0.1]]], np.float32)
    anchors = tf.constant([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.6, 0.6, 0.9, 0.9]])
    deltas = tf.zeros((1, 3, 4))
    found = multibox_detection(tf.math.log(probabilities), deltas, anchors)
    assert int(found["num_detections"][0]) == 3
    np.testing.assert_allclose(found["detection_scores"][0, :3], [0.6, 0.5, 0.3], atol=1e-6)
    np.testing.assert_array_equal(found["detection_classes"][0, :3], [0, 1, 0])
    found = multibox_detection(tf.math.log(probabilities), deltas, anchors,
                               mxnet=MultiBoxDetection(force_suppress=True))
    assert int(found["num_detections"][0]) == 2
    np.testing.assert_array_equal(found["detection_classes"][0, :2], [0, 0])
    np.testing.assert_allclose(found["detection_boxes"][0, 1], [0.6, 0.6, 0.9, 0.9], atol=1e-6)
    # Boxes are clipped to the image before NMS (MultiBoxDetection's clip=True); clip=False not.
    wide = tf.constant([[-0.2, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.6, 0.6, 0.9, 1.3]])
    found = multibox_detection(tf.math.log(probabilities), deltas, wide)
    assert found["detection_boxes"].numpy().min() >= 0 and found["detection_boxes"].numpy(
        ).max() <= 1
    found = multibox_detection(tf.math.log(probabilities), deltas, wide,
                               mxnet=MultiBoxDetection(clip=False))
    assert found["detection_boxes"].numpy().max() > 1.2
    # Tied scores: the lower anchor comes first and suppresses the other (MXNet's stable sort),
    # with nms_topk 0 (every anchor) as with 400.
    tied = np.tile(probabilities[:, :1], (1, 30, 1))
    boxes = tf.constant([[0.1, 0.1 + 0.01 * k, 0.5, 0.5 + 0.01 * k] for k in range(30)])
    for topk in (0, 400):
        found = multibox_detection(tf.math.log(tied), tf.zeros((1, 30, 4)), boxes,
                                   mxnet=MultiBoxDetection(nms_topk=topk))
        kept = found["detection_boxes"][0, :int(found["num_detections"][0])].numpy()
        np.testing.assert_allclose(kept[:, 1], [0.1, 0.26], atol=1e-6)  # anchors 0 and 16


def mxnet_detection(probabilities, boxes, threshold=0.01, nms_threshold=0.45, top_k=400):
    """MXNet's MultiBoxDetection (src/operator/contrib/multibox_detection.cc) in NumPy.

    Args: probabilities [A, C + 1] (class 0 background), boxes [A, 4] yxyx.
    Returns: [N, 6] (class from 0, score, xmin, ymin, xmax, ymax), by descending score.
    """
    classes = probabilities[:, 1:].argmax(axis=1)  # one class per anchor
    scores = probabilities[:, 1:].max(axis=1)
    keep = np.flatnonzero(scores >= threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:top_k]
    xyxy = np.clip(multibox.xyxy_to_yxyx(boxes[keep]), 0.0, 1.0)
    alive = np.ones(len(keep), bool)
    for a in range(len(keep)):
        if not alive[a]:
            continue
        for b in range(a + 1, len(keep)):
            if alive[b] and classes[keep[a]] == classes[keep[b]] and iou(xyxy[a], xyxy[b]) >= (
                    nms_threshold):
                alive[b] = False
    return np.concatenate([classes[keep][:, None], scores[keep][:, None], xyxy], 1)[alive]


def iou(a, b):
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_multibox_prior_order_and_steps():
    """Per location: each size at the first ratio, then each further ratio at the first size."""
    boxes = multibox.multibox_prior(2, 2, (0.2, 0.4), (1.0, 4.0), steps=(0.3, 0.3))
    assert boxes.shape == (2 * 2 * 3, 4)
    np.testing.assert_allclose(boxes[:3], [[0.05, 0.05, 0.25, 0.25], [-0.05, -0.05, 0.35, 0.35],
                                           [-0.05, 0.1, 0.35, 0.2]], atol=1e-6)
    np.testing.assert_allclose(boxes[3, :2], [0.35, 0.05], atol=1e-6)  # next column: x + step
    assert list(multibox.loc_channels_to_tfssd(2)) == [1, 0, 3, 2, 5, 4, 7, 6]


def test_sizes_too_small_are_refused():
    with pytest.raises(ValueError, match="too small"):
        sagemaker_networks.build("sagemaker-vgg-16", 3, 160, 1 / 16)
    with pytest.raises(ValueError, match="base_network"):
        sagemaker_networks.build("resnet-50", 3, 128)


def test_batch_norm_trains_from_scratch_and_stays_frozen_on_given_weights():
    """As for tfssd's ResNet-50: MXNet's statistics are kept when starting from weights (an
    import, ImageNet), and BatchNorm learns its own when the network trains from scratch."""
    import keras

    from tfssd.model.ssd import ssd_network

    for train_batch_norm in (False, True):
        ssd = ssd_network("sagemaker-resnet-50", 3, 128, width_multiplier=0.0625,
                          train_batch_norm=train_batch_norm)
        norms = [layer for layer in ssd.model.layers
                 if isinstance(layer, keras.layers.BatchNormalization)]
        assert norms and all(layer.trainable == train_batch_norm for layer in norms)
