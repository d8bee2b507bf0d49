r"""Trains an SSD detector from SageMaker Object Detection hyperparameters.

  tfssd-train --num_classes=20 --num_training_samples=16551 \
      --train=data/train-* --validation=data/val-* [--flagfile=flags/ssd300_vgg16_voc.flags]

(or python -m tfssd.cli.train). A thin user of ``tfssd.train`` (tfssd/api.py): hyperparameters
are validated before TensorFlow is imported, so a bad value fails in a moment. On a terminal it
shows a progress bar per epoch and a summary line with validation mAP at each epoch's end;
through a pipe, one plain line per progress report; SageMaker's metric lines inside a SageMaker
container or with --metric_lines; absl's full log with --log_dir.
"""

import os
import sys

from absl import app, flags, logging

from tfssd.cli import hyperparameter_flags
from tfssd.cli.command_runner import fail, quiet_tensorflow, run_command

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from tfssd import api  # light: TensorFlow comes once the values are known to be good
    from tfssd.config import sagemaker_container
    from tfssd.config.hyperparameters import HyperparameterError

    try:
        if not sagemaker_container.in_container():  # a job's values come with its channels
            hyperparameter_flags.resolve(FLAGS)
    except HyperparameterError as e:
        raise app.UsageError("\n  ".join(f"--{error}" for error in e.errors)) from None
    quiet_tensorflow()
    from tfssd.training import reporting
    from tfssd.training.stop_signal import EXIT_CODE, Preempted

    with reporting.terminal_output(FLAGS.metric_lines, FLAGS.log_dir or None,
                                   absl_on_stderr=FLAGS.logtostderr or FLAGS.alsologtostderr):
        try:
            api.train(**hyperparameter_flags.given_values(FLAGS))
        except HyperparameterError as e:
            raise app.UsageError("\n  ".join(f"--{error}" for error in e.errors)) from None
        except Preempted as e:  # not a failure: the next run resumes
            logging.warning("%s", e)
            _exit_now(EXIT_CODE)
        except Exception as e:  # the run's own failures are one line; others reach run_command
            _fail_cleanly(e)


def _exit_now(code: int) -> None:
    """Ends the process once its output is out, without the interpreter's teardown.

    The checkpoint (and a stopped job's model) is saved by now. A Pipe-mode reader may still
    wait in TensorFlow's input threads on SageMaker's next pipe, which would hold the
    interpreter's teardown, and so the job, until SIGKILL.
    """
    import logging as python_logging

    python_logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _fail_cleanly(error: Exception) -> None:
    from tfssd.config.sagemaker_container import ContainerError
    from tfssd.data.sources import SourceDataError
    from tfssd.model.weights import PretrainedWeightsError
    from tfssd.training.distribution import ClusterConfigError, DistributionError
    from tfssd.training.errors import TrainingError

    if isinstance(error, ClusterConfigError):
        raise app.UsageError(f"Cluster: {error}") from None
    if isinstance(error, (TrainingError, PretrainedWeightsError, DistributionError,
                          SourceDataError, ContainerError)):
        fail(str(error))
    raise error


def run() -> None:
    run_command(hyperparameter_flags.define_flags, main, tensorflow=False)


if __name__ == "__main__":
    run()
