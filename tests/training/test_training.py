"""The training loop: schedule, optimizer semantics, overfitting, checkpoints and resume."""

import dataclasses
import glob
import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfssd import training
from tfssd.config import run_config as config_lib
from tfssd.data import schema, targets
from tfssd.evaluation.voc_ap import DetectionEvaluator
from tfssd.model.losses import multibox_loss
from tfssd.model.postprocess import postprocess
from tfssd.model.ssd import ssd_network
from tfssd.ops.image_ops import decode_image, resize
from tfssd.training import optimization
from tfssd.training.distribution import Cluster


def test_step_schedule():
    lr = lambda step: float(optimization.learning_rate_at(step, 0.1, 0.5, (10, 20)))
    assert [lr(0), lr(9), lr(10), lr(19), lr(20), lr(1000)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert lr(5) == float(optimization.learning_rate_at(5, 0.1, 0.5, ()))


def test_optimizers_follow_mxnet_semantics():
    assert isinstance(optimization.build_optimizer("sgd", 0.1, 0.9), keras.optimizers.SGD)
    assert optimization.build_optimizer("sgd", 0.1, 0.9).momentum == 0.9
    adadelta = optimization.build_optimizer("adadelta", 0.001, 0.9)
    assert float(adadelta.learning_rate) == 1.0  # MXNet's AdaDelta has no learning rate
    assert optimization.uses_weight_decay("sgd") and optimization.uses_weight_decay("rmsprop")
    assert not optimization.uses_weight_decay("adam")
    assert not optimization.uses_weight_decay("adadelta")


def test_coupled_weight_decay_on_kernels_only():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    kernel, bias = layer.trainable_variables
    assert optimization.is_decayed(kernel) and not optimization.is_decayed(bias)
    grads = [tf.ones_like(kernel), tf.ones_like(bias)]
    decayed = optimization.add_weight_decay(grads, [kernel, bias], [True, False], 0.01)
    np.testing.assert_allclose(decayed[0], 1 + 0.01 * kernel.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(decayed[1], np.ones(2))


@pytest.mark.slow
def test_overfits_a_few_images(shapes_tfrecords):
    """Loss falls and detections find the boxes on 4 images seen again and again."""
    keras.utils.set_random_seed(0)
    size = 160
    ssd = ssd_network("vgg-16", 3, size, width_multiplier=0.125)
    anchors = tf.constant(ssd.anchors)
    images, cls_targets, box_targets, truth = [], [], [], []
    for record in tf.data.TFRecordDataset(shapes_tfrecords["train"]).take(4):
        example = schema.parse_example(record)
        boxes, classes, _ = schema.label_to_objects(example["label"])
        images.append(resize(decode_image(example["image_bytes"]), size))
        cls, box = targets.encode_targets(boxes, classes, anchors)
        cls_targets.append(cls)
        box_targets.append(box)
        truth.append((boxes.numpy(), classes.numpy()))
    images, cls_targets, box_targets = (tf.stack(t) for t in (images, cls_targets, box_targets))
    optimizer = keras.optimizers.Adam(1e-3)
    variables = ssd.model.trainable_variables

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = ssd.model(images, training=True)
            sums = multibox_loss(cls_targets, box_targets, out["cls_logits"], out["box_deltas"])
            loss = (sums.cls_loss_sum + sums.box_loss_sum) / sums.num_positives
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    losses = [float(step()) for _ in range(150)]
    assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:10])
    out = ssd.model(images, training=False)
    detections = postprocess(out["cls_logits"], out["box_deltas"], anchors, nms_threshold=0.45)
    evaluator = DetectionEvaluator(3, 0.5, "allpoint")
    for k, (boxes, classes) in enumerate(truth):
        n = int(detections["num_detections"][k])
        evaluator.add_image(detections["detection_boxes"][k, :n],
                            detections["detection_scores"][k, :n],
                            detections["detection_classes"][k, :n], boxes, classes)
    assert evaluator.result().mean_ap > 0.9


def tiny_config(shapes_tfrecords, model_dir, **train):
    return config_lib.Config(
        model=config_lib.ModelConfig(num_classes=3, image_size=128, width_multiplier=0.0625,
                                     use_pretrained_model=False),
        data=config_lib.DataConfig(train_files=shapes_tfrecords["train"],
                                   validation_files=shapes_tfrecords["validation"],
                                   class_map_file=os.path.join(shapes_tfrecords["dir"],
                                                               "class_map.json")),
        train=config_lib.TrainConfig(**{
            "num_training_samples": 16, "epochs": 2, "mini_batch_size": 4,
            "model_dir": str(model_dir), "seed": 3, "log_every_steps": 2,
            **train}))


@pytest.mark.slow
def test_trains_checkpoints_exports_and_resumes(shapes_tfrecords, tmp_path):
    model_dir = tmp_path / "run"
    config = tiny_config(shapes_tfrecords, model_dir)
    result = training.train(config, tf.distribute.get_strategy(), Cluster())
    assert result.global_step == 8 and result.epochs_completed == 2
    assert result.best_map is not None and result.export_path == str(model_dir / "export" / "1")
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-8")
    assert glob.glob(str(model_dir / "train" / "events.out.tfevents.*"))
    assert glob.glob(str(model_dir / "validation" / "events.out.tfevents.*"))
    recorded = json.loads((model_dir / training.RUN_FILE).read_text())
    assert recorded["class_names"] == ["circle", "square", "triangle"]

    # The same command with more epochs continues from step 8; nothing is repeated.
    longer = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=3))
    trainer = training.Trainer(longer, tf.distribute.get_strategy(), Cluster())
    assert int(trainer.global_step.numpy()) == 8 and int(trainer.run_seed.numpy()) == 3
    resumed = trainer.train()
    assert resumed.global_step == 12 and resumed.export_path.endswith(os.path.join("export", "2"))


@pytest.mark.slow
def test_model_dir_of_another_network_is_refused(shapes_tfrecords, tmp_path):
    config = tiny_config(shapes_tfrecords, tmp_path / "run", epochs=1)
    training.train(config, tf.distribute.get_strategy(), Cluster())
    other = dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                  width_multiplier=0.125))
    with pytest.raises(training.TrainingError, match="width_multiplier: 0.0625 there, 0.125 now"):
        training.Trainer(other, tf.distribute.get_strategy(), Cluster())


def _backbone_weights_file(path, base, width):
    """A Keras-layout h5 file with random backbone weights for a network of this width."""
    import h5py

    model = ssd_network(base, 3, 128, width_multiplier=width).model
    names = [layer.name for layer in model.layers if layer.weights and layer.name.startswith(
        ("conv1_", "conv2_", "conv3_", "conv4_", "conv5_"))]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in names]
        for name in names:
            group = f.create_group(name)
            arrays = model.get_layer(name).get_weights()
            labels = [f"{name}/w{i}:0" for i in range(len(arrays))]
            group.attrs["weight_names"] = [label.encode() for label in labels]
            for label, array in zip(labels, arrays):
                group.create_dataset(label, data=array)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("base,pretrained", [("vgg-16", False), ("resnet-50", False),
                                             ("resnet-50", True)])
def test_frozen_layers_do_not_move(shapes_tfrecords, tmp_path, base, pretrained):
    """Layers the pattern freezes stay bit-identical, BatchNorm statistics included; from
    ImageNet, ResNet-50's BatchNorm statistics stay put everywhere, from scratch they learn."""
    config = tiny_config(shapes_tfrecords, tmp_path / "run", epochs=1)
    weights = _backbone_weights_file(tmp_path / "w.h5", base, 0.0625) if pretrained else None
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, base_network=base, freeze_layer_pattern="^(conv1_|conv2_).*",
        use_pretrained_model=pretrained, pretrained_weights=weights),
        data=dataclasses.replace(config.data, validation_files=()))
    trainer = training.Trainer(config, tf.distribute.get_strategy(), Cluster())
    model = trainer.model
    frozen = [w for w in model.weights if w.path.startswith(("conv1_", "conv2_"))]
    statistics = [w for w in model.weights if "moving_" in w.path
                  and not w.path.startswith(("conv1_", "conv2_"))]
    trained = [w for w in model.trainable_weights if w.path.startswith("conv3_")]
    assert frozen and trained and (base == "vgg-16" or statistics)
    before = {w.path: w.numpy().copy() for w in frozen + trained + statistics}
    trainer.train()
    for w in frozen + (statistics if pretrained else []):
        np.testing.assert_array_equal(w.numpy(), before[w.path], err_msg=w.path)
    assert any(not np.array_equal(w.numpy(), before[w.path]) for w in trained)
    if statistics and not pretrained:
        assert any(not np.array_equal(w.numpy(), before[w.path]) for w in statistics)


@pytest.mark.slow
@pytest.mark.parametrize("recipe,anchors", [("ssd300_vgg16_voc", 8732),
                                            ("ssd512_vgg16_voc", 24564),
                                            ("ssd512_resnet50_voc", 6132)])
def test_recipes_validate_and_build(recipe, anchors, shapes_tfrecords):
    from absl import flags

    from tfssd.cli import hyperparameter_flags as hyperparameters
    from tfssd.config import factory
    from tfssd.model.ssd import build_ssd

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    flag_values = flags.FlagValues()
    hyperparameters.define_flags(flag_values)
    flag_values(["train", f"--flagfile={root}/flags/{recipe}.flags",
                 f"--train={shapes_tfrecords['train'][0]}", "--use_pretrained_model=0"])
    values, options = hyperparameters.resolve(flag_values, environ={})
    config = factory.build_config(values, options)
    assert config.train.steps_per_epoch == 518 and config.train.lr_boundaries == (82880, 103600)
    assert build_ssd(config.model).num_anchors == anchors


@pytest.mark.slow
def test_the_schedule_as_the_trainer_wires_it_and_logs_it(shapes_tfrecords, tmp_path,
                                                         absl_lines):
    """Epoch 1's four steps run at 0.01, epoch 2's at 0.001 (lr_scheduler_step=1); each log line
    gives the rate its step ran with, and the optimizer holds the next step's."""
    config = tiny_config(shapes_tfrecords, tmp_path / "run", epochs=2, learning_rate=0.01,
                         lr_scheduler_step=(1,), log_every_steps=1, optimizer="adam")
    trainer = training.Trainer(config, tf.distribute.get_strategy(), Cluster())
    trainer.train()
    logged = [float(m) for m in re.findall(r"step \d+/4 loss .* lr ([0-9.e-]+) ",
                                           "\n".join(absl_lines))]
    assert logged == [0.01] * 4 + [0.001] * 4, logged
    assert float(keras.ops.convert_to_numpy(trainer.optimizer.learning_rate)) == \
        pytest.approx(0.001)
