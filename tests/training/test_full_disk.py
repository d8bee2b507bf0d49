"""Checkpoints and exports on a full disk or after damage: the previous good state stays usable.

Runs ``python -m tfssd.train`` with its model directory (or export directory) on a real small
tmpfs, mounted in a user and mount namespace of its own (``unshare -rm``: no root needed), so
the disk really fills. A tiny network (width_multiplier 0.125, 300 px, 2 steps per epoch)
writes checkpoints of about 3.8 MiB and exports of about 2.9 MiB.

A SIGKILL during a save is not tested at a random moment (not deterministic); what it can
leave is: TensorFlow's unfinished ``ckpt-N_temp`` folder (removed at the next start), a merged
checkpoint the state file does not name yet (found on disk), or a cut file, which the
truncation test makes on purpose.
"""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import tensorflow as tf

from tfssd.model.run_directory import checkpoint_problem

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKPOINT_MIB = 3.8  # the tiny network's checkpoint, with its SGD momentum
TIMEOUT = 600


def _train_command(shapes_tfrecords, model_dir, epochs, *extra) -> str:
    argv = [sys.executable, "-m", "tfssd.train", "--num_classes=3", "--num_training_samples=8",
            "--mini_batch_size=4", f"--epochs={epochs}", "--use_pretrained_model=0",
            "--width_multiplier=0.125", "--image_shape=300", "--seed=1",
            "--log_every_steps=1", f"--train={shapes_tfrecords['dir']}/train-*",
            f"--model_dir={model_dir}", *extra]
    return shlex.join(argv)


def _in_namespace(script: str, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    """Runs ``script`` (sh) in a user and mount namespace of its own, where it may mount."""
    result = subprocess.run(["unshare", "-rm", "sh", "-c", "set -u\n" + script],
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if result.returncode == 90:
        pytest.fail("Cannot mount a tmpfs in a user+mount namespace (unshare -rm, then "
                    f"mount -t tmpfs): {result.stderr[-2000:]}. These tests need it: enable "
                    "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1).")
    return result


def _mount(folder, size: str) -> str:
    return f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(folder))} || exit 90\n"


def _read(path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _step_of(prefix: str) -> int:
    return int(tf.train.load_checkpoint(prefix).get_tensor(
        "global_step/.ATTRIBUTES/VARIABLE_VALUE"))


@pytest.fixture(scope="module")
def namespaces_work():
    result = subprocess.run(["unshare", "-rm", "true"], capture_output=True, text=True,
                            timeout=60)
    if result.returncode:
        pytest.fail(f"unshare -rm does not work here ({result.stderr.strip()}); these tests "
                    "need user and mount namespaces to mount a small tmpfs")


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_the_rerun_resumes(
        namespaces_work, shapes_tfrecords, tmp_path):
    # 6 MiB holds the run file, summaries and ckpt-1 (3.8 MiB), not ckpt-2 beside it.
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir(), out.mkdir()
    run = disk / "run"
    command = _train_command(shapes_tfrecords, run, 2, "--checkpoint_every_steps=1")
    _in_namespace(
        _mount(disk, "6m")
        + f"{command} > {out}/first.log 2>&1; echo $? > {out}/first.rc\n"
        + f"cp -a {run} {out}/after_failure\n"
        + f"mount -o remount,size=64m {disk} || exit 90\n"  # space freed
        + f"{command} > {out}/second.log 2>&1; echo $? > {out}/second.rc\n"
        + f"cp -a {run} {out}/after_rerun\n")
    first = _read(out / "first.log")
    assert int(_read(out / "first.rc")) == 1, first[-3000:]
    message = re.search(
        rf"No space left on {re.escape(str(run))} while writing checkpoint ckpt-2 \(needs "
        r"about ([\d.]+) MiB, ([\d.]+) MiB free\): the previous checkpoint ckpt-1 is intact; "
        r"free space and rerun to resume\.", first)
    assert message, first[-3000:]
    needed, free = float(message.group(1)), float(message.group(2))
    assert abs(needed - CHECKPOINT_MIB) < 0.3 and free < needed, message.group(0)
    assert "Traceback" not in first, first[-3000:]
    kept = out / "after_failure"
    assert tf.train.latest_checkpoint(str(kept)) == str(kept / "ckpt-1")
    assert checkpoint_problem(str(kept / "ckpt-1")) is None and _step_of(str(kept / "ckpt-1")) == 1
    assert not [n for n in os.listdir(kept) if n.startswith("ckpt-2")]  # no leftovers

    second = _read(out / "second.log")
    assert int(_read(out / "second.rc")) == 0, second[-3000:]
    assert f"Resumed from {run}/ckpt-1 at step 1 " in second, second[-3000:]
    assert _step_of(tf.train.latest_checkpoint(str(out / "after_rerun"))) == 4


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_is_skipped_with_a_warning(shapes_tfrecords, tmp_path):
    run = tmp_path / "run"
    first = subprocess.run(shlex.split(_train_command(
        shapes_tfrecords, run, 1, "--checkpoint_every_steps=1")), capture_output=True,
        text=True, timeout=TIMEOUT, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    assert tf.train.latest_checkpoint(str(run)) == str(run / "ckpt-2")
    data = run / "ckpt-2.data-00000-of-00001"
    with open(data, "r+b") as f:  # a real cut, as a kill or a failing copy leaves it
        f.truncate(os.path.getsize(data) // 2)

    second = subprocess.run(shlex.split(_train_command(
        shapes_tfrecords, run, 2, "--checkpoint_every_steps=1")), capture_output=True,
        text=True, timeout=TIMEOUT, cwd=ROOT)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert re.search(rf"Checkpoint {re.escape(str(run))}/ckpt-2 is not intact \(.+\): skipped, "
                     r"its files removed\.", log), log[-3000:]
    assert f"Resumed from {run}/ckpt-1 at step 1 " in log, log[-3000:]
    latest = tf.train.latest_checkpoint(str(run))
    assert latest == str(run / "ckpt-4") and _step_of(latest) == 4
    assert checkpoint_problem(str(run / "ckpt-2")) is None  # written again at step 2


@pytest.mark.slow
def test_an_export_on_a_full_disk_keeps_the_previous_export(
        namespaces_work, shapes_tfrecords, tmp_path):
    # The checkpoints on a large tmpfs, the exports on one of 4 MiB: version 1 (2.9 MiB) fits,
    # version 2 beside it does not; then the export tmpfs grows.
    disk, exports, out = tmp_path / "disk", tmp_path / "exports", tmp_path / "out"
    for folder in (disk, exports, out):
        folder.mkdir()
    one, two = (_train_command(shapes_tfrecords, disk / "run", epochs,
                               f"--export_dir={exports}") for epochs in (1, 2))
    _in_namespace(
        _mount(disk, "64m") + _mount(exports, "4m")
        + f"{one} > {out}/first.log 2>&1; echo $? > {out}/first.rc\n"
        + f"{two} > {out}/second.log 2>&1; echo $? > {out}/second.rc\n"
        + f"cp -a {exports} {out}/after_failure\n"
        + f"mount -o remount,size=16m {exports} || exit 90\n"
        + f"{two} > {out}/third.log 2>&1; echo $? > {out}/third.rc\n"
        + f"cp -a {exports} {out}/after_rerun\n")
    assert int(_read(out / "first.rc")) == 0, _read(out / "first.log")[-3000:]
    second = _read(out / "second.log")
    assert int(_read(out / "second.rc")) == 1, second[-3000:]
    message = re.search(
        rf"No space left on {re.escape(str(exports))} while exporting "
        rf"{re.escape(str(exports))}/2 \(needs about ([\d.]+) MiB, ([\d.]+) MiB free\): the "
        rf"previous export {re.escape(str(exports))}/1 is intact; free space and rerun to "
        r"export again\.", second)
    assert message, second[-3000:]
    assert float(message.group(2)) < float(message.group(1)), message.group(0)
    assert "Traceback" not in second, second[-3000:]
    kept = out / "after_failure"
    assert sorted(os.listdir(kept)) == ["1"]  # no version 2, no staging folder
    detections = tf.saved_model.load(str(kept / "1")).signatures["serving_images"](
        images=tf.zeros([1, 64, 64, 3], tf.uint8))
    assert detections["detection_boxes"].shape == (1, 200, 4)

    third = _read(out / "third.log")
    assert int(_read(out / "third.rc")) == 0, third[-3000:]
    assert f"Exported the final weights to {exports}/2 " in third, third[-3000:]
    assert sorted(os.listdir(out / "after_rerun")) == ["1", "2"]


_KEEP_WEIGHTS = """
import json, os, sys
import tensorflow as tf
from tfssd.training import sagemaker_job
from tfssd.training.errors import TrainingError
model_dir, export_dir = sys.argv[1:]
best = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(tf.ones([64 * 1024]))),
                                  os.path.join(model_dir, "best"), max_to_keep=1)
with open(os.path.join(model_dir, "tfssd_run.json"), "w") as f:
    f.write("{}")
best.save(checkpoint_number=1)  # 256 KiB: fits
sagemaker_job.keep_weights_with_model(model_dir, export_dir)
best._checkpoint.v = tf.Variable(tf.ones([512 * 1024]))  # 2 MiB: does not
best.save(checkpoint_number=2)
try:
    sagemaker_job.keep_weights_with_model(model_dir, export_dir)
    print(json.dumps({"error": None}))
except TrainingError as e:
    print(json.dumps({"error": str(e)}))
"""


@pytest.mark.slow
def test_a_full_disk_while_keeping_the_weights_with_the_model_keeps_the_earlier_copy(
        namespaces_work, tmp_path):
    """SageMaker: the best weights copied beside the export (model.tar.gz) on a 1 MiB disk."""
    model_dir, model, out = tmp_path / "run", tmp_path / "model", tmp_path / "out"
    for folder in (model_dir, model, out):
        folder.mkdir()
    result = _in_namespace(
        _mount(model, "1m")
        + shlex.join([sys.executable, "-c", _KEEP_WEIGHTS, str(model_dir), str(model)])
        + f" > {out}/result.json\n"
        + f"cp -a {model} {out}/model\n")
    assert result.returncode == 0, result.stderr[-3000:]
    error = json.loads(_read(out / "result.json"))["error"]
    assert error and error.startswith(f"Cannot copy the weights into {model}/checkpoints for "
                                      "model.tar.gz: No space left on device"), error
    kept = out / "model" / "checkpoints" / "best"
    assert tf.train.latest_checkpoint(str(kept)) == str(kept / "ckpt-1")
    assert checkpoint_problem(str(kept / "ckpt-1")) is None
    assert not [n for n in os.listdir(kept) if n.endswith(".incomplete")]


def _small_checkpoints(directory):
    """Checkpoints of a one-layer network with its SGD momentum, and the run state."""
    import keras

    from tfssd.training import state

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    optimizer = keras.optimizers.SGD(momentum=0.9)
    optimizer.build(model.trainable_variables)
    run_state = state.RunState(tf.distribute.get_strategy())
    return state.Checkpoints(model, optimizer, run_state, str(directory), 3), run_state


def test_what_a_killed_save_leaves_is_cleaned_and_a_whole_unrecorded_checkpoint_used(
        tmp_path, absl_lines):
    """A kill during a save leaves TensorFlow's ckpt-N_temp folder, or a merged checkpoint that
    the state file does not name yet (killed before CheckpointManager recorded it)."""
    from tfssd.training import state

    checkpoints, run_state = _small_checkpoints(tmp_path)
    run_state.global_step.assign(1)
    checkpoints.save(1)
    run_state.global_step.assign(2)
    checkpoints.checkpoint.write(str(tmp_path / "ckpt-2"))  # merged, never recorded
    (tmp_path / "ckpt-3_temp").mkdir()
    (tmp_path / "ckpt-3_temp" / "part-00000-of-00001.data-00000-of-00001.tempstate1").write_bytes(
        b"\0" * 1000)
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-1")

    assert state.newest_intact_checkpoint(str(tmp_path), repair=True) == str(tmp_path / "ckpt-2")
    assert not (tmp_path / "ckpt-3_temp").exists()
    assert any("ckpt-3_temp" in line and "did not finish" in line for line in absl_lines)
    recorded = tf.train.get_checkpoint_state(str(tmp_path))
    assert recorded.model_checkpoint_path == str(tmp_path / "ckpt-2")
    assert list(recorded.all_model_checkpoint_paths) == [str(tmp_path / "ckpt-1"),
                                                          str(tmp_path / "ckpt-2")]


def test_a_broken_best_checkpoint_is_taken_from_the_checkpoint_of_its_step(tmp_path, absl_lines):
    checkpoints, run_state = _small_checkpoints(tmp_path)
    checkpoints.model.layers[0].kernel.assign(tf.fill([4, 3], 0.5))
    run_state.global_step.assign(2)
    checkpoints.save(2)
    checkpoints.save_best(2)
    best_data = tmp_path / "best" / "ckpt-2.data-00000-of-00001"
    with open(best_data, "r+b") as f:
        f.truncate(os.path.getsize(best_data) - 8)

    checkpoints, _ = _small_checkpoints(tmp_path)
    assert checkpoints.best == str(tmp_path / "best" / "ckpt-2")
    assert checkpoint_problem(checkpoints.best) is None
    assert any(f"taken from {tmp_path}/ckpt-2" in line for line in absl_lines), absl_lines
    checkpoints.load_weights(checkpoints.best)
    assert float(checkpoints.model.layers[0].kernel[0, 0]) == 0.5


def test_lost_best_weights_restart_the_early_stopping_record(tmp_path, absl_lines):
    checkpoints, run_state = _small_checkpoints(tmp_path)
    run_state.global_step.assign(2)
    run_state.best_map.assign(0.7)
    run_state.best_epoch.assign(1)
    checkpoints.save_best(2)
    checkpoints.save(4)  # the checkpoint of step 2 is gone (max_to_keep)
    (tmp_path / "best" / "ckpt-2.index").unlink()

    checkpoints, run_state = _small_checkpoints(tmp_path)
    assert checkpoints.best is None
    checkpoints.resume(str(tmp_path / "ckpt-4"))
    assert int(run_state.global_step.numpy()) == 2
    assert float(run_state.best_map.numpy()) == -1.0 and int(run_state.best_epoch.numpy()) == 0
    assert any("best weights (ckpt-2) are lost" in line for line in absl_lines), absl_lines


def test_a_repair_removes_only_broken_checkpoints(tmp_path, absl_lines):
    from tfssd.training import state

    checkpoints, _ = _small_checkpoints(tmp_path)
    checkpoints.save(1)
    data = tmp_path / "ckpt-1.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-1])
    (tmp_path / "notes.index").write_text("not a checkpoint")  # the user's, left alone

    assert state.newest_intact_checkpoint(str(tmp_path), repair=True) is None
    assert any(f"{tmp_path}/ckpt-1 is not intact" in line for line in absl_lines), absl_lines
    assert sorted(os.listdir(tmp_path)) == ["notes.index"]  # and no state file naming ckpt-1
