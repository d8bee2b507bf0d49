"""SageMaker's MXNet graph as tfssd builds it, node for node, and how another graph differs.

SageMaker's model.tar.gz holds the training symbol of Apache MXNet's SSD example
(example/ssd/symbol: symbol_factory, common, resnet, vgg16_reduced): the network, MultiBoxPrior
per map, MultiBoxTarget, SoftmaxOutput and the smooth L1 MakeLoss, MultiBoxDetection. ``expected``
writes that graph for the network tfssd builds (tfssd/model/sagemaker_networks.py, checked
against MXNet's own outputs by the tests); ``differences`` walks an artifact's graph and it in
step from their heads, comparing every node's operator, the attributes that change what it
computes (MXNet's defaults filled in) and its inputs, so that nothing the two do differently goes
unnoticed. Names of operators do not matter (MXNet numbers many of them); names of weights do.

The anchors' MultiBoxPrior settings and MultiBoxDetection's thresholds are read from the graph
(``priors``, ``detection``): tfssd builds with them rather than refusing other values.
"""

from __future__ import annotations

from tfssd.model import mxnet_params
from tfssd.model.vgg16 import scaled

_TOLERANCE = 1e-4  # attributes are written with 6 significant digits
_IGNORED = ("workspace", "cudnn_tune", "cudnn_off", "name")  # speed only, or bookkeeping
# MXNet's defaults of the attributes that change what each operator computes.
_DEFAULTS = {
    "Convolution": dict(kernel=None, num_filter=None, stride=(1, 1), dilate=(1, 1), pad=(0, 0),
                        num_group=1, no_bias=False, layout="none"),
    "BatchNorm": dict(eps=1e-3, momentum=0.9, fix_gamma=True, use_global_stats=False,
                      output_mean_var=False, axis=1),
    "Activation": dict(act_type=None),
    "Pooling": dict(kernel=None, pool_type="max", stride=(1, 1), pad=(0, 0), global_pool=False,
                    pooling_convention="valid", count_include_pad="none", p_value="none",
                    layout="none"),
    "L2Normalization": dict(mode="instance", eps=1e-10),
    "transpose": dict(axes=()), "Concat": dict(dim=1, num_args=None),
    "Reshape": dict(shape=(), reverse=False, target_shape=(), keep_highest=False),
    "_contrib_MultiBoxPrior": dict(sizes=(1.0,), ratios=(1.0,), clip=False, steps=(-1.0, -1.0),
                                   offsets=(0.5, 0.5)),
    "_contrib_MultiBoxTarget": dict(overlap_threshold=0.5, ignore_label=-1.0,
                                    negative_mining_ratio=-1.0, negative_mining_thresh=0.5,
                                    minimum_negative_samples=0,
                                    variances=(0.1, 0.1, 0.2, 0.2)),
    "SoftmaxOutput": dict(grad_scale=1.0, ignore_label=-1.0, multi_output=False,
                          use_ignore=False, preserve_shape=False, normalization="null",
                          out_grad=False, smooth_alpha=0.0),
    "smooth_l1": dict(scalar=1.0),
    "MakeLoss": dict(grad_scale=1.0, valid_thresh=0.0, normalization="null"),
    "_contrib_MultiBoxDetection": dict(clip=True, threshold=0.01, background_id=0,
                                       nms_threshold=0.5, force_suppress=False,
                                       variances=(0.1, 0.1, 0.2, 0.2), nms_topk=-1),
}
_ALIASES = {"_copy": "identity", "_Plus": "elemwise_add", "_plus": "elemwise_add",
            "_Minus": "elemwise_sub", "_minus": "elemwise_sub", "_Mul": "elemwise_mul",
            "_mul": "elemwise_mul", "flatten": "Flatten", "SoftmaxActivation": "softmax"}
# Settings read from the graph, so not compared.
_FROM_GRAPH = {"_contrib_MultiBoxPrior": ("sizes", "ratios", "clip", "steps", "offsets"),
               "_contrib_MultiBoxDetection": ("clip", "threshold", "nms_threshold",
                                              "force_suppress", "nms_topk")}


class _Graph:
    """An MXNet symbol JSON under construction: ``op`` returns a reference (node, output)."""

    def __init__(self):
        self.nodes = []

    def var(self, name):
        return self.op("null", name, [])

    def op(self, op, name, inputs, **attrs):
        self.nodes.append({"op": op, "name": name, "attrs": attrs, "inputs": list(inputs)})
        return (len(self.nodes) - 1, 0)

    def conv(self, x, name, filters, kernel, stride=1, pad=0, bias=True, dilate=1):
        weights = [self.var(f"{name}_weight")] + ([self.var(f"{name}_bias")] if bias else [])
        return self.op("Convolution", name, [x] + weights, kernel=(kernel, kernel),
                       num_filter=filters, stride=(stride, stride), pad=(pad, pad),
                       dilate=(dilate, dilate), no_bias=not bias)

    def bn(self, x, name, fix_gamma=False):
        return self.op("BatchNorm", name, [x] + [self.var(f"{name}_{s}") for s in (
            "gamma", "beta", "moving_mean", "moving_var")], eps=2e-5, fix_gamma=fix_gamma)

    def relu(self, x, name):
        return self.op("Activation", name, [x], act_type="relu")


def _resnet50_v2(g, x, width_multiplier):
    filters = [scaled(f, width_multiplier) for f in (64, 256, 512, 1024, 2048)]
    x = g.bn(g.op("identity", "id", [x]), "bn_data", fix_gamma=True)
    x = g.relu(g.bn(g.conv(x, "conv0", filters[0], 7, 2, 3, bias=False), "bn0"), "relu0")
    x = g.op("Pooling", "pooling0", [x], kernel=(3, 3), stride=(2, 2), pad=(1, 1))
    taps, plus = {}, 0
    for stage, units in enumerate((3, 4, 6, 3)):
        out = filters[stage + 1]
        for unit in range(units):
            name, stride = f"stage{stage + 1}_unit{unit + 1}", 2 if stage and not unit else 1
            act1 = g.relu(g.bn(x, f"{name}_bn1"), f"{name}_relu1")
            y = g.conv(act1, f"{name}_conv1", int(out * 0.25), 1, bias=False)
            y = g.relu(g.bn(y, f"{name}_bn2"), f"{name}_relu2")
            y = g.conv(y, f"{name}_conv2", int(out * 0.25), 3, stride, 1, bias=False)
            y = g.relu(g.bn(y, f"{name}_bn3"), f"{name}_relu3")
            y = g.conv(y, f"{name}_conv3", out, 1, bias=False)
            shortcut = x if unit else g.conv(act1, f"{name}_sc", out, 1, stride, bias=False)
            x = taps[f"_plus{plus}"] = g.op("elemwise_add", f"_plus{plus}", [y, shortcut])
            plus += 1
    return [("_plus12", taps["_plus12"]), ("_plus15", taps["_plus15"])]


def _vgg16_reduced(g, x, width_multiplier):
    taps = []
    for block, (convs, channels) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512),
                                               (3, 512)), start=1):
        for c in range(1, convs + 1):
            x = g.relu(g.conv(x, f"conv{block}_{c}", scaled(channels, width_multiplier), 3, 1,
                              1), f"relu{block}_{c}")
        if block == 4:
            norm = g.op("L2Normalization", "relu4_3_norm", [x], mode="channel")
            taps.append(("relu4_3", g.op("broadcast_mul", "relu4_3_scaled",
                                         [g.var("relu4_3_scale"), norm])))
        if block < 5:
            x = g.op("Pooling", f"pool{block}", [x], kernel=(2, 2), stride=(2, 2),
                     pooling_convention="full" if block == 3 else "valid")
    x = g.op("Pooling", "pool5", [x], kernel=(3, 3), stride=(1, 1), pad=(1, 1))
    x = g.relu(g.conv(x, "fc6", scaled(1024, width_multiplier), 3, 1, 6, dilate=6), "relu6")
    return taps + [("relu7", g.relu(g.conv(x, "fc7", scaled(1024, width_multiplier), 1),
                                    "relu7"))]


def expected(network: str, extra: list, num_classes: int, width_multiplier: float,
             priors: list[dict]) -> dict:
    """SageMaker's training symbol for tfssd's build of ``network`` ("resnet-50"/"vgg-16").

    Args:
      extra: the extra layers, (filters, stride, pad) each (sagemaker_networks.layout).
      priors: per map, MultiBoxPrior's settings (``priors`` of the artifact's graph).
    """
    g = _Graph()
    data, label = g.var("data"), g.var("label")
    features = (_resnet50_v2 if network == "resnet-50" else _vgg16_reduced)(g, data,
                                                                           width_multiplier)
    x = features[-1][1]
    for k, (filters, stride, pad) in enumerate(extra, start=len(features)):
        filters, name = scaled(filters, width_multiplier), f"multi_feat_{k}_conv"
        x = g.relu(g.conv(x, f"{name}_1x1_conv", max(scaled(128, width_multiplier),
                                                     filters // 2), 1), f"{name}_1x1_relu")
        x = g.relu(g.conv(x, f"{name}_3x3_conv", filters, 3, stride, pad), f"{name}_3x3_relu")
        features.append((f"{name}_3x3_relu", x))
    locs, clss, anchors = [], [], []
    for (name, feature), prior in zip(features, priors):
        per_location = len(prior["sizes"]) + len(prior["ratios"]) - 1
        for outputs, kind, where in ((4, "loc", locs), (num_classes + 1, "cls", clss)):
            head = g.conv(feature, f"{name}_{kind}_pred_conv", per_location * outputs, 3, 1, 1)
            where.append(g.op("Flatten", "", [g.op("transpose", "", [head], axes=(0, 2, 3, 1))]))
        anchors.append(g.op("Flatten", "", [g.op("_contrib_MultiBoxPrior", f"{name}_anchors",
                                                 [feature])]))
    loc_preds = g.op("Concat", "multibox_loc_pred", locs, dim=1, num_args=len(locs))
    cls_preds = g.op("transpose", "multibox_cls_pred", [g.op("Reshape", "", [g.op(
        "Concat", "", clss, dim=1, num_args=len(clss))], shape=(0, -1, num_classes + 1))],
        axes=(0, 2, 1))
    anchor_boxes = g.op("Reshape", "multibox_anchors", [g.op(
        "Concat", "", anchors, dim=1, num_args=len(anchors))], shape=(0, -1, 4))
    target = g.op("_contrib_MultiBoxTarget", "multibox_target", [anchor_boxes, label, cls_preds],
                  overlap_threshold=0.5, ignore_label=-1, negative_mining_ratio=3,
                  minimum_negative_samples=0, negative_mining_thresh=0.5)
    output = lambda k: (target[0], k)
    cls_prob = g.op("SoftmaxOutput", "cls_prob", [cls_preds, output(2)], ignore_label=-1,
                    use_ignore=True, multi_output=True, normalization="valid")
    loc_loss = g.op("MakeLoss", "loc_loss", [g.op("smooth_l1", "loc_loss_", [g.op(
        "elemwise_mul", "", [output(1), g.op("elemwise_sub", "", [loc_preds, output(0)])])])],
        normalization="valid")
    cls_label = g.op("MakeLoss", "cls_label", [output(2)], grad_scale=0)
    detection = g.op("_contrib_MultiBoxDetection", "detection", [cls_prob, loc_preds,
                                                                 anchor_boxes])
    return {"nodes": g.nodes, "heads": [list(cls_prob) + [0], list(loc_loss) + [0],
                                        list(cls_label) + [0],
                                        [g.op("MakeLoss", "det_out", [detection],
                                              grad_scale=0)[0], 0, 0]]}


def _value(text):
    """An attribute's value comparable with another's: a tuple, number, bool or lower string."""
    if isinstance(text, (tuple, list)):
        return tuple(float(v) for v in text)
    if isinstance(text, bool):
        return text
    if isinstance(text, (int, float)):
        return float(text)
    text = str(text).strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.startswith(("(", "[")):
        try:
            return mxnet_params.parse_tuple(text)
        except ValueError:
            return text.lower()
    try:
        return float(text)
    except ValueError:
        return text.lower()


def _same(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(abs(x - y) <= _TOLERANCE * max(1.0, abs(y))
                                        for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b if isinstance(a, bool) and isinstance(b, bool) else float(a) == float(b)
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= _TOLERANCE * max(1.0, abs(b))
    return a == b


def attributes(node: dict) -> dict:
    """The attributes of ``node`` that change what it computes, MXNet's defaults filled in."""
    op = _ALIASES.get(node["op"], node["op"])
    values = {k: _value(v) for k, v in _DEFAULTS.get(op, {}).items() if v is not None}
    for key, text in node["attrs"].items():
        if not key.startswith("__") and key not in _IGNORED:
            values[key] = _value(text)
    return values


def priors(graph: dict) -> list[dict]:
    """Per map (in the graph's order), its MultiBoxPrior settings: sizes, ratios, steps,
    offsets (floats) and clip."""
    found = []
    for node in graph["nodes"]:
        if node["op"] == "_contrib_MultiBoxPrior":
            values = attributes(node)
            found.append({"sizes": values["sizes"], "ratios": values["ratios"],
                          "steps": values["steps"], "offsets": values["offsets"],
                          "clip": bool(values["clip"])})
    return found


def detection(graph: dict) -> dict | None:
    """The graph's MultiBoxDetection settings: threshold, nms_threshold, nms_topk, clip and
    force_suppress (None without one)."""
    nodes = [n for n in graph["nodes"] if n["op"] == "_contrib_MultiBoxDetection"]
    if not nodes:
        return None
    values = attributes(nodes[0])
    return {"threshold": values["threshold"], "nms_threshold": values["nms_threshold"],
            "nms_topk": int(values["nms_topk"]), "clip": bool(values["clip"]),
            "force_suppress": bool(values["force_suppress"])}


def differences(graph: dict, want: dict) -> list[str]:
    """What an artifact's ``graph`` computes differently from ``want`` (``expected``), each
    naming the artifact's node: walked in step from the heads, through every input."""
    nodes, wanted = graph["nodes"], want["nodes"]
    if len(graph["heads"]) != len(want["heads"]):
        return [f"the graph has {len(graph['heads'])} outputs, SageMaker's training graph "
                f"{len(want['heads'])} (cls_prob, loc_loss, cls_label, det_out)"]
    found, seen, used = [], {}, {}
    stack = [(tuple(a[:2]), tuple(w[:2]), "the graph's outputs")
             for a, w in zip(graph["heads"], want["heads"])][::-1]
    while stack:
        (a, a_out), (w, w_out), consumer = stack.pop()
        node, like = nodes[a], wanted[w]
        if w in seen or a in used:
            if seen.get(w) != a or used.get(a) != w:
                found.append(f"{consumer} takes {node['name']} where tfssd's graph takes "
                             + (f"{nodes[seen[w]]['name']}" if w in seen else "another node"))
            continue
        op, want_op = _ALIASES.get(node["op"], node["op"]), like["op"]
        if op != want_op:
            found.append(f"{consumer} takes {node['name']} ({node['op']}{_short(node)}) where "
                         f"tfssd's takes {like['name'] or want_op} ({want_op}{_short(like)})")
            continue
        seen[w], used[a] = a, w
        if op == "null":
            if node["name"] != like["name"]:
                found.append(f"{consumer} takes {node['name']} where tfssd's takes "
                             f"{like['name']}")
            continue
        if a_out != w_out:
            found.append(f"{consumer} takes output {a_out} of {node['name']}, tfssd's {w_out}")
        have, should = attributes(node), attributes(like)
        for key in sorted(set(have) | set(should)):
            if key in _FROM_GRAPH.get(op, ()):
                continue
            if key not in have or key not in should or not _same(have[key], should[key]):
                found.append(f"{node['name']}: {key}={node['attrs'].get(key, '(unset)')}, "
                             f"tfssd's {_text(should.get(key, '(unset)'))}")
        if len(node["inputs"]) != len(like["inputs"]):
            found.append(f"{node['name']}: {len(node['inputs'])} inputs, tfssd's "
                         f"{len(like['inputs'])}")
            continue
        stack += [(tuple(i[:2]), tuple(j[:2]), node["name"])
                  for i, j in zip(node["inputs"], like["inputs"])][::-1]
    return found


def _short(node) -> str:
    attrs = {k: v for k, v in node["attrs"].items() if k in ("pool_type", "act_type", "mode")}
    return f"({', '.join(f'{k}={v}' for k, v in attrs.items())})" if attrs else ""


def _text(value) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(f"{v:g}" for v in value) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)
