"""One process's part of a training job: its cluster role, strategy and precision, then the run.

Takes validated hyperparameters and options (config/factory.py). A dist_async worker or
parameter server serves the chief; a SageMaker dist_async host starts its servers and waits;
every other process trains. Used by ``tfssd.train`` and so by ``tfssd-train``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from absl import logging

from tfssd.config import factory, precision
from tfssd.config.hyperparameters import schedule_notes
from tfssd.training import distribution


def run(values: Mapping[str, Any], options: Mapping[str, Any], export_on_stop: bool = False):
    """Runs this process's part; returns the TrainingResult of a training process, else None.

    ``export_on_stop``: a run that SIGTERM stops exports its best weights after its checkpoint
    (a SageMaker job: its /opt/ml/model is kept when it is stopped or times out).

    Raises:
      distribution.ClusterConfigError: TF_CONFIG or SageMaker's hosts make no usable cluster.
      TrainingError, PretrainedWeightsError, DistributionError: the run could not go on.
    """
    cluster, children = distribution.resolve_cluster(values["kv_store"])
    servers = distribution.start_children(children)  # SageMaker dist_async: this host's servers
    try:
        if cluster.task_type == "host":  # a SageMaker dist_async host without the chief
            distribution.wait_for_chief(children[0]["cluster"]["chief"][0])
            return None
        if cluster.is_server:
            distribution.serve(cluster)
            return None
        return _train(values, options, cluster, export_on_stop)
    finally:
        for process in servers:
            process.terminate()


def _train(values, options, cluster, export_on_stop):
    from tfssd.training.trainer import train

    strategy = distribution.build_strategy(cluster, values["mini_batch_size"])
    policy, why = precision.choose(options["precision"], precision.describe_hardware())
    if cluster.is_chief:
        logging.info("Precision: %s (%s).", policy, why)
        for note in schedule_notes(values):
            logging.info("%s", note)
    config = factory.build_config(values, options, num_workers=cluster.num_workers,
                                  precision=policy)
    return train(config, strategy, cluster, export_on_stop)
