"""Makes SageMaker Object Detection models with MXNet, trained on shapes, and MXNet's outputs.

Runs under MXNet 1.9.1 (not a tfssd dependency), in a virtual environment of its own:

  python3.11 -m venv /tmp/mxvenv && /tmp/mxvenv/bin/pip install "numpy<1.24" mxnet==1.9.1
  nice /tmp/mxvenv/bin/python tools/make_sagemaker_fixture.py --network=resnet-50 \
      --image_shape=128 --num_classes=3 --width_divisor=16 --train_steps=600 --images=4 \
      --loss_check --out=tests/fixtures/sagemaker/resnet50_narrow
  /tmp/mxvenv/bin/python tools/make_sagemaker_fixture.py --network=resnet-50 \
      --image_shape=300 --num_classes=3 --tar=/tmp/sagemaker_resnet50/model.tar.gz

The graph is built as SageMaker's algorithm builds it, after Apache MXNet's SSD example
(example/ssd/symbol: the ResNet-50 v2 of the image-classification example or vgg16_reduced,
extra layers multi_feat_k, multibox heads with MultiBoxPrior, then MultiBoxTarget, the losses and
MultiBoxDetection): the training symbol, as SageMaker saves it. Images enter as the example's
training, evaluation and demo scripts feed them: RGB minus the mean pixel (123, 117, 104).

Weights start random (seeded); with ``--train_steps`` MXNet trains the training symbol as the
example does (SGD, momentum 0.9, weight decay 5e-4, BatchNorm in training mode, so that its
moving statistics move) on images of coloured rectangles, ellipses and triangles (classes 0, 1,
2) on noise. Without training the heads are scaled to plausible outputs (``calibrate_heads``).
``--width_divisor`` narrows every layer but the heads (a few MB at most).

Writes model_algo_1-symbol.json, model_algo_1-0000.params and hyperparams.json (or a
model.tar.gz of the three with --tar), and with --images=N: images.npy (uint8 [N, S, S, 3], RGB),
labels.npy (float32 [N, 4, 5]: class, xmin, ymin, xmax, ymax normalised; -1 rows pad) and
outputs.npz: MXNet's cls_prob [N, C + 1, A], loc_pred [N, 4A], anchors [1, A, 4] and
detections [N, A, 6] (class, score, xmin, ymin, xmax, ymax; class -1: none).

With --loss_check, also loss_check.npz: the training graph's first step on those images and
labels (BatchNorm with its moving statistics, as tfssd keeps an imported model's): MultiBoxTarget's
cls_target [N, A] (-1 ignored, 0 background, class + 1) and loc_mask [N, 4A]; the summed
cross-entropy over the anchors that take part and their count (SoftmaxOutput's 'valid'
normalisation), the summed smooth L1 and the count of its non-zero elements (MakeLoss's 'valid'
normalisation); and the gradients of a few parameters (``grad:<name>``, MXNet's shapes).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import tarfile

import mxnet as mx
import numpy as np

MEAN_RGB = (123.0, 117.0, 104.0)  # the MXNet SSD example's mean pixel (its --mean-r/g/b)
SCALES = (0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05)
SCALES_7 = (0.07, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05)
RATIOS_4 = (1, 2, 0.5)
RATIOS_6 = (1, 2, 0.5, 3, 1.0 / 3)


def width(channels: int, divisor: int) -> int:
    """As tfssd's ``scaled(channels, 1 / divisor)``: at least 8."""
    return max(8, int(round(channels / divisor)))


def conv(x, name, filters, kernel, stride=1, pad=0, bias=True, dilate=1, **extra):
    """A Convolution with only the attributes the example's code writes."""
    if dilate != 1:
        extra["dilate"] = (dilate, dilate)
    if not bias:
        extra.update(no_bias=True, workspace=256)
    if pad is not None:
        extra["pad"] = (pad, pad)
    return mx.sym.Convolution(x, name=name, num_filter=filters, kernel=(kernel, kernel),
                              stride=(stride, stride), **extra)


def bn(x, name, fix_gamma=False, frozen=False):
    """BatchNorm as the example writes it; ``frozen`` (loss check only): its moving statistics
    in training too, as tfssd keeps an imported model's."""
    extra = {"use_global_stats": True} if frozen else {}
    return mx.sym.BatchNorm(x, name=name, fix_gamma=fix_gamma, eps=2e-5, momentum=0.9, **extra)


def relu(x, name):
    return mx.sym.Activation(x, act_type="relu", name=name)


def resnet50_v2(data, divisor, frozen=False):
    """MXNet's ResNet-50 v2 (pre-activation bottleneck units); returns the graph's end."""
    filters = [width(f, divisor) for f in (64, 256, 512, 1024, 2048)]
    x = mx.sym.identity(data, name="id")
    x = bn(x, "bn_data", fix_gamma=True, frozen=frozen)
    x = conv(x, "conv0", filters[0], 7, 2, 3, bias=False)
    x = relu(bn(x, "bn0", frozen=frozen), "relu0")
    x = mx.sym.Pooling(x, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max",
                       name="pooling0")
    for stage, units in enumerate((3, 4, 6, 3)):
        for unit in range(units):
            name = f"stage{stage + 1}_unit{unit + 1}"
            stride = 2 if stage > 0 and unit == 0 else 1
            out = filters[stage + 1]
            act1 = relu(bn(x, f"{name}_bn1", frozen=frozen), f"{name}_relu1")
            y = conv(act1, f"{name}_conv1", int(out * 0.25), 1, bias=False)
            y = relu(bn(y, f"{name}_bn2", frozen=frozen), f"{name}_relu2")
            y = conv(y, f"{name}_conv2", int(out * 0.25), 3, stride, 1, bias=False)
            y = relu(bn(y, f"{name}_bn3", frozen=frozen), f"{name}_relu3")
            y = conv(y, f"{name}_conv3", out, 1, bias=False)
            shortcut = x if unit > 0 else conv(act1, f"{name}_sc", out, 1, stride, None,
                                               bias=False)
            x = y + shortcut
    # The classifier's head, as the example builds it (unused: it only takes up "flatten0").
    head = relu(bn(x, "bn1", frozen=frozen), "relu1")
    mx.sym.Flatten(mx.sym.Pooling(head, global_pool=True, kernel=(7, 7), pool_type="avg",
                                  name="pool1"))
    return x


def vgg16_reduced(data, divisor):
    """The SSD example's vgg16_reduced, up to relu7."""
    x = data
    for block, (convs, channels) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512),
                                               (3, 512)), start=1):
        for c in range(1, convs + 1):
            x = relu(conv(x, f"conv{block}_{c}", width(channels, divisor), 3, 1, 1),
                     f"relu{block}_{c}")
        if block < 5:
            x = mx.sym.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="max",
                               pooling_convention="full" if block == 3 else "valid",
                               name=f"pool{block}")
    x = mx.sym.Pooling(x, kernel=(3, 3), stride=(1, 1), pad=(1, 1), pool_type="max",
                       name="pool5")
    x = relu(conv(x, "fc6", width(1024, divisor), 3, 1, 6, dilate=6), "relu6")
    return relu(conv(x, "fc7", width(1024, divisor), 1), "relu7")


def ssd_layout(network, image_shape):
    """(from_layers, num_filters, strides, pads, normalizations, steps, scales, ratios)."""
    if network == "resnet-50":
        return (["_plus12", "_plus15", "", "", "", ""], [-1, -1, 512, 256, 256, 128],
                [-1, -1, 2, 2, 2, 2], [-1, -1, 1, 1, 1, 1], [-1] * 6, [], SCALES,
                [RATIOS_4] + [RATIOS_6] * 3 + [RATIOS_4] * 2)
    if image_shape >= 448:
        steps = [x / 512.0 for x in (8, 16, 32, 64, 128, 256, 512)] if image_shape == 512 else []
        return (["relu4_3", "relu7", "", "", "", "", ""], [512, -1, 512, 256, 256, 256, 256],
                [-1, -1, 2, 2, 2, 2, 1], [-1, -1, 1, 1, 1, 1, 1], [20] + [-1] * 6, steps,
                SCALES_7, [RATIOS_4] + [RATIOS_6] * 4 + [RATIOS_4] * 2)
    steps = [x / 300.0 for x in (8, 16, 32, 64, 100, 300)] if image_shape == 300 else []
    return (["relu4_3", "relu7", "", "", "", ""], [512, -1, 512, 256, 256, 256],
            [-1, -1, 2, 2, 1, 1], [-1, -1, 1, 1, 0, 0], [20] + [-1] * 5, steps, SCALES,
            [RATIOS_4] + [RATIOS_6] * 3 + [RATIOS_4] * 2)


def tuple_text(values, digits):
    """As SageMaker's graph writes them: "(0.1,0.141421)", "(1,2,0.5,3,0.333333333333)"."""
    return "(" + ",".join(f"{v:.{digits}g}" for v in values) + ")"


def ssd_symbol(network, image_shape, num_classes, divisor, frozen=False):
    """The training symbol, as SageMaker saves it (``frozen``: see ``bn``)."""
    data = mx.sym.Variable("data")
    label = mx.sym.Variable("label")
    body = (resnet50_v2(data, divisor, frozen) if network == "resnet-50"
            else vgg16_reduced(data, divisor))
    from_layers, num_filters, strides, pads, norms, steps, scales, ratios = ssd_layout(
        network, image_shape)
    internals = body.get_internals()
    layers = []
    for k, (source, filters, stride, pad) in enumerate(zip(from_layers, num_filters, strides,
                                                            pads)):
        if source:
            layers.append(internals[source + "_output"])
            continue
        filters = width(filters, divisor)
        x = relu(conv(layers[-1], f"multi_feat_{k}_conv_1x1_conv",
                      max(width(128, divisor), filters // 2), 1), f"multi_feat_{k}_conv_1x1_relu")
        layers.append(relu(conv(x, f"multi_feat_{k}_conv_3x3_conv", filters, 3, stride, pad),
                           f"multi_feat_{k}_conv_3x3_relu"))
    locs, clss, anchors = [], [], []
    for k, layer in enumerate(layers):
        name = layer.name
        if norms[k] > 0:
            channels = width(512, divisor)
            layer = mx.sym.L2Normalization(layer, mode="channel", name=f"{name}_norm")
            scale = mx.sym.Variable(f"{name}_scale", shape=(1, channels, 1, 1))
            layer = mx.sym.broadcast_mul(scale, layer)
        sizes = (scales[k], math.sqrt(scales[k] * scales[k + 1]))
        per_location = len(sizes) - 1 + len(ratios[k])
        loc = conv(layer, f"{name}_loc_pred_conv", per_location * 4, 3, 1, 1)
        locs.append(mx.sym.Flatten(mx.sym.transpose(loc, axes=(0, 2, 3, 1))))
        cls = conv(layer, f"{name}_cls_pred_conv", per_location * (num_classes + 1), 3, 1, 1)
        clss.append(mx.sym.Flatten(mx.sym.transpose(cls, axes=(0, 2, 3, 1))))
        step = f"({steps[k]}, {steps[k]})" if steps else "(-1.0, -1.0)"
        anchors.append(mx.sym.Flatten(mx.sym.contrib.MultiBoxPrior(
            layer, sizes=tuple_text(sizes, 6), ratios=tuple_text(ratios[k], 12), clip=False,
            steps=step, name=f"{name}_anchors")))
    loc_preds = mx.sym.Concat(*locs, num_args=len(locs), dim=1, name="multibox_loc_pred")
    cls_preds = mx.sym.Reshape(mx.sym.Concat(*clss, num_args=len(clss), dim=1),
                               shape=(0, -1, num_classes + 1))
    cls_preds = mx.sym.transpose(cls_preds, axes=(0, 2, 1), name="multibox_cls_pred")
    anchor_boxes = mx.sym.Reshape(mx.sym.Concat(*anchors, num_args=len(anchors), dim=1),
                                  shape=(0, -1, 4), name="multibox_anchors")
    target = mx.sym.contrib.MultiBoxTarget(
        anchor_boxes, label, cls_preds, overlap_threshold=0.5, ignore_label=-1,
        negative_mining_ratio=3, minimum_negative_samples=0, negative_mining_thresh=0.5,
        variances=(0.1, 0.1, 0.2, 0.2), name="multibox_target")
    cls_prob = mx.sym.SoftmaxOutput(cls_preds, target[2], ignore_label=-1, use_ignore=True,
                                    grad_scale=1.0, multi_output=True, normalization="valid",
                                    name="cls_prob")
    loc_loss = mx.sym.MakeLoss(mx.sym.smooth_l1(target[1] * (loc_preds - target[0]), scalar=1.0,
                                                name="loc_loss_"),
                               grad_scale=1.0, normalization="valid", name="loc_loss")
    cls_label = mx.sym.MakeLoss(target[2], grad_scale=0, name="cls_label")
    det = mx.sym.contrib.MultiBoxDetection(cls_prob, loc_preds, anchor_boxes,
                                           nms_threshold=0.45, force_suppress=False,
                                           variances=(0.1, 0.1, 0.2, 0.2), nms_topk=400,
                                           name="detection")
    det = mx.sym.MakeLoss(det, grad_scale=0, name="det_out")
    return mx.sym.Group([cls_prob, loc_loss, cls_label, det])


def random_params(symbol, image_shape, rng):
    """Random weights and BatchNorm statistics: {"arg:..."/"aux:...": NDArray}."""
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=(1, 3, image_shape, image_shape),
                                                   label=(1, 1, 5))
    params = {}
    for name, shape in zip(symbol.list_arguments(), arg_shapes):
        if name in ("data", "label"):
            continue
        if name.endswith("_weight"):
            value = rng.normal(0, math.sqrt(2.0 / int(np.prod(shape[1:]))), shape)
        elif name.endswith("_gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("_scale"):
            value = rng.uniform(10, 30, shape)
        else:  # biases, beta
            value = rng.normal(0, 0.1, shape)
        params["arg:" + name] = mx.nd.array(value.astype(np.float32))
    for name, shape in zip(symbol.list_auxiliary_states(), aux_shapes):
        value = (rng.normal(0, 0.2, shape) if name.endswith("_mean")
                 else rng.uniform(0.5, 2.0, shape))
        params["aux:" + name] = mx.nd.array(value.astype(np.float32))
    return params


def initial_params(symbol, image_shape, rng, small_heads=False):
    """A start for training: He-normal kernels, zero biases, BatchNorm at identity, L2 scale 20;
    ``small_heads`` (VGG-16, which has no BatchNorm): heads' kernels of deviation 0.001, so that
    the first steps' gradients do not kill the backbone's units."""
    params = random_params(symbol, image_shape, rng)
    for key, value in params.items():
        name = key[4:]
        if small_heads and name.endswith("_pred_conv_weight"):
            params[key] = mx.nd.array(rng.normal(0, 0.001, value.shape).astype(np.float32))
        elif name.endswith(("_bias", "_beta", "_moving_mean")):
            params[key] = mx.nd.zeros(value.shape)
        elif name.endswith(("_gamma", "_moving_var")):
            params[key] = mx.nd.ones(value.shape)
        elif name.endswith("_scale"):
            params[key] = mx.nd.full(value.shape, 20.0)
    return params


def shapes(count, size, rng, max_objects=4):
    """Images of 1 to 3 coloured shapes on noise: rectangles (class 0), ellipses (1), triangles
    (2). Returns (uint8 [N, S, S, 3] RGB, float32 [N, max_objects, 5] labels: class, xmin, ymin,
    xmax, ymax normalised; -1 rows pad)."""
    images = rng.integers(0, 90, (count, size, size, 3)).astype(np.uint8)
    labels = np.full((count, max_objects, 5), -1.0, np.float32)
    rows, cols = np.mgrid[0:size, 0:size]
    for image, label in zip(images, labels):
        for k in range(rng.integers(1, 4)):
            cls = int(rng.integers(0, 3))
            h, w = rng.integers(size // 6, size // 2, 2)
            y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
            if cls == 0:
                mask = np.ones((h, w), bool)
            elif cls == 1:
                yy = (rows[:h, :w] + 0.5 - h / 2) / (h / 2)
                xx = (cols[:h, :w] + 0.5 - w / 2) / (w / 2)
                mask = yy ** 2 + xx ** 2 <= 1
            else:  # apex at the top centre, base along the bottom
                mask = np.abs(cols[:h, :w] + 0.5 - w / 2) <= (rows[:h, :w] + 0.5) * w / (2 * h)
            image[y0:y0 + h, x0:x0 + w][mask] = rng.integers(100, 256, 3)
            label[k] = (cls, x0 / size, y0 / size, (x0 + w) / size, (y0 + h) / size)
    return images, labels


def _input(images):
    """The example's input: RGB minus its mean pixel, NCHW, not scaled."""
    return mx.nd.array((images.astype(np.float32) - np.asarray(MEAN_RGB, np.float32))
                       .transpose(0, 3, 1, 2))


def train(symbol, params, image_shape, steps, batch, learning_rate, rng):
    """Trains ``symbol`` (the training group) as the example's train_net does: SGD with momentum
    0.9 and weight decay 5e-4 on the summed losses, BatchNorm in training mode. Returns the
    trained {"arg:..."/"aux:...": NDArray}."""
    module = mx.mod.Module(symbol, data_names=["data"], label_names=["label"], context=mx.cpu())
    module.bind(data_shapes=[("data", (batch, 3, image_shape, image_shape))],
                label_shapes=[("label", (batch, 4, 5))])
    module.init_params(arg_params={k[4:]: v for k, v in params.items() if k.startswith("arg:")},
                       aux_params={k[4:]: v for k, v in params.items() if k.startswith("aux:")})
    module.init_optimizer(optimizer="sgd", optimizer_params={
        "learning_rate": learning_rate, "momentum": 0.9, "wd": 5e-4, "rescale_grad": 1.0})
    for step in range(steps):
        images, labels = shapes(batch, image_shape, rng)
        module.forward(mx.io.DataBatch([_input(images)], [mx.nd.array(labels)]), is_train=True)
        module.backward()
        module.update()
        if step % 50 == 0 or step == steps - 1:
            cls_prob, loc_loss, cls_label = (o.asnumpy() for o in module.get_outputs()[:3])
            valid = cls_label >= 0
            prob = np.take_along_axis(cls_prob, np.maximum(cls_label, 0)[:, None].astype(int),
                                      1)[:, 0]
            print(f"step {step}: cross_entropy {-np.log(prob[valid] + 1e-8).mean():.4f} "
                  f"smooth_l1 {loc_loss.sum() / valid.sum():.4f}", flush=True)
    args, aux = module.get_params()
    return {**{"arg:" + k: v for k, v in args.items()}, **{"aux:" + k: v for k, v in aux.items()}}


def loss_check(network, image_shape, num_classes, divisor, params, images, labels):
    """The training graph's first step on one batch (see the module docstring)."""
    with mx.name.NameManager():
        symbol = ssd_symbol(network, image_shape, num_classes, divisor, frozen=True)
        loc_mask = symbol.get_internals()["multibox_target_loc_mask"]
        symbol = mx.sym.Group(list(symbol) + [mx.sym.MakeLoss(loc_mask, grad_scale=0)])
    args = {k[4:]: v for k, v in params.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in params.items() if k.startswith("aux:")}
    args.update(data=_input(images), label=mx.nd.array(labels))
    grads = {k: mx.nd.zeros(v.shape) for k, v in args.items() if k not in ("data", "label")}
    executor = symbol.bind(mx.cpu(), args=args, args_grad=grads, aux_states=aux,
                           grad_req={k: ("write" if k in grads else "null") for k in args})
    cls_prob, loc_loss, cls_target, _, loc_mask = (o.asnumpy() for o in
                                                   executor.forward(is_train=True))
    executor.backward()
    valid = cls_target >= 0
    prob = np.take_along_axis(cls_prob, np.maximum(cls_target, 0)[:, None].astype(int), 1)[:, 0]
    names = [n for n in sorted(grads) if n.endswith(("cls_pred_conv_bias", "loc_pred_conv_bias"))]
    names += ["conv0_weight" if network == "resnet-50" else "conv1_1_weight",
              "multi_feat_5_conv_3x3_conv_weight" if network == "resnet-50"
              else "multi_feat_2_conv_3x3_conv_weight"]
    check = {"cls_target": cls_target.astype(np.int32), "loc_mask": loc_mask,
             "cross_entropy_sum": np.float64(-np.log(prob[valid]).sum()),
             "num_valid": np.int64(valid.sum()),
             "smooth_l1_sum": np.float64(loc_loss.sum()),
             "num_smooth_l1_nonzero": np.int64((loc_loss > 0).sum())}
    check.update({"grad:" + n: grads[n].asnumpy() for n in names})
    print("loss check: cross_entropy", check["cross_entropy_sum"] / check["num_valid"],
          "over", check["num_valid"], "anchors; smooth_l1", check["smooth_l1_sum"] /
          max(1, check["num_smooth_l1_nonzero"]), "over", check["num_smooth_l1_nonzero"],
          "elements; positives", int((cls_target > 0).sum()))
    return check


def _forward(group, params, images):
    args = {k[4:]: v for k, v in params.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in params.items() if k.startswith("aux:")}
    args["data"] = _input(images)
    executor = group.bind(mx.cpu(), args={k: v for k, v in args.items()
                                          if k in group.list_arguments()},
                          aux_states=aux, grad_req="null")
    return [o.asnumpy() for o in executor.forward(is_train=False)]


def calibrate_heads(symbol, params, images, num_classes, loc_std=0.7, cls_std=4.0,
                    background=7.0):
    """Rescales each head so that, on ``images``, box outputs have standard deviation
    ``loc_std`` (boxes near their anchors) and class logits ``cls_std`` (clear winners), and
    adds ``background`` to the background logits (most anchors find nothing, as in a trained
    model)."""
    internals = symbol.get_internals()
    heads = [n[:-len("_output")] for n in internals.list_outputs()
             if n.endswith(("_loc_pred_conv_output", "_cls_pred_conv_output"))]
    outputs = _forward(mx.sym.Group([internals[h + "_output"] for h in heads]), params, images)
    for head, output in zip(heads, outputs):
        gain = (loc_std if "_loc_pred_" in head else cls_std) / max(float(output.std()), 1e-6)
        for suffix in ("_weight", "_bias"):
            params[f"arg:{head}{suffix}"] = params[f"arg:{head}{suffix}"] * gain
        if "_cls_pred_" in head:
            bias = params[f"arg:{head}_bias"].asnumpy()
            bias[::num_classes + 1] += background
            params[f"arg:{head}_bias"] = mx.nd.array(bias)


def mxnet_outputs(symbol, params, images):
    internals = symbol.get_internals()
    cls_pred = internals["multibox_cls_pred_output"]
    loc_pred = internals["multibox_loc_pred_output"]
    anchors = internals["multibox_anchors_output"]
    cls_prob = mx.sym.softmax(cls_pred, axis=1)
    det = mx.sym.contrib.MultiBoxDetection(cls_prob, loc_pred, anchors, nms_threshold=0.45,
                                           force_suppress=False, variances=(0.1, 0.1, 0.2, 0.2),
                                           nms_topk=400)
    out = _forward(mx.sym.Group([cls_prob, loc_pred, anchors, det]), params, images)
    return dict(cls_prob=out[0], loc_pred=out[1], anchors=out[2], detections=out[3])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--network", choices=("resnet-50", "vgg-16"), default="resnet-50")
    parser.add_argument("--image_shape", type=int, default=300)
    parser.add_argument("--num_classes", type=int, default=3)
    parser.add_argument("--width_divisor", type=int, default=1)
    parser.add_argument("--images", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_steps", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=0.02)
    parser.add_argument("--loss_check", action="store_true")
    parser.add_argument("--out", help="directory for the files")
    parser.add_argument("--tar", help="write a SageMaker model.tar.gz here instead")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with mx.name.NameManager():  # _plusN counted from 0, as in SageMaker's graph
        symbol = ssd_symbol(args.network, args.image_shape, args.num_classes, args.width_divisor)
    images, labels = shapes(max(args.images, 2), args.image_shape, rng)
    if args.train_steps:
        start = initial_params(symbol, args.image_shape, rng, args.network == "vgg-16")
        params = train(symbol, start, args.image_shape,
                       args.train_steps, args.batch, args.learning_rate, rng)
    else:
        params = random_params(symbol, args.image_shape, rng)
        calibrate_heads(symbol, params, images, args.num_classes)
    hyperparams = {"base_network": args.network, "num_classes": str(args.num_classes),
                   "image_shape": str(args.image_shape), "use_pretrained_model": "0",
                   "mini_batch_size": "32", "epochs": "30", "learning_rate": "0.001",
                   "nms_threshold": "0.45", "overlap_threshold": "0.5"}
    files = {"model_algo_1-symbol.json": symbol.tojson().encode(),
             "hyperparams.json": json.dumps(hyperparams).encode()}
    scratch = "/tmp/_sagemaker_fixture.params"
    mx.nd.save(scratch, params)
    with open(scratch, "rb") as f:
        files["model_algo_1-0000.params"] = f.read()
    os.remove(scratch)
    if args.tar:
        os.makedirs(os.path.dirname(os.path.abspath(args.tar)), exist_ok=True)
        with tarfile.open(args.tar, "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        print("wrote", args.tar)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(args.out, name), "wb") as f:
                f.write(data)
        if args.images:
            images, labels = images[:args.images], labels[:args.images]
            np.save(os.path.join(args.out, "images.npy"), images)
            np.save(os.path.join(args.out, "labels.npy"), labels)
            outputs = mxnet_outputs(symbol, params, images)
            np.savez_compressed(os.path.join(args.out, "outputs.npz"), **outputs)
            valid = outputs["detections"][:, :, 0] >= 0
            print("anchors", outputs["anchors"].shape[1], "valid detections", valid.sum(axis=1),
                  "max score", outputs["cls_prob"][:, 1:].max(), "difference between images",
                  np.abs(outputs["cls_prob"][0] - outputs["cls_prob"][1]).max())
        if args.loss_check:
            check = loss_check(args.network, args.image_shape, args.num_classes,
                               args.width_divisor, params, images, labels)
            np.savez_compressed(os.path.join(args.out, "loss_check.npz"), **check)
        print("wrote", args.out)


if __name__ == "__main__":
    main()
