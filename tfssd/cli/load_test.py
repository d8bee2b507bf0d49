"""Load test of a tfssd-serve endpoint: throughput and p50/p99 latency per number of clients.

  python -m tfssd.cli.load_test --url=http://127.0.0.1:8080 --image=IMAGE [--concurrency=1,4,16]
  python -m tfssd.cli.load_test --model=EXPORT_DIR --image=IMAGE [--max_batch_sizes=8,1]

With --url it measures a running server. With --model it starts ``python -m tfssd.cli.serve`` itself
on a free 127.0.0.1 port once per --max_batch_sizes value (8: request batching on, 1: off),
measures, and stops it. "batch" is the mean number of images per model call (from the
server's GET /ping). Each client is a thread that sends its next request as soon as the
previous one is answered, over one kept-alive connection, for --seconds per level, after
--warmup_seconds not counted. Latencies are of 200 answers only; 503s (queue full) and anything
else are counted apart. Only the standard library: no TensorFlow in this process.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import http.client
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

from absl import app, flags

from tfssd.cli.command_runner import run_command

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("url", None, "A running server, e.g. http://127.0.0.1:8080.")
    flags.DEFINE_string("model", None, "An exported model: serve it here, once per "
                                       "--max_batch_sizes value.")
    flags.DEFINE_string("image", None, "The JPEG or PNG image every request sends.")
    flags.DEFINE_enum("api", "sagemaker", ["sagemaker", "tfserving"],
                      "sagemaker: POST /invocations with the image; tfserving: POST "
                      "/v1/models/NAME:predict with {\"instances\": [{\"b64\": ...}]}.")
    flags.DEFINE_string("model_name", "ssd", "NAME for --api=tfserving.")
    flags.DEFINE_list("concurrency", ["1", "4", "16"], "Numbers of concurrent clients.")
    flags.DEFINE_float("seconds", 10.0, "Measured time per level.", lower_bound=0.1)
    flags.DEFINE_float("warmup_seconds", 2.0, "Unmeasured time before each level.",
                       lower_bound=0)
    flags.DEFINE_list("max_batch_sizes", ["8", "1"], "With --model: one server per value.")
    flags.DEFINE_list("serve_flags", [], "With --model: more tfssd-serve flags, e.g. "
                                         "--serve_flags=--batch_timeout_ms=10.")
    flags.mark_flag_as_required("image")


@dataclasses.dataclass
class LevelResult:
    """What ``concurrency`` closed-loop clients got in ``seconds``."""
    concurrency: int
    seconds: float
    latencies_s: list[float]  # of the 200 answers
    statuses: collections.Counter  # HTTP status, or the exception's name -> count

    @property
    def throughput(self) -> float:
        """200 answers per second."""
        return len(self.latencies_s) / self.seconds

    def percentile_ms(self, p: float) -> float:
        """Nearest-rank percentile of the 200 answers' latencies (nan if none)."""
        ordered = sorted(self.latencies_s)
        if not ordered:
            return math.nan
        return 1000 * ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def request_for(api: str, image: bytes, model_name: str = "ssd") -> tuple[str, bytes, str]:
    """(path, body, content type) of one request carrying ``image``."""
    if api == "tfserving":
        body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()
        return f"/v1/models/{model_name}:predict", body, "application/json"
    return "/invocations", image, "image/png" if image[:4] == b"\x89PNG" else "image/jpeg"


def measure(url: str, path: str, body: bytes, content_type: str, concurrency: int,
            seconds: float, timeout_s: float = 120.0) -> LevelResult:
    """Runs ``concurrency`` clients POSTing ``body`` to ``url + path`` for ``seconds``."""
    address = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + seconds
    results = [([], collections.Counter()) for _ in range(concurrency)]

    def client(latencies: list[float], statuses: collections.Counter) -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port,
                                                timeout=timeout_s)
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                connection.request("POST", path, body, {"Content-Type": content_type})
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as e:
                statuses[type(e).__name__] += 1
                connection.close()  # the next request opens a new connection
                continue
            statuses[response.status] += 1
            if response.status == 200:
                latencies.append(time.perf_counter() - start)
            elif response.status == 503:
                time.sleep(0.01)  # back off a little, not the whole Retry-After: keep it full
        connection.close()

    threads = [threading.Thread(target=client, args=result, daemon=True) for result in results]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies = [t for result in results for t in result[0]]
    statuses = sum((result[1] for result in results), collections.Counter())
    return LevelResult(concurrency, time.monotonic() - start, latencies, statuses)


def batch_counts(url: str) -> tuple[int, int] | None:
    """(batches, images) a tfssd-serve has run so far, from GET /ping (None if not given)."""
    try:
        with urllib.request.urlopen(url + "/ping", timeout=30) as response:
            answer = json.loads(response.read())
        return int(answer["batches"]), int(answer["images"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m tfssd.cli.serve`` on 127.0.0.1 as a child process, its output in a log file."""

    def __init__(self, serve_flags: list[str], port: int, env: dict[str, str] | None = None,
                 log_path: str | None = None, command: list[str] | None = None):
        """``command`` (default: ``python -m tfssd.cli.serve``) gets --host=127.0.0.1 and the
        flags."""
        self.url = f"http://127.0.0.1:{port}"
        self._keep_log = log_path is not None
        self.log_path = log_path or tempfile.mkstemp(prefix="tfssd-serve-", suffix=".log")[1]
        command = command or [sys.executable, "-m", "tfssd.cli.serve"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([*command, "--host=127.0.0.1", *serve_flags],
                                            stdout=log, stderr=subprocess.STDOUT, env=env)
        self.pid = self.process.pid

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Returns once GET /ping answers 200; raises if the process ends or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tfssd.cli.serve exited ({self.process.returncode}):\n"
                                   + self.log()[-3000:])
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"tfssd.cli.serve not ready in {timeout_s:g} s:\n" + self.log()[-3000:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        if not self._keep_log and os.path.exists(self.log_path):
            os.remove(self.log_path)


def _print_levels(server: str, url: str, api: str, image: bytes) -> None:
    path, body, content_type = request_for(api, image, FLAGS.model_name)
    for concurrency in (int(c) for c in FLAGS.concurrency):
        if FLAGS.warmup_seconds:
            measure(url, path, body, content_type, concurrency, FLAGS.warmup_seconds)
        before = batch_counts(url)
        r = measure(url, path, body, content_type, concurrency, FLAGS.seconds)
        after = batch_counts(url)
        batch = "-"
        if before and after and after[0] > before[0]:
            batch = f"{(after[1] - before[1]) / (after[0] - before[0]):.1f}"
        others = sum(n for status, n in r.statuses.items() if status not in (200, 503))
        print(f"{server:<18} {concurrency:>7} {r.throughput:>11.2f} {r.percentile_ms(50):>8.0f} "
              f"{r.percentile_ms(99):>8.0f} {batch:>6} {r.statuses[200]:>6} "
              f"{r.statuses[503]:>5} {others:>5}", flush=True)
        if others:
            print(f"  other answers: {dict(r.statuses)}", flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if (FLAGS.url is None) == (FLAGS.model is None):
        raise app.UsageError("Give either --url (a running server) or --model (serve it here).")
    try:
        with open(FLAGS.image, "rb") as f:
            image = f.read()
    except OSError as e:
        raise app.UsageError(f"--image: {e}") from None
    print(f"{FLAGS.api} API, {len(image)}-byte image, {FLAGS.seconds:g} s per level, "
          f"{os.cpu_count()} CPUs")
    print(f"{'server':<18} {'clients':>7} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'batch':>6} {'ok':>6} {'503':>5} {'other':>5}")
    if FLAGS.url:
        _print_levels("url", FLAGS.url.rstrip("/"), FLAGS.api, image)
        return
    for size in FLAGS.max_batch_sizes:
        port = free_port()
        server = ServerProcess([f"--model={FLAGS.model}", f"--port={port}",
                                f"--max_batch_size={size}", f"--model_name={FLAGS.model_name}",
                                *FLAGS.serve_flags], port)
        try:
            server.wait_ready()
            _print_levels(f"max_batch_size={size}", server.url, FLAGS.api, image)
        finally:
            server.stop()


def run() -> None:
    run_command(define_flags, main, tensorflow=False)


if __name__ == "__main__":
    run()
