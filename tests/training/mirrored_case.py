"""Trains the same tiny run on two logical CPU devices (MirroredStrategy) and on one device,
in one process, and prints what test_mirrored.py compares, as one JSON line.

Run as ``python tests/training/mirrored_case.py PRECISION MODEL_DIR TRAIN_FILE...``, or with
``overflow`` alone for a loss-scaled step that overflows on one replica only. Logical
devices must be configured before TensorFlow initialises its devices, hence a process of its
own.
"""

import json
import os
import sys

import tensorflow as tf

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfssd import training  # noqa: E402
from tfssd.config import run_config as config_lib  # noqa: E402
from tfssd.training.distribution import Cluster  # noqa: E402

STEPS = 2
# float32 takes a batch that does not divide over the two replicas (3 + 2, split as
# SageMaker's algorithm splits a batch over GPUs); the mixed precisions an even one.
GLOBAL_BATCH = {"float32": 5, "mixed_bfloat16": 4, "mixed_float16": 4}
# mixed_float16 starts from this loss scale instead of keras' 2^15: from 2^15 down to 2^8 the
# gradients overflow float16 here, so both steps would be skipped and no applied update
# compared; at 2^6 both steps are applied.
INITIAL_SCALE = 2.0 ** 6


def config(precision: str, train_files: tuple[str, ...], model_dir: str) -> config_lib.Config:
    """test_training.py's tiny_config with ResNet-50 from scratch (its BatchNorm trains,
    synchronized over replicas): STEPS steps of GLOBAL_BATCH images, no validation."""
    batch = GLOBAL_BATCH[precision]
    return config_lib.Config(
        model=config_lib.ModelConfig(base_network="resnet-50", num_classes=3, image_size=128,
                                     width_multiplier=0.0625, use_pretrained_model=False),
        data=config_lib.DataConfig(train_files=train_files, validation_files=()),
        train=config_lib.TrainConfig(
            num_training_samples=STEPS * batch, epochs=1, mini_batch_size=batch,
            model_dir=model_dir, seed=3, precision=precision))


def run(strategy, cfg: config_lib.Config) -> dict:
    """Runs STEPS training steps through the trainer's own train step, runner and input
    pipeline (not the export); returns what they did."""
    trainer = training.Trainer(cfg, strategy, Cluster())
    pipelines, images = [], []
    build = trainer.build_train_dataset

    def recording_build(context, seed, start_sample=0):
        dataset = build(context, seed, start_sample)
        pipelines.append({"pipelines": context.num_input_pipelines,
                          "replicas": context.num_replicas_in_sync,
                          "batch": dataset.element_spec[0].shape[0]})  # None: uneven
        return dataset

    model_call = trainer.model.call

    def recording_call(inputs, *args, **kwargs):
        # Each replica's batch as the network sees it: a checksum per image.
        tf.py_function(lambda x: images.append(x.numpy().sum(axis=(1, 2, 3)).tolist()),
                       [inputs], [])
        return model_call(inputs, *args, **kwargs)

    trainer.model.call = recording_call
    if hasattr(trainer.optimizer, "dynamic_scale"):
        trainer.optimizer.dynamic_scale.assign(INITIAL_SCALE)
    initial = [v.numpy().copy() for v in trainer.model.trainable_variables]
    trainer.runner.start(trainer.train_step, recording_build, trainer.state.seed, 0)
    losses, weights = [], []
    for _ in range(STEPS):
        trainer.runner.run_step()
        losses += trainer.runner.collect(due=True)
        weights.append([v.numpy().copy() for v in trainer.model.trainable_variables])
    scale = getattr(trainer.optimizer, "dynamic_scale", None)
    inner = getattr(trainer.optimizer, "inner_optimizer", trainer.optimizer)
    return {"losses": [list(step) for step in losses], "pipelines": pipelines, "images": images,
            "replicas": strategy.num_replicas_in_sync, "initial": initial, "weights": weights,
            "loss_scale": None if scale is None else float(keras.ops.convert_to_numpy(scale)),
            "optimizer_steps": int(keras.ops.convert_to_numpy(inner.iterations)),
            "finite": all(bool(np.isfinite(w).all()) for w in weights[-1])}


def _flat(arrays) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])


def overflow() -> dict:
    """mixed_float16 on two replicas, one of which gets non-finite gradients: the step must be
    skipped on both (the weights stay as they were, the scale halves), as on one device."""
    from tfssd.config import precision
    from tfssd.training.runners import make_train_step

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    anchors, classes = 4, 2
    with strategy.scope(), precision.policy_scope("mixed_float16"):
        inputs = keras.Input((3,))
        cls = keras.layers.Reshape((anchors, classes))(keras.layers.Dense(anchors * classes)(
            inputs))
        box = keras.layers.Reshape((anchors, 4))(keras.layers.Dense(anchors * 4)(inputs))
        outputs = {"cls_logits": keras.layers.Activation("linear", dtype="float32")(cls),
                   "box_deltas": keras.layers.Activation("linear", dtype="float32")(box)}
        model = keras.Model(inputs, outputs)
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
        optimizer.build(model.trainable_variables)
        global_step = tf.Variable(0, dtype=tf.int64)
    images = np.ones((4, 3), np.float32)
    images[3, 0] = np.inf  # the second replica's second image
    targets = {"cls_targets": np.ones((4, anchors), np.int32),
               "box_targets": np.zeros((4, anchors, 4), np.float32)}
    data = tf.data.Dataset.from_tensors((images, targets)).repeat()
    step = make_train_step(strategy, model, optimizer, global_step, 0.0, reduce=True)
    before = [v.numpy().copy() for v in model.trainable_variables]
    losses = step(iter(strategy.experimental_distribute_dataset(data)))
    return {"skipped": float(losses[2]),
            "unchanged": all(np.array_equal(a, v.numpy())
                             for a, v in zip(before, model.trainable_variables)),
            "loss_scale": float(keras.ops.convert_to_numpy(optimizer.dynamic_scale)),
            "optimizer_steps": int(keras.ops.convert_to_numpy(
                optimizer.inner_optimizer.iterations))}


def main(argv):
    if argv[0] == "overflow":
        print("RESULT " + json.dumps(overflow()), flush=True)
        return
    precision, model_dir, files = argv[0], argv[1], tuple(argv[2:])
    mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
                   config(precision, files, os.path.join(model_dir, "mirrored")))
    single = run(tf.distribute.OneDeviceStrategy("/cpu:0"),
                 config(precision, files, os.path.join(model_dir, "single")))
    start = _flat(single["initial"])
    # How far the first step's update (all trainable weights together) is from one device's,
    # relative to that update's size.
    update = _flat(single["weights"][0]) - start
    ours = _flat(mirrored["weights"][0]) - start
    result = {"initial_equal": bool(np.array_equal(_flat(mirrored["initial"]), start)),
              "update_difference": float(np.linalg.norm(ours - update)
                                         / np.linalg.norm(update)),
              # Its size and direction against one device's.
              "update_norm_ratio": float(np.linalg.norm(ours) / np.linalg.norm(update)),
              "update_cosine": float(ours @ update / (np.linalg.norm(ours)
                                                      * np.linalg.norm(update)))}
    for name, ran in (("mirrored", mirrored), ("single", single)):
        result[name] = {k: v for k, v in ran.items() if k not in ("initial", "weights")}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
