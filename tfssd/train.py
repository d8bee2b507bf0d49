r"""Trains an SSD detector from SageMaker Object Detection hyperparameters.

  python -m tfssd.train --num_classes=20 --num_training_samples=16551 \
      --train=data/train-* --validation=data/val-* [--flagfile=flags/ssd300_vgg16_voc.flags]

Hyperparameters are validated before TensorFlow is imported, so a bad value fails in a moment.
"""

import logging as python_logging
import os
import sys

from absl import app, flags, logging

from tfssd import hyperparameters
from tfssd.command import run_command

FLAGS = flags.FLAGS


class _OwnInfoOnly(python_logging.Filter):
    """Lets through tfssd's INFO lines and everyone's warnings and errors.

    TensorFlow modules log through absl too (a line per checkpoint shard, the whole server
    configuration of a cluster), which would drown the progress lines.
    """

    def filter(self, record: python_logging.LogRecord) -> bool:
        return record.levelno > python_logging.INFO or f"{os.sep}tfssd{os.sep}" in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
    try:
        values, options = hyperparameters.resolve(FLAGS)
    except hyperparameters.HyperparameterError as e:
        raise app.UsageError(str(e)) from None
    from tfssd import distribute

    try:
        cluster, children = distribute.resolve_cluster(values["kv_store"])
    except distribute.DistributionError as e:
        raise app.UsageError(f"Cluster: {e}") from None
    servers = distribute.start_children(children)  # SageMaker dist_async: this host's servers
    try:
        if cluster.task_type == "host":  # a SageMaker dist_async host without the chief
            distribute.wait_for_chief(children[0]["cluster"]["chief"][0])
        elif cluster.is_server:
            distribute.serve(cluster)
        else:
            _train(values, options, cluster)
    finally:
        for process in servers:
            process.terminate()


def _train(values, options, cluster) -> None:
    # TensorFlow is imported only once the hyperparameters are known to be good.
    from tfssd import distribute, precision, training
    from tfssd.model.weights import PretrainedWeightsError

    try:
        strategy = distribute.build_strategy(cluster, values["mini_batch_size"])
        policy, why = precision.choose(options["precision"], precision.describe_hardware())
        if cluster.is_chief:
            logging.info("Precision: %s (%s).", policy, why)
        config = hyperparameters.build_config(values, options, num_workers=cluster.num_workers,
                                              precision=policy)
        training.train(config, strategy, cluster)
    except (training.TrainingError, PretrainedWeightsError, distribute.DistributionError) as e:
        logging.error("%s", e)
        sys.exit(1)


def run() -> None:
    run_command(hyperparameters.define_flags, main)


if __name__ == "__main__":
    run()
