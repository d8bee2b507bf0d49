"""Abuse of a real tfssd-serve on 127.0.0.1: stalled and slow clients, a connection flood, a body
of 100k tiny images, TF Serving rows for a large batch, deep and huge JSON, phone photos (MPO),
WebP and multi-frame GIF. A normal client runs beside the attackers throughout; it must be
served, /ping must answer quickly, no request may get a 5xx, and the server's memory must stay
within the bound its flags give (``Limits.memory_bound``). Every loop is bounded in count and
time, and every socket goes only to the test's own server."""

import base64
import contextlib
import http.client
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.deploy.test_server import rss_kib
from tfssd.cli import load_test as load
from tfssd.deploy import saved_model as export
from tfssd.deploy.server import Limits
from tfssd.model.ssd import ssd_network

LIMITS = Limits(max_batch_size=8, max_queue=4, max_body_bytes=4_000_000,
                max_image_pixels=1_000_000, max_images_per_request=16, max_connections=24,
                header_timeout_s=2.0, body_timeout_s=2.0)
FLAGS = [f"--{name}={getattr(LIMITS, name)}" for name in (
    "max_batch_size", "max_queue", "max_body_bytes", "max_image_pixels",
    "max_images_per_request", "max_connections", "header_timeout_s", "body_timeout_s")]
PING_WITHIN_S = 1.0  # /ping's answer, whatever the attackers do
NORMAL_P99_S = 3.0  # the normal client's requests, one image each


def _image(fmt: str, **options) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (90, 120, 3), np.uint8)
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


JPEG = _image("JPEG")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("abuse")
    ssd = ssd_network("vgg-16", 3, 128, width_multiplier=0.0625)
    export.export_saved_model(ssd.model, ssd.anchors, str(work / "export"), image_size=128,
                              class_names=["a", "b", "c"], nms_threshold=0.45)
    port = load.free_port()
    process = load.ServerProcess([f"--model={work / 'export'}", f"--port={port}", *FLAGS], port,
                                 log_path=str(work / "server.log"))
    try:
        process.wait_ready()
        for _ in range(3):  # warm: the first batches of each size build their graphs
            _request(port, "POST", "/invocations", JPEG, "image/jpeg")
        yield {"port": port, "process": process, "rss_kib": rss_kib(process.pid)}
    finally:
        process.stop()
    assert "Traceback" not in process.log(), process.log()[-3000:]


def _request(port: int, method: str, path: str, body: bytes | None = None,
             content_type: str | None = None, timeout: float = 60) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body,
                           headers={"Content-Type": content_type} if content_type else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class NormalClient:
    """One image at a time, and /ping, while the attack runs; records statuses and latencies."""

    def __init__(self, port: int):
        self.port, self.statuses, self.latencies, self.pings = port, [], [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            start = time.monotonic()
            status, _ = _request(self.port, "POST", "/invocations", JPEG, "image/jpeg")
            self.statuses.append(status)
            self.latencies.append(time.monotonic() - start)
            start = time.monotonic()
            status, _ = _request(self.port, "GET", "/ping")
            self.pings.append((status, time.monotonic() - start))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=60)

    def check(self) -> None:
        print(f"normal client: {len(self.statuses)} requests, p99 "
              f"{np.percentile(self.latencies, 99) * 1000:.0f} ms; /ping max "
              f"{max(seconds for _, seconds in self.pings) * 1000:.0f} ms")  # pytest -s shows it
        assert self.statuses and set(self.statuses) == {200}, self.statuses
        assert np.percentile(self.latencies, 99) < NORMAL_P99_S, self.latencies
        assert all(status == 200 for status, _ in self.pings)
        assert max(seconds for _, seconds in self.pings) < PING_WITHIN_S, self.pings


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _read_status(sock: socket.socket, timeout: float) -> int | None:
    """The status of the response on ``sock``, or None if the server closed it without one."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else None


@pytest.mark.slow
def test_stalled_and_slow_clients_do_not_hold_the_server(server):
    port = server["port"]
    stalled_bodies, stalled_heads = [], []
    with NormalClient(port) as normal:
        for _ in range(8):  # a complete head announcing a body that never comes
            sock = _connect(port)
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: 100000\r\n\r\n" + JPEG[:100])
            stalled_bodies.append(sock)
        for _ in range(8):  # a head sent a byte at a time, never finished
            sock = _connect(port)
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
            stalled_heads.append(sock)
        for _ in range(3):  # slow, then silent: trickling does not extend the deadline
            for sock in stalled_heads:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")
            time.sleep(0.5)
        started = time.monotonic()
        body_statuses = [_read_status(sock, 10) for sock in stalled_bodies]
        head_statuses = [_read_status(sock, 10) for sock in stalled_heads]
        waited = time.monotonic() - started
        time.sleep(1)
    for sock in stalled_bodies + stalled_heads:
        sock.close()
    time.sleep(1)  # the server sees them go before the next test counts connections
    normal.check()
    assert body_statuses == [408] * 8, body_statuses  # answered at the body deadline
    assert all(status in (None, 400, 408) for status in head_statuses), head_statuses
    assert waited < LIMITS.body_timeout_s + LIMITS.header_timeout_s + 2


@pytest.mark.slow
def test_a_connection_flood_is_refused_beyond_the_bound_and_idle_ones_closed(server):
    port = server["port"]
    flood = [_connect(port) for _ in range(LIMITS.max_connections + 8)]
    refused = sum(_read_status(sock, 0.5) == 503 for sock in flood)
    assert refused == 8, refused  # exactly those beyond the bound, at once
    started = time.monotonic()
    closed = [_read_status(sock, LIMITS.header_timeout_s + 3) for sock in flood]
    assert closed == [None] * LIMITS.max_connections + [503] * 8 or all(
        status in (None, 503) for status in closed), closed  # idle ones closed without a word
    assert time.monotonic() - started < LIMITS.header_timeout_s + 3
    for sock in flood:
        sock.close()
    time.sleep(LIMITS.body_timeout_s / 4)
    assert json.loads(_request(port, "GET", "/ping")[1])["connections"] == 1  # this request
    with NormalClient(port) as normal:  # the bound is free again
        time.sleep(2)
    normal.check()


def _instances(images: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}
                      ).encode()


@pytest.mark.slow
def test_bodies_of_many_images_deep_or_huge_json_are_refused_and_large_rows_served(server):
    port = server["port"]
    with NormalClient(port) as normal:
        tiny = json.dumps({"instances": [{"b64": "AA=="}] * 100_000}).encode()
        assert len(tiny) < LIMITS.max_body_bytes
        status, body = _request(port, "POST", "/invocations", tiny, "application/json")
        assert status == 413 and b"--max_images_per_request" in body, body[:300]
        status, body = _request(port, "POST", "/v1/models/ssd:predict", tiny)
        assert status == 413, body[:300]
        for document in (b"[" * 200_000 + b"]" * 200_000, b'{"instances": ' + b"1" * 5000 + b"}"):
            status, body = _request(port, "POST", "/invocations", document, "application/json")
            assert status == 400 and b"JSON" in body, body[:300]
        rows = _instances([JPEG] * LIMITS.max_images_per_request)
        for _ in range(3):  # TF Serving's 200 padded rows a image, at the largest batch
            status, body = _request(port, "POST", "/v1/models/ssd:predict", rows)
            assert status == 200
            predictions = json.loads(body)["predictions"]
            assert len(predictions) == LIMITS.max_images_per_request
            assert len(predictions[0]["detection_boxes"]) == 200
    normal.check()


@pytest.mark.slow
def test_phone_photos_webp_and_animated_gif_are_served(server):
    port = server["port"]
    still = Image.fromarray(np.full((90, 120, 3), 128, np.uint8))
    for fmt, data in [
        ("MPO", _image("MPO", save_all=True, append_images=[still])),
        ("WEBP", _image("WEBP")),
        ("GIF", _image("GIF", save_all=True, append_images=[still] * 5)),
    ]:
        for content_type in ("image/jpeg", "application/x-image"):
            status, body = _request(port, "POST", "/invocations", data, content_type)
            assert status == 200, (fmt, body[:300])
            assert json.loads(body)["prediction"], fmt


@pytest.mark.slow
def test_memory_stays_within_the_bound_of_the_flags(server):
    """Runs last in this module: every attack above has been through the server."""
    grown = (rss_kib(server["process"].pid) - server["rss_kib"]) * 1024
    bound = sum(LIMITS.memory_bound().values())
    print(f"RSS grew {grown / 2**20:.0f} MiB under attack; the flags' bound: {bound / 2**20:.0f} "
          f"MiB")
    assert grown <= bound, (grown, LIMITS.memory_bound())
