"""The errors that end a training run, as messages that say what happened and what to do."""

from __future__ import annotations

import re

import tensorflow as tf

from tfssd.data import pipeline

# What a collective operation raises when a dist_sync peer has gone.
CLUSTER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                  tf.errors.DeadlineExceededError)
# What the input pipeline raises for a bad record.
DATA_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.DataLossError)


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


def cause(error: tf.errors.OpError) -> str:
    """The informative line of a TensorFlow error (its first line is often a generic header)."""
    lines = [line.strip() for line in error.message.splitlines() if line.strip()]
    for line in lines:
        if "aborted by" in line or "Connection refused" in line or "failed to connect" in line:
            return line
    return next((line for line in lines if not line.startswith(("Graph execution error",
                                                                "Detected at node", "File "))),
                lines[0] if lines else type(error).__name__)


def _assertion(message: str, marker: str) -> str | None:
    """The line of a TensorFlow error that holds the input pipeline's assertion ``marker``.

    Under TF 2.21 an error's first line is a generic "Graph execution error:"; the assertion's
    own text (with the record's file name) is further down.
    """
    return next((line.strip() for line in message.splitlines() if marker in line), None)


def data_error(error: tf.errors.OpError, files: tuple[str, ...],
               input_format: str) -> Exception:
    """A clear TrainingError for bad data behind ``error``, or ``error`` itself."""
    first_line = error.message.splitlines()[0]
    piped = _assertion(error.message, "ChannelError: ")  # a Pipe-mode stream's reader
    if piped:
        return TrainingError(piped.split("ChannelError: ", 1)[1])
    where = ", ".join(files) if len(files) <= 3 else f"{files[0]} and {len(files) - 1} more"
    too_long = _assertion(error.message, "does not fit in label_width=")
    if too_long:
        # "... label_width=350: record (source image)] [img0.jpg] [needs ... at least] [402]"
        record = re.search(r"\(source image\)\]?\s*\[b?['\"]?([^\]'\"]+)", too_long)
        needed = re.search(r"at least\]?\s*\[?(\d+)", too_long)
        width = re.search(r"label_width=(\d+)", too_long)
        return TrainingError(
            f"A record of {where} (image {record.group(1) if record else '?'}) has a label of "
            f"{needed.group(1) if needed else 'more'} floats, longer than "
            f"label_width={width.group(1) if width else '?'}. Pass --label_width="
            f"{needed.group(1) if needed else 'N'} or more (tfssd-convert's summary and "
            "tfssd-inspect print the largest width needed), or --skip_corrupt_records to skip "
            "such records.")
    bad_class = _assertion(error.message, "class id outside")
    if bad_class:
        return TrainingError(f"Bad record in {where}: {bad_class}. Check --num_classes and the "
                             "class ids of the data (tfssd-inspect lists them).")
    bad = pipeline.find_undecodable_records(files, input_format)
    if bad:
        return TrainingError("Records whose image does not decode:\n  " + "\n  ".join(bad)
                             + "\nRemove them (tfssd-convert checks every image), or "
                             "pass --skip_corrupt_records to skip such records.")
    if isinstance(error, tf.errors.DataLossError):
        return TrainingError(f"A TFRecord file of {', '.join(files)} is corrupt: {first_line}")
    return error


def cluster_error(error: tf.errors.OpError, mode: str, last_checkpoint: str | None
                  ) -> TrainingError:
    """The message for a cluster that lost a member; ``mode`` is 'sync' or 'async'."""
    what = ("A worker of the dist_sync cluster stopped" if mode == "sync" else
            "A parameter server of the dist_async cluster stopped, or the cluster failed")
    return TrainingError(
        f"{what} ({cause(error)}). Start the cluster again with the same commands: "
        f"training resumes from the last checkpoint ({last_checkpoint}).")
