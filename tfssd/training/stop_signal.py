"""SIGTERM as a request to stop: the run saves a checkpoint at the step it reached and ends.

SageMaker (a stopped job, a spot interruption, ``MaxRuntimeInSeconds``), Kubernetes and most
schedulers send SIGTERM and then SIGKILL after a grace period (SageMaker: 120 s). Without this
the process would die mid-step and lose the work since the last checkpoint; with it the same
command (or the next job, from its checkpoint folder) resumes at that step.

* ``LocalStop``: one process decides for the run (one machine, or the chief of dist_async).
  After the step in flight it saves a checkpoint and raises ``Preempted``.
* ``ClusterStop``: every worker of a dist_sync cluster (MultiWorkerMirroredStrategy) must save
  at the same step, or the collective save and the next all-reduce hang. TensorFlow's
  ``tf.distribute.experimental.PreemptionCheckpointHandler`` agrees on that step through the
  cluster's coordination service: a SIGTERM on any worker (or on all, as SageMaker sends it)
  makes every worker save after the same step, then raise ``Preempted``.

Both make validation interruptible: a SIGTERM while it runs ends it at once (the epoch's
checkpoint is written before validation), since a long validation can outlast the grace period.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator

from absl import logging

EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process SIGTERM ended


class Preempted(Exception):
    """SIGTERM stopped the run; a checkpoint at ``step`` was saved first.

    ``export_path``: the SavedModel a stopped SageMaker job left (trainer.py), else None.
    """

    def __init__(self, step: int, checkpoint: str | None):
        super().__init__(step, checkpoint)
        self.step = step
        self.checkpoint = checkpoint
        self.export_path: str | None = None

    def __str__(self) -> str:
        return (f"SIGTERM: stopped at step {self.step} after saving the checkpoint "
                f"{self.checkpoint}; the same command (or the next job) resumes from it.")


class Interrupted(Exception):
    """SIGTERM arrived inside an interruptible block (validation)."""


class LocalStop:
    """SIGTERM sets a flag that the loop reads after each step (a context manager).

    Python runs signal handlers in the main thread only: elsewhere SIGTERM keeps its usual
    effect.
    """

    def __init__(self):
        self.event = threading.Event()
        self._interruptible = False
        self._previous = None

    def __enter__(self) -> LocalStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame) -> None:
        self.event.set()
        if self._interruptible:
            self._interruptible = False  # once: the unwinding must not be interrupted again
            raise Interrupted()

    @property
    def requested(self) -> bool:
        """Whether this process has received SIGTERM."""
        return self.event.is_set()

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Within the block a SIGTERM (or one received before it) raises ``Interrupted``."""
        if self.requested:
            raise Interrupted()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False
        if self.requested:  # a signal whose exception was swallowed inside the block
            raise Interrupted()

    def after_step(self, step: int, save: Callable[[int], str | None]) -> None:
        """Called after every step: when SIGTERM has come, ``save(step)`` and raise Preempted."""
        if self.requested:
            raise Preempted(step, save(step))


class ClusterStop(LocalStop):
    """SIGTERM on any dist_sync worker: every worker saves after the same step, then stops.

    TensorFlow's PreemptionCheckpointHandler agrees on the step. It is given ``save`` as its
    ``save_fn`` (the run's own checkpoints: the chief writes the model directory, the others a
    scratch one, as MultiWorkerMirroredStrategy requires of every save) and a checkpoint of its
    own step counter in a scratch folder, so that the counter starts at 0 on every worker at
    every start, and the workers' counters agree. TF polls for the signal once a second, and
    the workers agree on the step after the next: measured on two CPU workers, the checkpoint
    came 1.1 s after the signal. A SIGTERM during validation stops its worker at once (the
    epoch's checkpoint is written); a worker that got none meets its lost peer at the next step
    and stops with the cluster's error. SageMaker signals every host.
    """

    def __init__(self, cluster_resolver):
        super().__init__()
        self._resolver = cluster_resolver
        self._handler = None
        self._scratch = None
        self._save: Callable[[int], str | None] | None = None
        self._step = 0
        self._saved: str | None = None

    def __enter__(self) -> ClusterStop:
        super().__enter__()
        import tensorflow as tf

        self._scratch = tempfile.mkdtemp(prefix="tfssd-preemption-")
        counter = tf.train.CheckpointManager(tf.train.Checkpoint(), self._scratch, max_to_keep=1)
        config = tf.distribute.experimental.TerminationConfig(
            # Polled once a second in TF's thread: our handler owns SIGTERM, for validation.
            termination_watcher_fn=self.event.is_set, exit_fn=self._exit,
            grace_period=0, save_fn=self._save_now)
        try:
            self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
                self._resolver, counter, termination_config=config)
        except (tf.errors.OpError, NotImplementedError, ValueError) as e:
            # Without the coordination service no step can be agreed: SIGTERM keeps its effect,
            # and the run resumes from its last epoch's (or checkpoint_every_steps') checkpoint.
            logging.warning("SIGTERM cannot be answered with a checkpoint on this cluster "
                            "(PreemptionCheckpointHandler: %s); it ends the process.", e)
            super().__exit__()
        return self

    def __exit__(self, *exc) -> None:
        # TF has no public call to stop its watcher threads (they run until the handler is
        # garbage collected, which a thread's reference to it prevents); stopping them tells
        # the peers' watchers to stop too.
        for stop in ("_stop_poll_termination_signal_thread",
                     "_stop_cluster_wise_termination_watcher_thread"):
            method = getattr(self._handler, stop, None)
            if method is not None:
                try:
                    method()
                except Exception:  # a peer gone already: nothing to tell it
                    pass
        shutil.rmtree(self._scratch, ignore_errors=True)
        super().__exit__(*exc)

    def _save_now(self) -> None:
        self._saved = self._save(self._step)

    def _exit(self) -> None:
        raise Preempted(self._step, self._saved)

    def after_step(self, step: int, save: Callable[[int], str | None]) -> None:
        """Called after every step on every worker (the handler counts the calls)."""
        self._step, self._save = step, save
        if self._handler is not None:
            self._handler.save_checkpoint_if_preempted()


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit(143), so that cleanup runs.

    A container's first process (PID 1, as ``docker run IMAGE train`` starts tfssd) ignores
    SIGTERM unless it handles it: SageMaker would wait out its grace period and kill it.
    ``LocalStop`` and ``ClusterStop`` take over while steps run.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum, frame):
        raise SystemExit(EXIT_CODE)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
