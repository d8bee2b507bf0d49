"""SIGTERM as a request to stop: the run saves a checkpoint at the step it reached and ends.

SageMaker (a stopped job, a spot interruption), Kubernetes and most schedulers send SIGTERM and
then SIGKILL after a grace period (SageMaker: 120 s). Without this the process would die
mid-step and lose the work since the last checkpoint; with it the same command (or the next
job, from ``/opt/ml/checkpoints``) resumes at that step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process SIGTERM ended


class Preempted(Exception):
    """SIGTERM stopped the run; a checkpoint at ``step`` was saved first."""

    def __init__(self, step: int, checkpoint: str | None):
        self.step = step
        self.checkpoint = checkpoint
        super().__init__(f"SIGTERM: stopped at step {step} after saving the checkpoint "
                         f"{checkpoint}; the same command (or the next job) resumes from it.")


@contextlib.contextmanager
def sigterm_requests_stop() -> Iterator[threading.Event]:
    """Within the block, SIGTERM sets the event instead of ending the process.

    Python runs signal handlers in the main thread only: elsewhere the event is never set and
    SIGTERM keeps its usual effect.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: requested.set())
    try:
        yield requested
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit(143), so that cleanup runs.

    A container's first process (PID 1, as ``docker run IMAGE train`` starts tfssd) ignores
    SIGTERM unless it handles it: SageMaker would wait out its grace period and kill it.
    ``sigterm_requests_stop`` takes over while steps run.
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
