"""Where a trained network's weights are in a tfssd model directory.

A model directory holds ``tfssd_run.json`` (the network's geometry and class names) and
checkpoints: the weights with the best validation mAP under ``best/``, the latest beside them.
tfssd's SageMaker artifact holds a model directory as ``checkpoints/``.
"""

from __future__ import annotations

import os

import tensorflow as tf

from tfssd.config.run_config import BEST_DIR, RUN_FILE


def find_run_dir(path: str) -> str | None:
    """``path`` itself or its ``checkpoints/`` when it holds a run file, else None."""
    return next((d for d in (path, os.path.join(path, "checkpoints"))
                 if os.path.isfile(os.path.join(d, RUN_FILE))), None)


def best_checkpoint(run_dir: str) -> str | None:
    """The checkpoint with the best validation mAP, else the latest, else None."""
    return (tf.train.latest_checkpoint(os.path.join(run_dir, BEST_DIR))
            or tf.train.latest_checkpoint(run_dir))
