"""A SageMaker training job, from the container's files alone: channels in SageMaker's algorithm's
formats converted once into local TFRecords (or, in Pipe mode, streamed pass by pass),
the ``model`` channel for incremental training, the model in ``/opt/ml/model`` with the weights
``--init_from`` reads back.

``run`` is what ``tfssd.train`` (and so ``tfssd-train``, the image's ``train``) does when
``/opt/ml/input/config/inputdataconfig.json`` exists. Values given explicitly (flags, keyword
arguments, ``SM_*`` variables) win over what the files say. Converted channels go to
``/opt/ml/tfssd-work/records/<channel>/``: about the size of the channel's images again. Pipe-mode
channels are not staged: the input pipeline reads ``train_0``, ``train_1``, ... as training
reaches them, and each reading of the validation data (the ground-truth count, each epoch's
validation, the export's evaluation and report) reads the next ``validation_<k>``, converting
each image in memory (data/sagemaker_stream.py, ``PipeStream``); only their descriptions (and
the training channel's class map) go to ``/opt/ml/tfssd-work/stream/<channel>/``. Under
``kv_store=dist_async`` (whose workers cannot run the chief's Python reader) they are converted
from ``<channel>_0`` like the other channels.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Mapping
from typing import Any

from absl import logging

from tfssd.config import factory, sagemaker_container
from tfssd.config.hyperparameters import HyperparameterError
from tfssd.config.options import check_options
from tfssd.config.run_config import BEST_DIR, RUN_FILE
from tfssd.data import sagemaker_channels, sagemaker_stream
from tfssd.data.sagemaker_pipes import ChannelError
from tfssd.training import distribution, stop_signal

INPUT_DATA_CONFIG = "inputdataconfig.json"
DATA_CHANNELS = ("train", "validation")
MODEL_CHANNEL = "model"
SAGEMAKER_SYMBOL = "model_algo_1-symbol.json"  # in a model.tar.gz of SageMaker's algorithm
SAGEMAKER_PREFIX = "sagemaker-"  # tfssd's name of SageMaker's networks: sagemaker-vgg-16


def is_sagemaker_job(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is a SageMaker training job that describes its channels."""
    paths = sagemaker_container.container_paths(environ)
    return os.path.isfile(paths.config_file(INPUT_DATA_CONFIG))


def run(given: Mapping[str, Any], environ: Mapping[str, str] = os.environ):
    """Validates, prepares the channels, trains; returns launch.run's result.

    Raises:
      HyperparameterError: before any channel is read.
      ChannelError, SourceDataError, ContainerError: a channel tfssd cannot use.
      TrainingError and the rest of launch.run's errors.
    """
    with stop_signal.sigterm_exits():  # this process may be the container's PID 1
        return _run(given, environ)


def _run(given: Mapping[str, Any], environ: Mapping[str, str]):
    paths = sagemaker_container.container_paths(environ)
    channels = sagemaker_container.read_input_data_config(paths.config_file(INPUT_DATA_CONFIG))
    for name in DATA_CHANNELS:  # a description tfssd cannot use fails before any work
        if name in channels and name not in given:
            sagemaker_channels.channel_format(channels[name], channels)
    if "train" not in channels and "train" not in given:
        raise ChannelError(f"{paths.config_file(INPUT_DATA_CONFIG)} has no 'train' channel "
                           f"(it has {', '.join(channels) or 'none'})")
    values, options = factory.resolve(given, environ, check_files=False)
    values, options = dict(values), dict(options)
    distribution.check_hosts(values["kv_store"], environ)  # before any channel is read
    records_dir = os.path.join(paths.work_dir, "records")
    # Pipe-mode channels are streamed (nothing staged); dist_async's workers cannot run a
    # Python generator of the chief's, so there they are converted like the others.
    read = {name: sagemaker_channels.read_channel(
                paths, channels[name], channels, os.path.join(records_dir, name),
                stream=values["kv_store"] != "dist_async")
            for name in DATA_CHANNELS if name in channels and name not in given}
    names = _class_names(read, values["num_classes"])
    for name, data in read.items():
        options[name] = list(_records(name, data, channels[name], paths, names, values))
    if any(data.streamed for data in read.values()) and options["input_format"] == "auto":
        options["input_format"] = "tfssd"  # what the stream converts to (odapi: say so)
    if "init_from" not in given:
        options["init_from"], values["base_network"] = model_channel(
            environ.get("SM_CHANNEL_MODEL") or paths.channel_dir(MODEL_CHANNEL), paths.work_dir,
            values["base_network"])
    errors = check_options(values, options)
    if errors:
        raise HyperparameterError(errors)
    from tfssd.training import launch, reporting

    try:
        with reporting.in_sagemaker_job():  # its metric lines, however its files were found
            result = launch.run(values, options, export_on_stop=True)
    except stop_signal.Preempted as stopped:  # a stopped or timed-out job keeps /opt/ml/model
        if stopped.export_path:
            keep_weights_with_model(options["model_dir"], options["export_dir"])
        raise
    if result is not None and result.export_path:
        keep_weights_with_model(options["model_dir"], options["export_dir"])
        report = os.path.join(options["model_dir"], "report")
        if os.path.isdir(report):  # output/data is packed as the job's output.tar.gz
            shutil.copytree(report, os.path.join(paths.root, "output", "data", "report"),
                            dirs_exist_ok=True)
    return result


def _records(name: str, data: sagemaker_channels.ChannelData,
             channel: sagemaker_container.Channel, paths: sagemaker_container.ContainerPaths,
             class_names: list[str], values) -> tuple[str, ...]:
    """The training "files" of channel ``name``: its own TFRecords, what its items convert to
    (in the work dir), or for a streamed Pipe-mode channel its ``PipeStream`` description."""
    if data.detected:
        logging.info("Channel %s has no ContentType; its data reads as %s.", name, data.detected)
    if data.skipped_files:
        logging.info("Channel %s: im2rec's side files skipped (not records): %s.", name,
                     ", ".join(os.path.basename(f) for f in data.skipped_files))
    if data.tfrecord_files:
        logging.info("Channel %s: %d TFRecord files (%s mode), used as they are.", name,
                     len(data.tfrecord_files), channel.input_mode)
        return data.tfrecord_files
    from tfssd.data import conversion  # TensorFlow: only once the values are known to be good

    if data.streamed:  # validation: each reading of its data reads the next pass
        folder = os.path.join(paths.work_dir, "stream", name)
        training = name == "train"
        stream = sagemaker_stream.PipeStream(
            channel=name, format=data.format, pipe_prefix=paths.channel_dir(name),
            class_names=tuple(class_names), label_width=values["label_width"],
            epochs=values["epochs"] if training else 0,
            num_training_samples=values["num_training_samples"] if training else 0)
        description = stream.save(folder)
        if training:
            conversion.write_class_map(os.path.join(folder, conversion.CLASS_MAP_NAME),
                                       class_names)
        logging.info("Channel %s: Pipe mode, streamed (%s): pass k is read from %s as %s, each "
                     "image converted in memory; nothing is staged on the volume.", name,
                     data.format, stream.pipe_prefix + "_<k>",
                     "training reaches it" if training else
                     "the run reads its validation data for the (k + 1)-th time")
        return (description,)
    records_dir = os.path.join(paths.work_dir, "records")
    output_dir = os.path.join(records_dir, name)
    shutil.rmtree(output_dir, ignore_errors=True)  # an earlier attempt's, never half reused
    logging.info("Channel %s: %d images (%s, %s mode), converting to TFRecords in %s.", name,
                 len(data.items), data.format, channel.input_mode, output_dir)
    summary = conversion.convert(data.items, os.path.join(output_dir, name),
                                 class_names=class_names, label_width=values["label_width"],
                                 progress=conversion.print_progress)
    size = sum(os.path.getsize(f) for f in summary.files)
    logging.info("Channel %s converted (%.1f MB on disk):\n%s", name, size / 1e6,
                 summary.format())
    if not summary.images_written:
        raise ChannelError(f"channel {name!r}: no usable image (every one was skipped; the "
                           "summary above says why)")
    return tuple(f for f in summary.files if f.endswith(".tfrecord"))


def _class_names(read: Mapping[str, sagemaker_channels.ChannelData],
                 num_classes: int) -> list[str]:
    """num_classes names: those the channels give (they must agree), the ids elsewhere."""
    names: dict[int, str] = {}
    for channel, data in read.items():
        for class_id, name in enumerate(data.class_names or []):
            if class_id >= num_classes:
                raise ChannelError(f"channel {channel!r} names {len(data.class_names)} classes "
                                   f"({data.class_names}) but num_classes={num_classes}")
            if names.setdefault(class_id, name) != name:
                raise ChannelError(f"channel {channel!r} names class {class_id} {name!r}, "
                                   f"another channel {names[class_id]!r}")
    return [names.get(i, str(i)) for i in range(num_classes)]


def model_channel(folder: str, work_dir: str, base_network: str) -> tuple[str | None, str]:
    """(the tfssd model directory the ``model`` channel's ``folder`` holds, None without one;
    the base_network to train it on).

    A model.tar.gz there (as SageMaker passes an earlier job's artifact) is extracted into
    ``work_dir`` first; a model of SageMaker's MXNet algorithm is imported
    (deploy/sagemaker_import.py) and trains on as ``sagemaker-<its network>``, the job's
    ``base_network`` naming its network as the user trained it (``vgg-16``) or as tfssd names it
    (``sagemaker-vgg-16``).
    """
    if not os.path.isdir(folder):
        return None, base_network
    root = folder
    archives = [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names
                if n.endswith((".tar.gz", ".tgz", ".tar"))]
    if archives:
        root = os.path.join(work_dir, MODEL_CHANNEL)
        shutil.rmtree(root, ignore_errors=True)
        for archive in sorted(archives):
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(root, filter="data")
            except (tarfile.TarError, OSError) as e:
                raise ChannelError(f"channel 'model': cannot extract {archive}: {e}") from None
    found = sorted(d for d, _, names in os.walk(root) if RUN_FILE in names)
    if found:
        logging.info("Channel model: incremental training from %s.", found[0])
        return found[0], base_network
    sagemaker = sorted(d for d, _, names in os.walk(root) if SAGEMAKER_SYMBOL in names)
    if sagemaker:
        return _import_sagemaker_model(sagemaker[0], work_dir, base_network)
    raise ChannelError(f"channel 'model': no tfssd model in {folder} (no {RUN_FILE} in it, in "
                       "its folders or in a model.tar.gz there)")


def _import_sagemaker_model(source: str, work_dir: str, base_network: str) -> tuple[str, str]:
    """A model of SageMaker's MXNet algorithm as a tfssd model directory (its network checked),
    and the network it trains on as."""
    from tfssd.deploy import sagemaker_import

    output = os.path.join(work_dir, "imported_model")
    shutil.rmtree(output, ignore_errors=True)
    try:
        imported = sagemaker_import.import_sagemaker_model(source, output)
    except sagemaker_import.SageMakerImportError as e:
        raise ChannelError(f"channel 'model': {e}") from None
    trained_as = imported.base_network.removeprefix(SAGEMAKER_PREFIX)
    if base_network not in (trained_as, imported.base_network):
        raise ChannelError(
            f"channel 'model' holds a {trained_as} model of SageMaker's algorithm, but the job "
            f"has base_network={base_network}; set base_network={trained_as} (the network it "
            "was trained with) to train it on")
    logging.info("Channel model: SageMaker's %s model imported into %s; incremental training "
                 "from it, as %s (SageMaker's MXNet network, layer for layer).", trained_as,
                 output, imported.base_network)
    return output, imported.base_network


def keep_weights_with_model(model_dir: str, export_dir: str) -> None:
    """Copies the run file and best weights (else the newest intact checkpoint) into
    ``export_dir/checkpoints`` (model.tar.gz), where ``--init_from`` and the ``model`` channel
    of a later job find them.

    Each file goes in under a temporary name and is renamed, the checkpoint's state file last,
    so that a full disk or a kill meanwhile leaves the earlier copy usable.
    """
    target = os.path.join(export_dir, "checkpoints")
    if os.path.abspath(model_dir) == os.path.abspath(target):
        return
    from tfssd.model.run_directory import newest_intact_checkpoint
    from tfssd.training.errors import TrainingError

    try:
        os.makedirs(target, exist_ok=True)
        _copy_file(os.path.join(model_dir, RUN_FILE), target)
        best = newest_intact_checkpoint(os.path.join(model_dir, BEST_DIR))
        if best:
            _copy_checkpoint(best, os.path.join(target, BEST_DIR))
        elif latest := newest_intact_checkpoint(model_dir):
            _copy_checkpoint(latest, target)
    except OSError as e:
        free = shutil.disk_usage(export_dir).free / 2**20
        raise TrainingError(f"Cannot copy the weights into {target} for model.tar.gz: "
                            f"{e.strerror or e} ({free:.1f} MiB free); the export and any "
                            "earlier copy there are intact") from None


def _copy_file(path: str, folder: str) -> None:
    """Copies ``path`` into ``folder`` under its name, which appears only once whole."""
    target = os.path.join(folder, os.path.basename(path))
    try:
        shutil.copy2(path, target + ".incomplete")
        os.replace(target + ".incomplete", target)
    finally:
        if os.path.exists(target + ".incomplete"):
            os.remove(target + ".incomplete")


def _copy_checkpoint(prefix: str, folder: str) -> None:
    """Copies checkpoint ``prefix`` into ``folder`` as its only checkpoint, the state file
    naming it written once its files are whole, the older ones removed after."""
    from tfssd.model.run_directory import checkpoint_files, write_checkpoint_state

    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(prefix)
    for path in checkpoint_files(prefix):
        _copy_file(path, folder)
    write_checkpoint_state(folder, name, [name])
    for stale in os.listdir(folder):
        if stale.startswith("ckpt-") and not stale.startswith(name + "."):
            os.remove(os.path.join(folder, stale))
