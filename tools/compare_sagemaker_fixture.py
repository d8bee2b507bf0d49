"""Prints how closely tfssd reproduces MXNet on the SageMaker fixtures (tests/fixtures/sagemaker).

Runs in tfssd's environment (no MXNet): the fixtures hold MXNet's outputs.

  python tools/compare_sagemaker_fixture.py

Detections: for each fixture, tfssd's build of SageMaker's network with MXNet's weights, and the
share of MXNet's 10 and 50 best detections (MultiBoxDetection) that tfssd returns with the same
class, score and box within 1e-4, and the largest difference of the best score; with MXNet's
detection semantics (what the export does), with tfssd's per-class post-processing, and with the
ImageNet mean instead of the MXNet SSD example's. Loss: the first step on loss_check.npz's batch
under the algorithm's normalisation and under tfssd's own (by the positives), against MXNet's
training graph: losses, counts, and the gradients' largest difference and norm ratio.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfssd.data.targets import encode_targets
from tfssd.model import multibox, mxnet_params, sagemaker_networks
from tfssd.model.losses import MXNET_VALID, POSITIVES, multibox_loss
from tfssd.model.postprocess import detect, postprocess

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                        "fixtures", "sagemaker")
CASES = (("resnet50_narrow", "sagemaker-resnet-50"), ("vgg16_narrow", "sagemaker-vgg-16"))
IMAGENET_MEAN = (123.68, 116.779, 103.939)


def load(name, network):
    base = os.path.join(FIXTURES, name)
    args, aux = mxnet_params.split_params(
        mxnet_params.load_params(os.path.join(base, "model_algo_1-0000.params")))
    images = np.load(os.path.join(base, "images.npy")).astype(np.float32)
    model, anchors, _, _ = sagemaker_networks.build(network, 3, images.shape[1], 1 / 16)
    sagemaker_networks.load_mxnet_weights(model, {**args, **aux})
    return base, model, anchors, images


def detections(name, network, mean=None, mxnet_semantics=True) -> str:
    base, model, anchors, images = load(name, network)
    example_mean = sagemaker_networks.MEAN_RGB
    sagemaker_networks.MEAN_RGB = mean or example_mean  # read when the model runs
    try:
        if mxnet_semantics:
            found = detect(model, images, tf.constant(anchors))
        else:
            outputs = model(images, training=False)
            found = postprocess(outputs["cls_logits"], outputs["box_deltas"],
                                tf.constant(anchors))
    finally:
        sagemaker_networks.MEAN_RGB = example_mean
    mx = np.load(os.path.join(base, "outputs.npz"))["detections"]
    shares, best = [], []
    for i in range(len(images)):
        n = int(found["num_detections"][i])
        ours = np.concatenate([found["detection_classes"][i, :n, None],
                               found["detection_scores"][i, :n, None],
                               multibox.xyxy_to_yxyx(found["detection_boxes"][i, :n].numpy())], 1)
        theirs = mx[i][:400]
        theirs = theirs[theirs[:, 0] >= 0]
        shares.append([np.mean([np.abs(ours - d).max(axis=1).min() < 1e-4 for d in theirs[:k]])
                       for k in (10, 50)])
        best.append(abs(ours[0, 1] - theirs[0, 1]))
    shares = np.asarray(shares)
    return (f"top-10 reproduced {shares[:, 0].min():.0%} (worst image), top-50 "
            f"{shares[:, 1].min():.0%} (worst), {shares[:, 1].mean():.0%} (mean); best score "
            f"differs by at most {max(best):.2g}")


def losses() -> None:
    base, model, anchors, images = load("resnet50_narrow", "sagemaker-resnet-50")
    labels = np.load(os.path.join(base, "labels.npy"))
    mx = dict(np.load(os.path.join(base, "loss_check.npz")))
    targets = [encode_targets(tf.constant(multibox.xyxy_to_yxyx(label[label[:, 0] >= 0, 1:])),
                              tf.constant(label[label[:, 0] >= 0, 0].astype(np.int32)),
                              tf.constant(anchors)) for label in labels]
    cls_targets = tf.stack([t[0] for t in targets])
    box_targets = tf.stack([t[1] for t in targets])
    names = [k[len("grad:"):] for k in mx if k.startswith("grad:")]
    by_name = {sagemaker_networks.mxnet_name(layer.name): layer for layer in model.layers}
    variables = [by_name[n.rsplit("_", 1)[0]].weights[0 if n.endswith("weight") else 1]
                 for n in names]
    print(f"MXNet's training graph: cross_entropy "
          f"{mx['cross_entropy_sum'] / mx['num_valid']:.6f} over {int(mx['num_valid'])} anchors, "
          f"smooth_l1 {mx['smooth_l1_sum'] / mx['num_smooth_l1_nonzero']:.6f} over "
          f"{int(mx['num_smooth_l1_nonzero'])} terms")
    for normalisation in (MXNET_VALID, POSITIVES):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            sums = multibox_loss(cls_targets, box_targets, outputs["cls_logits"],
                                 outputs["box_deltas"])
            counts = tf.maximum(sums.counts(normalisation), 1.0)
            cls_loss, box_loss = sums.cls_loss_sum / counts[0], sums.box_loss_sum / counts[1]
            loss = cls_loss + box_loss
        worst, ratios = 0.0, []
        for name, grad in zip(names, tape.gradient(loss, variables)):
            ours = grad.numpy()
            if ours.ndim == 4:
                ours = ours.transpose(3, 2, 0, 1)
            if "_loc_pred_conv" in name:
                ours = ours[np.argsort(multibox.loc_channels_to_tfssd(len(ours) // 4))]
            theirs = mx["grad:" + name]
            if np.abs(theirs).max() > 0:
                worst = max(worst, np.abs(ours - theirs).max() / np.abs(theirs).max())
                ratios.append(np.linalg.norm(ours) / np.linalg.norm(theirs))
        print(f"tfssd, {normalisation}: cross_entropy {float(cls_loss):.6f}, smooth_l1 "
              f"{float(box_loss):.6f} (counts {counts.numpy().astype(int).tolist()}); gradients "
              f"of {len(ratios)} parameters: largest difference {worst:.2g} of MXNet's largest, "
              f"norm ratio {min(ratios):.2f}-{max(ratios):.2f}")


def main():
    for name, network in CASES:
        print(f"{name}, as exported: {detections(name, network)}")
        print(f"{name}, tfssd's per-class post-processing: "
              f"{detections(name, network, mxnet_semantics=False)}")
        print(f"{name}, ImageNet mean: {detections(name, network, IMAGENET_MEAN)}")
    losses()


if __name__ == "__main__":
    main()
