"""The SageMaker training container's contract: its files, channels, hosts and output paths.

SageMaker gives a bring-your-own container its contract as files under ``/opt/ml``:
``input/config/hyperparameters.json`` (every value a string), ``inputdataconfig.json`` (per
channel: ``ContentType``, ``TrainingInputMode`` File/Pipe/FastFile, ``RecordWrapperType``
None/RecordIO) and ``resourceconfig.json`` (``current_host``, ``hosts``); a channel arrives as
the folder ``input/data/<channel>/`` (File mode) or as one FIFO per pass over it,
``input/data/<channel>_<epoch>`` (Pipe mode). What the job leaves in ``model/`` becomes
model.tar.gz, ``output/failure`` the failure reason the user sees, and the checkpoint folder
(when the job configures checkpointing: ``input/config/checkpointconfig.json``'s ``LocalPath``,
by default ``checkpoints/``) is synced with S3 and given back to a resumed job.

AWS's training toolkit, when an image installs it, also sets ``SM_*`` variables
(``SM_CHANNEL_<NAME>``, ``SM_MODEL_DIR``, ``SM_HOSTS`` ...); where set they win over the files.
``TFSSD_SAGEMAKER_ROOT`` relocates ``/opt/ml``, for tests only. Nothing here imports absl or
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

from tfssd.config.hyperparameters import HyperparameterError

ROOT = "/opt/ml"
ROOT_VARIABLE = "TFSSD_SAGEMAKER_ROOT"  # relocates ROOT: for tests only
INPUT_MODES = ("File", "Pipe", "FastFile")


class ContainerError(ValueError):
    """A container contract file tfssd cannot use; the message names the file."""


@dataclasses.dataclass(frozen=True)
class ContainerPaths:
    """Where the contract's files are, under ``root`` (``/opt/ml``)."""

    root: str

    @property
    def config_dir(self) -> str:
        return os.path.join(self.root, "input", "config")

    @property
    def data_dir(self) -> str:
        return os.path.join(self.root, "input", "data")

    @property
    def model_dir(self) -> str:  # packed into model.tar.gz after the job
        return os.path.join(self.root, "model")

    @property
    def checkpoint_dir(self) -> str:  # the default LocalPath of checkpointconfig.json
        return os.path.join(self.root, "checkpoints")

    @property
    def failure_file(self) -> str:
        return os.path.join(self.root, "output", "failure")

    @property
    def work_dir(self) -> str:  # tfssd's own: channels converted to TFRecords, extracted models
        return os.path.join(self.root, "tfssd-work")

    def config_file(self, name: str) -> str:
        return os.path.join(self.config_dir, name)

    def channel_dir(self, channel: str) -> str:
        return os.path.join(self.data_dir, channel)

    def pipe(self, channel: str, epoch: int = 0) -> str:
        return os.path.join(self.data_dir, f"{channel}_{epoch}")


def container_paths(environ: Mapping[str, str] = os.environ) -> ContainerPaths:
    return ContainerPaths(environ.get(ROOT_VARIABLE) or ROOT)


def in_container(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process runs as a SageMaker training job (its config folder exists)."""
    return os.path.isdir(container_paths(environ).config_dir)


def failure_file(environ: Mapping[str, str] = os.environ) -> str | None:
    """``/opt/ml/output/failure`` inside a SageMaker container, else None."""
    paths = container_paths(environ)
    return paths.failure_file if os.path.isdir(os.path.dirname(paths.failure_file)) else None


def write_failure(message: str, environ: Mapping[str, str] = os.environ) -> None:
    """Leaves ``message`` (one line) where SageMaker reads a failed job's reason, if anywhere."""
    path = failure_file(environ)
    if path:
        line = " ".join(message.split())
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(line[:1000] + "\n")  # SageMaker shows the first 1024 characters
        except OSError:
            pass  # the message is on stderr too


@dataclasses.dataclass(frozen=True)
class Channel:
    """One channel of inputdataconfig.json."""

    name: str
    content_type: str  # lower case, without parameters; '' when not given
    input_mode: str  # File, Pipe or FastFile
    record_wrapper: str  # None or RecordIO


def _read_json_object(path: str, expected: str) -> dict:
    """A contract file's JSON object; ContainerError naming ``path`` otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ContainerError(f"{path}: cannot read: {e}") from None
    if not isinstance(data, dict):
        raise ContainerError(f"{path}: expected a JSON object {expected}")
    return data


def read_input_data_config(path: str) -> dict[str, Channel]:
    """inputdataconfig.json -> {channel name: Channel}."""
    data = _read_json_object(path, "of channel name: description")
    channels = {}
    for name, spec in data.items():
        if not isinstance(spec, dict):
            raise ContainerError(f"{path}: channel {name!r}: expected an object")
        mode = spec.get("TrainingInputMode", "File")
        if mode not in INPUT_MODES:
            raise ContainerError(f"{path}: channel {name!r}: TrainingInputMode {mode!r}, "
                                 f"expected one of {', '.join(INPUT_MODES)}")
        content_type = str(spec.get("ContentType") or "").split(";")[0].strip().lower()
        wrapper = spec.get("RecordWrapperType") or "None"
        if wrapper not in ("None", "RecordIO"):
            raise ContainerError(f"{path}: channel {name!r}: RecordWrapperType {wrapper!r}, "
                                 "expected None or RecordIO")
        channels[name] = Channel(name, content_type, mode, wrapper)
    return channels


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


CHECKPOINT_CONFIG = "checkpointconfig.json"


def checkpoint_local_path(environ: Mapping[str, str] = os.environ) -> str | None:
    """Where the job's checkpoints go when it configures checkpointing, else None.

    SageMaker writes ``input/config/checkpointconfig.json`` (``{"LocalPath": ..., "S3Uri":
    ...}``) for a job with a ``CheckpointConfig``, and syncs that folder with S3 (a managed spot
    job's next attempt finds it filled). ``LocalPath`` defaults to ``/opt/ml/checkpoints``; an
    older job without the file but with that folder is taken as checkpointing too.
    """
    paths = container_paths(environ)
    config_dir = environ.get("SM_INPUT_CONFIG_DIR", paths.config_dir)
    path = os.path.join(config_dir, CHECKPOINT_CONFIG)
    if os.path.isfile(path):
        config = _read_json_object(path, "with LocalPath and S3Uri")
        local = config.get("LocalPath") or paths.checkpoint_dir
        if not isinstance(local, str) or not os.path.isabs(local):
            raise ContainerError(f"{path}: LocalPath {local!r}: expected an absolute path")
        return local
    return paths.checkpoint_dir if os.path.isdir(paths.checkpoint_dir) else None


def environment_options(environ: Mapping[str, str]) -> dict[str, str]:
    """Paths SageMaker provides, as values for tfssd's flags (hyperparameters.json included).

    Inside a container the model goes to ``/opt/ml/model`` (``SM_MODEL_DIR`` wins) and the
    checkpoints to checkpointconfig.json's ``LocalPath`` when the job configures checkpointing
    (``checkpoint_local_path``), else beside the export as ``checkpoints/`` (what
    ``--init_from`` reads back from a model.tar.gz).
    """
    paths = container_paths(environ)
    found: dict[str, str] = {}
    config_dir = environ.get("SM_INPUT_CONFIG_DIR", paths.config_dir)
    if os.path.isfile(os.path.join(config_dir, "hyperparameters.json")):
        found["sagemaker_hyperparameters"] = os.path.join(config_dir, "hyperparameters.json")
    for channel in ("train", "validation"):
        path = environ.get(f"SM_CHANNEL_{channel.upper()}", paths.channel_dir(channel))
        if os.path.isdir(path):
            found[channel] = path
    if os.path.isdir(environ.get("SM_CHANNEL_MODEL", "")):  # incremental training's model
        found["init_from"] = environ["SM_CHANNEL_MODEL"]
    model_dir = environ.get("SM_MODEL_DIR") or (paths.model_dir if in_container(environ)
                                                 else None)
    if model_dir:
        found["export_dir"] = model_dir
        found["model_dir"] = (checkpoint_local_path(environ)
                              or os.path.join(model_dir, "checkpoints"))
    return found


def hosts(environ: Mapping[str, str]) -> tuple[list[str], str] | None:
    """(sorted hosts, this host) in a SageMaker container, else None.

    Raises:
      ContainerError: resourceconfig.json cannot be read or lacks ``hosts``/``current_host``.
    """
    if "SM_HOSTS" in environ and "SM_CURRENT_HOST" in environ:
        return sorted(json.loads(environ["SM_HOSTS"])), environ["SM_CURRENT_HOST"]
    path = environ.get("SM_RESOURCE_CONFIG",
                       container_paths(environ).config_file("resourceconfig.json"))
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            return sorted(config["hosts"]), config["current_host"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ContainerError(f"{path}: expected hosts and current_host ({e!r})") from None
    return None


def current_host(environ: Mapping[str, str] = os.environ) -> str | None:
    """SageMaker's name of this host (``algo-1`` ...), as its metric lines name it; else None."""
    try:
        found = hosts(environ)
    except (ContainerError, ValueError):
        return None
    return found[1] if found else None
