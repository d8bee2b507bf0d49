"""Step runners: run training steps under a strategy and hand their losses back.

One runner per distribution mode, so that the outer loop (controller.py) has no mode branches:

* ``SynchronousRunner``: the default strategy, MirroredStrategy and MultiWorkerMirroredStrategy
  (dist_sync). A step is dispatched when called; its losses are read only when the loop needs
  them (logging, checkpoints, epoch ends), so that the host does not wait on every step.
* ``MultiWorkerRunner``: a ``SynchronousRunner`` under MultiWorkerMirroredStrategy (dist_sync),
  which also shares the chief's state at start-up and reports a digest of its final weights.
* ``ParameterServerRunner``: ParameterServerStrategy (dist_async). Steps are scheduled on the
  workers by a ClusterCoordinator and their losses fetched only when the loop needs them
  (logging, checkpoints, epoch ends), so the workers never wait on the chief.

All take a ``build_dataset(input_context, seed, start_sample)`` function that makes one input
pipeline's batches, and a ``translate`` function that turns a bad-data error into a clear one.
What else differs between the modes (the banner, where a resumed run's data stands, the start-up
broadcast, the final digest, what a lost peer means, how SIGTERM stops the run) is theirs too,
so the trainer has no mode branches.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf
from absl import logging

from tfssd.model.losses import loss_normalisation, multibox_loss
from tfssd.training import errors, state, stop_signal
from tfssd.training.distribution import Cluster
from tfssd.training.errors import DATA_ERRORS
from tfssd.training.optimization import add_weight_decay, is_decayed
from tfssd.training.reporting import weights_digest

Losses = tuple[float, float, float]  # (cross_entropy, smooth_l1, skipped) of one step


def make_train_step(strategy: tf.distribute.Strategy, model: keras.Model,
                    optimizer: keras.optimizers.Optimizer, global_step: tf.Variable,
                    weight_decay: float, reduce: bool):
    """A ``tf.function`` (distributed iterator) -> (cls_loss, box_loss, skipped) of one step.

    The loss sums of the global batch are divided by counts over all replicas (at least 1): the
    positives, or for SageMaker's networks what its algorithm divides by (tfssd/model/losses.py).
    ``reduce``: sum the replicas' losses (synchronous strategies); otherwise each
    worker returns its own (parameter-server training, one replica per worker). With a
    ``keras.optimizers.LossScaleOptimizer`` (mixed_float16) the loss is scaled, and a step whose
    gradients are not finite is skipped by the optimizer (which lowers the scale): ``skipped``
    is 1 for such a step, else 0.
    """
    replicas = strategy.num_replicas_in_sync
    variables = model.trainable_variables
    decayed = [is_decayed(v) for v in variables]
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    normalisation = loss_normalisation(model)

    def replica_step(images, targets):
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            sums = multibox_loss(targets["cls_targets"], targets["box_targets"],
                                 outputs["cls_logits"], outputs["box_deltas"])
            counts = tf.maximum(context.all_reduce(
                tf.distribute.ReduceOp.SUM, tf.stop_gradient(sums.counts(normalisation))), 1.0)
            cls_loss = sums.cls_loss_sum / counts[0]
            box_loss = sums.box_loss_sum / counts[1]
            loss = cls_loss + box_loss  # inside the tape, or it has no gradient
            if scaled:
                loss = optimizer.scale_loss(loss)
        grads = tape.gradient(loss, variables)
        if weight_decay:
            # Gradients are summed over replicas, so each adds its share of wd * w (scaled as
            # the gradients are, under loss scaling: the optimizer unscales both together).
            rate = weight_decay / replicas * (optimizer.dynamic_scale if scaled else 1.0)
            grads = add_weight_decay(grads, variables, decayed, rate)
        skipped = tf.constant(0.0)
        if scaled:
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
            skipped = 1.0 - tf.cast(finite, tf.float32)
            if replicas > 1:
                # The optimizer judges the step by the first replica's own gradients (before
                # they are all-reduced): a step any replica overflowed must be non-finite on all.
                skipped = tf.minimum(context.all_reduce(tf.distribute.ReduceOp.SUM, skipped), 1.0)
                poison = tf.where(skipped > 0.0, float("nan"), 0.0)
                grads = [g + tf.cast(poison, g.dtype) for g in grads]
        optimizer.apply_gradients(zip(grads, variables))
        return cls_loss, box_loss, skipped

    @tf.function
    def train_step(iterator):
        images, targets = next(iterator)
        cls_loss, box_loss, skipped = strategy.run(replica_step, args=(images, targets))
        global_step.assign_add(1)  # atomic: async workers lose no increment
        if not reduce:
            return cls_loss, box_loss, skipped
        total = lambda x: strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None)
        return total(cls_loss), total(box_loss), tf.minimum(total(skipped), 1.0)

    return train_step


class _Runner:
    """Dispatches steps and hands their losses back when the loop asks (``due``)."""

    reduce = True  # make_train_step's setting for this runner
    where = ""  # how the banner says where training runs

    def __init__(self, strategy: tf.distribute.Strategy, cluster: Cluster,
                 translate: Callable[[Exception], Exception]):
        self.strategy = strategy
        self.cluster = cluster
        self._translate = translate  # a bad-data error -> a clear one
        self._iterator = None
        self._step_fn = None
        self._pending: list = []  # the handles of the steps dispatched since the last fetch

    def _dispatch(self):
        """Starts one step; returns a handle to its losses."""
        raise NotImplementedError

    def _values(self, handle) -> tuple:
        """The losses a handle stands for (waits for them)."""
        raise NotImplementedError

    def run_step(self) -> None:
        try:
            self._pending.append(self._dispatch())
        except DATA_ERRORS as e:
            raise self._translate(e) from None

    def collect(self, due: bool) -> list[Losses]:
        """The losses of the steps dispatched since the last fetch, fetched only when ``due``."""
        if not due:
            return []
        try:
            losses = [tuple(float(x) for x in self._values(h)) for h in self._pending]
        except DATA_ERRORS as e:
            raise self._translate(e) from None
        self._pending = []
        return losses

    def join(self) -> None:
        """Waits until every step dispatched so far has run."""

    def data_position(self, step: int, global_batch_size: int) -> str:
        """Where a run resumed at ``step`` takes up its data, for the log."""
        return f"data position (example {step * global_batch_size} of the run's stream)"

    def share_chief_state(self, variables: list, is_chief: bool) -> None:
        """Gives every worker the chief's values of ``variables`` (weights, optimizer, step)."""

    def finish(self, model: keras.Model) -> None:
        """What this mode reports of the final weights."""

    def peer_lost(self, error: tf.errors.OpError, last_checkpoint: str | None) -> Exception:
        """The error to raise for a step, checkpoint or validation that failed (a lost peer)."""
        return error

    def stop_request(self) -> stop_signal.LocalStop:
        """How SIGTERM stops this mode's run (a context manager): this process decides."""
        return stop_signal.LocalStop()


class SynchronousRunner(_Runner):
    """Runs each step as it is asked for, under a synchronous strategy."""

    def start(self, step_fn, build_dataset, seed: int, start_sample: int) -> None:
        """Readies the data stream from global example ``start_sample`` (a resumed run's place)."""
        self._step_fn = step_fn
        self._iterator = iter(self.strategy.distribute_datasets_from_function(
            lambda context: build_dataset(context, seed, start_sample)))

    def _dispatch(self):
        return self._step_fn(self._iterator)

    def _values(self, handle) -> tuple:
        return handle


class MultiWorkerRunner(SynchronousRunner):
    """A synchronous runner on one worker of a dist_sync cluster (MultiWorkerMirroredStrategy)."""

    @property
    def where(self) -> str:
        return f" on {self.cluster.num_workers} workers (dist_sync)"

    def share_chief_state(self, variables: list, is_chief: bool) -> None:
        state.broadcast_from_chief(self.strategy, variables, is_chief)

    def finish(self, model: keras.Model) -> None:
        # Equal digests on every worker mean bit-identical weights.
        logging.info("Worker %d final weights digest %s.", self.cluster.task_id,
                     weights_digest(model))

    def peer_lost(self, error: tf.errors.OpError, last_checkpoint: str | None) -> Exception:
        return errors.cluster_error(error, "sync", last_checkpoint)

    def stop_request(self) -> stop_signal.ClusterStop:
        """SIGTERM on any worker: every worker saves after the same step (TF's handler)."""
        return stop_signal.ClusterStop(self.strategy.cluster_resolver)


class ParameterServerRunner(_Runner):
    """Schedules steps on the workers of a ParameterServerStrategy through a ClusterCoordinator."""

    reduce = False
    where = " on the workers of a dist_async cluster"

    def __init__(self, strategy: tf.distribute.Strategy, cluster: Cluster,
                 translate: Callable[[Exception], Exception]):
        super().__init__(strategy, cluster, translate)
        self.coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)

    def start(self, step_fn, build_dataset, seed: int, start_sample: int) -> None:
        """Readies each worker's own stream; asynchronous training keeps no data position."""
        del start_sample
        self._step_fn = step_fn

        def dataset_fn(input_context):
            # Runs on each worker (one pipeline and replica, so batches of mini_batch_size):
            # its clock gives it its own data order.
            salt = tf.cast(tf.timestamp() * 1e6, tf.int64)
            return build_dataset(input_context,
                                 tf.bitwise.bitwise_xor(tf.constant(seed, tf.int64), salt), 0)

        @tf.function
        def per_worker_dataset():
            return self.strategy.distribute_datasets_from_function(dataset_fn)

        self._iterator = iter(self.coordinator.create_per_worker_dataset(per_worker_dataset))

    def _dispatch(self):
        return self.coordinator.schedule(self._step_fn, args=(self._iterator,))

    def _values(self, handle) -> tuple:
        return handle.fetch()

    def join(self) -> None:
        self.coordinator.join()

    def data_position(self, step: int, global_batch_size: int) -> str:
        return "a new data order on each worker (dist_async keeps no data position)"

    def peer_lost(self, error: tf.errors.OpError, last_checkpoint: str | None) -> Exception:
        return errors.cluster_error(error, "async", last_checkpoint)


RUNNERS = {"local": SynchronousRunner, "sync": MultiWorkerRunner, "async": ParameterServerRunner}


def make_runner(strategy: tf.distribute.Strategy, cluster: Cluster,
                translate: Callable[[Exception], Exception]) -> _Runner:
    """The runner for the cluster's mode: local, sync (dist_sync) or async (dist_async)."""
    return RUNNERS[cluster.mode](strategy, cluster, translate)
