"""Runs a distributed tfssd training as a cluster of local processes on 127.0.0.1.

  tfssd-cluster --kv_store=dist_sync --workers=2 -- \
      --num_classes=3 --num_training_samples=400 --train='data/train-*' --model_dir=run ...
  tfssd-cluster --kv_store=dist_async --workers=2 --ps=1 -- <training flags>

Each process gets its TF_CONFIG (free ports on 127.0.0.1). dist_sync: every worker runs
``python -m tfssd.cli.train <flags> --kv_store=dist_sync``; worker 0 is the chief. dist_async: the
chief runs the training command with --kv_store=dist_async, workers and parameter servers run
``python -m tfssd.cli.cluster_server``. Output is streamed with a [worker 0]-style prefix and each
process's
pid is printed first. When the chief ends, the others are stopped (if it succeeded, after a grace
period to end by themselves); Ctrl-C stops them all. The exit code is the chief's (128 + N when
signal N killed it).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

from tfssd.cli.command_runner import run_command

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_enum("kv_store", "dist_sync", ["dist_sync", "dist_async"], "Distribution mode.")
    flags.DEFINE_integer("workers", 2, "Worker processes.")
    flags.DEFINE_integer("ps", 1, "Parameter servers (dist_async only).")
    flags.DEFINE_integer("grace_seconds", 10, "After a successful chief, how long the others get "
                         "to end by themselves before SIGTERM; then how long before SIGKILL.")

_print_lock = threading.Lock()


def _say(prefix: str, line: str) -> None:
    with _print_lock:
        sys.stdout.write(f"[{prefix}] {line}")
        if not line.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _stream(prefix: str, process: subprocess.Popen) -> None:
    for line in process.stdout:
        _say(prefix, line)


def _wait_all(processes: dict, seconds: float) -> None:
    deadline = time.time() + seconds
    for process in processes.values():
        try:
            process.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            pass


def _stop(processes: dict, finish_first: bool = False) -> None:
    """SIGTERM, then SIGKILL after the grace period; with finish_first, the processes first get
    that period to end by themselves (dist_sync workers finishing, servers seeing the chief
    gone)."""
    if finish_first:
        _wait_all(processes, FLAGS.grace_seconds)
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    _wait_all(processes, FLAGS.grace_seconds)
    for process in processes.values():
        if process.poll() is None:
            process.kill()


def main(argv):
    train_args = argv[1:]
    if FLAGS.workers < 1 or (FLAGS.kv_store == "dist_async" and FLAGS.ps < 1):
        raise app.UsageError("Need at least one worker, and one ps for dist_async.")
    asynchronous = FLAGS.kv_store == "dist_async"
    roles = ([("chief", 0)] if asynchronous else []) + [("worker", i) for i in
                                                        range(FLAGS.workers)]
    roles += [("ps", i) for i in range(FLAGS.ps)] if asynchronous else []
    ports = iter(_free_ports(len(roles)))
    cluster = {}
    for kind, _ in roles:
        cluster.setdefault(kind, []).append(f"127.0.0.1:{next(ports)}")
    train = [sys.executable, "-m", "tfssd.cli.train", *train_args, f"--kv_store={FLAGS.kv_store}"]
    server = [sys.executable, "-m", "tfssd.cli.cluster_server"]
    chief = ("chief", 0) if asynchronous else ("worker", 0)
    processes = {}
    for kind, index in roles:
        command = train if (kind, index) == chief or not asynchronous else server
        environ = {**os.environ, "PYTHONUNBUFFERED": "1",
                   "TF_CONFIG": json.dumps({"cluster": cluster,
                                            "task": {"type": kind, "index": index}})}
        process = subprocess.Popen(command, env=environ, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        processes[(kind, index)] = process
        _say("launcher", f"{kind} {index} at {cluster[kind][index]}: pid {process.pid}")
        threading.Thread(target=_stream, args=(f"{kind} {index}", process), daemon=True).start()
    try:
        code = processes[chief].wait()
    except KeyboardInterrupt:
        _say("launcher", "interrupted: stopping every process")
        _stop(processes)
        sys.exit(130)
    ended = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
    _say("launcher", f"the chief {ended}; stopping the other processes")
    _stop(processes, finish_first=code == 0)
    time.sleep(0.2)  # let the streams drain
    sys.exit(128 - code if code < 0 else code)


def run() -> None:
    run_command(define_flags, main, tensorflow=False)


if __name__ == "__main__":
    run()
