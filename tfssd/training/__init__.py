"""Training: one custom loop for every tf.distribute strategy, shaped like Model Garden's Orbit.

Why not ``model.fit``: Keras 3's fit breaks under MultiWorkerMirroredStrategy and does not
support ParameterServerStrategy (DESIGN.md). The package, in the order data flows:

  optimization.py  optimizers and the step schedule, with MXNet's semantics
  state.py         global step, seed, early-stopping record; checkpoints, resume, --init_from,
                   the run file, the broadcast from the chief
  runners.py       the train step; one runner per distribution mode (synchronous strategies,
                   parameter-server scheduling)
  validation.py    the evaluation loop shared with tfssd-evaluate
  reporting.py     log lines, SageMaker metric lines, TensorBoard summaries
  controller.py    the outer loop: when to run steps, log, checkpoint, validate and stop
  trainer.py       puts the parts together for one process; exports at the end
  errors.py        the messages that end a run

``train(config, strategy, cluster)`` is the one entry.
"""

from tfssd.training.errors import TrainingError
from tfssd.training.state import RUN_FILE
from tfssd.training.trainer import Trainer, TrainingResult, train

__all__ = ["RUN_FILE", "Trainer", "TrainingError", "TrainingResult", "train"]
