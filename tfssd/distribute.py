"""The tf.distribute strategy for a run, from kv_store and the machine.

Single machine: MirroredStrategy over several local GPUs (each gets mini_batch_size / GPUs),
otherwise the default strategy.
"""

from __future__ import annotations

import dataclasses
import os
import socket

import tensorflow as tf
from absl import logging


class DistributionError(ValueError):
    """The cluster or batch layout cannot work."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in the cluster."""

    num_workers: int = 1
    task_type: str | None = None
    task_id: int = 0
    host: str = dataclasses.field(
        default_factory=lambda: os.environ.get("SM_CURRENT_HOST") or socket.gethostname())

    @property
    def is_chief(self) -> bool:
        return self.task_type in (None, "chief") or (
            self.task_type == "worker" and self.task_id == 0)


def build_strategy(kv_store: str | None, mini_batch_size: int
                   ) -> tuple[tf.distribute.Strategy, Cluster]:
    """The strategy and cluster of this run."""
    cluster = Cluster()
    if kv_store:
        logging.warning("kv_store=%s is ignored on a single machine, as SageMaker does.", kv_store)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        if mini_batch_size % len(gpus):
            raise DistributionError(
                f"mini_batch_size={mini_batch_size} does not divide over {len(gpus)} GPUs")
        return tf.distribute.MirroredStrategy(), cluster
    return tf.distribute.get_strategy(), cluster
