"""Multibox loss: hard negatives at 3:1, smooth L1 on positives, images without objects, and
SageMaker's normalisation against MXNet's training graph (tests/fixtures/sagemaker/, made by
tools/make_sagemaker_fixture.py with MXNet 1.9.1)."""

import os

import numpy as np
import tensorflow as tf

from tfssd.model.losses import MXNET_VALID, POSITIVES, multibox_loss, smooth_l1

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "sagemaker")


def test_smooth_l1_hand_computed():
    np.testing.assert_allclose(smooth_l1(tf.constant([-2.0, -0.5, 0.0, 0.5, 3.0])).numpy(),
                               [1.5, 0.125, 0.0, 0.125, 2.5])


def test_hard_negatives_are_the_three_worst_per_positive():
    # One image, 8 anchors, 2 classes + background; anchor 0 is the only positive.
    cls_targets = tf.constant([[1, 0, 0, 0, 0, 0, 0, 0]])
    logits = np.zeros((1, 8, 3), np.float32)
    logits[0, 1:, 1] = [5.0, 1.0, 4.0, 0.5, 3.0, 0.0, 2.0]  # background losses rank 1, 3, 5
    box_targets = tf.zeros((1, 8, 4))
    box_deltas = tf.constant(np.full((1, 8, 4), 0.5, np.float32))
    sums = multibox_loss(cls_targets, box_targets, tf.constant(logits), box_deltas)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(cls_targets, logits).numpy()[0]
    expected = ce[0] + ce[1] + ce[3] + ce[5]  # the positive and the 3 hardest negatives
    np.testing.assert_allclose(sums.cls_loss_sum.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(sums.box_loss_sum.numpy(), 4 * 0.125)  # positive anchor only
    assert sums.num_positives.numpy() == 1


def test_image_without_objects_gives_finite_loss_and_zero_box_loss():
    """An image without objects: every anchor is background with zero box targets, and it adds
    nothing to the loss (no positives, so no negatives mined: 3 x 0), while the image with an
    object beside it in the batch keeps its own loss, worked out by hand."""
    from tfssd.data.targets import encode_targets

    anchors = tf.constant([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0],
                           [0.5, 0.0, 1.0, 0.5], [0.25, 0.25, 0.75, 0.75]])
    cls_targets, box_targets = encode_targets(tf.zeros([0, 4]), tf.zeros([0], tf.int32),
                                              anchors)
    np.testing.assert_array_equal(cls_targets.numpy(), [0] * 5)
    np.testing.assert_array_equal(box_targets.numpy(), np.zeros((5, 4)))

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 3)).astype(np.float32)
    deltas = rng.normal(size=(2, 5, 4)).astype(np.float32)
    with_object = tf.constant([2, 0, 0, 0, 0])  # anchor 0 holds class 1
    batch = multibox_loss(tf.stack([with_object, cls_targets]), tf.stack([tf.zeros((5, 4)),
                                                                           box_targets]),
                          tf.constant(logits), tf.constant(deltas))
    alone = multibox_loss(cls_targets[None], box_targets[None], tf.constant(logits[1:]),
                          tf.constant(deltas[1:]))
    assert alone.cls_loss_sum.numpy() == 0.0 and alone.box_loss_sum.numpy() == 0.0
    assert alone.num_positives.numpy() == 0 and alone.num_selected.numpy() == 0
    # The first image by hand: its positive and its 3 hardest of 4 negatives, -log softmax.
    log_softmax = logits[0] - np.log(np.exp(logits[0]).sum(axis=1, keepdims=True))
    background = np.sort(-log_softmax[1:, 0])[::-1]
    expected = -log_softmax[0, 2] + background[:3].sum()
    np.testing.assert_allclose(batch.cls_loss_sum.numpy(), expected, rtol=1e-5)
    box = np.abs(deltas[0, 0])
    np.testing.assert_allclose(batch.box_loss_sum.numpy(),
                               np.where(box < 1, 0.5 * box ** 2, box - 0.5).sum(), rtol=1e-5)
    assert batch.num_positives.numpy() == 1 and batch.num_selected.numpy() == 4


def test_negatives_are_capped_by_the_anchors_available():
    cls_targets = tf.constant([[1, 1, 1, 0, 0]])  # 3 positives would want 9 negatives
    sums = multibox_loss(cls_targets, tf.zeros((1, 5, 4)), tf.zeros((1, 5, 2)),
                         tf.zeros((1, 5, 4)))
    np.testing.assert_allclose(sums.cls_loss_sum.numpy(), 5 * np.log(2.0), rtol=1e-6)


def test_mxnet_valid_counts_the_anchors_that_take_part_and_the_box_terms():
    """SageMaker's normalisation (MXNet's 'valid'): the cross-entropy by the positives and mined
    negatives, the smooth L1 by its non-zero elements; tfssd's own: both by the positives."""
    cls_targets = tf.constant([[1, 0, 0, 0, 0, 0, 0, 0], [0, 2, 0, 2, 0, 0, 0, 0]])
    box_targets = np.zeros((2, 8, 4), np.float32)
    box_deltas = np.full((2, 8, 4), 0.5, np.float32)
    box_deltas[1, 3, 2] = 0.0  # an exact coordinate: no term (MakeLoss counts elements > 0)
    sums = multibox_loss(cls_targets, tf.constant(box_targets), tf.zeros((2, 8, 3)),
                         tf.constant(box_deltas))
    # 3 positives; negatives: min(3, 7) in the first image, min(6, 6) in the second.
    np.testing.assert_array_equal(sums.counts(POSITIVES).numpy(), [3, 3])
    np.testing.assert_array_equal(sums.counts(MXNET_VALID).numpy(), [1 + 3 + 2 + 6, 11])
    np.testing.assert_allclose(sums.box_loss_sum.numpy(), 11 * 0.125)


def test_sagemaker_networks_train_as_mxnet_on_one_batch():
    """The first step on one batch of the trained narrow ResNet-50 fixture, against MXNet's
    training graph (BatchNorm on its moving statistics on both sides): the same targets, the
    same counts, the same losses and the same gradients."""
    from tfssd.data.targets import encode_targets
    from tfssd.model import multibox, mxnet_params, sagemaker_networks
    from tfssd.model.losses import loss_normalisation

    base = os.path.join(FIXTURES, "resnet50_narrow")
    args, aux = mxnet_params.split_params(
        mxnet_params.load_params(os.path.join(base, "model_algo_1-0000.params")))
    images = np.load(os.path.join(base, "images.npy")).astype(np.float32)
    labels = np.load(os.path.join(base, "labels.npy"))
    mx = dict(np.load(os.path.join(base, "loss_check.npz")))
    model, anchors, _, _ = sagemaker_networks.build("sagemaker-resnet-50", 3, images.shape[1],
                                                    1 / 16)
    sagemaker_networks.load_mxnet_weights(model, {**args, **aux})
    assert loss_normalisation(model) == MXNET_VALID
    targets = [encode_targets(tf.constant(multibox.xyxy_to_yxyx(label[label[:, 0] >= 0, 1:])),
                              tf.constant(label[label[:, 0] >= 0, 0].astype(np.int32)),
                              tf.constant(anchors)) for label in labels]
    cls_targets = tf.stack([t[0] for t in targets])
    box_targets = tf.stack([t[1] for t in targets])
    np.testing.assert_array_equal(cls_targets.numpy() > 0, mx["cls_target"] > 0)
    with tf.GradientTape() as tape:
        outputs = model(images, training=True)
        sums = multibox_loss(cls_targets, box_targets, outputs["cls_logits"],
                             outputs["box_deltas"])
        counts = tf.maximum(sums.counts(MXNET_VALID), 1.0)
        cls_loss, box_loss = sums.cls_loss_sum / counts[0], sums.box_loss_sum / counts[1]
        loss = cls_loss + box_loss
    assert counts.numpy().tolist() == [mx["num_valid"], mx["num_smooth_l1_nonzero"]]
    np.testing.assert_allclose(cls_loss, mx["cross_entropy_sum"] / mx["num_valid"], rtol=1e-4)
    np.testing.assert_allclose(box_loss, mx["smooth_l1_sum"] / mx["num_smooth_l1_nonzero"],
                               rtol=1e-4)
    names = [k[len("grad:"):] for k in mx if k.startswith("grad:")]
    layers = {sagemaker_networks.mxnet_name(layer.name): layer for layer in model.layers}
    variables = {}
    for name in names:
        layer_name, kind = name.rsplit("_", 1)
        variables[name] = layers[layer_name].weights[
            0 if kind == "weight" else 1]
    grads = dict(zip(names, tape.gradient(loss, list(variables.values()))))
    for name in names:
        ours = grads[name].numpy()
        if ours.ndim == 4:  # (h, w, in, out) -> MXNet's (out, in, h, w)
            ours = ours.transpose(3, 2, 0, 1)
        if "_loc_pred_conv" in name:  # tfssd's (dy, dx, dh, dw) -> MXNet's channel order
            ours = ours[np.argsort(multibox.loc_channels_to_tfssd(len(ours) // 4))]
        theirs = mx["grad:" + name]
        scale = np.abs(theirs).max()
        if scale == 0:  # a map where no anchor took part
            assert np.abs(ours).max() == 0, name
            continue
        np.testing.assert_allclose(ours / scale, theirs / scale, atol=2e-4, err_msg=name)
