"""The SageMaker training container: its paths, hyperparameters.json, data channels and hosts.

Inside a container SageMaker provides the hyperparameters as ``/opt/ml/input/config/
hyperparameters.json`` (all values strings), each data channel as a directory
(``SM_CHANNEL_<NAME>``), the model directory (``SM_MODEL_DIR``) and the cluster's hosts
(``SM_HOSTS`` and ``SM_CURRENT_HOST``, else ``resourceconfig.json``). Nothing here imports absl
or TensorFlow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from tfssd.config.hyperparameters import HyperparameterError

CONFIG_DIR = "/opt/ml/input/config"
DATA_DIR = "/opt/ml/input/data"
CHECKPOINT_DIR = "/opt/ml/checkpoints"
RESOURCE_CONFIG = "/opt/ml/input/config/resourceconfig.json"


def read_sagemaker_hyperparameters(path: str) -> dict[str, str]:
    """Reads a SageMaker hyperparameters.json: an object whose values are all strings."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise HyperparameterError(
            [f"sagemaker_hyperparameters={path!r}: cannot read: {e}"]) from None
    if not isinstance(data, dict):
        raise HyperparameterError(
            [f"sagemaker_hyperparameters={path!r}: expected a JSON object of name: value"])
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


def environment_options(environ: Mapping[str, str]) -> dict[str, str]:
    """Paths SageMaker provides, as values for tfssd's flags (hyperparameters.json included)."""
    found: dict[str, str] = {}
    config_dir = environ.get("SM_INPUT_CONFIG_DIR", CONFIG_DIR)
    if os.path.isfile(os.path.join(config_dir, "hyperparameters.json")):
        found["sagemaker_hyperparameters"] = os.path.join(config_dir, "hyperparameters.json")
    for channel in ("train", "validation"):
        path = environ.get(f"SM_CHANNEL_{channel.upper()}",
                           os.path.join(DATA_DIR, channel))
        if os.path.isdir(path):
            found[channel] = path
    if os.path.isdir(environ.get("SM_CHANNEL_MODEL", "")):  # incremental training's model
        found["init_from"] = environ["SM_CHANNEL_MODEL"]
    if "SM_MODEL_DIR" in environ:
        found["export_dir"] = environ["SM_MODEL_DIR"]
        found["model_dir"] = (CHECKPOINT_DIR if os.path.isdir(CHECKPOINT_DIR)
                              else os.path.join(environ["SM_MODEL_DIR"], "checkpoints"))
    return found


def hosts(environ: Mapping[str, str]) -> tuple[list[str], str] | None:
    """(sorted hosts, this host) in a SageMaker container, else None."""
    if "SM_HOSTS" in environ and "SM_CURRENT_HOST" in environ:
        return sorted(json.loads(environ["SM_HOSTS"])), environ["SM_CURRENT_HOST"]
    path = environ.get("SM_RESOURCE_CONFIG", RESOURCE_CONFIG)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        return sorted(config["hosts"]), config["current_host"]
    return None
