"""Lists the layers of an SSD network with their trainable state and parameter counts.

  tfssd-network --base_network=resnet-50 [--freeze_layer_pattern='^(conv1_|conv2_).*']
  (or python -m tfssd.cli.network ...)

Shows what freeze_layer_pattern will freeze before a run: each layer that holds weights, its
type, output shape, parameters, and whether it trains. BatchNorm layers of ResNet-50 are always
frozen (see tfssd/model/resnet50.py).
"""


from absl import app, flags

from tfssd.cli.command_runner import run_command
from tfssd.config import hyperparameters as hyperparameter_table

FLAGS = flags.FLAGS


def define_flags() -> None:
    for name in ("base_network", "image_shape", "freeze_layer_pattern"):
        h = next(h for h in hyperparameter_table.HYPERPARAMETERS if h.name == name)
        flags.DEFINE_string(name, h.default, h.help)
    flags.DEFINE_integer("num_classes", 20, "Object classes (sets the heads' sizes).")
    flags.DEFINE_float("width_multiplier", 1.0, "Network width, as for training.")
    flags.DEFINE_bool("all", False, "Also list layers without weights.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    values, errors = hyperparameter_table.parse_hyperparameters({
        "num_classes": str(FLAGS.num_classes), "num_training_samples": "1",
        "base_network": FLAGS.base_network, "image_shape": FLAGS.image_shape,
        "freeze_layer_pattern": FLAGS.freeze_layer_pattern or ""})
    if errors:
        raise app.UsageError(str(hyperparameter_table.HyperparameterError(errors)))
    import tensorflow as tf

    from tfssd.model import freezing
    from tfssd.model.ssd import ssd_network

    tf.get_logger().setLevel("WARNING")
    ssd = ssd_network(values["base_network"], values["num_classes"], values["image_shape"],
                      FLAGS.width_multiplier)
    model = ssd.model
    if values["freeze_layer_pattern"]:
        try:
            freezing.freeze_layers(model, values["freeze_layer_pattern"])
        except ValueError as e:
            raise app.UsageError(str(e)) from None
    print(f"{model.name}: {ssd.num_anchors} anchors on feature maps "
          + ", ".join(f"{n} {h}x{w}" for n, (h, w) in zip(ssd.feature_names,
                                                          ssd.feature_map_sizes)))
    print(f"{'layer':32s} {'type':22s} {'output shape':20s} {'parameters':>11s}  trainable")
    trainable = frozen = 0
    for layer in model.layers:
        params = sum(int(tf.size(w)) for w in layer.weights)
        if not layer.weights and not FLAGS.all:
            continue
        shape = tuple(layer.output.shape[1:]) if hasattr(layer, "output") else ()
        state = "-" if not layer.weights else ("yes" if layer.trainable else "frozen")
        if layer.weights:
            if layer.trainable:
                trainable += sum(int(tf.size(w)) for w in layer.trainable_weights)
            frozen += sum(int(tf.size(w)) for w in layer.non_trainable_weights)
        print(f"{layer.name:32s} {type(layer).__name__:22s} {str(shape):20s} {params:11,d}  "
              f"{state}")
    print(f"parameters: {trainable + frozen:,} ({trainable:,} trainable, {frozen:,} frozen)")


def run() -> None:
    run_command(define_flags, main)


if __name__ == "__main__":
    run()
