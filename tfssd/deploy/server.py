"""An HTTP endpoint for an exported SSD: SageMaker's container contract and TF Serving's REST API.

Routes (aiohttp; the bodies are in contracts.py; every refusal is JSON, ``{"error": ...}``):

  GET  /ping                                  200 once the model is loaded (SageMaker)
  GET  /execution-parameters                  batch transform's settings (SageMaker)
  POST /invocations                           an image, JSON or JSON Lines (SageMaker)
  POST /v1/models/NAME[/versions/N]:predict   TF Serving's REST predict
  GET  /v1/models/NAME[/versions/N]           TF Serving's model status

What a request goes through, and what bounds it (``Limits``):

1. a connection: at most ``max_connections`` at once (more are answered 503 and closed); one
   that has not sent a complete request head within ``header_timeout_s`` is closed;
2. its body is read into one buffer within ``body_timeout_s`` (else 408), at most
   ``max_body_bytes`` (413 as soon as it is past them);
3. admission: at most ``max_queue`` requests past their body at once (more: 503, Retry-After);
   admitted, the body is parsed on a small pool of threads: JSON walked, not loaded, its images
   counted as they are met (413 at the first past ``max_images_per_request``) and decoded from
   base64 one by one, then every image checked (``image_check.inspect_image``);
4. the model: the images of requests that arrive together run as one batch (at most
   ``max_batch_size``; one that is not full waits at most ``batch_timeout_ms`` for more), one
   batch at a time in a thread of its own, so the event loop keeps answering;
5. the response is encoded as JSON on the same pool, never on the event loop.

``Limits.memory_bound`` computes what these limits let requests hold at once (tfssd-serve logs it
at start; ``python -m tests.deploy.server_memory`` pushes a server to it). ``GET /ping`` counts
the open connections and the batches and images run so far.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import signal
import socket

from absl import logging
from aiohttp import web

from tfssd.deploy.batcher import Batcher
from tfssd.deploy.contracts import (
    INSTANCE,
    INVOCATION_TYPES,
    JSON_TYPE,
    JSONLINES_TYPES,
    RequestError,
    invocation_response,
    parse_invocation,
    parse_predict,
    predict_response,
    wants_annotations,
)
from tfssd.deploy.detector import Detector

RETRY_AFTER_S = 1
LINGERING_S = 0.5
LISTEN_BACKLOG = 128
PARSE_THREADS = 2  # parsing, image checks and response encoding of admitted requests
# What requests hold, in bytes (the abuse suite measures the sum against the server's RSS):
READ_SLACK = 1 / 8  # a body grows in a bytearray, which reserves up to 1/8 more
CONNECTION_BYTES = 256 * 2**10  # aiohttp's per connection: its read buffer (2 x 64 KiB), a head
RESPONSE_BYTES_PER_IMAGE = 2 * 32_000  # TF Serving's 200 padded rows as text, then as bytes
RENDER_BYTES_PER_IMAGE = 160_000  # the Python lists and floats while a response is rendered
DECODED_BYTES_PER_PIXEL = 15  # the serving graph: uint8 RGB decoded, then float32 resized
CHECKED_BYTES_PER_PIXEL = 4  # the host's check decodes with PIL, up to RGBA


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one server accepts and holds at once."""
    max_batch_size: int = 8
    batch_timeout_ms: float = 0.0  # measured: on CPU any wait costs more latency than it gains
    max_queue: int = 32  # requests past their body at once (parsed, waiting, in the model)
    max_body_bytes: int = 16 * 2**20
    max_image_pixels: int = 4096 * 4096  # decoded in the graph as float32: ~250 MB an image
    max_images_per_request: int = 64
    max_connections: int = 64
    header_timeout_s: float = 10.0  # a request head (and an idle keep-alive gap) at most this
    body_timeout_s: float = 10.0  # a body received within this, or 408 and the slot is free

    def memory_bound(self) -> dict[str, int]:
        """Bytes that requests can hold at once beyond the model, by what holds them.

        A connection holds its body as it arrives, then (admitted) the images parsed from it
        instead: base64 decodes to 3/4 of its text, an image body is copied once, so never more
        than the body. While a body is parsed (PARSE_THREADS at once) both exist, with one
        unescaped base64 string at most. JSON is walked, not loaded (contracts.py), and the
        images are counted as they are met, so nothing else grows with the body.
        """
        body, images = self.max_body_bytes, self.max_images_per_request
        return {
            "bodies or their images (max_connections x max_body_bytes)": self.max_connections
            * (int(body * (1 + READ_SLACK)) + CONNECTION_BYTES),
            "parsing (a body's images and one unescaped string)": PARSE_THREADS * 2 * body,
            "image checks": PARSE_THREADS * CHECKED_BYTES_PER_PIXEL * self.max_image_pixels,
            "responses": self.max_queue * images * RESPONSE_BYTES_PER_IMAGE
            + PARSE_THREADS * images * RENDER_BYTES_PER_IMAGE,
            "one batch: its encoded images": min(self.max_batch_size, self.max_queue) * body,
            "one batch decoded in the graph": self.max_batch_size * DECODED_BYTES_PER_PIXEL
            * self.max_image_pixels,
        }


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Every refusal as {"error": ...}: the server's own, aiohttp's (404, 405, 413), and bugs."""
    try:
        return await handler(request)
    except RequestError as e:
        response = _error(e.status, e.message, e.headers)
        if e.status in (408, 413):  # a body left unread: the connection cannot go on
            response.force_close()
        return response
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


def _too_large(limit: int) -> RequestError:
    return RequestError(413, f"request body over the limit of {limit} bytes (--max_body_bytes)")


class _Endpoint:
    """The request handlers around one Detector."""

    def __init__(self, model: Detector, model_name: str, limits: Limits):
        self._model, self._name, self._limits = model, model_name, limits
        self._batcher = Batcher(model, limits.max_batch_size, limits.batch_timeout_ms / 1000)
        self._pool = concurrent.futures.ThreadPoolExecutor(PARSE_THREADS,
                                                           thread_name_prefix="tfssd-parse")
        self._in_flight = 0
        self.open_connections = lambda: 0  # set by serve(): the server's connection count

    async def start(self, app: web.Application) -> None:
        self._batcher.start()

    async def stop(self, app: web.Application) -> None:
        await self._batcher.stop()
        self._pool.shutdown(wait=True)

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

    async def _read(self, request: web.Request) -> bytearray:
        """The body, read into one bytearray (aiohttp's ``read`` would hold it twice)."""
        limit, deadline = self._limits.max_body_bytes, self._limits.body_timeout_s
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(limit)
        body = bytearray()
        try:
            async with asyncio.timeout(deadline):
                while chunk := await request.content.readany():
                    if len(body) + len(chunk) > limit:  # a chunked body, or one past its length
                        raise _too_large(limit)
                    body += chunk
        except TimeoutError:
            raise RequestError(408, f"request body not received within {deadline:g} s "
                                    "(--body_timeout_s)") from None
        except (ConnectionError, RuntimeError, web.RequestPayloadError) as e:
            # The client hung up mid-body (aiohttp: "Connection lost", "Connection closed."):
            # nobody to answer, and no bug to log.
            raise RequestError(400, f"request body cut off after {len(body)} bytes ({e})"
                               ) from None
        return body

    async def _off_loop(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def _respond(self, request: web.Request, parse, render, *args) -> str:
        """Body read (no slot held), then admitted: parsed, detected and rendered off the loop."""
        body = await self._read(request)
        async with self._admitted():
            kind, images = await self._off_loop(parse, *args, body,
                                                self._limits.max_image_pixels,
                                                self._limits.max_images_per_request)
            del body
            detections = await self._batcher.detect(images)
            return await self._off_loop(render, detections, kind)

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self._name,
                                  "version": self._model.version,
                                  "connections": self.open_connections(),
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
        annotations = wants_annotations(request.headers.get("Accept", ""))
        text = await self._respond(
            request, parse_invocation,
            lambda detections, invocation: invocation_response(invocation, detections,
                                                               annotations),
            content_type)
        jsonlines = content_type in JSONLINES_TYPES
        return web.Response(text=text,
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
        text = await self._respond(request, parse_predict, predict_response)
        return web.Response(text=text, content_type=JSON_TYPE)


ENDPOINT = web.AppKey("endpoint", _Endpoint)


def make_app(model: Detector, model_name: str = "ssd",
             limits: Limits | None = None) -> web.Application:
    """The aiohttp application serving ``model`` under both contracts."""
    limits = limits or Limits()
    endpoint = _Endpoint(model, model_name, limits)
    app = web.Application(client_max_size=limits.max_body_bytes, middlewares=[json_errors])
    app[ENDPOINT] = endpoint
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


_BUSY = json.dumps({"error": "busy: too many connections (--max_connections); retry later"})
_BUSY_RESPONSE = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {JSON_TYPE}\r\n"
                  f"Retry-After: {RETRY_AFTER_S}\r\nConnection: close\r\n"
                  f"Content-Length: {len(_BUSY)}\r\n\r\n{_BUSY}").encode()


def _listening_socket(host: str, port: int) -> socket.socket:
    """A non-blocking socket listening on ``host:port`` (IPv4 first where a name has both)."""
    addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    family, _, _, _, address = min(addresses, key=lambda a: a[0] != socket.AF_INET)
    sock = socket.create_server(address, family=family, backlog=LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


class _Listener:
    """Accepts connections for aiohttp's low-level server, at most ``max_connections`` open at
    once; each one beyond is answered 503 and closed at once.

    aiohttp has no connection limit of its own, and its ``web.Server`` is a protocol factory
    that asyncio connects to sockets (aiohttp's documented low-level server), so the cap sits in
    front of it: asyncio's ``sock_accept`` and ``connect_accepted_socket``, and the count of the
    transports handed over that are still open. (asyncio's ``create_server`` accepts a burst of
    connections before any is connected, which would let a burst past a count.)
    """

    def __init__(self, sock: socket.socket, server: web.Server, max_connections: int):
        self._sock, self._server, self._max = sock, server, max_connections
        self._transports: set[asyncio.BaseTransport] = set()
        self._task: asyncio.Task | None = None

    def open_connections(self) -> int:
        self._transports = {t for t in self._transports if not t.is_closing()}
        return len(self._transports)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._accept())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sock.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(self._sock)
            except OSError as e:  # out of file descriptors, a connection reset while queued
                logging.warning("accepting a connection failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            if self.open_connections() >= self._max:
                _refuse(client)
                continue
            try:
                transport, _ = await loop.connect_accepted_socket(self._server, client)
            except OSError:
                client.close()
                continue
            self._transports.add(transport)


def _refuse(client: socket.socket) -> None:
    """Answers 503 and closes (a few hundred bytes: a new socket's buffer takes them at once)."""
    try:
        client.setblocking(False)
        client.send(_BUSY_RESPONSE)
        client.shutdown(socket.SHUT_WR)
        client.recv(65536)  # what the client sent already, so that closing does not reset
    except OSError:
        pass
    finally:
        client.close()


async def _serve(app: web.Application, host: str, port: int, announce: str,
                 limits: Limits) -> None:
    # keepalive_timeout also closes a connection idle before its first request head is complete
    # (aiohttp >= 3.14.4 arms it when the connection opens): the deadline for headers.
    # lingering_time: after refusing a body (408, 413), aiohttp reads what still arrives for so
    # long before it closes; a stalled client would hold its connection for that time.
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=limits.header_timeout_s,
                           lingering_time=LINGERING_S, handle_signals=False)
    await runner.setup()
    listener = None
    try:
        listener = _Listener(_listening_socket(host, port), runner.server,
                             limits.max_connections)
        app[ENDPOINT].open_connections = listener.open_connections
        listener.start()
        logging.info("%s: http://%s:%d", announce, host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
        await stop.wait()
        logging.info("Stopping.")
    finally:
        if listener:
            await listener.stop()
        await runner.cleanup()


def serve(app: web.Application, host: str, port: int, announce: str,
          limits: Limits | None = None) -> None:
    """Serves ``app`` until SIGINT or SIGTERM; logs ``announce`` once listening."""
    asyncio.run(_serve(app, host, port, announce, limits or Limits()))
