"""Training: one custom loop for every tf.distribute strategy, shaped like Model Garden's Orbit.

Why not ``model.fit``: Keras 3's fit breaks under MultiWorkerMirroredStrategy and does not
support ParameterServerStrategy. The package, in the order data flows:

  distribution.py  the strategy and this process's role, from kv_store, TF_CONFIG or SageMaker
  optimization.py  optimizers and the step schedule, with MXNet's semantics
  state.py         global step, seed, early-stopping record; checkpoints, resume, --init_from,
                   the run file, the broadcast from the chief
  runners.py       the train step; one runner per distribution mode (synchronous strategies,
                   parameter-server scheduling), with what differs between the modes
  early_stopping.py  SageMaker's early-stopping rule on validation mAP
  reporting.py     log lines, SageMaker metric lines (sagemaker_metrics.py), TensorBoard
  controller.py    the outer loop: when to run steps, log, checkpoint, validate and stop
  stop_signal.py   SIGTERM: a checkpoint at the step reached, then the end of the run
  trainer.py       puts the parts together for one process; exports at the end
  errors.py        the messages that end a run
  launch.py        one process of a job: cluster role, strategy, precision, then the run
  sagemaker_job.py a SageMaker training job from the container's files: channels, model

``train(config, strategy, cluster)`` is the one entry; ``launch.run`` wraps it for a process.
Names are imported lazily, so that ``tfssd.training.distribution`` loads without TensorFlow.
"""

import importlib

_EXPORTS = {"Preempted": "tfssd.training.stop_signal",
            "RUN_FILE": "tfssd.training.state", "Trainer": "tfssd.training.trainer",
            "TrainingError": "tfssd.training.errors",
            "TrainingResult": "tfssd.training.trainer", "train": "tfssd.training.trainer"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tfssd.training' has no attribute {name!r}")
