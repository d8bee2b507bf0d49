"""The outer training loop: decides when to run steps, log, checkpoint, validate and stop.

It runs no step itself (a runner of runners.py does, for any strategy), reads no data and knows
no distribution mode. Every epoch ends with a checkpoint, then validation (when there is
validation data) and the early-stopping rule; ``--checkpoint_every_steps`` adds checkpoints
within an epoch. The checkpoint comes first because validation can be long: a SIGTERM during it
stops the run at once with nothing lost, and the next run validates that epoch before it trains
on (``RunState.validated_epoch`` says which epochs were). Losses are checked for finiteness
before any checkpoint is written. A stop request (SIGTERM, stop_signal.py) is answered after the
step in flight: a checkpoint, then ``Preempted``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from tfssd.config.run_config import Config
from tfssd.training.early_stopping import EarlyStopping
from tfssd.training.errors import TrainingError
from tfssd.training.reporting import Reporter
from tfssd.training.state import Checkpoints, RunState
from tfssd.training.stop_signal import Interrupted, LocalStop, Preempted

MAX_CONSECUTIVE_SKIPS = 50  # loss scaling halves its scale each time: 50 is far past recovery


class Controller:
    """Trains from the run's current step to the end or to an early stop."""

    def __init__(self, config: Config, runner, state: RunState, checkpoints: Checkpoints,
                 reporter: Reporter, evaluate: Callable | None, stop: LocalStop | None = None):
        self.config = config
        self.runner = runner
        self.state = state
        self.checkpoints = checkpoints
        self.reporter = reporter
        self.evaluate = evaluate  # () -> (EvaluationResult, images by name); None: no validation
        self.consecutive_skips = 0
        self.stop = stop or LocalStop()  # not entered: no signal handler, never requested

    def resume(self, step: int, early: EarlyStopping) -> bool:
        """Before training from ``step``: the validation an interrupted run owed (its epoch's
        checkpoint came first); True when the run is finished by early stopping."""
        cfg = self.config.train
        pending = self.evaluate and self.state.validation_pending(cfg.steps_per_epoch)
        stopped = False
        if pending:
            self.reporter.log(f"The checkpoint of epoch {pending} was written before its "
                              "validation, which did not finish: validating it first.")
            stopped = self.validate(pending, step, early)
        # A run that early stopping ended is as finished as one that ran all its epochs.
        stopped = stopped or (self.config.early_stopping.enabled
                              and step % cfg.steps_per_epoch == 0
                              and early.says_stop(step // cfg.steps_per_epoch))
        if step >= cfg.total_steps or stopped:
            self.reporter.log("The run in this model directory is complete"
                              f"{' (stopped early)' if stopped else ''}; nothing to train.")
        return stopped

    def run(self, step: int, early: EarlyStopping) -> tuple[int, bool]:
        """Returns (the step reached, whether early stopping ended the run)."""
        cfg = self.config.train
        window: list[tuple[float, float]] = []
        skipped = 0  # steps the loss-scaling optimizer skipped since the last report
        window_start = run_start = time.time()
        first_step = step
        while step < cfg.total_steps:
            self.runner.run_step()
            step += 1
            self.reporter.step(step)
            epoch_end = step % cfg.steps_per_epoch == 0
            checkpoint_due = bool(cfg.checkpoint_every_steps
                                  and step % cfg.checkpoint_every_steps == 0)
            log_due = step % cfg.log_every_steps == 0 or epoch_end or step == cfg.total_steps
            losses = self.runner.collect(due=log_due or checkpoint_due)
            self._check_finite(losses, step)
            window += [(cls_loss, box_loss) for cls_loss, box_loss, skip in losses if not skip]
            skipped += sum(1 for *_, skip in losses if skip)
            if log_due:
                run_rate = (step - first_step) / max(time.time() - run_start, 1e-9)
                self.reporter.progress(step, window, time.time() - window_start, run_rate,
                                       skipped)
                window, skipped, window_start = [], 0, time.time()
            if epoch_end:
                self.runner.join()
                if self._end_epoch(step // cfg.steps_per_epoch, step, early):
                    return step, True
                window_start = time.time()  # the next report's speed is of training alone
            elif checkpoint_due:
                self.checkpoints.save(step)
            self.stop.after_step(step, self._save_for_stop)
        self.runner.join()
        return step, False

    def _save_for_stop(self, step: int) -> str | None:
        """Saves a checkpoint at ``step`` (its losses checked first) before the run stops."""
        self.runner.join()
        self._check_finite(self.runner.collect(due=True), step)
        if self.checkpoints.latest is None or not self.checkpoints.latest.endswith(f"-{step}"):
            self.checkpoints.save(step)
        self.reporter.log(f"SIGTERM: checkpoint saved at step {step}; stopping.")
        return self.checkpoints.latest

    def _end_epoch(self, epoch: int, step: int, early: EarlyStopping) -> bool:
        """The epoch's checkpoint, then validation and early stopping; True when training stops."""
        self.checkpoints.save(step)
        return self.validate(epoch, step, early)

    def validate(self, epoch: int, step: int, early: EarlyStopping) -> bool:
        """Validation of epoch ``epoch`` (ending at ``step``, whose checkpoint is written) and the
        early-stopping rule; True when training stops. A SIGTERM meanwhile raises Preempted."""
        if not self.evaluate:
            self.reporter.end_epoch(epoch)
            return False
        self.reporter.validating(epoch)
        try:
            with self.stop.interruptible():
                result, images = self.evaluate()
        except Interrupted:
            self.reporter.log(
                f"SIGTERM during the validation of epoch {epoch}: its checkpoint (step {step}) "
                f"was written before it; stopping. The next run validates epoch {epoch} first.")
            raise Preempted(step, self.checkpoints.latest) from None
        self.reporter.validation(result, images, epoch, step)
        if early.best is None or result.mean_ap > early.best:
            self.checkpoints.save_best(step)
        should_stop = early.update(epoch, result.mean_ap)
        self.state.record(early, epoch)  # in the next checkpoint; until then, validated again
        rule = self.config.early_stopping
        if rule.enabled and should_stop and step < self.config.train.total_steps:
            self.reporter.log(
                f"Early stopping after epoch {epoch}: no improvement of validation mAP by "
                f"more than {rule.tolerance} for {early.epochs_without_improvement} epochs "
                f"(best {early.best:.4f} at epoch {early.best_epoch}).")
            return True
        return False

    def _check_finite(self, losses: list[tuple[float, float, float]], last_step: int) -> None:
        """A non-finite loss stops the run, except on a step loss scaling skipped (counted)."""
        for offset, (cls_loss, box_loss, skip) in enumerate(losses):
            self.consecutive_skips = self.consecutive_skips + 1 if skip else 0
            if self.consecutive_skips > MAX_CONSECUTIVE_SKIPS:
                raise TrainingError(
                    f"{self.consecutive_skips} steps in a row had non-finite gradients under "
                    "loss scaling (mixed_float16); try --precision=float32 or a lower "
                    "--learning_rate.")
            if not skip and not (math.isfinite(cls_loss) and math.isfinite(box_loss)):
                step = last_step - len(losses) + offset + 1
                kept = (f"the last good checkpoint, {self.checkpoints.latest}, is kept"
                        if self.checkpoints.latest else "no checkpoint was written yet")
                raise TrainingError(
                    f"The loss became non-finite at step {step} (cross_entropy {cls_loss}, "
                    f"smooth_l1 {box_loss}); {kept}. Try a lower --learning_rate.")
