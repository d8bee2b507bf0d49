"""Runs users can trust: kill and resume, early stopping, non-finite loss, --init_from, --seed,
and what TensorBoard receives."""

import dataclasses
import glob
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.training.test_training import tiny_config
from tfssd import training
from tfssd.evaluation.voc_ap import EvaluationResult
from tfssd.training import runners
from tfssd.training.distribution import Cluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEP_LINE = re.compile(r"epoch (\d+)/\d+ step (\d+)/\d+ loss (\S+) \(cross_entropy (\S+), "
                       r"smooth_l1 (\S+)\) lr (\S+)")


def _command(files, model_dir):
    return [sys.executable, "-m", "tfssd.cli.train", "--num_classes=3", "--num_training_samples=16",
            "--mini_batch_size=2", "--epochs=2", "--use_pretrained_model=0",
            "--width_multiplier=0.0625", f"--train={files}", f"--model_dir={model_dir}",
            "--log_every_steps=1", "--checkpoint_every_steps=3", "--seed=4", "--optimizer=sgd"]


def _losses(text):
    """{global step: (loss, cross_entropy, smooth_l1, lr)} from a run's log."""
    return {(int(e) - 1) * 8 + int(s): rest for e, s, *rest in STEP_LINE.findall(text)}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_the_same_command_continues_exactly(shapes_tfrecords, tmp_path):
    files = f"{shapes_tfrecords['dir']}/train-*"
    # The uninterrupted reference runs beside the run that is killed (its log goes to a file).
    with open(tmp_path / "reference.log", "w") as log:
        reference = subprocess.Popen(_command(files, tmp_path / "reference"),
                                     stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
    model_dir = tmp_path / "killed"
    process = subprocess.Popen(_command(files, model_dir), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    seen = ""
    for line in process.stdout:  # kill once step 5 is logged: checkpoints exist at step 3 only
        seen += line
        if "epoch 1/2 step 5/8" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, seen[-2000:]
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-3")
    assert reference.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-2000:]
    expected = _losses((tmp_path / "reference.log").read_text())
    assert sorted(expected) == list(range(1, 17))

    resumed = subprocess.run(_command(files, model_dir), capture_output=True, text=True,
                             timeout=600, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "at step 3 (epoch 1, step 4 of it)" in resumed.stderr
    got = _losses(resumed.stderr)
    assert sorted(got) == list(range(4, 17))  # steps 4 and 5 were lost and redone
    assert got == {step: expected[step] for step in got}  # the same data, weights and rate


def _scripted_evaluations(monkeypatch, scores):
    calls = iter(scores)

    def evaluate(self):
        score = next(calls)
        return (EvaluationResult(score, np.array([score, np.nan, np.nan]), np.array([1, 0, 0]),
                                 np.array([1, 0, 0])), {})

    monkeypatch.setattr(training.Trainer, "evaluate", evaluate)


@pytest.mark.slow
def test_early_stopping_acts_where_the_rules_say(shapes_tfrecords, tmp_path, monkeypatch):
    _scripted_evaluations(monkeypatch, [0.1, 0.3, 0.3, 0.31, 0.2, 0.9])
    config = tiny_config(shapes_tfrecords, tmp_path / "run", epochs=6, num_training_samples=4)
    config = dataclasses.replace(config, early_stopping=dataclasses.replace(
        config.early_stopping, enabled=True, min_epochs=3, patience=2, tolerance=0.05))
    result = training.train(config, tf.distribute.get_strategy(), Cluster())
    # Epoch 3: no gain (0 epochs to 3 - patience not met); epoch 4: +3% < 5%: 2 without
    # improvement and min_epochs reached -> stop after epoch 4.
    assert result.stopped_early and result.epochs_completed == 4
    assert result.best_map == pytest.approx(0.31) and result.best_epoch == 4
    # The same command again trains nothing and writes no new export version.
    again = training.train(config, tf.distribute.get_strategy(), Cluster())
    assert again.global_step == result.global_step and again.stopped_early
    assert again.export_path == result.export_path
    assert os.listdir(tmp_path / "run" / "export") == ["1"]


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(shapes_tfrecords, tmp_path,
                                                                   monkeypatch):
    config = tiny_config(shapes_tfrecords, tmp_path / "run", epochs=1)
    training.train(config, tf.distribute.get_strategy(), Cluster())
    good = tf.train.latest_checkpoint(str(tmp_path / "run"))
    real_loss = runners.multibox_loss
    def nan_loss(*args):
        sums = real_loss(*args)
        return dataclasses.replace(sums, cls_loss_sum=sums.cls_loss_sum * float("nan"))

    monkeypatch.setattr(runners, "multibox_loss", nan_loss)
    longer = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=2))
    with pytest.raises(training.TrainingError, match=f"non-finite at step 5.*{good}, is kept"):
        training.train(longer, tf.distribute.get_strategy(), Cluster())
    assert tf.train.latest_checkpoint(str(tmp_path / "run")) == good


@pytest.mark.slow
def test_init_from_an_earlier_run(shapes_tfrecords, tmp_path):
    first = tiny_config(shapes_tfrecords, tmp_path / "first", epochs=1)
    earlier = training.Trainer(first, tf.distribute.get_strategy(), Cluster())
    earlier.train()  # ends holding its best weights, which --init_from must load
    expected = [w.numpy() for w in earlier.model.weights]
    second = dataclasses.replace(first, train=dataclasses.replace(
        first.train, model_dir=str(tmp_path / "second"), init_from=str(tmp_path / "first"),
        seed=99))
    trainer = training.Trainer(second, tf.distribute.get_strategy(), Cluster())
    for got, want in zip(trainer.model.weights, expected):
        np.testing.assert_array_equal(got.numpy(), want)
    assert int(trainer.global_step.numpy()) == 0
    other = dataclasses.replace(second, model=dataclasses.replace(second.model, num_classes=5),
                                data=dataclasses.replace(second.data, class_map_file=None),
                                train=dataclasses.replace(second.train,
                                                          model_dir=str(tmp_path / "third")))
    with pytest.raises(training.TrainingError, match="num_classes: 3 there, 5 now"):
        training.Trainer(other, tf.distribute.get_strategy(), Cluster())


@pytest.mark.slow
def test_the_same_seed_trains_to_identical_weights(shapes_tfrecords, tmp_path):
    weights = []
    for name in ("a", "b"):
        config = tiny_config(shapes_tfrecords, tmp_path / name, epochs=1)
        config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                      validation_files=()))
        trainer = training.Trainer(config, tf.distribute.get_strategy(), Cluster())
        trainer.train()
        weights.append([w.numpy() for w in trainer.model.weights])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def _summaries(folder) -> dict[str, dict[int, np.ndarray]]:
    """{tag: {step: value}} of every summary in the event files of ``folder``."""
    found = {}
    for path in glob.glob(str(folder / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = tf.make_ndarray(value.tensor)
    return found


@pytest.mark.slow
def test_tensorboard_receives_scalars_images_and_hyperparameters(shapes_tfrecords, tmp_path):
    """Values, not only tags: the loss scalars are the means of the steps' own losses since the
    last report, the learning rate the configured one, mAP and per-class AP those of the
    exported weights evaluated again on their own, the images those of the evaluation, and the
    hyperparameter table holds the configured values."""
    from tfssd import api

    config = tiny_config(shapes_tfrecords, tmp_path / "run", epochs=1, learning_rate=0.0025)
    trainer = training.Trainer(config, tf.distribute.get_strategy(), Cluster())
    steps = []  # (cls_loss, box_loss, skipped) of each step, as the runner hands them over
    collect = trainer.runner.collect

    def recording_collect(*args, **kwargs):
        losses = collect(*args, **kwargs)
        steps.extend(tuple(float(v) for v in step) for step in losses)
        return losses

    trainer.runner.collect = recording_collect
    result = trainer.train()
    assert result.global_step == 4 and len(steps) == 4 and not any(s[2] for s in steps)
    train = _summaries(tmp_path / "run" / "train")
    validation = _summaries(tmp_path / "run" / "validation")

    # log_every_steps=2: reports at steps 2 and 4, each the mean of its two steps.
    for step in (2, 4):
        cls_loss = np.mean([s[0] for s in steps[step - 2:step]])
        box_loss = np.mean([s[1] for s in steps[step - 2:step]])
        np.testing.assert_allclose(train["loss/cross_entropy"][step], cls_loss, rtol=1e-6)
        np.testing.assert_allclose(train["loss/smooth_l1"][step], box_loss, rtol=1e-6)
        np.testing.assert_allclose(train["loss/total"][step], cls_loss + box_loss, rtol=1e-6)
        np.testing.assert_allclose(train["learning_rate"][step], 0.0025, rtol=1e-6)
        assert 0 < train["throughput_images_per_second"][step] < 1e6
    assert set(train["loss/total"]) == {2, 4}
    assert len({float(v) for v in train["loss/cross_entropy"].values()}) == 2  # two means

    table = train["hyperparameters"][0].item().decode()
    rows = dict(re.findall(r"^\| (\S+) \| (.*) \|$", table, re.M))
    assert rows["model.num_classes"] == "3" and rows["model.image_size"] == "128"
    assert rows["train.mini_batch_size"] == "4" and rows["train.learning_rate"] == "0.0025"
    assert rows["train.num_training_samples"] == "16" and rows["train.seed"] == "3"
    assert rows["train.epochs"] == "1" and rows["eval.ap_method"] == "11point"
    assert rows["data.train_files"] == f"{len(shapes_tfrecords['train'])} files"

    # The only validation (step 4) is the exported weights': evaluated again from the export.
    again = api.evaluate(result.export_path, list(shapes_tfrecords["validation"]))
    assert set(validation["mAP"]) == {4}
    np.testing.assert_allclose(validation["mAP"][4], result.best_map, rtol=1e-6)
    np.testing.assert_allclose(validation["mAP"][4], again.voc.mean_ap, rtol=1e-3, atol=1e-6)
    for name, ap in zip(again.class_names, again.voc.ap):
        if not np.isnan(ap):
            np.testing.assert_allclose(validation[f"AP/{name}"][4], ap, rtol=1e-3, atol=1e-6)
    assert again.class_names == ["circle", "square", "triangle"]

    # Images: [width, height, PNG...] per image. 4 validation images drawn (SUMMARY_IMAGES),
    # ground truth and detections side by side; the plots as the report draws them.
    drawn = validation["ground_truth_left_detections_right"][4]
    assert len(drawn) == 2 + 4
    for encoded in drawn[2:]:
        pixels = tf.io.decode_png(encoded).numpy()
        assert pixels.shape[1] > 2 * pixels.shape[0] - 10 and pixels.shape[2] == 3
    report = tmp_path / "run" / "report"
    for name in ("pr_curves", "confusion_matrix"):
        summary = tf.io.decode_png(validation[name][4][2]).numpy()
        with Image.open(report / f"{name}.png") as image:
            written = np.asarray(image.convert("RGB"))
        assert summary.shape == written.shape == (600, 800, 3)
        # The same evaluation drawn twice: the pixels agree but for antialiasing.
        assert np.mean(np.abs(summary.astype(int) - written)) < 2.0, name

    # The evaluation report of the exported weights, at the end of the run.
    figures = json.loads((report / "report.json").read_text())
    assert figures["images"] == 8 and figures["image_shape"] == 128
    assert set(figures["best_threshold"]) == {"circle", "square", "triangle", "overall"}
    for name in ("pr_curves", "f1", "confusion_matrix", "by_size"):
        with Image.open(report / f"{name}.png") as image:
            assert image.size == (800, 600)
