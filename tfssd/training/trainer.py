"""A training run put together: data, network, optimizer, state, runner, validation, export.

``Trainer`` builds the parts for one process of a cluster and hands them to the controller;
at the end it exports the checkpoint with the best validation mAP (or the final weights) and
logs one last validation:mAP line for the exported weights, so that the last such line (what
SageMaker's tuning ranks a job by) is the deployed model's. Under dist_sync every worker runs it
on its part of each global batch; the chief writes the model directory, the others a scratch
directory, and after start-up every worker takes the chief's state. Under dist_async the chief
runs it, scheduling the steps on the workers. A run that SIGTERM stops can export its best
weights too (``export_on_stop``: a SageMaker job, whose /opt/ml/model is kept when it is
stopped or runs out of time).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfssd.config import precision
from tfssd.config.run_config import Config
from tfssd.data import conversion, pipeline, schema
from tfssd.deploy import saved_model as export
from tfssd.evaluation.validation import Validator, ground_truth_per_class
from tfssd.evaluation.voc_ap import EvaluationResult
from tfssd.model.freezing import FreezePatternError
from tfssd.model.ssd import SSD, build_ssd
from tfssd.training import distribution, errors, optimization, runners, state, stop_signal
from tfssd.training.controller import Controller
from tfssd.training.distribution import Cluster
from tfssd.training.early_stopping import EarlyStopping
from tfssd.training.errors import TrainingError
from tfssd.training.reporting import Reporter


@dataclasses.dataclass
class TrainingResult:
    global_step: int
    epochs_completed: int
    best_map: float | None
    best_epoch: int | None
    stopped_early: bool
    export_path: str | None
    model_dir: str


def read_class_names(path: str | None, num_classes: int) -> list[str]:
    """Class names from a class_map.json, or the ids as names; must agree with num_classes."""
    if not path:
        return [str(i) for i in range(num_classes)]
    try:
        names = conversion.read_class_map(path)
    except conversion.ConversionError as e:
        raise TrainingError(f"--class_map: {e}") from None
    if len(names) != num_classes:
        raise TrainingError(f"{path} lists {len(names)} classes but num_classes={num_classes}; "
                            "num_classes counts object classes without background")
    return names


class Trainer:
    """Trains one SSD as a config describes, under a strategy, on this process's part of a cluster.

    Non-chief workers write their checkpoints and summaries to a scratch directory; every
    worker saves, as MultiWorkerMirroredStrategy requires.
    """

    def __init__(self, config: Config, strategy: tf.distribute.Strategy, cluster: Cluster,
                 export_on_stop: bool = False):
        self.config = config
        self.export_on_stop = export_on_stop
        self.strategy = strategy
        self.cluster = cluster
        cfg = config.train
        self.model_dir = (cfg.model_dir if cluster.is_chief else
                          tempfile.mkdtemp(prefix=f"tfssd-worker{cluster.task_id}-"))
        self.runner = runners.make_runner(strategy, cluster, self._data_error)
        os.makedirs(self.model_dir, exist_ok=True)
        self.class_names = read_class_names(config.data.class_map_file, config.model.num_classes)
        self._check_training_files()
        try:
            self.input_format = schema.resolve_format(
                config.data.train_files + config.data.validation_files, config.data.input_format)
        except ValueError as e:
            raise TrainingError(str(e)) from None

        self.state = state.RunState(strategy)
        # Every worker resumes from the chief's directory where it can see it (see
        # broadcast_from_chief for those that cannot).
        geometry = state.geometry(config.model)
        resume_from = state.newest_intact_checkpoint(cfg.model_dir, repair=cluster.is_chief)
        init_from = None if resume_from else state.init_from_checkpoint(cfg.init_from, geometry)
        if cfg.seed is not None:
            keras.utils.set_random_seed(cfg.seed)
        with strategy.scope():
            # Weights come from this run's checkpoint, else --init_from, else ImageNet or scratch.
            try:
                with precision.policy_scope(cfg.precision):  # weights stay float32
                    self.ssd: SSD = build_ssd(config.model,
                                              load_pretrained=not (resume_from or init_from))
            except FreezePatternError as e:
                raise TrainingError(f"--{e}") from None
            self.model = self.ssd.model
            optimizer = optimization.build_optimizer(cfg.optimizer, self._learning_rate,
                                                     cfg.momentum)
            # float16 needs the loss scaled; the checkpoint holds the inner optimizer alone, so
            # that a run resumes under any precision.
            self.optimizer = (keras.optimizers.LossScaleOptimizer(optimizer)
                              if precision.uses_loss_scaling(cfg.precision) else optimizer)
            self.optimizer.build(self.model.trainable_variables)
        state.check_run_file(cfg.model_dir, geometry, self.class_names, write=cluster.is_chief)
        scaled = self.optimizer if self.optimizer is not optimizer else None
        self.checkpoints = state.Checkpoints(self.model, optimizer, self.state,
                                             self.model_dir, cfg.max_checkpoints, scaled)
        self.reporter = Reporter(config, cluster, self.model_dir, self.class_names,
                                 self._last_learning_rate)
        if resume_from:
            self.checkpoints.resume(resume_from)
            step = self.state.step
            epoch, batch = divmod(step, cfg.steps_per_epoch)
            position = self.runner.data_position(step, cfg.global_batch_size)
            self.reporter.log(f"Resumed from {resume_from} at step {step} (epoch {epoch + 1}, "
                              f"step {batch + 1} of it), with its optimizer state, learning rate "
                              f"and {position}.")
        elif init_from:
            self.checkpoints.load_weights(init_from)
            self.reporter.log(f"Initialised the network from {init_from} (--init_from); the "
                              "optimizer, schedule and data start anew.")
        self.state.choose_seed(cfg.seed)
        self.runner.share_chief_state(
            [*self.model.weights, *self.optimizer.variables, *self.state.variables],
            cluster.is_chief)
        decay = cfg.weight_decay if optimization.uses_weight_decay(cfg.optimizer) else 0.0
        self.train_step = runners.make_train_step(strategy, self.model, self.optimizer,
                                                  self.state.global_step, decay,
                                                  reduce=self.runner.reduce)
        self.validator = Validator(config, self.model, self.ssd.anchors, self.class_names,
                                   self.input_format, self._data_error)

    @property
    def global_step(self) -> tf.Variable:
        return self.state.global_step

    @property
    def run_seed(self) -> tf.Variable:
        return self.state.run_seed

    def _learning_rate(self):
        """The rate of the step the optimizer applies next (global_step steps have run)."""
        cfg = self.config.train
        return optimization.learning_rate_at(self.state.global_step, cfg.learning_rate,
                                             cfg.lr_scheduler_factor, cfg.lr_boundaries)

    def _last_learning_rate(self):
        """The rate the last step ran with, for the log: the step before ``global_step``."""
        cfg = self.config.train
        return optimization.learning_rate_at(self.state.global_step - 1, cfg.learning_rate,
                                             cfg.lr_scheduler_factor, cfg.lr_boundaries)

    def _check_training_files(self) -> None:
        """Walks every record header once: a truncated file stops the run here, naming it."""
        if pipeline.is_stream(self.config.data.train_files):
            return  # a Pipe-mode channel: each pass is read once, as training reaches it
        try:
            records = sum(schema.count_records(path) for path in self.config.data.train_files)
        except (ValueError, OSError) as e:
            raise TrainingError(f"Unusable training file: {e}") from None
        declared = self.config.train.num_training_samples
        if records != declared and self.cluster.is_chief:
            logging.warning(
                "num_training_samples=%d but the training files hold %d records; epochs (and "
                "lr_scheduler_step) count num_training_samples images.", declared, records)

    def _data_error(self, error: tf.errors.OpError, files: tuple[str, ...] | None = None):
        return errors.data_error(error, files or self.config.data.train_files, self.input_format)

    def build_train_dataset(self, input_context: tf.distribute.InputContext, seed,
                            start_sample: int = 0) -> tf.data.Dataset:
        """This input pipeline's batches (per replica) of the run's training stream; a batch
        that does not divide over the replicas is split as SageMaker's algorithm splits it."""
        cfg, data = self.config.train, self.config.data
        replicas = input_context.num_replicas_in_sync
        if cfg.global_batch_size % replicas:
            local = replicas // input_context.num_input_pipelines
            batch_size = distribution.replica_batch_sizes(
                cfg.global_batch_size // input_context.num_input_pipelines, local)
        else:
            batch_size = cfg.global_batch_size // replicas
        return pipeline.build_train_dataset(
            data.train_files, self.ssd.anchors, image_size=self.config.model.image_size,
            label_width=data.label_width, num_classes=self.config.model.num_classes,
            batch_size=batch_size,
            samples_per_epoch=cfg.steps_per_epoch * cfg.global_batch_size, seed=seed,
            start_sample=start_sample, shuffle_buffer=data.shuffle_buffer,
            input_format=self.input_format, skip_corrupt_records=data.skip_corrupt_records,
            input_context=input_context)

    def train_dataset(self, start_sample: int = 0):
        """The distributed training stream from global example ``start_sample`` (synchronous)."""
        seed = self.state.seed
        return self.strategy.distribute_datasets_from_function(
            lambda context: self.build_train_dataset(context, seed, start_sample))

    def _validates(self) -> bool:
        """Whether validation mAP can be measured; warns about classes it cannot measure.

        mAP is the mean AP over the classes with ground truth in the validation data (a class
        without any has no AP). With none at all there is no mAP: validation is skipped and the
        final weights are exported, or, with early stopping, the run stops here.
        """
        files = self.config.data.validation_files
        if not files:
            return False
        counts = ground_truth_per_class(files, self.input_format, self.config.model.num_classes)
        missing = [name for name, n in zip(self.class_names, counts) if n == 0]
        if not counts.any():
            if self.config.early_stopping.enabled:
                raise TrainingError(
                    f"The validation data ({len(files)} files) holds no ground-truth objects, so "
                    "validation mAP cannot be measured and early_stopping cannot act; give "
                    "--validation data with annotated objects.")
            logging.warning("The validation data holds no ground-truth objects: mAP cannot be "
                            "measured, validation is skipped and the final weights are exported.")
            return False
        if missing and self.cluster.is_chief:
            logging.warning(
                "Validation data has no ground truth for %d of %d classes (%s); validation mAP "
                "is the mean AP over the %d classes that have some.", len(missing),
                len(counts), ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else ""),
                len(counts) - len(missing))
        return True

    def evaluate(self) -> tuple[EvaluationResult, dict[str, np.ndarray]]:
        """Validation mAP of the current weights, and images for TensorBoard (validation.py)."""
        return self.validator.evaluate()

    def train(self) -> TrainingResult:
        cfg = self.config.train
        step = self.state.step
        early = self.state.early_stopping(self.config.early_stopping)
        self.reporter.log(
            f"Training {self.model.name}{self.runner.where}: "
            f"{self.model.count_params():,} parameters, "
            f"{self.ssd.num_anchors} anchors, {cfg.steps_per_epoch} steps per epoch of "
            f"{cfg.global_batch_size} images, {cfg.epochs} epochs; model_dir {cfg.model_dir}; "
            f"seed {self.state.seed}.")
        if step == 0:
            self.reporter.hyperparameters()
        first_step, best_before = step, self.checkpoints.best
        evaluate = self.evaluate if self._validates() else None
        try:
            # SIGTERM: a checkpoint after the step in flight (on every dist_sync worker at the
            # same step), then Preempted; during validation, Preempted at once.
            with self.runner.stop_request() as stop:
                controller = Controller(self.config, self.runner, self.state, self.checkpoints,
                                        self.reporter, evaluate, stop)
                stopped_early = controller.resume(step, early)
                if not stopped_early:
                    self.runner.start(self.train_step, self.build_train_dataset, self.state.seed,
                                      start_sample=step * cfg.global_batch_size)
                    step, stopped_early = controller.run(step, early)
        except errors.CLUSTER_ERRORS as e:  # a peer has gone (a step, a checkpoint, validation)
            failure = self.runner.peer_lost(e, tf.train.latest_checkpoint(cfg.model_dir))
            if failure is e:
                raise
            raise failure from None
        except stop_signal.Preempted as stopped:
            self._stopped(stopped, early)
            raise
        # The validation an interrupted run owed may have found new best weights: exported anew.
        trained = step > first_step or self.checkpoints.best != best_before
        return self._finish(step, stopped_early, early, trained=trained)

    def _served(self) -> SSD:
        """The network as the export computes: in its own precision (float32 by default,
        whatever the run trained in), with the same weights."""
        cfg = self.config.train
        policy = precision.export_policy(cfg.export_precision)
        return self.ssd if policy == cfg.precision else self.ssd.in_precision(policy)

    def _export(self, early: EarlyStopping, current: str = "the final weights"
                ) -> tuple[str, str, SSD]:
        """Exports the best weights (else the current ones, ``current`` in words) from the chief:
        (the export's path, what was exported in words, the network it served from)."""
        cfg, model = self.config.train, self.config.model
        if self.checkpoints.best:
            self.checkpoints.load_weights(self.checkpoints.best)
            chosen = f"the best validation mAP ({early.best:.4f}, epoch {early.best_epoch})"
        else:
            chosen = current
        served = self._served()
        try:  # a failed export leaves the earlier versions as they were
            export_path = export.export_saved_model(
                served.model, self.ssd.anchors, cfg.resolved_export_dir,
                image_size=model.image_size, class_names=self.class_names,
                nms_threshold=model.nms_threshold, score_threshold=model.score_threshold,
                max_detections=model.max_detections)
        except export.ExportError as e:
            raise TrainingError(str(e)) from None
        return export_path, chosen, served

    def _evaluate_export(self, early: EarlyStopping, served: SSD
                         ) -> tuple[float | None, Validator | None]:
        """(mAP, validator) of the exported network where it computes in another precision than
        validation did (a float32 export of a mixed-precision run), else (None, None): the
        export holds the best epoch's weights exactly, and then its recorded mAP."""
        if served is self.ssd or not (self.checkpoints.best and early.best_epoch):
            return None, None
        validator = Validator(self.config, served.model, self.ssd.anchors, self.class_names,
                              self.input_format, self._data_error)
        result, _ = validator.evaluate()
        return result.mean_ap, validator

    def _stopped(self, stopped: stop_signal.Preempted, early: EarlyStopping) -> None:
        """After SIGTERM's checkpoint, ``export_on_stop``: the chief exports the best weights, so
        that a stopped or timed-out job leaves a deployable model (a SIGKILL meanwhile leaves the
        checkpoint, and a half-written export is never a version)."""
        cfg = self.config.train
        if self.export_on_stop and self.cluster.is_chief:
            self.reporter.log(f"SIGTERM: exporting {'the best' if self.checkpoints.best else 'the'}"
                              f" weights to {cfg.resolved_export_dir} before stopping, so that "
                              "the stopped job leaves a deployable model.")
            stopped.export_path, chosen, served = self._export(
                early, f"the weights of step {stopped.step}")
            self.reporter.log(f"SIGTERM: exported {chosen} to {stopped.export_path}; a job that "
                              "resumes from the checkpoint exports again at its end.")
            self.reporter.exported_validation(early, None, (
                "the best epoch's validation; the export has its weights" + (
                    "" if served is self.ssd else ", not evaluated again in its precision: "
                    "short of time")))
        if not self.cluster.is_chief:  # its own save went to the scratch directory
            shutil.rmtree(self.model_dir, ignore_errors=True)
            stopped.checkpoint = f"{cfg.model_dir}/ckpt-{stopped.step} (the chief's)"

    def _finish(self, step: int, stopped_early: bool, early: EarlyStopping,
                trained: bool = True) -> TrainingResult:
        cfg = self.config.train
        if self.checkpoints.best:  # every worker: their final digests are of the exported weights
            self.checkpoints.load_weights(self.checkpoints.best)
        export_path = None
        exported = None if trained else export.current_export(cfg.resolved_export_dir,
                                                               cfg.model_dir)
        if self.cluster.is_chief and exported:  # the same command again on a finished run
            export_path = exported
            self.reporter.log(f"Nothing was trained; the run's export stays {exported} (no new "
                              "version written).")
            evaluated, _ = self._evaluate_export(early, self._served())
            self.reporter.exported_validation(early, evaluated,
                                              "the best epoch's validation, recorded")
        elif self.cluster.is_chief:
            export_path, chosen, served = self._export(early)
            self.reporter.log(
                f"Done: {step // cfg.steps_per_epoch} epochs ({step} steps)"
                f"{', stopped early' if stopped_early else ''}. Exported {chosen} to "
                f"{export_path} ({cfg.export_precision}). Checkpoints and TensorBoard logs: "
                f"{cfg.model_dir} "
                f"(tensorboard --logdir {cfg.model_dir}).")
            evaluated, validator = self._evaluate_export(early, served)
            self._write_report(step // cfg.steps_per_epoch, early, validator)
            self.reporter.exported_validation(
                early, evaluated,
                "the best epoch's validation; the export has exactly its weights and precision")
        self.runner.finish(self.model)
        if not self.cluster.is_chief:
            shutil.rmtree(self.model_dir, ignore_errors=True)
        return TrainingResult(global_step=step, epochs_completed=step // cfg.steps_per_epoch,
                              best_map=early.best, best_epoch=early.best_epoch or None,
                              stopped_early=stopped_early, export_path=export_path,
                              model_dir=cfg.model_dir)

    def _write_report(self, last_epoch: int, early: EarlyStopping,
                      export_validator: Validator | None = None) -> None:
        """The evaluation report of the exported weights: as ``export_validator`` evaluated the
        exported network, else evaluated again when they are not the last epoch's (one worker)."""
        if self.validator.last_evaluator is None:
            return
        epoch, validator = last_epoch, export_validator or self.validator
        if export_validator is not None:
            epoch = early.best_epoch
        elif early.best_epoch and early.best_epoch != last_epoch and (
                self.cluster.num_workers == 1):
            self.validator.evaluate()  # the best weights are loaded: what was exported
            epoch = early.best_epoch
        self.reporter.evaluation_report(validator, epoch)


def train(config: Config, strategy: tf.distribute.Strategy, cluster: Cluster,
          export_on_stop: bool = False) -> TrainingResult:
    """Trains (or resumes) the run that ``config`` describes; returns what it did.
    ``export_on_stop``: a run SIGTERM stops exports its best weights too (a SageMaker job)."""
    return Trainer(config, strategy, cluster, export_on_stop).train()
