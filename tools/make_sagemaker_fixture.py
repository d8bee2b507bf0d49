"""Makes SageMaker Object Detection models with MXNet, and MXNet's outputs on a few images.

Runs under MXNet 1.9.1 (not a tfssd dependency), in a virtual environment of its own:

  python3.11 -m venv /tmp/mxvenv && /tmp/mxvenv/bin/pip install "numpy<1.24" mxnet==1.9.1
  /tmp/mxvenv/bin/python tools/make_sagemaker_fixture.py --network=resnet-50 \
      --image_shape=128 --num_classes=3 --width_divisor=16 --images=2 \
      --out=tests/fixtures/sagemaker/resnet50_narrow
  /tmp/mxvenv/bin/python tools/make_sagemaker_fixture.py --network=resnet-50 \
      --image_shape=300 --num_classes=3 --tar=/tmp/sagemaker_resnet50/model.tar.gz

The graph is built as SageMaker's algorithm builds it, after Apache MXNet's SSD example
(example/ssd/symbol: the ResNet-50 v2 of the image-classification example or vgg16_reduced,
extra layers multi_feat_k, multibox heads with MultiBoxPrior, then MultiBoxTarget, the losses and
MultiBoxDetection): the training symbol, as SageMaker saves it. Weights are random (seeded), with
random BatchNorm statistics, and heads scaled to plausible outputs (``calibrate_heads``);
``--width_divisor`` narrows every layer but the heads (a few MB).

Writes model_algo_1-symbol.json, model_algo_1-0000.params and hyperparams.json (or a
model.tar.gz of the three with --tar), and with --images=N: images.npy (uint8 [N, S, S, 3], RGB)
and outputs.npz: MXNet's cls_prob [N, C + 1, A], loc_pred [N, 4A], anchors [1, A, 4] and
detections [N, A, 6] (class, score, xmin, ymin, xmax, ymax; class -1: none).
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

MEAN_RGB = (123.68, 116.779, 103.939)
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


def bn(x, name, fix_gamma=False):
    return mx.sym.BatchNorm(x, name=name, fix_gamma=fix_gamma, eps=2e-5, momentum=0.9)


def relu(x, name):
    return mx.sym.Activation(x, act_type="relu", name=name)


def resnet50_v2(data, divisor):
    """MXNet's ResNet-50 v2 (pre-activation bottleneck units); returns the graph's end."""
    filters = [width(f, divisor) for f in (64, 256, 512, 1024, 2048)]
    x = mx.sym.identity(data, name="id")
    x = bn(x, "bn_data", fix_gamma=True)
    x = conv(x, "conv0", filters[0], 7, 2, 3, bias=False)
    x = relu(bn(x, "bn0"), "relu0")
    x = mx.sym.Pooling(x, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max",
                       name="pooling0")
    for stage, units in enumerate((3, 4, 6, 3)):
        for unit in range(units):
            name = f"stage{stage + 1}_unit{unit + 1}"
            stride = 2 if stage > 0 and unit == 0 else 1
            out = filters[stage + 1]
            act1 = relu(bn(x, f"{name}_bn1"), f"{name}_relu1")
            y = conv(act1, f"{name}_conv1", int(out * 0.25), 1, bias=False)
            y = relu(bn(y, f"{name}_bn2"), f"{name}_relu2")
            y = conv(y, f"{name}_conv2", int(out * 0.25), 3, stride, 1, bias=False)
            y = relu(bn(y, f"{name}_bn3"), f"{name}_relu3")
            y = conv(y, f"{name}_conv3", out, 1, bias=False)
            shortcut = x if unit > 0 else conv(act1, f"{name}_sc", out, 1, stride, None,
                                               bias=False)
            x = y + shortcut
    # The classifier's head, as the example builds it (unused: it only takes up "flatten0").
    head = relu(bn(x, "bn1"), "relu1")
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


def ssd_symbol(network, image_shape, num_classes, divisor):
    """The training symbol, as SageMaker saves it."""
    data = mx.sym.Variable("data")
    label = mx.sym.Variable("label")
    body = resnet50_v2(data, divisor) if network == "resnet-50" else vgg16_reduced(data, divisor)
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


def random_images(count, size, rng):
    """RGB images of a few flat rectangles on noise."""
    images = rng.integers(0, 80, (count, size, size, 3)).astype(np.uint8)
    for image in images:
        for _ in range(3):
            y0, x0 = rng.integers(0, size * 3 // 4, 2)
            h, w = rng.integers(size // 8, size // 2, 2)
            image[y0:y0 + h, x0:x0 + w] = rng.integers(60, 255, 3)
    return images


def _forward(group, params, images):
    data = (images.astype(np.float32) - np.asarray(MEAN_RGB, np.float32)).transpose(0, 3, 1, 2)
    args = {k[4:]: v for k, v in params.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in params.items() if k.startswith("aux:")}
    args["data"] = mx.nd.array(data)
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
    parser.add_argument("--out", help="directory for the files")
    parser.add_argument("--tar", help="write a SageMaker model.tar.gz here instead")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with mx.name.NameManager():  # _plusN counted from 0, as in SageMaker's graph
        symbol = ssd_symbol(args.network, args.image_shape, args.num_classes, args.width_divisor)
    params = random_params(symbol, args.image_shape, rng)
    images = random_images(max(args.images, 2), args.image_shape, rng)
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
            images = images[:args.images]
            np.save(os.path.join(args.out, "images.npy"), images)
            outputs = mxnet_outputs(symbol, params, images)
            np.savez_compressed(os.path.join(args.out, "outputs.npz"), **outputs)
            valid = outputs["detections"][:, :, 0] >= 0
            print("anchors", outputs["anchors"].shape[1], "valid detections", valid.sum(axis=1),
                  "max score", outputs["cls_prob"][:, 1:].max())
        print("wrote", args.out)


if __name__ == "__main__":
    main()
