"""The training loop: one custom loop for every tf.distribute strategy.

Why not ``model.fit``: Keras 3's fit breaks under MultiWorkerMirroredStrategy and does not
support ParameterServerStrategy (DESIGN.md). This loop runs ``strategy.run`` per step, keeps the
global step in its own ``tf.Variable`` (updated with an atomic ``assign_add``) and derives the
learning rate from it. Every epoch it saves a checkpoint of the model, the optimizer and the
run's state (step, seed, early-stopping record), measures validation mAP, and writes TensorBoard
summaries. A restarted run resumes from the latest checkpoint at the same step, schedule
position and data position. The export at the end is the checkpoint with the best validation
mAP (or the final one without validation data); the final checkpoint stays in the model
directory.

Under dist_sync (MultiWorkerMirroredStrategy) every worker runs this loop on its part of each
global batch; the chief writes the model directory, the others a scratch directory, and after
start-up every worker takes the chief's state. Under dist_async (ParameterServerStrategy) the
chief schedules the steps on the workers with a ClusterCoordinator, fetching their losses only
when it logs, and evaluates and checkpoints itself.

Optimizers follow SageMaker's (MXNet's) semantics: momentum for sgd only; weight decay as
coupled L2 (``grad += wd * w``, on convolution kernels) for sgd and rmsprop only; adadelta has
no learning rate in MXNet, so learning_rate and the schedule do not apply to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfssd import export, sagemaker_metrics, visualization
from tfssd.config import Config
from tfssd.data import convert, pipeline, schema
from tfssd.distribute import Cluster
from tfssd.early_stopping import EarlyStopping
from tfssd.evaluation import DetectionEvaluator, EvaluationResult
from tfssd.losses import multibox_loss
from tfssd.model.ssd import SSD, build_ssd
from tfssd.postprocess import postprocess

RUN_FILE = "tfssd_run.json"  # the network geometry a model directory was trained with
SUMMARY_IMAGES = 4  # validation images drawn to TensorBoard after each evaluation
SUMMARY_MIN_SCORE = 0.3  # detections drawn on them
_GEOMETRY_KEYS = ("base_network", "num_classes", "image_size", "width_multiplier")


# What a collective operation raises when a dist_sync peer has gone.
_CLUSTER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                   tf.errors.DeadlineExceededError)


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


@dataclasses.dataclass
class TrainingResult:
    global_step: int
    epochs_completed: int
    best_map: float | None
    best_epoch: int | None
    stopped_early: bool
    export_path: str | None
    model_dir: str


def learning_rate_at(step: tf.Tensor, base: float, factor: float,
                     boundaries: tuple[int, ...]) -> tf.Tensor:
    """``base * factor ** (number of boundaries <= step)``: SageMaker's step schedule."""
    if not boundaries:
        return tf.constant(base, tf.float32)
    passed = tf.reduce_sum(tf.cast(tf.cast(step, tf.int64) >= tf.constant(boundaries, tf.int64),
                                   tf.float32))
    return base * tf.pow(tf.constant(factor, tf.float32), passed)


def build_optimizer(name: str, learning_rate, momentum: float) -> keras.optimizers.Optimizer:
    """The Keras optimizer with MXNet's settings; ``learning_rate`` may be a callable."""
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=learning_rate, rho=0.9, epsilon=1e-8)
    if name == "adadelta":
        # MXNet's AdaDelta ignores the learning rate, i.e. uses 1.0.
        return keras.optimizers.Adadelta(learning_rate=1.0, rho=0.9, epsilon=1e-5)
    raise ValueError(f"unknown optimizer {name!r}")


def uses_weight_decay(optimizer: str) -> bool:
    return optimizer in ("sgd", "rmsprop")


def is_decayed(variable) -> bool:
    """Weight decay applies to convolution kernels, not to biases or scales (as MXNet's wd_mult)."""
    return variable.name.split("/")[-1].split(":")[0] == "kernel"


@tf.autograph.experimental.do_not_convert  # autograph mangles the conditional in the loop
def add_weight_decay(grads, variables, decayed, rate: float):
    """MXNet's coupled L2: ``grad + rate * w`` for the variables flagged in ``decayed``."""
    return [grad + rate * variable if flag else grad
            for grad, variable, flag in zip(grads, variables, decayed)]


def read_class_names(path: str | None, num_classes: int) -> list[str]:
    """Class names from a class_map.json, or the ids as names; must agree with num_classes."""
    if not path:
        return [str(i) for i in range(num_classes)]
    names = convert.read_class_map(path)
    if len(names) != num_classes:
        raise TrainingError(f"{path} lists {len(names)} classes but num_classes={num_classes}; "
                            "num_classes counts object classes without background")
    return names


def _cause(error: tf.errors.OpError) -> str:
    """The informative line of a TensorFlow error (its first line is often a generic header)."""
    lines = [line.strip() for line in error.message.splitlines() if line.strip()]
    for line in lines:
        if "aborted by" in line or "Connection refused" in line or "failed to connect" in line:
            return line
    return next((line for line in lines if not line.startswith(("Graph execution error",
                                                                "Detected at node", "File "))),
                lines[0] if lines else type(error).__name__)


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Trainer:
    """Trains one SSD as a config describes, under a strategy, on this process's part of a cluster.

    Non-chief workers write their checkpoints and summaries to a scratch directory; every
    worker saves, as MultiWorkerMirroredStrategy requires.
    """

    def __init__(self, config: Config, strategy: tf.distribute.Strategy, cluster: Cluster):
        self.config = config
        self.strategy = strategy
        self.cluster = cluster
        self.train_cfg = config.train
        self.model_dir = (config.train.model_dir if cluster.is_chief else
                          tempfile.mkdtemp(prefix=f"tfssd-worker{cluster.task_id}-"))
        self.coordinator = (tf.distribute.coordinator.ClusterCoordinator(strategy)
                            if cluster.mode == "async" else None)
        os.makedirs(self.model_dir, exist_ok=True)
        self.class_names = read_class_names(config.data.class_map_file, config.model.num_classes)
        self._check_training_files()
        try:
            self.input_format = schema.resolve_format(
                config.data.train_files + config.data.validation_files, config.data.input_format)
        except ValueError as e:
            raise TrainingError(str(e)) from None

        with strategy.scope():
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.run_seed = tf.Variable(-1, dtype=tf.int64, trainable=False, name="run_seed",
                                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.best_map = tf.Variable(-1.0, dtype=tf.float32, trainable=False,
                                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False,
                                          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False,
                                          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        # Every worker resumes from the chief's directory where it can see it (see
        # _broadcast_from_chief for those that cannot).
        resume_from = tf.train.latest_checkpoint(config.train.model_dir)
        resuming = resume_from is not None
        init_from = None if resuming else self._init_from_checkpoint()
        if config.train.seed is not None:
            keras.utils.set_random_seed(config.train.seed)
        with strategy.scope():
            # Weights come from this run's checkpoint, else --init_from, else ImageNet or scratch.
            self.ssd: SSD = build_ssd(config.model, load_pretrained=not (resuming or init_from))
            self.model = self.ssd.model
            self.optimizer = build_optimizer(config.train.optimizer, self._learning_rate,
                                             config.train.momentum)
            self.optimizer.build(self.model.trainable_variables)
        self._check_run_file()
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, global_step=self.global_step,
            run_seed=self.run_seed, best_map=self.best_map, best_epoch=self.best_epoch,
            bad_epochs=self.bad_epochs)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.model_dir,
                                                  max_to_keep=config.train.max_checkpoints)
        self.best_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.model), os.path.join(self.model_dir, "best"),
            max_to_keep=1)
        if resuming:
            self.checkpoint.restore(resume_from).assert_existing_objects_matched()
            step = int(self.global_step.numpy())
            epoch, batch = divmod(step, self.train_cfg.steps_per_epoch)
            position = (f"data position (example {step * self.train_cfg.global_batch_size} of "
                        "the run's stream)" if cluster.mode != "async" else
                        "a new data order on each worker (dist_async keeps no data position)")
            self._log(f"Resumed from {resume_from} at step {step} (epoch {epoch + 1}, step "
                      f"{batch + 1} of it), with its optimizer state, learning rate and "
                      f"{position}.")
        elif init_from:
            tf.train.Checkpoint(model=self.model).restore(init_from).expect_partial()
            self._log(f"Initialised the network from {init_from} (--init_from); the optimizer, "
                      "schedule and data start anew.")
        if int(self.run_seed.numpy()) < 0:
            self.run_seed.assign(config.train.seed if config.train.seed is not None
                                 else random.SystemRandom().randrange(2 ** 31))
        if cluster.mode == "sync":
            self._broadcast_from_chief()

        writer = tf.summary.create_file_writer if cluster.is_chief else (
            lambda _: tf.summary.create_noop_writer())
        self.train_writer = writer(os.path.join(self.model_dir, "train"))
        self.val_writer = writer(os.path.join(self.model_dir, "validation"))
        self.train_step = self._make_train_step()  # (distributed iterator) -> (cls, box) losses
        self._detect = tf.function(self._detect_fn, reduce_retracing=True)

    # -- pieces ---------------------------------------------------------------------------

    def _learning_rate(self):
        return learning_rate_at(self.global_step, self.train_cfg.learning_rate,
                                self.train_cfg.lr_scheduler_factor, self.train_cfg.lr_boundaries)

    def _check_training_files(self) -> None:
        """Walks every record header once: a truncated file stops the run here, naming it."""
        try:
            records = sum(schema.count_records(path) for path in self.config.data.train_files)
        except (ValueError, OSError) as e:
            raise TrainingError(f"Unusable training file: {e}") from None
        declared = self.train_cfg.num_training_samples
        if records != declared and self.cluster.is_chief:
            logging.warning(
                "num_training_samples=%d but the training files hold %d records; epochs (and "
                "lr_scheduler_step) count num_training_samples images.", declared, records)

    def _data_error(self, error: tf.errors.OpError, files: tuple[str, ...]) -> Exception:
        """A clear TrainingError for bad data behind ``error``, or ``error`` itself."""
        first_line = error.message.splitlines()[0]
        if "label_width" in first_line or "class id outside" in first_line:
            return TrainingError(f"Bad record in {', '.join(files)}: {first_line}")
        bad = pipeline.find_undecodable_records(files, self.input_format)
        if bad:
            return TrainingError("Records whose image does not decode:\n  " + "\n  ".join(bad)
                                 + "\nRemove them (tools/convert.py checks every image), or "
                                 "pass --skip_corrupt_records to skip such records.")
        if isinstance(error, tf.errors.DataLossError):
            return TrainingError(f"A TFRecord file of {', '.join(files)} is corrupt: "
                                 f"{first_line}")
        return error

    def _geometry(self) -> dict:
        model = self.config.model
        return {"base_network": model.base_network, "num_classes": model.num_classes,
                "image_size": model.image_size, "width_multiplier": model.width_multiplier}

    def _geometry_differences(self, run_dir: str) -> str:
        """'' when the run in ``run_dir`` has this network's geometry, else what differs."""
        with open(os.path.join(run_dir, RUN_FILE), encoding="utf-8") as f:
            recorded = json.load(f)
        geometry = self._geometry()
        return ", ".join(f"{k}: {recorded.get(k)} there, {geometry[k]} now"
                         for k in _GEOMETRY_KEYS if recorded.get(k) != geometry[k])

    def _check_run_file(self) -> None:
        """Refuses a model directory trained with another network geometry."""
        path = os.path.join(self.config.train.model_dir, RUN_FILE)
        if os.path.isfile(path):
            different = self._geometry_differences(self.config.train.model_dir)
            if different:
                raise TrainingError(f"{self.config.train.model_dir} holds a run with another "
                                    f"network ({different}); use a new --model_dir to start a "
                                    "new run")
        elif self.cluster.is_chief:
            with open(path, "w", encoding="utf-8") as f:
                json.dump({**self._geometry(), "class_names": self.class_names}, f, indent=2)

    def _init_from_checkpoint(self) -> str | None:
        """The checkpoint --init_from names: the earlier run's best weights, else its latest.

        Accepts a tfssd model directory, or a folder holding one as ``checkpoints/`` (the
        layout of a SageMaker model artifact from tfssd).
        """
        source = self.config.train.init_from
        if not source:
            return None
        run_dir = next((d for d in (source, os.path.join(source, "checkpoints"))
                        if os.path.isfile(os.path.join(d, RUN_FILE))), None)
        if run_dir is None:
            raise TrainingError(f"--init_from={source}: not a tfssd model directory (no "
                                f"{RUN_FILE} in it or in its checkpoints/)")
        different = self._geometry_differences(run_dir)
        if different:
            raise TrainingError(f"--init_from={source} was trained with another network "
                                f"({different}); incremental training needs the same "
                                "base_network, num_classes, image_shape and width_multiplier")
        checkpoint = (tf.train.latest_checkpoint(os.path.join(run_dir, "best"))
                      or tf.train.latest_checkpoint(run_dir))
        if checkpoint is None:
            raise TrainingError(f"--init_from={source}: no checkpoint in {run_dir}")
        return checkpoint

    def _build_train_dataset(self, input_context: tf.distribute.InputContext, seed,
                             start_sample: int = 0) -> tf.data.Dataset:
        """This input pipeline's batches (per replica) of the run's training stream."""
        cfg, data = self.train_cfg, self.config.data
        return pipeline.build_train_dataset(
            data.train_files, self.ssd.anchors, image_size=data.image_size,
            label_width=data.label_width, num_classes=self.config.model.num_classes,
            batch_size=input_context.get_per_replica_batch_size(cfg.global_batch_size),
            samples_per_epoch=cfg.steps_per_epoch * cfg.global_batch_size, seed=seed,
            start_sample=start_sample, shuffle_buffer=data.shuffle_buffer,
            input_format=self.input_format, skip_corrupt_records=data.skip_corrupt_records,
            input_context=input_context)

    def train_dataset(self, start_sample: int = 0):
        """The distributed training stream from global example ``start_sample``."""
        seed = int(self.run_seed.numpy())
        return self.strategy.distribute_datasets_from_function(
            lambda context: self._build_train_dataset(context, seed, start_sample))

    def _state_variables(self) -> list:
        return [self.global_step, self.run_seed, self.best_map, self.best_epoch, self.bad_epochs]

    def _broadcast_from_chief(self) -> None:
        """dist_sync: every worker takes the chief's weights, optimizer state, step and seed.

        A worker that cannot see the chief's checkpoints (local disks) would otherwise start
        from other values, and the replicas would drift apart.
        """
        variables = [*self.model.weights, *self.optimizer.variables, *self._state_variables()]
        keep = 1.0 if self.cluster.is_chief else 0.0

        @tf.function
        def chief_values():
            def replica_fn():
                values = [tf.cast(tf.convert_to_tensor(v), tf.float64) * keep for v in variables]
                return tf.distribute.get_replica_context().all_reduce(
                    tf.distribute.ReduceOp.SUM, values)
            return self.strategy.run(replica_fn)

        values = tf.nest.map_structure(
            lambda v: self.strategy.experimental_local_results(v)[0], chief_values())
        for variable, value in zip(variables, values):
            variable.assign(tf.cast(value, variable.dtype))

    def _per_worker_dataset(self):
        """dist_async: each worker's own stream, for the coordinator to draw batches from."""
        seed = int(self.run_seed.numpy())

        def dataset_fn(input_context):
            # Runs on each worker (one pipeline and replica, so batches of mini_batch_size):
            # its clock gives it its own data order, asynchronous training keeping no global
            # data position.
            salt = tf.cast(tf.timestamp() * 1e6, tf.int64)
            return self._build_train_dataset(
                input_context, tf.bitwise.bitwise_xor(tf.constant(seed, tf.int64), salt))

        @tf.function
        def per_worker_dataset():
            return self.strategy.distribute_datasets_from_function(dataset_fn)

        return self.coordinator.create_per_worker_dataset(per_worker_dataset)

    def _make_train_step(self):
        decay = self.train_cfg.weight_decay if uses_weight_decay(self.train_cfg.optimizer) else 0.0
        replicas = self.strategy.num_replicas_in_sync
        variables = self.model.trainable_variables
        decayed = [is_decayed(v) for v in variables]

        def replica_step(images, targets):
            context = tf.distribute.get_replica_context()
            with tf.GradientTape() as tape:
                outputs = self.model(images, training=True)
                sums = multibox_loss(targets["cls_targets"], targets["box_targets"],
                                     outputs["cls_logits"], outputs["box_deltas"])
                # The loss of the global batch is divided by its positives (at least 1).
                normaliser = tf.maximum(context.all_reduce(
                    tf.distribute.ReduceOp.SUM, tf.stop_gradient(sums.num_positives)), 1.0)
                cls_loss = sums.cls_loss_sum / normaliser
                box_loss = sums.box_loss_sum / normaliser
                loss = cls_loss + box_loss  # inside the tape, or it has no gradient
            grads = tape.gradient(loss, variables)
            if decay:
                # Gradients are summed over replicas, so each adds its share of wd * w.
                grads = add_weight_decay(grads, variables, decayed, decay / replicas)
            self.optimizer.apply_gradients(zip(grads, variables))
            return cls_loss, box_loss

        @tf.function
        def train_step(iterator):
            images, targets = next(iterator)
            cls_loss, box_loss = self.strategy.run(replica_step, args=(images, targets))
            self.global_step.assign_add(1)  # atomic: async workers lose no increment
            if self.coordinator:  # one replica per worker, on the worker itself
                return cls_loss, box_loss
            reduce = lambda x: self.strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None)
            return reduce(cls_loss), reduce(box_loss)

        return train_step

    def _detect_fn(self, images):
        outputs = self.model(images, training=False)
        model = self.config.model
        return postprocess(outputs["cls_logits"], outputs["box_deltas"],
                           tf.constant(self.ssd.anchors), nms_threshold=model.nms_threshold,
                           score_threshold=model.score_threshold,
                           max_detections=model.max_detections)

    def evaluate(self) -> tuple[EvaluationResult, np.ndarray]:
        """Validation mAP of the current weights (every worker computes the same).

        Returns:
          The result, and uint8 [N, S, 2S, 3]: the first validation images, ground truth on
          the left and detections scoring at least SUMMARY_MIN_SCORE on the right.
        """
        data = self.config.data
        evaluator = DetectionEvaluator(self.config.model.num_classes,
                                       self.config.eval.overlap_threshold,
                                       self.config.eval.ap_method)
        dataset = pipeline.build_eval_dataset(
            data.validation_files, image_size=data.image_size, label_width=data.label_width,
            batch_size=self.train_cfg.mini_batch_size, input_format=self.input_format,
            skip_corrupt_records=data.skip_corrupt_records)
        drawn = []
        try:
            for batch in dataset:
                detections = self._detect(batch["images"])
                evaluator.add_batch(detections, batch)
                if len(drawn) < SUMMARY_IMAGES:
                    drawn += self._draw(batch, detections, SUMMARY_IMAGES - len(drawn))
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
            raise self._data_error(e, data.validation_files) from None
        return evaluator.result(), np.stack(drawn) if drawn else np.zeros((0, 1, 1, 3), np.uint8)

    def _draw(self, batch, detections, count: int) -> list[np.ndarray]:
        images = []
        for k in range(min(count, int(batch["images"].shape[0]))):
            image = batch["images"][k].numpy()
            real = batch["gt_classes"][k].numpy() >= 0
            truth = visualization.draw_boxes(image, batch["gt_boxes"][k].numpy()[real],
                                             batch["gt_classes"][k].numpy()[real],
                                             class_names=self.class_names)
            n = int(detections["num_detections"][k])
            scores = detections["detection_scores"][k].numpy()[:n]
            keep = scores >= SUMMARY_MIN_SCORE
            predicted = visualization.draw_boxes(
                image, detections["detection_boxes"][k].numpy()[:n][keep],
                detections["detection_classes"][k].numpy()[:n][keep].astype(int), scores[keep],
                self.class_names)
            images.append(np.concatenate([truth, predicted], axis=1))
        return images

    # -- the loop -------------------------------------------------------------------------

    def _log(self, line: str) -> None:
        if self.cluster.is_chief:
            logging.info(line)

    def _write_hyperparameters(self) -> None:
        rows = []
        for group in ("model", "data", "train", "eval", "early_stopping"):
            for key, value in dataclasses.asdict(getattr(self.config, group)).items():
                if key in ("train_files", "validation_files"):
                    value = f"{len(value)} files"
                rows.append(f"| {group}.{key} | {value} |")
        with self.train_writer.as_default():
            tf.summary.text("hyperparameters", "| name | value |\n|---|---|\n" + "\n".join(rows),
                            step=0)

    def _run_steps(self, start_sample: int):
        """(run one step -> handle, handles -> [(cross_entropy, smooth_l1)]) for this strategy.

        Synchronous steps finish as they run; dist_async steps are scheduled on the workers
        and resolved only when their values are needed, so the workers never wait on logging.
        """
        if self.coordinator:
            iterator = iter(self._per_worker_dataset())
            run = lambda: self.coordinator.schedule(self.train_step, args=(iterator,))
            resolve = lambda handles: [tuple(float(x) for x in h.fetch()) for h in handles]
        else:
            iterator = iter(self.train_dataset(start_sample=start_sample))
            run = lambda: self.train_step(iterator)
            resolve = lambda handles: [tuple(float(x) for x in h) for h in handles]

        def checked(function, *args):
            try:
                return function(*args)
            except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
                raise self._data_error(e, self.config.data.train_files) from None

        run_checked = lambda: checked(run)
        resolve_checked = lambda handles: checked(resolve, handles)

        return run_checked, resolve_checked

    def _cluster_error(self, error: tf.errors.OpError) -> TrainingError:
        what = ("A worker of the dist_sync cluster stopped" if self.cluster.mode == "sync" else
                "A parameter server of the dist_async cluster stopped, or the cluster failed")
        return TrainingError(
            f"{what} ({_cause(error)}). Start the cluster again with the same commands: "
            "training resumes from the last checkpoint "
            f"({tf.train.latest_checkpoint(self.train_cfg.model_dir)}).")

    def _check_finite(self, losses, last_step: int) -> None:
        for offset, (cls_loss, box_loss) in enumerate(losses):
            if not (math.isfinite(cls_loss) and math.isfinite(box_loss)):
                step = last_step - len(losses) + offset + 1
                kept = (f"the last good checkpoint, {self.manager.latest_checkpoint}, is kept"
                        if self.manager.latest_checkpoint else "no checkpoint was written yet")
                raise TrainingError(
                    f"The loss became non-finite at step {step} (cross_entropy {cls_loss}, "
                    f"smooth_l1 {box_loss}); {kept}. Try a lower --learning_rate.")

    def _log_progress(self, step: int, losses, seconds: float, run_rate: float) -> None:
        cfg, host = self.train_cfg, self.cluster.host
        epoch, batch = divmod(step - 1, cfg.steps_per_epoch)
        images_per_s = len(losses) * cfg.global_batch_size / max(seconds, 1e-9)
        mean_cls = sum(c for c, _ in losses) / len(losses)
        mean_box = sum(b for _, b in losses) / len(losses)
        learning_rate = float(self._learning_rate())
        eta = (cfg.total_steps - step) / max(run_rate, 1e-9)
        self._log(f"epoch {epoch + 1}/{cfg.epochs} step {batch + 1}/{cfg.steps_per_epoch} "
                  f"loss {mean_cls + mean_box:.4f} (cross_entropy {mean_cls:.4f}, "
                  f"smooth_l1 {mean_box:.4f}) lr {learning_rate:.3g} "
                  f"{images_per_s:.2f} images/s ETA {_format_duration(eta)}")
        self._log(sagemaker_metrics.train_loss(host, epoch, batch, "cross_entropy", mean_cls))
        self._log(sagemaker_metrics.train_loss(host, epoch, batch, "smooth_l1", mean_box))
        self._log(sagemaker_metrics.throughput(host, images_per_s))
        self._log(sagemaker_metrics.progress(host, 100.0 * step / cfg.total_steps))
        with self.train_writer.as_default(step=step):
            tf.summary.scalar("loss/total", mean_cls + mean_box)
            tf.summary.scalar("loss/cross_entropy", mean_cls)
            tf.summary.scalar("loss/smooth_l1", mean_box)
            tf.summary.scalar("learning_rate", learning_rate)
            tf.summary.scalar("throughput_images_per_second", images_per_s)

    def _end_epoch(self, epoch: int, step: int, early: EarlyStopping) -> bool:
        """Validation, early stopping and the epoch's checkpoint; True when training stops."""
        stop = False
        if self.config.data.validation_files:
            result, drawn = self.evaluate()
            self._report_validation(result, drawn, epoch, step)
            if early.best is None or result.mean_ap > early.best:
                self.best_manager.save(checkpoint_number=step)
            should_stop = early.update(epoch, result.mean_ap)
            self.best_map.assign(early.best)
            self.best_epoch.assign(early.best_epoch)
            self.bad_epochs.assign(early.epochs_without_improvement)
            if (self.config.early_stopping.enabled and should_stop
                    and step < self.train_cfg.total_steps):
                stop = True
                self._log(f"Early stopping after epoch {epoch}: no improvement of validation mAP "
                          f"by more than {self.config.early_stopping.tolerance} for "
                          f"{early.epochs_without_improvement} epochs (best {early.best:.4f} at "
                          f"epoch {early.best_epoch}).")
        self.manager.save(checkpoint_number=step)
        return stop

    def train(self) -> TrainingResult:
        cfg = self.train_cfg
        steps_per_epoch, total_steps = cfg.steps_per_epoch, cfg.total_steps
        step = int(self.global_step.numpy())
        early = EarlyStopping(self.config.early_stopping.min_epochs,
                              self.config.early_stopping.patience,
                              self.config.early_stopping.tolerance)
        if float(self.best_map.numpy()) >= 0:
            early.best = float(self.best_map.numpy())
            early.best_epoch = int(self.best_epoch.numpy())
            early.epochs_without_improvement = int(self.bad_epochs.numpy())
        workers = {"sync": f" on {self.cluster.num_workers} workers (dist_sync)",
                   "async": " on the workers of a dist_async cluster"}.get(self.cluster.mode, "")
        self._log(f"Training {self.model.name}{workers}: {self.model.count_params():,} "
                  f"parameters, {self.ssd.num_anchors} anchors, {steps_per_epoch} steps per "
                  f"epoch of {cfg.global_batch_size} images, {cfg.epochs} epochs; model_dir "
                  f"{cfg.model_dir}; seed {int(self.run_seed.numpy())}.")
        if step == 0:
            self._write_hyperparameters()
        if step >= total_steps:
            self._log("The run in this model directory is complete; nothing to train.")
        try:
            step, stopped_early = self._train_steps(step, early)
        except _CLUSTER_ERRORS as e:  # a peer has gone (a step, a checkpoint, an evaluation)
            if self.cluster.mode == "local":
                raise
            raise self._cluster_error(e) from None
        return self._finish(step, stopped_early, early)

    def _train_steps(self, step: int, early: EarlyStopping) -> tuple[int, bool]:
        """Trains from ``step`` to the end or an early stop; returns (step, stopped early)."""
        cfg = self.train_cfg
        steps_per_epoch, total_steps = cfg.steps_per_epoch, cfg.total_steps
        run_step, resolve = self._run_steps(start_sample=step * cfg.global_batch_size)
        stopped_early = False
        pending, window = [], []
        window_start = run_start = time.time()
        first_step = step
        while step < total_steps:
            pending.append(run_step())
            step += 1
            epoch_end = step % steps_per_epoch == 0
            step_checkpoint = cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0
            log_now = step % cfg.log_every_steps == 0 or epoch_end or step == total_steps
            if not (log_now or epoch_end or step_checkpoint or self.coordinator is None):
                continue
            losses = resolve(pending)  # checked before any checkpoint is written
            pending = []
            self._check_finite(losses, step)
            window += losses
            if log_now:
                run_rate = (step - first_step) / max(time.time() - run_start, 1e-9)
                self._log_progress(step, window, time.time() - window_start, run_rate)
                window, window_start = [], time.time()
            if epoch_end:
                if self.coordinator:
                    self.coordinator.join()
                stopped_early = self._end_epoch(step // steps_per_epoch, step, early)
                if stopped_early:
                    break
            elif step_checkpoint:
                self.manager.save(checkpoint_number=step)
        if self.coordinator:
            self.coordinator.join()
        return step, stopped_early

    def _report_validation(self, result: EvaluationResult, drawn: np.ndarray, epoch: int,
                           step: int) -> None:
        self._log(sagemaker_metrics.validation_map(self.cluster.host, epoch - 1, result.mean_ap))
        self._log(f"validation after epoch {epoch}: " + result.format(self.class_names))
        with self.val_writer.as_default(step=step):
            tf.summary.scalar("mAP", result.mean_ap)
            if len(drawn):
                tf.summary.image("ground_truth_left_detections_right", drawn,
                                 max_outputs=SUMMARY_IMAGES)
            for name, ap in zip(self.class_names, result.ap):
                if not np.isnan(ap):
                    tf.summary.scalar(f"AP/{name}", ap)

    def _finish(self, step: int, stopped_early: bool, early: EarlyStopping) -> TrainingResult:
        cfg = self.train_cfg
        if self.best_manager.latest_checkpoint:
            tf.train.Checkpoint(model=self.model).restore(
                self.best_manager.latest_checkpoint).expect_partial()
            chosen = f"the best validation mAP ({early.best:.4f}, epoch {early.best_epoch})"
        else:
            chosen = "the final weights"
        export_path = None
        if self.cluster.is_chief:
            export_path = export.export_saved_model(
                self.model, self.ssd.anchors, cfg.resolved_export_dir,
                image_size=self.config.model.image_size, class_names=self.class_names,
                nms_threshold=self.config.model.nms_threshold,
                score_threshold=self.config.model.score_threshold,
                max_detections=self.config.model.max_detections)
            self._log(f"Done: {step // cfg.steps_per_epoch} epochs ({step} steps)"
                      f"{', stopped early' if stopped_early else ''}. Exported {chosen} to "
                      f"{export_path}. Checkpoints and TensorBoard logs: {cfg.model_dir} "
                      f"(tensorboard --logdir {cfg.model_dir}).")
        if self.cluster.mode == "sync":
            logging.info("Worker %d final weights digest %s.", self.cluster.task_id,
                         weights_digest(self.model))
        if not self.cluster.is_chief:
            shutil.rmtree(self.model_dir, ignore_errors=True)
        return TrainingResult(global_step=step, epochs_completed=step // cfg.steps_per_epoch,
                              best_map=early.best, best_epoch=early.best_epoch or None,
                              stopped_early=stopped_early, export_path=export_path,
                              model_dir=cfg.model_dir)


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of all weights' bytes: equal on every dist_sync worker when they agree exactly."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def train(config: Config, strategy: tf.distribute.Strategy, cluster: Cluster) -> TrainingResult:
    """Trains (or resumes) the run that ``config`` describes; returns what it did."""
    return Trainer(config, strategy, cluster).train()
