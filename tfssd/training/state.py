"""A run's state beside the weights, its checkpoints, and how a run starts: anew, resumed or
initialised from an earlier run.

The state (global step, seed, early-stopping record) lives in ``tf.Variable``s saved with the
model and optimizer, so a killed run resumes at the same step, schedule position and data
position. The run file (``tfssd_run.json``) records the network geometry a model directory was
trained with, so that a directory of another network is refused instead of half-restored.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfssd.config.run_config import BEST_DIR, RUN_FILE, EarlyStoppingConfig, ModelConfig
from tfssd.model.run_directory import (
    best_checkpoint,
    checkpoint_bytes,
    checkpoint_files,
    checkpoint_problem,
    find_run_dir,
    newest_intact_checkpoint,
    write_checkpoint_state,
)
from tfssd.training.early_stopping import EarlyStopping
from tfssd.training.errors import TrainingError

GEOMETRY_KEYS = ("base_network", "num_classes", "image_size", "width_multiplier")


def geometry(model: ModelConfig) -> dict:
    """What must agree for weights to be restored into another run."""
    return {key: getattr(model, key) for key in GEOMETRY_KEYS}


def geometry_differences(run_dir: str, expected: dict, keys=GEOMETRY_KEYS) -> str:
    """'' when the run in ``run_dir`` has the ``expected`` geometry (``keys`` of it), else what
    differs."""
    with open(os.path.join(run_dir, RUN_FILE), encoding="utf-8") as f:
        recorded = json.load(f)
    return ", ".join(f"{k}: {recorded.get(k)} there, {expected[k]} now"
                     for k in keys if recorded.get(k) != expected[k])


def check_run_file(model_dir: str, expected: dict, class_names: list[str], write: bool) -> None:
    """Refuses a model directory trained with another geometry; records it (``write``) if new."""
    path = os.path.join(model_dir, RUN_FILE)
    if os.path.isfile(path):
        different = geometry_differences(model_dir, expected)
        if different:
            raise TrainingError(f"{model_dir} holds a run with another network ({different}); "
                                "use a new --model_dir to start a new run")
    elif write:  # atomically: dist_sync workers may read it while the chief writes
        temporary = f"{path}.{os.getpid()}.incomplete"
        try:
            with open(temporary, "w", encoding="utf-8") as f:
                json.dump({**expected, "class_names": class_names}, f, indent=2)
            os.replace(temporary, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            raise TrainingError(f"Cannot write {path}: {e.strerror or e}") from None


def init_from_checkpoint(source: str | None, expected: dict) -> str | None:
    """The checkpoint --init_from names: the earlier run's best weights, else its latest.

    Accepts a tfssd model directory, or a folder holding one as ``checkpoints/`` (the layout of
    a SageMaker model artifact from tfssd). The image size may differ, as in SageMaker's
    algorithm: convolution weights do not depend on it, and a network that gains or loses
    layers with it (tfssd's own add extra layers down to 1x1) is refused when its weights load.
    """
    if not source:
        return None
    run_dir = find_run_dir(source)
    if run_dir is None:
        raise TrainingError(f"--init_from={source}: not a tfssd model directory (no "
                            f"{RUN_FILE} in it or in its checkpoints/)")
    different = geometry_differences(run_dir, expected,
                                     [k for k in GEOMETRY_KEYS if k != "image_size"])
    if different:
        raise TrainingError(f"--init_from={source} was trained with another network "
                            f"({different}); incremental training needs the same "
                            "base_network, num_classes and width_multiplier")
    checkpoint = best_checkpoint(run_dir)
    if checkpoint is None:
        raise TrainingError(f"--init_from={source}: no checkpoint in {run_dir}")
    return checkpoint


class RunState:
    """Global step, seed and early-stopping record, as variables every worker holds alike."""

    def __init__(self, strategy: tf.distribute.Strategy):
        with strategy.scope():
            variable = lambda value, dtype, name: tf.Variable(
                value, dtype=dtype, trainable=False, name=name,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.global_step = variable(0, tf.int64, "global_step")  # atomic assign_add
            self.run_seed = variable(-1, tf.int64, "run_seed")
            self.best_map = variable(-1.0, tf.float32, None)
            self.best_epoch = variable(0, tf.int64, None)
            self.bad_epochs = variable(0, tf.int64, None)
            # The last epoch whose validation is in the record: the epoch's checkpoint is
            # written before its validation, so a run resumed at an epoch's end whose
            # validation did not finish validates it first.
            self.validated_epoch = variable(0, tf.int64, None)

    @property
    def variables(self) -> list[tf.Variable]:
        return [self.global_step, self.run_seed, self.best_map, self.best_epoch, self.bad_epochs,
                self.validated_epoch]

    @property
    def step(self) -> int:
        return int(self.global_step.numpy())

    @property
    def seed(self) -> int:
        return int(self.run_seed.numpy())

    def choose_seed(self, seed: int | None) -> None:
        """A new run's seed: the configured one, else a random one (a resumed run keeps its own)."""
        if self.seed < 0:
            self.run_seed.assign(seed if seed is not None
                                 else random.SystemRandom().randrange(2 ** 31))

    def early_stopping(self, config: EarlyStoppingConfig) -> EarlyStopping:
        """The early-stopping rule, with the record of the epochs already run."""
        early = EarlyStopping(config.min_epochs, config.patience, config.tolerance)
        if int(self.best_epoch.numpy()) > 0:  # an epoch was validated
            early.best = float(self.best_map.numpy())
            early.best_epoch = int(self.best_epoch.numpy())
            early.epochs_without_improvement = int(self.bad_epochs.numpy())
        return early

    def record(self, early: EarlyStopping, epoch: int) -> None:
        """Records the rule's state after the validation of ``epoch``."""
        self.best_map.assign(early.best)
        self.best_epoch.assign(early.best_epoch)
        self.bad_epochs.assign(early.epochs_without_improvement)
        self.validated_epoch.assign(epoch)

    def validation_pending(self, steps_per_epoch: int) -> int | None:
        """The epoch at whose end the run stands without its validation recorded, else None."""
        epoch, within = divmod(self.step, steps_per_epoch)
        if within == 0 and epoch > int(self.validated_epoch.numpy()):
            return epoch
        return None


class Checkpoints:
    """The run's checkpoints (model, optimizer, state) and the best-mAP weights beside them.

    A save that fails (a full disk, most often) leaves the previous checkpoint as it was and
    stops the run with a TrainingError naming the directory, the space needed and free, and
    the checkpoint a rerun resumes from.
    """

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                 state: RunState, directory: str, max_to_keep: int,
                 loss_scale: keras.optimizers.LossScaleOptimizer | None = None):
        """``optimizer`` is the inner optimizer; ``loss_scale`` the mixed_float16 wrapper, whose
        scale and step counter are saved beside it (and restored only where both have them, so
        that a run resumes under any precision)."""
        self.model = model
        self.optimizer = optimizer
        self.state = state
        self.directory = directory
        required = dict(
            model=model, optimizer=optimizer, global_step=state.global_step,
            run_seed=state.run_seed, best_map=state.best_map, best_epoch=state.best_epoch,
            bad_epochs=state.bad_epochs)
        self._required = tf.train.Checkpoint(**required)
        self._loss_scale = None if loss_scale is None else tf.train.Checkpoint(
            loss_scale=tf.train.Checkpoint(scale=loss_scale.dynamic_scale,
                                           steps=loss_scale.step_counter))
        # validated_epoch, newer than the rest, is restored where a checkpoint has it (from an
        # older one, the resumed run validates its last epoch again).
        self.checkpoint = tf.train.Checkpoint(
            **required, validated_epoch=state.validated_epoch,
            **({} if loss_scale is None else {"loss_scale": self._loss_scale.loss_scale}))
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory,
                                                  max_to_keep=max_to_keep)
        self._best_lost = repair_best(directory)
        self.best_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=model), os.path.join(directory, BEST_DIR), max_to_keep=1)

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    @property
    def best(self) -> str | None:
        return self.best_manager.latest_checkpoint

    def save(self, step: int) -> str:
        return self._save(self.manager, step, "checkpoint",
                          [*self.model.weights, *self.optimizer.variables])

    def save_best(self, step: int) -> None:
        self._save(self.best_manager, step, "best-weights checkpoint", self.model.weights)

    def _save(self, manager: tf.train.CheckpointManager, step: int, what: str,
              variables: list) -> str:
        previous = manager.latest_checkpoint
        try:
            return manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as e:
            raise save_error(manager.directory, f"ckpt-{step}", what, previous, e,
                             sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size
                                 for v in variables)) from None

    def resume(self, path: str) -> None:
        """Restores everything a checkpoint of this run holds (the network, optimizer and state
        must match exactly; the loss scale is restored where the checkpoint has one)."""
        status = self._required.restore(path)
        status.assert_existing_objects_matched()
        status.expect_partial()  # a mixed_float16 checkpoint's loss scale, restored below
        tf.train.Checkpoint(validated_epoch=self.state.validated_epoch).restore(
            path).expect_partial()
        if self._loss_scale is not None:
            self._loss_scale.restore(path).expect_partial()
        if self._best_lost:  # the record would name weights that are gone
            self.state.best_map.assign(-1.0)
            self.state.best_epoch.assign(0)
            self.state.bad_epochs.assign(0)

    def load_weights(self, path: str) -> None:
        """Restores only the network's weights (best weights, --init_from).

        Every weight of the network must be in the checkpoint (its optimizer state may be
        there too, and is left out): a checkpoint of another network is refused, not half
        restored.
        """
        try:
            status = tf.train.Checkpoint(model=self.model).restore(path)
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError) as e:  # missing weights, or other shapes
            raise TrainingError(f"{path} does not hold this network's weights ({str(e)[:300]}); "
                                "it was written by another network") from None
        status.expect_partial()


def is_full_disk(error: Exception) -> bool:
    """Whether a write failed for want of space (a full disk or an exceeded quota)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(error, tf.errors.ResourceExhaustedError) or any(
        text in str(error) for text in ("No space left on device", "Disk quota exceeded"))


def save_error(directory: str, name: str, what: str, previous: str | None, error: Exception,
               variables_bytes: int) -> TrainingError:
    """The error of a failed save of ``what`` ``name`` into ``directory``, after its leftovers
    are removed: what the save needed and had, and whether ``previous`` is intact."""
    prefix = os.path.join(directory, name)
    shutil.rmtree(prefix + "_temp", ignore_errors=True)  # TensorFlow's unfinished shards
    if prefix != previous and checkpoint_problem(prefix) is not None:
        for path in checkpoint_files(prefix):  # a merge cut short; never a recorded one
            with contextlib.suppress(OSError):
                os.remove(path)
    problem = checkpoint_problem(previous) if previous else None
    if previous is None:
        kept = f"no {what} was written before it; free space and rerun"
    elif problem is None:
        kept = (f"the previous {what} {os.path.basename(previous)} is intact; free space and "
                "rerun to resume")
    else:
        kept = f"the previous {what}, {previous}, is not intact either ({problem})"
    if not is_full_disk(error):
        cause = [line for line in str(error).splitlines() if line.strip()] or [repr(error)]
        return TrainingError(f"Cannot write {what} {name} in {directory}: {cause[0]}; {kept}.")
    needed = checkpoint_bytes(previous) if previous and problem is None else variables_bytes
    free = shutil.disk_usage(directory).free
    return TrainingError(
        f"No space left on {directory} while writing {what} {name} (needs about "
        f"{needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free): {kept}.")


def repair_best(directory: str) -> bool:
    """Checks the best weights under ``directory/best``: True when they are lost.

    A best-weights checkpoint that is not intact is replaced by the run's checkpoint of the
    same step where that one is intact (it holds the same weights, the optimizer's beside
    them); else it is removed, and the caller restarts the early-stopping record.
    """
    best_dir = os.path.join(directory, BEST_DIR)
    recorded = tf.train.get_checkpoint_state(best_dir)
    if recorded is None or newest_intact_checkpoint(best_dir, repair=True) is not None:
        return False
    name = os.path.basename(recorded.model_checkpoint_path)
    same_step = os.path.join(directory, name)
    if checkpoint_problem(same_step) is None:
        for path in checkpoint_files(same_step):
            target = os.path.join(best_dir, os.path.basename(path))
            shutil.copyfile(path, target + ".incomplete")
            os.replace(target + ".incomplete", target)
        write_checkpoint_state(best_dir, name, [name])
        logging.warning("The best weights are taken from %s, the checkpoint of the same step.",
                        same_step)
        return False
    logging.warning("The best weights (%s) are lost and no checkpoint of their step is intact: "
                    "the early-stopping record restarts, and the export holds the best weights "
                    "validated from now on, else the final weights.", name)
    return True


def broadcast_from_chief(strategy: tf.distribute.Strategy, variables: list,
                         is_chief: bool) -> None:
    """dist_sync: every worker takes the chief's values of ``variables``.

    A worker that cannot see the chief's checkpoints (local disks) would otherwise start from
    other values, and the replicas would drift apart.
    """
    keep = 1.0 if is_chief else 0.0

    @tf.function
    def chief_values():
        def replica_fn():
            values = [tf.cast(tf.convert_to_tensor(v), tf.float64) * keep for v in variables]
            return tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, values)
        return strategy.run(replica_fn)

    values = tf.nest.map_structure(
        lambda v: strategy.experimental_local_results(v)[0], chief_values())
    for variable, value in zip(variables, values):
        variable.assign(tf.cast(value, variable.dtype))

