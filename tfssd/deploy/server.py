"""An HTTP endpoint for an exported SSD: SageMaker's container contract and TF Serving's REST API.

Routes (aiohttp; the bodies are in serving_formats.py; every refusal is JSON, ``{"error": ...}``):

  GET  /ping                                  200 once the model is loaded (SageMaker)
  GET  /execution-parameters                  batch transform's settings (SageMaker)
  POST /invocations                           an image, JSON or JSON Lines (SageMaker)
  POST /v1/models/NAME[/versions/N]:predict   TF Serving's REST predict
  GET  /v1/models/NAME[/versions/N]           TF Serving's model status

Every image is checked (``image_check.inspect_image``) before the model sees it. The images of
requests that arrive together run as one batch (at most ``max_batch_size``; a batch that is not
full waits at most ``batch_timeout_ms`` for more), one batch at a time, in a thread of its own,
so the event loop keeps answering: images that arrive while a batch runs form the next one.
``GET /ping`` counts the batches and images run so far. At most ``max_queue`` requests are
admitted at once (reading their body, waiting or in the model); past that the answer is 503 with
Retry-After, so memory stays bounded by about ``max_queue x max_body_bytes`` plus one batch of
decoded images.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl import logging
from aiohttp import web

from tfssd.deploy import saved_model as export
from tfssd.deploy.contracts import (
    INSTANCE,
    INVOCATION_TYPES,
    JSON_TYPE,
    JSONLINES_TYPES,
    SIGNATURE,
    RequestError,
    invocation_response,
    parse_invocation,
    parse_predict,
    to_tf_serving,
)

BODY_TIMEOUT_S = 30.0  # a client slower than this to send its body gives its slot back (408)
RETRY_AFTER_S = 1


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one server accepts and holds at once."""
    max_batch_size: int = 8
    batch_timeout_ms: float = 0.0  # measured: on CPU any wait costs more latency than it gains
    max_queue: int = 32  # requests admitted at once
    max_body_bytes: int = 16 * 2**20
    max_image_pixels: int = 4096 * 4096  # decoded in the graph as float32: ~250 MB an image


class Detector:
    """A SavedModel's ``serving_default``: encoded images -> detections as NumPy arrays."""

    def __init__(self, path: str):
        self.path = export.latest_version(path)
        name = os.path.basename(os.path.normpath(self.path))
        self.version = int(name) if name.isdigit() else 1
        self.labels = export.read_labels(self.path)
        self._saved_model = tf.saved_model.load(self.path)
        if SIGNATURE not in self._saved_model.signatures:
            raise ValueError(f"{self.path}: no {SIGNATURE} signature")
        self._signature = self._saved_model.signatures[SIGNATURE]

    def __call__(self, images: list[bytes]) -> dict[str, np.ndarray]:
        """images: encoded JPEG/PNG -> {detection_boxes [B, 200, 4] normalised yxyx, ...}."""
        outputs = self._signature(images=tf.constant(images, tf.string))
        return {key: value.numpy() for key, value in outputs.items()}

    def warm_up(self) -> None:
        """One call, so that the first request does not pay for TensorFlow's start-up."""
        self([tf.io.encode_jpeg(tf.zeros([32, 32, 3], tf.uint8)).numpy()])


@dataclasses.dataclass
class _Item:
    name: str
    image: bytes
    future: asyncio.Future


class Batcher:
    """Runs the images of concurrent requests through the model in batches, one at a time."""

    def __init__(self, model, max_batch_size: int, timeout_s: float):
        self._model, self._max, self._timeout_s = model, max_batch_size, timeout_s
        self._pending: collections.deque[_Item] = collections.deque()
        self._arrived = asyncio.Event()
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tfssd-model")
        self._task: asyncio.Task | None = None
        self.batches = self.images = 0  # run so far: images / batches is the mean batch size

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(RequestError(503, "the server is shutting down"))
        self._thread.shutdown(wait=True)

    async def detect(self, images: list[tuple[str, bytes]]) -> list[dict[str, np.ndarray]]:
        """(name, encoded image) pairs -> one dict of detections per image, in order."""
        loop = asyncio.get_running_loop()
        items = [_Item(name, data, loop.create_future()) for name, data in images]
        self._pending.extend(items)
        self._arrived.set()
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + self._timeout_s
            while len(self._pending) < self._max and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            batch = [self._pending.popleft() for _ in range(min(self._max, len(self._pending)))]
            batch = [item for item in batch if not item.future.done()]
            self.batches, self.images = self.batches + 1, self.images + len(batch)
            try:
                outcomes = await loop.run_in_executor(self._thread, self._run_batch, batch)
            except Exception as e:  # never let the loop die: every later request would hang
                logging.exception("batch failed")
                outcomes = [RequestError(500, f"internal error: {type(e).__name__}")] * len(batch)
            for item, outcome in zip(batch, outcomes):
                if item.future.done():
                    continue
                if isinstance(outcome, Exception):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)

    def _run_batch(self, batch: list[_Item]) -> list:
        if not batch:
            return []
        try:
            detections = self._model([item.image for item in batch])
            return [{key: value[n] for key, value in detections.items()}
                    for n in range(len(batch))]
        except Exception as e:
            if len(batch) == 1:
                return [_model_failure(batch[0].name, e)]
        # One image the model cannot take fails its whole batch: run each alone, so only it fails.
        return [self._run_batch([item])[0] for item in batch]


def _model_failure(name: str, error: Exception) -> RequestError:
    if isinstance(error, tf.errors.InvalidArgumentError):
        first_line = (error.message or "").strip().splitlines()[:1]
        return RequestError(400, f"{name}: the model cannot decode this image "
                                 f"({' '.join(first_line)})")
    logging.error("model call failed on %s", name, exc_info=error)
    return RequestError(500, f"{name}: the model failed ({type(error).__name__}); see the log")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Every refusal as {"error": ...}: the server's own, aiohttp's (404, 405, 413), and bugs."""
    try:
        return await handler(request)
    except RequestError as e:
        return _error(e.status, e.message, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        if isinstance(e, web.HTTPMethodNotAllowed):
            message = (f"method {request.method} not allowed on {request.path}; allowed: "
                       + ", ".join(sorted(e.allowed_methods)))
        elif isinstance(e, web.HTTPNotFound):
            message = (f"no such path {request.path}; serving /ping, /invocations and "
                       "/v1/models/<name>[:predict]")
        else:
            message = e.text or e.reason
        return _error(e.status, message, {k: v for k, v in e.headers.items() if k == "Allow"})
    except Exception as e:  # a bug: say so, log it, keep serving
        logging.exception("%s %s failed", request.method, request.path)
        return _error(500, f"internal error: {type(e).__name__} (logged)")


class _Endpoint:
    """The request handlers around one Detector."""

    def __init__(self, model: Detector, model_name: str, limits: Limits):
        self._model, self._name, self._limits = model, model_name, limits
        self._batcher = Batcher(model, limits.max_batch_size, limits.batch_timeout_ms / 1000)
        self._in_flight = 0

    async def start(self, app: web.Application) -> None:
        self._batcher.start()

    async def stop(self, app: web.Application) -> None:
        await self._batcher.stop()

    @contextlib.asynccontextmanager
    async def _admitted(self):
        if self._in_flight >= self._limits.max_queue:
            raise RequestError(503, f"busy: {self._in_flight} requests in progress, the limit "
                                    "(--max_queue); retry later",
                               {"Retry-After": str(RETRY_AFTER_S)})
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    async def _read(self, request: web.Request) -> bytes:
        limit = self._limits.max_body_bytes
        too_large = RequestError(413, f"request body over the limit of {limit} bytes "
                                      "(--max_body_bytes)")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        except TimeoutError:
            raise RequestError(408, f"request body not received within {BODY_TIMEOUT_S:g} "
                                    "s") from None

    async def _detect(self, request: web.Request, parse, *args):
        async with self._admitted():
            body = await self._read(request)
            loop = asyncio.get_running_loop()  # base64, JSON and image checks off the loop
            kind, images = await loop.run_in_executor(None, parse, *args, body,
                                                      self._limits.max_image_pixels)
            return kind, await self._batcher.detect(images)

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self._name,
                                  "version": self._model.version,
                                  "batches": self._batcher.batches,
                                  "images": self._batcher.images})

    async def execution_parameters(self, request: web.Request) -> web.Response:
        return web.json_response({
            "MaxConcurrentTransforms": self._limits.max_batch_size,
            "BatchStrategy": "MULTI_RECORD",
            "MaxPayloadInMB": max(1, min(100, self._limits.max_body_bytes // 2**20))})

    async def invocations(self, request: web.Request) -> web.Response:
        content_type = request.content_type
        if content_type not in INVOCATION_TYPES:
            raise RequestError(415, f"unsupported Content-Type {content_type!r}; send an image "
                                    "(image/jpeg, image/png, application/x-image), "
                                    f'application/json {{"instances": [{INSTANCE}, ...]}} or '
                                    f"application/jsonlines (one {INSTANCE} a line)")
        _, detections = await self._detect(request, parse_invocation, content_type)
        jsonlines = content_type in JSONLINES_TYPES
        return web.Response(text=invocation_response(content_type, detections),
                            content_type=JSONLINES_TYPES[0] if jsonlines else JSON_TYPE)

    def _check_model(self, request: web.Request) -> None:
        name, version = request.match_info["name"], request.match_info.get("version")
        if name != self._name:
            raise RequestError(404, f"model {name!r} not found; this server serves "
                                    f"{self._name!r}")
        if version is not None and version != str(self._model.version):
            raise RequestError(404, f"version {version} of model {name!r} not found; version "
                                    f"{self._model.version} is served")

    async def model_status(self, request: web.Request) -> web.Response:
        self._check_model(request)
        return web.json_response({"model_version_status": [{
            "version": str(self._model.version), "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]})

    async def predict(self, request: web.Request) -> web.Response:
        self._check_model(request)  # any Content-Type: TF Serving's curl examples send none
        key, detections = await self._detect(request, parse_predict)
        return web.json_response(to_tf_serving(detections, key))


def make_app(model: Detector, model_name: str = "ssd",
             limits: Limits | None = None) -> web.Application:
    """The aiohttp application serving ``model`` under both contracts."""
    limits = limits or Limits()
    endpoint = _Endpoint(model, model_name, limits)
    app = web.Application(client_max_size=limits.max_body_bytes, middlewares=[json_errors])
    name, version = "{name:[^/:]+}", "{version:[^/:]+}"
    app.router.add_get("/ping", endpoint.ping)
    app.router.add_get("/execution-parameters", endpoint.execution_parameters)
    app.router.add_post("/invocations", endpoint.invocations)
    app.router.add_post(f"/v1/models/{name}:predict", endpoint.predict)
    app.router.add_post(f"/v1/models/{name}/versions/{version}:predict", endpoint.predict)
    app.router.add_get(f"/v1/models/{name}", endpoint.model_status)
    app.router.add_get(f"/v1/models/{name}/versions/{version}", endpoint.model_status)
    app.on_startup.append(endpoint.start)
    app.on_cleanup.append(endpoint.stop)
    return app


def serve(app: web.Application, host: str, port: int, announce: str) -> None:
    """Serves ``app`` until SIGINT or SIGTERM; logs ``announce`` once listening."""
    web.run_app(app, host=host, port=port, access_log=None,
                print=lambda _: logging.info("%s: http://%s:%d", announce, host, port))
