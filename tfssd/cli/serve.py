"""Serves a detector over HTTP: SageMaker's endpoint contract and TF Serving's REST API.

  python -m tfssd.cli.serve --model=EXPORT_DIR [--host=127.0.0.1] [--port=8080] [--model_name=ssd]

Inside a SageMaker container (``docker run IMAGE serve``, docker/serve) the model comes from
/opt/ml/model and the port from SAGEMAKER_BIND_TO_PORT unless the flags give them. A model of
SageMaker's own algorithm there (its model.tar.gz as SageMaker unpacks it: the MXNet symbol,
.params and hyperparams.json) is imported at start (tfssd/deploy/sagemaker_import.py, no MXNet)
into a temporary folder, and served. Routes,
batching and limits: tfssd/deploy/server.py; request and response bodies:
tfssd/deploy/contracts.py.
"""

from __future__ import annotations

import errno
import os
import tarfile
import tempfile
from collections.abc import Mapping

from absl import app, flags, logging

from tfssd.cli.command_runner import run_command
from tfssd.config.sagemaker_container import container_paths

FLAGS = flags.FLAGS
SAGEMAKER_MODEL_DIR = container_paths({}).model_dir  # /opt/ml/model
DEFAULT_PORT = 8080


def define_flags() -> None:
    flags.DEFINE_string("model", None,
                        "An exported SavedModel, or a directory of numbered versions (the highest "
                        "is served), a .tflite (tfssd-export-tflite), an OpenVINO .xml "
                        "(tfssd-export-openvino) or a tfssd model directory (its best weights). "
                        f"Default: {SAGEMAKER_MODEL_DIR} if it exists (SageMaker).")
    flags.DEFINE_enum("openvino_precision", "float32", ["float32", "bfloat16"],
                      "An OpenVINO .xml's inference precision on the CPU: float32 gives the "
                      "SavedModel's detections; bfloat16 is faster on CPUs with AMX.")
    flags.DEFINE_string("host", "127.0.0.1",
                        "Interface to listen on. 0.0.0.0 exposes the endpoint, which has no "
                        "authentication and no TLS, to every network this machine is on.")
    flags.DEFINE_integer("port", None, "Port. Default: $SAGEMAKER_BIND_TO_PORT, else "
                                       f"{DEFAULT_PORT}.", lower_bound=1, upper_bound=65535)
    flags.DEFINE_string("model_name", "ssd", "The NAME of TF Serving's /v1/models/NAME.")
    flags.DEFINE_integer("max_batch_size", 8, "Most images run through the model at once; "
                                              "1 turns request batching off.", lower_bound=1)
    flags.DEFINE_float("batch_timeout_ms", 0.0,
                       "How long a batch that is not full waits for more images. 0: no wait; "
                       "images that arrive while a batch runs still form the next batch. A "
                       "few ms can pay on an accelerator; on a CPU it only adds latency.",
                       lower_bound=0)
    flags.DEFINE_integer("max_queue", 32,
                         "Most requests admitted at once once their body is read (being parsed, "
                         "waiting or in the model); more are answered 503 with Retry-After.",
                         lower_bound=1)
    flags.DEFINE_integer("max_images_per_request", 64,
                         "Most images in one request (JSON instances or JSON lines); more are "
                         "answered 413 before any is decoded.", lower_bound=1)
    flags.DEFINE_integer("max_connections", 64,
                         "Most open connections; more are answered 503 and closed. With "
                         "--max_body_bytes it bounds the memory of bodies being received.",
                         lower_bound=1)
    flags.DEFINE_float("header_timeout_s", 10.0,
                       "A connection that has not sent a complete request head within this "
                       "(also: idle this long between keep-alive requests) is closed.",
                       lower_bound=0.1)
    flags.DEFINE_float("body_timeout_s", 10.0,
                       "A request body not received within this is answered 408.",
                       lower_bound=0.1)
    flags.DEFINE_integer("max_body_bytes", 16 * 2**20,
                         "Largest request body; larger ones are answered 413. Default: "
                         "$SAGEMAKER_MAX_PAYLOAD_IN_MB MiB where batch transform sets it, else "
                         "16 MiB.", lower_bound=1)
    flags.DEFINE_integer("max_image_pixels", 4096 * 4096,
                         "Largest width x height of an image (checked from its header before "
                         "decoding); larger ones are answered 400. 0: no limit.", lower_bound=0)


def model_and_port(model: str | None, port: int | None, environ: Mapping[str, str],
                   container_model_dir: str | None = None) -> tuple[str, int]:
    """The model directory and port: the flags, else SageMaker's container, else the default."""
    container_model_dir = container_model_dir or container_paths(environ).model_dir
    if model is None:
        if not os.path.isdir(container_model_dir):
            raise app.UsageError(f"Give --model=EXPORT_DIR (or run in a SageMaker container, "
                                 f"where the model is {container_model_dir}).")
        model = container_model_dir
    if port is None:
        value = environ.get("SAGEMAKER_BIND_TO_PORT", str(DEFAULT_PORT))
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise app.UsageError(f"SAGEMAKER_BIND_TO_PORT={value!r} is not a port number")
        port = int(value)
    return model, port


def max_body_bytes(flag_value: int, given: bool, environ: Mapping[str, str]) -> int:
    """The body limit: the flag when given, else batch transform's SAGEMAKER_MAX_PAYLOAD_IN_MB
    (the payload size the job was told this container takes), else the flag's default."""
    value = environ.get("SAGEMAKER_MAX_PAYLOAD_IN_MB")
    if given or value is None:
        return flag_value
    if not value.strip().isdigit() or int(value) <= 0:
        raise app.UsageError(f"SAGEMAKER_MAX_PAYLOAD_IN_MB={value!r} is not a positive number "
                             "of MB")
    return int(value) * 2**20


def is_sagemaker_artifact(model: str) -> bool:
    """Whether ``model`` is a model of SageMaker's MXNet algorithm: a folder with an MXNet
    ``*-symbol.json`` (/opt/ml/model as SageMaker unpacks model.tar.gz), or such a .tar.gz."""
    if os.path.isdir(model):
        return any(name.endswith("-symbol.json") for name in os.listdir(model))
    if os.path.isfile(model) and model.endswith((".tar.gz", ".tgz")):
        try:
            with tarfile.open(model) as tar:
                return any(name.endswith("-symbol.json") for name in tar.getnames())
        except (tarfile.TarError, OSError):
            return False
    return False


def servable(model: str) -> str:
    """``model``, or the export of the SageMaker algorithm's model it holds, once imported."""
    if not is_sagemaker_artifact(model):
        return model
    from tfssd.deploy import sagemaker_import  # TensorFlow

    output = os.path.join(tempfile.mkdtemp(prefix="tfssd-serve-"), "imported")
    logging.info("%s holds a model of SageMaker's Object Detection algorithm: importing it into "
                 "%s.", model, output)
    try:
        imported = sagemaker_import.import_sagemaker_model(model, output)
    except ValueError as e:  # SageMakerImportError, MXNetFormatError
        raise app.UsageError(f"--model={model}: {e}") from None
    logging.info("Imported SageMaker's %s SSD (%d classes, image_shape %d).",
                 imported.base_network, imported.num_classes, imported.image_size)
    return imported.export_dir


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    model_dir, port = model_and_port(FLAGS.model, FLAGS.port, os.environ)
    model_dir = servable(model_dir)
    from tfssd.deploy import server as serving  # TensorFlow and aiohttp, once flags are good
    from tfssd.deploy.detector import load_detector

    try:
        detector = load_detector(model_dir, precision=FLAGS.openvino_precision)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise app.UsageError(f"--model: {e}") from None
    detector.warm_up()
    limits = serving.Limits(max_batch_size=FLAGS.max_batch_size,
                            batch_timeout_ms=FLAGS.batch_timeout_ms, max_queue=FLAGS.max_queue,
                            max_body_bytes=max_body_bytes(FLAGS.max_body_bytes,
                                                          FLAGS["max_body_bytes"].present,
                                                          os.environ),
                            max_image_pixels=FLAGS.max_image_pixels,
                            max_images_per_request=FLAGS.max_images_per_request,
                            max_connections=FLAGS.max_connections,
                            header_timeout_s=FLAGS.header_timeout_s,
                            body_timeout_s=FLAGS.body_timeout_s)
    logging.info("Model %s (%s, version %d, classes: %s); %s", detector.path, detector.kind,
                 detector.version, ", ".join(detector.class_names) or "unnamed", limits)
    bound = limits.memory_bound()
    logging.info("Requests can hold at most %.0f MiB beside the model: %s.",
                 sum(bound.values()) / 2**20,
                 "; ".join(f"{what} {size / 2**20:.0f} MiB" for what, size in bound.items()))
    try:
        serving.serve(serving.make_app(detector, FLAGS.model_name, limits), FLAGS.host, port,
                      f"Serving {FLAGS.model_name!r} (SageMaker: /ping, /invocations; TF "
                      f"Serving: /v1/models/{FLAGS.model_name}:predict)", limits)
    except OSError as e:
        if e.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        raise SystemExit(f"tfssd-serve: cannot listen on {FLAGS.host}:{port}: "
                         f"{os.strerror(e.errno)}; choose another --port or --host") from None


def run() -> None:
    run_command(define_flags, main)


if __name__ == "__main__":
    run()
