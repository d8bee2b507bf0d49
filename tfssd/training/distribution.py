"""The tf.distribute strategy and this process's role, from kv_store and the cluster.

* One machine (no cluster, or kv_store on a one-machine cluster, which SageMaker ignores with a
  warning): MirroredStrategy over several local GPUs, each taking mini_batch_size / GPUs;
  otherwise the default strategy.
* ``dist_sync``: MultiWorkerMirroredStrategy. mini_batch_size is per machine, so the global
  batch is mini_batch_size * machines. Worker 0 (or the "chief" task, if the cluster has one) is
  the chief; it alone writes the model directory.
* ``dist_async``: ParameterServerStrategy driven from the chief by a ClusterCoordinator.
  Variables live on the "ps" tasks; "worker" tasks run the steps the chief schedules, each on
  its own batch, so a step is one worker's batch; the chief evaluates and checkpoints. Worker
  and ps processes only serve, and exit once the chief has gone.

The cluster comes from TF_CONFIG, or in a SageMaker container from SM_HOSTS and
SM_CURRENT_HOST (else /opt/ml/input/config/resourceconfig.json). Hosts are sorted; the first is
the chief. dist_sync: host i is worker i at port 2222. dist_async: the first host's training
process is the chief (port 2222), and every host starts a worker (port 2223) and a parameter
server (port 2224) as child processes.

TensorFlow's cluster servers have no authentication: run them on a private network only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping

from absl import logging

from tfssd.config import sagemaker_container

DEFAULT_PORT = 2222
_CHIEF_POLL_SECONDS = 5


class DistributionError(ValueError):
    """The cluster or batch layout cannot work; the message says why."""


class ClusterConfigError(DistributionError):
    """TF_CONFIG (or SageMaker's hosts) describes no cluster tfssd can run: a usage error."""


def _default_host() -> str:
    """The host name metric lines carry: SageMaker's current_host (algo-1 ...) in a job."""
    return sagemaker_container.current_host(os.environ) or socket.gethostname()


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in the cluster."""

    mode: str = "local"  # "local", "sync" (dist_sync) or "async" (dist_async)
    task_type: str | None = None  # "chief", "worker", "ps"; None on one machine
    task_id: int = 0
    num_workers: int = 1  # machines whose batches make one global step
    tf_config: dict | None = None
    host: str = dataclasses.field(default_factory=_default_host)

    @property
    def is_chief(self) -> bool:
        if self.mode == "local" or self.task_type == "chief":
            return True
        return (self.mode == "sync" and self.task_type == "worker" and self.task_id == 0
                and "chief" not in self.tf_config["cluster"])

    @property
    def is_server(self) -> bool:
        """A dist_async worker or parameter server: it serves the chief and trains nothing."""
        return self.mode == "async" and self.task_type in ("worker", "ps")


def sagemaker_tf_configs(hosts: list[str], current: str, kv_store: str,
                         port: int = DEFAULT_PORT) -> list[dict]:
    """The TF_CONFIGs of the processes ``current`` runs: this process's role (or None for a host
    that only hosts servers), then those of the child processes it starts."""
    index = hosts.index(current)
    if kv_store == "dist_sync":
        cluster = {"worker": [f"{h}:{port}" for h in hosts]}
        return [{"cluster": cluster, "task": {"type": "worker", "index": index}}]
    cluster = {"chief": [f"{hosts[0]}:{port}"], "worker": [f"{h}:{port + 1}" for h in hosts],
               "ps": [f"{h}:{port + 2}" for h in hosts]}
    children = [{"cluster": cluster, "task": {"type": kind, "index": index}}
                for kind in ("worker", "ps")]
    main = {"cluster": cluster, "task": {"type": "chief", "index": 0}} if index == 0 else None
    return [main, *children]


def check_hosts(kv_store: str | None, environ: Mapping[str, str] = os.environ
                ) -> tuple[list[str], str] | None:
    """SageMaker's (hosts, this host), else None; several hosts need a kv_store.

    Raises:
      DistributionError: several SageMaker hosts and no kv_store (each would train alone and
        all would write the model): a hyperparameter to set, one line in the failure file.
    """
    found = sagemaker_container.hosts(environ)
    if found and len(found[0]) > 1 and not kv_store:
        raise DistributionError(
            f"kv_store is not set but the job runs on {len(found[0])} hosts "
            f"({', '.join(found[0][:4])}{', ...' if len(found[0]) > 4 else ''}): each would "
            "train alone and all would write the model. Set the hyperparameter "
            "kv_store=dist_sync (one model, a global batch of mini_batch_size per host) or "
            "kv_store=dist_async, or run the job on one instance.")
    return found


def resolve_cluster(kv_store: str | None, environ: Mapping[str, str] = os.environ
                    ) -> tuple[Cluster, list[dict]]:
    """This process's role, and the TF_CONFIGs of child processes it must start (SageMaker)."""
    children: list[dict] = []
    tf_config = json.loads(environ["TF_CONFIG"]) if environ.get("TF_CONFIG") else None
    if tf_config is None:
        found = check_hosts(kv_store, environ)
        if found and len(found[0]) > 1:
            main, *children = sagemaker_tf_configs(*found, kv_store)
            if main is None:  # a dist_async host that only runs its worker and ps children
                return Cluster(mode="async", task_type="host"), children
            tf_config = main
    jobs = (tf_config or {}).get("cluster", {})
    machines = len(jobs.get("worker", [])) + len(jobs.get("chief", []))
    if tf_config is None or (machines <= 1 and not jobs.get("ps")):
        if kv_store:
            logging.warning("kv_store=%s is ignored on a single machine, as SageMaker does.",
                            kv_store)
        return Cluster(), children
    task = tf_config.get("task", {})
    task_type, task_id = task.get("type"), int(task.get("index", 0))
    if task_type not in jobs:
        raise ClusterConfigError(f"TF_CONFIG task {task} is not in its cluster {sorted(jobs)}")
    has_ps = bool(jobs.get("ps"))
    if kv_store is None:
        kv_store = "dist_async" if has_ps else "dist_sync"
        logging.warning("A cluster without kv_store: using %s (the cluster %s ps tasks).",
                        kv_store, "has" if has_ps else "has no")
    if kv_store == "dist_async":
        if not has_ps or "chief" not in jobs or not jobs.get("worker"):
            raise ClusterConfigError("dist_async needs a chief, workers and ps tasks in TF_CONFIG")
        return Cluster("async", task_type, task_id, 1, tf_config), children
    if has_ps:
        raise ClusterConfigError("dist_sync takes workers (and optionally a chief), not ps tasks")
    return Cluster("sync", task_type, task_id, machines, tf_config), children


def build_strategy(cluster: Cluster, mini_batch_size: int):
    """The tf.distribute strategy for ``cluster`` (this process must not be a server)."""
    import tensorflow as tf

    if cluster.mode == "sync":
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster.tf_config["cluster"]), task_type=cluster.task_type,
            task_id=cluster.task_id, rpc_layer="grpc")
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    if cluster.mode == "async":
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster.tf_config["cluster"]), task_type="chief", task_id=0,
            rpc_layer="grpc")
        return tf.distribute.experimental.ParameterServerStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        if mini_batch_size < len(gpus):
            raise DistributionError(f"mini_batch_size={mini_batch_size} is smaller than the "
                                    f"{len(gpus)} GPUs it is split over; give each at least one")
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def replica_batch_sizes(batch_size: int, replicas: int) -> tuple[int, ...]:
    """``batch_size`` split over ``replicas`` as SageMaker's algorithm splits a batch over GPUs:
    as evenly as can be, the last replicas taking one more (33 over 4: 8, 8, 8, 9)."""
    share, extra = divmod(batch_size, replicas)
    return (share,) * (replicas - extra) + (share + 1,) * extra


def _reachable(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def serve(cluster: Cluster) -> None:
    """Runs this dist_async worker or parameter server until the chief has come and gone."""
    import tensorflow as tf

    spec = tf.train.ClusterSpec(cluster.tf_config["cluster"])
    tf.distribute.Server(spec, job_name=cluster.task_type, task_index=cluster.task_id,
                         protocol="grpc", start=True)
    logging.info("%s %d serving at %s.", cluster.task_type, cluster.task_id,
                 cluster.tf_config["cluster"][cluster.task_type][cluster.task_id])
    wait_for_chief(cluster.tf_config["cluster"]["chief"][0])


def wait_for_chief(chief: str) -> None:
    """Returns once ``chief`` (host:port) has been reachable and then no longer is."""
    seen = False
    while True:
        up = _reachable(chief)
        if seen and not up:
            logging.info("The chief at %s has gone; stopping.", chief)
            return
        seen |= up
        time.sleep(_CHIEF_POLL_SECONDS)


def serve_from_environment(environ: Mapping[str, str] = os.environ) -> None:
    """Serves as the dist_async worker or parameter server that TF_CONFIG names.

    Raises:
      ClusterConfigError: TF_CONFIG names no worker or ps task of a dist_async cluster.
    """
    try:
        cluster, _ = resolve_cluster("dist_async", environ)
    except (DistributionError, ValueError) as e:
        raise ClusterConfigError(f"TF_CONFIG: {e}") from None
    if not cluster.is_server:
        raise ClusterConfigError("TF_CONFIG must name a worker or ps task of a dist_async "
                                 "cluster")
    serve(cluster)


SERVER_COMMAND = "from tfssd.training.distribution import serve_from_environment as s; s()"


def start_children(configs: list[dict]) -> list[subprocess.Popen]:
    """Starts a cluster server process per TF_CONFIG (SageMaker dist_async hosts)."""
    processes = []
    for config in configs:
        environ = {**os.environ, "TF_CONFIG": json.dumps(config)}
        processes.append(subprocess.Popen([sys.executable, "-c", SERVER_COMMAND], env=environ))
        logging.info("Started %s %d (pid %d).", config["task"]["type"], config["task"]["index"],
                     processes[-1].pid)
    return processes
