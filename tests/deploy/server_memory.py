"""Pushes a real tfssd-serve with the worst bodies its limits admit and measures its peak memory.

  python -m tests.deploy.server_memory [--preset=abuse|defaults] [--rounds=2] [--clients=N]

Starts ``python -m tfssd.cli.serve`` on a free 127.0.0.1 port with a small random-weight export,
warms it up, then runs one scenario after another, each from ``max_connections`` clients (or
--clients) at once (a barrier releases them together; a client answered 503 sends again):
bodies refused 413 (tiny images past the image limit filling the body limit, one byte past the
body limit), then image bodies (the largest the body limit holds, the most pixels the pixel
limit allows), JSON and JSON Lines bodies of ``max_images_per_request`` images filling the body
limit, a batch of the most pixels, TF Serving rows of as many images. Before each scenario the
server's peak RSS is reset (``/proc/PID/clear_refs``, 5); after it, its peak (``VmHWM``) is
printed less the RSS once warmed up and less the RSS at the scenario's start, beside
``Limits.memory_bound()``. The abuse suite (test_server_abuse.py) runs the same scenarios and
asserts the bound.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

from tfssd.cli import load_test as load

PRESETS = {  # Limits' fields by preset: the abuse suite's flags, and tfssd-serve's defaults
    "abuse": dict(max_batch_size=8, max_queue=4, max_body_bytes=4_000_000,
                  max_image_pixels=1_000_000, max_images_per_request=16, max_connections=24,
                  header_timeout_s=2.0, body_timeout_s=2.0),
    "defaults": dict(max_batch_size=8, max_queue=32, max_body_bytes=16 * 2**20,
                     max_image_pixels=4096 * 4096, max_images_per_request=64,
                     max_connections=64, header_timeout_s=10.0, body_timeout_s=10.0),
}
CLIENT_TIMEOUT_S = 120


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One kind of request, sent by every client at once."""
    name: str
    path: str
    content_type: str
    body: bytes
    statuses: tuple[int, ...]  # what the server may answer


def serve_flags(limits: dict) -> list[str]:
    return [f"--{name}={value}" for name, value in limits.items()]


def _noise_png(pixels: int, seed: int = 0) -> bytes:
    """An RGB PNG of random pixels (incompressible: about 3 bytes a pixel), about square."""
    width = max(1, int(pixels ** 0.5))
    height = max(1, pixels // width)
    data = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(data).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def _flat_png(pixels: int) -> bytes:
    """A gray PNG of ``pixels`` pixels: a few kB that decode to the most memory."""
    width = max(1, int(pixels ** 0.5))
    buffer = io.BytesIO()
    Image.new("RGB", (width, pixels // width), (90, 120, 150)).save(buffer, format="PNG")
    return buffer.getvalue()


def _noise_png_within(max_bytes: int, max_pixels: int) -> bytes:
    """The largest noise PNG of at most ``max_bytes`` bytes and ``max_pixels`` pixels."""
    pixels = min(max_pixels, max_bytes // 3)
    while True:
        image = _noise_png(pixels)
        if len(image) <= max_bytes:
            return image
        pixels = int(pixels * 0.98)


def _instance(image: bytes) -> str:
    return json.dumps({"b64": base64.b64encode(image).decode()})


def scenarios(limits: dict) -> list[Scenario]:
    """The worst bodies ``limits`` admit, and bodies just past them, by content type."""
    max_body, max_pixels = limits["max_body_bytes"], limits["max_image_pixels"]
    count = limits["max_images_per_request"]
    # Base64 is 4/3 of the bytes; each JSON instance adds its 12 bytes of {"b64": ""}.
    per_image = (max_body - 64 * count) * 3 // 4 // count
    big = _noise_png_within(per_image, max_pixels)
    flat = _flat_png(max_pixels)
    instances = lambda image, n=count: ("[" + ", ".join([_instance(image)] * n) + "]").encode()
    lines = lambda image: "".join(_instance(image) + "\n" for _ in range(count)).encode()
    tiny = json.dumps({"b64": "AA=="})
    tiny_count = (max_body - 20) // (len(tiny) + 2)
    out = [  # those refused first: nothing has reached the model yet
        Scenario("413: JSON of tiny images past the image limit", "/invocations",
                 "application/json",
                 ('{"instances": [' + ", ".join([tiny] * tiny_count) + "]}").encode(), (413,)),
        Scenario("413: JSON Lines of tiny images past the image limit", "/invocations",
                 "application/jsonlines", (tiny + "\n").encode() * tiny_count, (413,)),
        Scenario("413: a byte past the body limit", "/invocations", "image/png",
                 b"\x89PNG" + b"\0" * (max_body - 3), (413,)),
        Scenario("image body, the body limit full", "/invocations", "image/png",
                 _noise_png_within(max_body, max_pixels), (200,)),
        Scenario("image body, the pixel limit full", "/invocations", "image/png", flat, (200,)),
        Scenario("JSON, the image limit, the body limit full", "/invocations",
                 "application/json", b'{"instances": ' + instances(big) + b"}", (200,)),
        Scenario("JSON, a batch of the most pixels", "/invocations", "application/json",
                 b'{"instances": ' + instances(flat, limits["max_batch_size"]) + b"}", (200,)),
        Scenario("JSON Lines, the image limit, the body limit full", "/invocations",
                 "application/jsonlines", lines(big), (200,)),
        Scenario("TF Serving rows, the image limit", "/v1/models/ssd:predict",
                 "application/json", b'{"instances": ' + instances(_noise_png(64)) + b"}",
                 (200,)),
    ]
    for scenario in out:
        if scenario.statuses == (200,):
            assert len(scenario.body) <= max_body, (scenario.name, len(scenario.body))
        else:
            assert tiny_count > count or len(scenario.body) > max_body, scenario.name
    return out


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


class PeakRSS:
    """A process's peak resident memory from a moment on: its VmHWM, reset through clear_refs
    (Linux 4.0+), or where that cannot be written, VmRSS sampled every 2 ms."""

    def __init__(self, pid: int):
        self.pid = pid
        self._stop = threading.Event()
        self._sampled = 0
        self._thread: threading.Thread | None = None
        self._reset = False

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self._sampled = max(self._sampled, _status_kib(self.pid, "VmRSS"))
            except (OSError, StopIteration):
                return
            time.sleep(0.002)

    def __enter__(self) -> PeakRSS:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            self._reset = True
        except OSError:
            self._reset = False
        self.start_kib = _status_kib(self.pid, "VmRSS")
        self._sampled = self.start_kib
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.peak_kib = self._sampled
        if self._reset:
            self.peak_kib = max(self.peak_kib, _status_kib(self.pid, "VmHWM"))


def _send(port: int, scenario: Scenario, rounds: int, start: threading.Barrier,
          statuses: list) -> None:
    """``rounds`` answers other than 503; after a 503 (the queue full) it sends again at once, so
    that the queue stays full, for at most ``CLIENT_TIMEOUT_S`` a round."""
    start.wait()
    for _ in range(rounds):
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while True:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
            try:
                connection.request("POST", scenario.path, scenario.body,
                                   {"Content-Type": scenario.content_type})
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as e:
                status = type(e).__name__
            finally:
                connection.close()
            if status != 503 or time.monotonic() > deadline:
                statuses.append(status)
                break
            time.sleep(0.01)


@dataclasses.dataclass(frozen=True)
class Pushed:
    """What one scenario did to the server."""
    over_baseline: int  # bytes: its peak RSS less its RSS once warmed up
    over_start: int  # bytes: its peak RSS less its RSS when the scenario began
    statuses: list  # the statuses answered (an exception's name where none was)


def push(port: int, pid: int, scenario: Scenario, clients: int, rounds: int,
         baseline_kib: int) -> Pushed:
    """``clients`` clients send ``scenario`` ``rounds`` times each, all starting together;
    ``baseline_kib`` is the server's RSS once warmed up."""
    statuses: list = []
    start = threading.Barrier(clients)
    threads = [threading.Thread(target=_send, args=(port, scenario, rounds, start, statuses),
                                daemon=True) for _ in range(clients)]
    with PeakRSS(pid) as peak:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=CLIENT_TIMEOUT_S * rounds + 30)
    return Pushed((peak.peak_kib - baseline_kib) * 1024, (peak.peak_kib - peak.start_kib) * 1024,
                  statuses)


def warm_up(port: int) -> None:
    """A few small requests of each kind, so that first calls' one-time costs are paid."""
    image = _noise_png(90 * 120)
    bodies = [("/invocations", "image/png", image),
              ("/invocations", "application/json", b'{"instances": [' + _instance(image).encode()
               + b"]}"),
              ("/invocations", "application/jsonlines", _instance(image).encode() + b"\n")]
    for _ in range(3):
        for path, content_type, body in bodies:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
            try:
                connection.request("POST", path, body, {"Content-Type": content_type})
                assert connection.getresponse().status == 200, (path, content_type)
            finally:
                connection.close()


def export_small_model(directory: str) -> str:
    """A random-weight SSD (VGG-16 at 1/16 width, 128 px) exported under ``directory``."""
    from tfssd.deploy import saved_model as export  # TensorFlow
    from tfssd.model.ssd import ssd_network

    ssd = ssd_network("vgg-16", 3, 128, width_multiplier=0.0625)
    return export.export_saved_model(ssd.model, ssd.anchors, os.path.join(directory, "export"),
                                     image_size=128, class_names=["a", "b", "c"],
                                     nms_threshold=0.45)


def main(argv: list[str]) -> int:
    preset = next((a.split("=", 1)[1] for a in argv if a.startswith("--preset=")), "abuse")
    rounds = int(next((a.split("=", 1)[1] for a in argv if a.startswith("--rounds=")), "2"))
    clients = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("--clients=")), None)
    if preset not in PRESETS:
        raise SystemExit(f"--preset must be one of {sorted(PRESETS)}, got {preset!r}")
    limits = PRESETS[preset]
    from tfssd.deploy.server import Limits  # TensorFlow

    bound = Limits(**limits).memory_bound()
    with tempfile.TemporaryDirectory(prefix="tfssd-push-") as work:
        model = export_small_model(work)
        port = load.free_port()
        server = load.ServerProcess([f"--model={model}", f"--port={port}",
                                     *serve_flags(limits)], port,
                                    log_path=os.path.join(work, "server.log"))
        try:
            server.wait_ready()
            warm_up(port)
            baseline = _status_kib(server.pid, "VmRSS")
            print(f"preset {preset}: {limits}")
            print(f"bound: {sum(bound.values()) / 2**20:.0f} MiB = " + "; ".join(
                f"{what} {size / 2**20:.0f}" for what, size in bound.items()))
            print("peak RSS over the warmed-up server's, and over the RSS at the scenario's "
                  "start (MiB):")
            print(f"{'scenario':<52} {'body MB':>8} {'peak':>6} {'(start)':>7} {'bound':>6}"
                  "  statuses")
            for scenario in scenarios(limits):
                pushed = push(port, server.pid, scenario, clients or limits["max_connections"],
                              rounds, baseline)
                counts = {s: pushed.statuses.count(s)
                          for s in sorted(set(pushed.statuses), key=str)}
                print(f"{scenario.name:<52} {len(scenario.body) / 1e6:>8.2f} "
                      f"{pushed.over_baseline / 2**20:>6.0f} {pushed.over_start / 2**20:>7.0f} "
                      f"{sum(bound.values()) / 2**20:>6.0f}  {counts}", flush=True)
            print(f"server RSS: {baseline / 1024:.0f} MiB warmed up, "
                  f"{_status_kib(server.pid, 'VmRSS') / 1024:.0f} MiB at the end")
        finally:
            server.stop()
            if "Traceback" in server.log():
                print(server.log()[-3000:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
