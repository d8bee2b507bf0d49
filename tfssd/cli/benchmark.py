"""Speed and memory of tfssd on this machine, with torchvision's SSD300 beside it if asked.

  tfssd-benchmark --base_network=vgg-16 --image_shape=300 --mini_batch_size=8 \
      [--precision=auto] [--export_precision=float32] [--compare=torchvision] [--figures=...]

Prints a header (CPU model and flags, GPUs, versions, the precision and why), then one line per
figure: images/s, ms per step and peak memory. --figures: train_step (forward, loss, backward,
optimizer on one batch held in memory), input (the tf.data pipeline alone: decode, augment,
match), end_to_end (the two together), inference (the exported SavedModel's serving_images
signature, uint8 images to detections, at each of --inference_batch_sizes), tflite (batch-1
LiteRT latency of the float32, float16 and int8 .tflite beside the SavedModel's) and openvino
(tfssd-export-openvino's .xml under OpenVINO, uint8 images to detections with its NMS, at each
of --inference_batch_sizes: the float32 model computing in float32 and, where the CPU has
bfloat16, in bfloat16; the int8 model; beside the SavedModel's).
--compare=torchvision adds torchvision's ssd300_vgg16 (random weights; the same batch, image
size and boxes; channels_last; autocast for 16 bits): train step and batch-1 inference, and the
ratios tfssd / torchvision at the end.

Each measurement runs in a worker process of its own (measurements.py, given a JSON spec): it
builds what it measures, runs --warmup_steps untimed steps, then times steps when asked. The
workers of one figure stay up together and take turns, round after round (A/B/A/B), so that
each sees the same machine. Throughput is the mean step, latency (inference) the median call.
Peak memory is the worker's VmHWM (peak resident set, /proc/self/status) at its end: framework,
model and data; on a GPU also the framework's own peak allocation.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from importlib import metadata

from absl import app, flags

from tfssd.cli.command_runner import run_command
from tfssd.cli.measurements import MESSAGE
from tfssd.config.run_config import TFLITE_QUANTIZATIONS

FLAGS = flags.FLAGS
FIGURES = ("train_step", "input", "end_to_end", "inference", "tflite", "openvino")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")  # tfssd.config.precision's
EXPORT_PRECISIONS = ("float32", "bfloat16", "float16")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
AUTOCAST = {"float32": None, "mixed_bfloat16": "bfloat16", "bfloat16": "bfloat16",
            "mixed_float16": "float16", "float16": "float16"}  # tfssd precision -> torch's
BENCH_MISSING = '--compare=torchvision needs torch and torchvision: pip install -e ".[bench]"'
LITERT_MISSING = "--figures=tflite needs LiteRT: pip install ai-edge-litert (or tfssd[lite])"
OPENVINO_MISSING = "--figures=openvino needs OpenVINO and NNCF: pip install 'tfssd[openvino]'"
OPENVINO_RUNS = (("float32", "none"), ("bfloat16", "none"), ("int8", "int8"))  # (compute, file)


def define_flags() -> None:
    flags.DEFINE_enum("base_network", "vgg-16", ["vgg-16", "resnet-50"], "Backbone.")
    flags.DEFINE_integer("image_shape", 300, "Input side.")
    flags.DEFINE_integer("mini_batch_size", 8, "Training batch size.")
    flags.DEFINE_float("width_multiplier", 1.0, "Network width.")
    flags.DEFINE_integer("num_classes", 20, "Object classes, background not counted.")
    flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adam", "rmsprop", "adadelta"],
                      "tfssd's optimizer (torchvision's is SGD).")
    flags.DEFINE_enum("precision", "auto", list(PRECISIONS), "Training precision, as "
                      "tfssd-train's (auto: from the hardware; the header says what and why).")
    flags.DEFINE_enum("export_precision", "float32", list(EXPORT_PRECISIONS), "Precision of the "
                      "SavedModel measured, and of torchvision's inference.")
    flags.DEFINE_list("figures", [f for f in FIGURES if f != "openvino"],
                      f"What to measure: any of {', '.join(FIGURES)}.")
    flags.DEFINE_list("inference_batch_sizes", ["1", "8"], "SavedModel (and OpenVINO) inference "
                      "batch sizes.")
    flags.DEFINE_enum("compare", "none", ["none", "torchvision"],
                      "torchvision: measure torchvision's ssd300_vgg16 too (extra [bench]).")
    flags.DEFINE_integer("warmup_steps", 2, "Untimed steps in each worker before any timing.")
    flags.DEFINE_integer("steps", 5, "Timed steps per round: train step, input, end to end.")
    flags.DEFINE_integer("inference_steps", 20, "Timed calls per round: inference, TFLite.")
    flags.DEFINE_integer("rounds", 2, "Rounds; in each, every worker of a figure takes a turn.")
    flags.DEFINE_integer("tflite_threads", 0, "LiteRT's CPU threads (0: one per CPU).")
    flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow inter-op threads (0: its default).")


class BenchmarkError(Exception):
    """A measurement failed; the message names it and its worker's log."""


class Worker:
    """A worker process: JSON messages on its stdout, 'run N' or 'stop' on its stdin."""

    def __init__(self, spec: dict):
        self.name, self.log = spec["name"], os.path.join(spec["work_dir"], spec["name"] + ".log")
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from tfssd.cli.measurements import worker; worker()",
                 json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                text=True)

    def receive(self, key: str):
        for line in self.process.stdout:
            if line.startswith(MESSAGE):
                message = json.loads(line[len(MESSAGE):])
                if "error" in message:
                    raise BenchmarkError(f"{self.name}: {message['error']} (see {self.log})")
                return message[key]
        code = self.process.wait()
        raise BenchmarkError(f"{self.name}: the worker ended (exit code {code}"
                             f"{', killed: out of memory?' if code == -9 else ''}) without "
                             f"answering; see {self.log}")

    def ask(self, command: str, key: str):
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.receive(key)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@dataclasses.dataclass
class Member:
    """One line of output: what is measured for which figure, and what came back."""

    figure: str  # "train step", "inference batch 1", ...
    who: str
    spec: dict
    batch: int
    latency: bool  # the median call (inference), else the mean step (throughput)
    steps: int  # timed a round
    info: dict = dataclasses.field(default_factory=dict)
    times: list = dataclasses.field(default_factory=list)  # seconds, a list per round
    peak: dict = dataclasses.field(default_factory=dict)

    def seconds(self, times=None) -> float:
        times = times or [t for one_round in self.times for t in one_round]
        return statistics.median(times) if self.latency else statistics.fmean(times)

    def line(self) -> str:
        head = f"{self.figure:<18} {self.who:<30}"
        if "na" in self.info:
            return f"{head} n/a: {self.info['na']}"
        seconds, count, gpu = self.seconds(), sum(map(len, self.times)), self.peak.get("device")
        how = f"median of {count} calls" if self.latency else f"mean of {count} steps"
        return (f"{head} {self.batch / seconds:9.2f} images/s {seconds * 1e3:10.1f} ms  peak "
                f"{self.peak['rss']:6.0f} MiB{f' + {gpu:.0f} MiB GPU' if gpu else ''}  "
                f"({how}{''.join(f', {v}' for v in self.info.values())})")


def _measure(members: list[Member]) -> None:
    """Starts a figure's workers one after another, then times them in turns, round by round."""
    workers = []
    try:
        for member in members:
            workers.append(Worker(member.spec))
            member.info = workers[-1].receive("ready")
        live = [(m, w) for m, w in zip(members, workers) if "na" not in m.info]
        for _ in range(FLAGS.rounds):
            for member, worker in live:
                member.times.append(worker.ask(f"run {member.steps}", "times"))
        for member, worker in live:
            member.peak = worker.ask("stop", "peak")
    finally:
        for worker in workers:
            worker.close()


def _groups(figures, common: dict, prepared: dict) -> list[list[Member]]:
    """The figures' members, grouped as they take turns; tfssd's first in each group."""
    batch, policy, export = FLAGS.mini_batch_size, common["policy"], FLAGS.export_precision
    torch, names = FLAGS.compare == "torchvision", iter(range(1, 1000))

    def member(figure, who, kind, size=batch, latency=False, steps=FLAGS.steps, **extra):
        spec = dict(common, kind=kind, name=f"{next(names):02d}-{kind}", batch=size, **extra)
        return Member(figure, who, spec, size, latency,
                      FLAGS.inference_steps if latency else steps)

    def torchvision(figure: str, kind: str, precision: str, size: int) -> Member:
        dtype = AUTOCAST[precision]
        return member(figure, f"torchvision {dtype + ' autocast' if dtype else 'float32'}", kind,
                      size, latency=kind == "torch_inference", autocast=dtype)

    groups = []
    if "train_step" in figures:
        groups.append([member("train step", f"tfssd {policy}", "tfssd_train")] + (
            [torchvision("train step", "torch_train", policy, batch)] if torch else []))
    if "input" in figures:  # cheap steps, and a prefetch buffer to drain: ten times as many
        groups.append([member("input pipeline", "tfssd tf.data", "tfssd_input",
                              steps=10 * FLAGS.steps)])
    if "end_to_end" in figures:
        groups.append([member("end to end", f"tfssd {policy}", "tfssd_end_to_end")])
    sizes = {int(b) for b in FLAGS.inference_batch_sizes} if {"inference", "openvino"} & set(
        figures) else set()
    for size in sorted(sizes | ({1} if "tflite" in figures else set())):
        figure = f"inference batch {size}"
        group = [member(figure, f"tfssd SavedModel {export}", "saved_model", size, True,
                        path=prepared["saved_models"][export])]
        if size == 1 and torch and "inference" in figures:
            group.append(torchvision(figure, "torch_inference", export, 1))
        if size == 1 and "tflite" in figures:
            group += [member(figure, f"tfssd .tflite {TFLITE_QUANTIZATIONS[q]}", "tflite", 1, True,
                             path=path) for q, path in prepared["tflite"].items()]
        if "openvino" in figures:
            group += [member(figure, f"tfssd OpenVINO {compute}", "openvino", size, True,
                             path=prepared["openvino"][file], compute=compute)
                      for compute, file in OPENVINO_RUNS]
        groups.append(group)
    return groups


def _ratios(groups: list[list[Member]]) -> list[str]:
    """Speed ratios of each member to its group's first (tfssd's), overall and by round."""
    lines = []
    for base, *others in groups:
        for other in (o for o in others if base.times and o.times):
            a, b = (base, other) if other.who.startswith("torchvision") else (other, base)
            rounds = " ".join(f"{b.seconds(y) / a.seconds(x):.2f}"
                              for x, y in zip(a.times, b.times))
            lines.append(f"  {base.figure:<18} {a.who + ' / ' + b.who:<60} "
                         f"{b.seconds() / a.seconds():5.2f}  (rounds: {rounds})")
    return lines


def _fail(message: str, code: int) -> None:
    print(f"tfssd-benchmark: {message}", file=sys.stderr)
    sys.exit(code)


def _check_flags() -> tuple[str, ...]:
    figures = tuple(FLAGS.figures)
    if not figures or set(figures) - set(FIGURES):
        raise app.UsageError(f"--figures={','.join(figures)}: expected some of "
                             f"{','.join(FIGURES)}")
    if not all(b.isdigit() and int(b) > 0 for b in FLAGS.inference_batch_sizes):
        raise app.UsageError("--inference_batch_sizes: expected positive integers")
    for name, least in (("mini_batch_size", 1), ("image_shape", 32), ("num_classes", 1),
                        ("steps", 1), ("inference_steps", 1), ("rounds", 1),
                        ("warmup_steps", 0), ("tflite_threads", 0), ("inter_op_threads", 0)):
        if FLAGS[name].value < least:
            raise app.UsageError(f"--{name}={FLAGS[name].value}: expected >= {least}")
    installed = lambda *names: all(importlib.util.find_spec(n) is not None for n in names)
    if FLAGS.compare == "torchvision" and not installed("torch", "torchvision"):
        _fail(BENCH_MISSING, 2)
    if "tflite" in figures and not installed("ai_edge_litert"):
        _fail(LITERT_MISSING, 2)
    if "openvino" in figures and not installed("openvino", "nncf"):
        _fail(OPENVINO_MISSING, 2)
    return figures


def _precision() -> tuple[str, str, list[str]]:
    """The Keras policy --precision means here, why, and the GPUs (tfssd.config.precision)."""
    import tensorflow as tf

    from tfssd.config.run_config import TrainConfig

    try:
        from tfssd.config import precision
    except ImportError:  # a tfssd from before mixed precision
        precision = None
    if precision is None or "precision" not in {f.name for f in dataclasses.fields(TrainConfig)}:
        if FLAGS.precision not in ("auto", "float32"):
            raise app.UsageError(f"--precision={FLAGS.precision}: this tfssd trains in float32 "
                                 "only (no tfssd.config.precision)")
        return ("float32", "this tfssd trains in float32 only",
                [d.name for d in tf.config.list_physical_devices("GPU")])
    hardware = precision.describe_hardware()
    policy, why = precision.choose(FLAGS.precision, hardware)
    return policy, why, [f"{name} (compute capability {major}.{minor})"
                         for name, (major, minor) in hardware.gpus]


def _header(figures, policy: str, why: str, gpus: list[str]) -> list[str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    lscpu = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in
                                                   text.splitlines())}
    has = [f for f in CPU_FLAGS if f in lscpu.get("Flags", "").split()]
    torch = FLAGS.compare == "torchvision"
    packages = ["tensorflow", "keras"] + (["torch", "torchvision"] if torch else []) + (
        ["ai-edge-litert"] if "tflite" in figures else []) + (
        ["openvino", "nncf"] if "openvino" in figures else [])
    lines = [f"CPU: {lscpu.get('Model name', platform.processor())} (lscpu), {os.cpu_count()} "
             f"CPUs; flags: {' '.join(has) or '-'}; lacks: "
             f"{' '.join(f for f in CPU_FLAGS if f not in has) or '-'}",
             f"GPU: {', '.join(gpus) or 'none'}",
             ", ".join([f"Python {platform.python_version()}"] + [
                 f"{name} {metadata.version(name)}" for name in packages] + [
                 f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}"]),
             f"precision: {policy} (--precision={FLAGS.precision}"
             f"{': ' + why if FLAGS.precision == 'auto' else ''}); SavedModel measured: "
             f"{FLAGS.export_precision}"]
    if torch:
        lines.append(f"torchvision: ssd300_vgg16, random weights, channels_last, SGD; train "
                     f"{AUTOCAST[policy] or 'float32'}, inference "
                     f"{AUTOCAST[FLAGS.export_precision] or 'float32'} (16 bits: autocast)")
    return lines + [f"method: a process per measurement; warm-up: {FLAGS.warmup_steps} steps; "
                    f"{FLAGS.rounds} rounds taking turns, {FLAGS.steps} timed steps a turn "
                    f"(input: {10 * FLAGS.steps}; inference: {FLAGS.inference_steps} calls); "
                    "peak: the process's VmHWM",
                    _load("before")]


def _load(when: str) -> str:
    return f"load average {when}: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    figures = _check_flags()
    policy, why, gpus = _precision()
    print("\n".join(_header(figures, policy, why, gpus)), flush=True)
    work, batch = tempfile.mkdtemp(prefix="tfssd-benchmark-"), FLAGS.mini_batch_size
    common = dict(work_dir=work, base_network=FLAGS.base_network, image_size=FLAGS.image_shape,
                  batch=batch, width=FLAGS.width_multiplier, num_classes=FLAGS.num_classes,
                  optimizer=FLAGS.optimizer, policy=policy, warmup_steps=FLAGS.warmup_steps,
                  inter_op_threads=FLAGS.inter_op_threads, records=max(64, 2 * batch),
                  threads=FLAGS.tflite_threads or os.cpu_count(),
                  batch_file=os.path.join(work, "batch.npz"))
    sizes = [int(b) for b in FLAGS.inference_batch_sizes] if {"inference", "openvino"} & set(
        figures) else []
    exports = {FLAGS.export_precision} if sizes or "tflite" in figures else set()
    converted = {"tflite", "openvino"} & set(figures)  # made from the float32 SavedModel
    prepare = Worker(dict(common, kind="prepare", name="prepare", tflite="tflite" in figures,
                          openvino="openvino" in figures,
                          exports=sorted(exports | ({"float32"} if converted else set())),
                          inference_batch=max(sizes + [1])))
    failed = False
    try:
        try:
            prepared = prepare.receive("ready")
        finally:
            prepare.close()
        common.update(train_files=prepared["train_files"], anchors=prepared["anchors_file"])
        print(f"{prepared['model']}: width {FLAGS.width_multiplier:g}, {FLAGS.num_classes} "
              f"classes, {prepared['parameters']:,} parameters, {prepared['anchors']} anchors, "
              f"{FLAGS.image_shape}x{FLAGS.image_shape}, training batch {batch}, random weights",
              flush=True)
        groups = _groups(figures, common, prepared)
        for group in groups:
            _measure(group)
            print("\n".join(member.line() for member in group), flush=True)
        ratios = _ratios(groups)
        if ratios:
            print("speed ratios, images/s of the first over the second (>1: the first is "
                  "faster):\n" + "\n".join(ratios))
        print(_load("after"))
    except BenchmarkError as e:
        failed = True
        _fail(f"{e} (its work directory {work} is kept)", 1)
    finally:
        if not failed:
            shutil.rmtree(work, ignore_errors=True)


def run() -> None:
    run_command(define_flags, main)


if __name__ == "__main__":
    run()
