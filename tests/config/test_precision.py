"""Mixed precision: the choice from the hardware, finite steps close to float32's, loss scaling's
skipped steps, resume across precisions, and a reduced-precision export that detects alike."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tests.training.test_training import tiny_config
from tfssd import training
from tfssd.config.precision import Hardware, choose
from tfssd.data import schema
from tfssd.deploy import saved_model as export
from tfssd.training.distribution import Cluster

V100 = ("Tesla V100", (7, 0))
T4 = ("Tesla T4", (7, 5))
A100 = ("A100", (8, 0))
P100 = ("Tesla P100", (6, 0))


@pytest.mark.parametrize("hardware,expected", [
    (Hardware(gpus=(V100,)), "mixed_float16"),
    (Hardware(gpus=(T4,)), "mixed_float16"),
    (Hardware(gpus=(A100,)), "mixed_bfloat16"),
    (Hardware(gpus=(("H100", (9, 0)),)), "mixed_bfloat16"),
    (Hardware(gpus=(P100,)), "float32"),
    (Hardware(gpus=(A100, V100)), "mixed_float16"),  # the weakest GPU decides
    (Hardware(cpu_model="Xeon", cpu_flags=frozenset({"avx512f", "amx_bf16"})), "mixed_bfloat16"),
    (Hardware(cpu_model="EPYC", cpu_flags=frozenset({"avx512f", "avx512_bf16"})),
     "mixed_bfloat16"),
    (Hardware(cpu_model="old", cpu_flags=frozenset({"avx2", "avx512f"})), "float32"),
    (Hardware(), "float32"),
])
def test_auto_precision_from_described_hardware(hardware, expected):
    policy, why = choose("auto", hardware)
    assert policy == expected and why
    assert choose("float32", hardware) == ("float32", "as asked (--precision)")


def test_the_reason_names_what_decided():
    assert choose("auto", Hardware(gpus=(V100,)))[1].startswith(
        "Tesla V100 (compute capability 7.0) has float16 tensor cores")
    assert choose("auto", Hardware(cpu_model="EPYC", cpu_flags=frozenset({"avx512_bf16"})))[1] \
        == "EPYC has avx512_bf16"
    with pytest.raises(ValueError, match="expected one of auto, float32"):
        choose("float64", Hardware())


def _unvalidated_config(shapes_tfrecords, path, **train):
    """tiny_config without validation: these tests look at steps, checkpoints and exports."""
    config = tiny_config(shapes_tfrecords, path, **train)
    return dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                validation_files=()))


def _trainer(shapes_tfrecords, path, precision, **train):
    config = _unvalidated_config(shapes_tfrecords, path, epochs=1, **train)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                   precision=precision))
    return training.Trainer(config, tf.distribute.get_strategy(), Cluster())


def _one_step(trainer, batch):
    iterator = iter(trainer.strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch)))
    return [float(x) for x in trainer.train_step(iterator)]


@pytest.mark.slow
def test_mixed_steps_are_finite_and_close_to_float32(shapes_tfrecords, tmp_path):
    reference = _trainer(shapes_tfrecords, tmp_path / "f32", "float32")
    batch = next(iter(reference.train_dataset()))
    expected = _one_step(reference, batch)
    for policy in ("mixed_bfloat16", "mixed_float16"):
        trainer = _trainer(shapes_tfrecords, tmp_path / policy, policy)
        assert trainer.model.get_layer("conv1_1").compute_dtype == policy.split("_")[1]
        assert all(w.dtype == "float32" for w in trainer.model.weights)  # weights stay float32
        assert trainer.model.get_layer("conv4_3_norm").compute_dtype == "float32"
        cls_loss, box_loss, skipped = _one_step(trainer, batch)
        np.testing.assert_allclose([cls_loss, box_loss], expected[:2], rtol=0.05, err_msg=policy)
        # float16's loss scale starts high (2 ** 15) and halves on overflow: early steps may be
        # skipped; bfloat16 has float32's range and never skips.
        assert skipped == 0 or policy == "mixed_float16"


@pytest.mark.slow
def test_loss_scaling_skips_an_overflowing_step_and_counts_it(shapes_tfrecords, tmp_path):
    trainer = _trainer(shapes_tfrecords, tmp_path / "f16", "mixed_float16")
    batch = next(iter(trainer.train_dataset()))
    before = [w.numpy().copy() for w in trainer.model.trainable_weights]
    trainer.optimizer.dynamic_scale.assign(3e38)  # the scaled loss overflows
    _, _, skipped = _one_step(trainer, batch)
    assert skipped == 1.0 and float(trainer.optimizer.dynamic_scale) < 3e38
    for weight, value in zip(trainer.model.trainable_weights, before):
        np.testing.assert_array_equal(weight.numpy(), value)
    trainer.optimizer.dynamic_scale.assign(1.0)  # at a small scale it trains
    _, _, skipped = _one_step(trainer, batch)
    assert skipped == 0.0
    assert any(not np.array_equal(w.numpy(), v)
               for w, v in zip(trainer.model.trainable_weights, before))


@pytest.mark.slow
def test_a_run_resumes_under_another_precision(shapes_tfrecords, tmp_path):
    """bfloat16 -> float16 adds the loss scale's state to the checkpoint, float16 -> float32
    leaves it behind."""
    first = _unvalidated_config(shapes_tfrecords, tmp_path / "run", epochs=1)
    first = dataclasses.replace(first, train=dataclasses.replace(first.train,
                                                                 precision="mixed_bfloat16"))
    training.train(first, tf.distribute.get_strategy(), Cluster())
    for epochs, policy in ((2, "mixed_float16"), (3, "float32")):
        config = dataclasses.replace(first, train=dataclasses.replace(
            first.train, epochs=epochs, precision=policy))
        trainer = training.Trainer(config, tf.distribute.get_strategy(), Cluster())
        assert int(trainer.global_step.numpy()) == 4 * (epochs - 1)  # resumed, not restarted
        assert trainer.train().global_step == 4 * epochs


@pytest.mark.slow
def test_bfloat16_export_detects_like_the_float32_one(shapes_tfrecords, tmp_path):
    trainer = _trainer(shapes_tfrecords, tmp_path / "run", "float32")
    trainer.train()
    ssd, settings = trainer.ssd, dict(image_size=128, class_names=["a", "b", "c"],
                                      nms_threshold=0.45)
    paths = {precision: export.export_saved_model(
        (ssd if precision == "float32" else ssd.in_precision("mixed_" + precision)).model,
        ssd.anchors, str(tmp_path / precision), **settings)
        for precision in ("float32", "bfloat16")}
    images = [schema.parse_example(r)["image_bytes"].numpy()
              for r in tf.data.TFRecordDataset(list(shapes_tfrecords["validation"])).take(4)]
    out = {p: tf.saved_model.load(path).signatures["serving_default"](
        images=tf.constant(images)) for p, path in paths.items()}
    # Stated tolerance: the 10 best scores within 0.02, the best box within 0.02.
    np.testing.assert_allclose(out["bfloat16"]["detection_scores"][:, :10],
                               out["float32"]["detection_scores"][:, :10], atol=0.02)
    np.testing.assert_allclose(out["bfloat16"]["detection_boxes"][:, 0],
                               out["float32"]["detection_boxes"][:, 0], atol=0.02)


@pytest.mark.slow
def test_loss_scale_state_is_checkpointed_and_resumed(shapes_tfrecords, tmp_path):
    """mixed_float16 resumes exactly: the dynamic loss scale and its step counter come back."""
    trainer = _trainer(shapes_tfrecords, tmp_path / "run", "mixed_float16")
    trainer.train()
    trainer.optimizer.dynamic_scale.assign(1234.0)  # as if overflows had lowered it
    trainer.optimizer.step_counter.assign(7)
    trainer.checkpoints.save(trainer.state.step)
    longer = dataclasses.replace(trainer.config, train=dataclasses.replace(
        trainer.config.train, epochs=2))
    resumed = training.Trainer(longer, tf.distribute.get_strategy(), Cluster())
    assert float(resumed.optimizer.dynamic_scale.numpy()) == 1234.0
    assert int(resumed.optimizer.step_counter.numpy()) == 7
