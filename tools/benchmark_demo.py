"""Benchmark of the demo's recipe: makes the demo's data, trains with its flags, and measures.

  python tools/benchmark_demo.py [--work_dir=/tmp/demo_benchmark] [--flagfile_path=...]

Does what tools/demo.sh does up to the training (synthetic shapes written as Pascal VOC,
converted with tfssd-convert, trained with tfssd-train and flags/demo_shapes_cpu.flags, the
number of training images read from that flagfile), then prints: the CPU (lscpu's model name),
the training's wall time, the steps trained, the validation mAP of the exported model (evaluated
again through tfssd.evaluate), and, for the validation images the demo draws, how many
detections reach the demo's draw threshold. A benchmark, not a test: its figures depend on the
machine and on what else runs on it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRAWN_IMAGES = 3  # tools/demo.sh draws the first three validation images
DRAW_THRESHOLD = 0.5  # tfssd-predict's default --draw_threshold


def define_flags() -> None:
    flags.DEFINE_string("work_dir", None, "Where the data and the model go (emptied first); "
                        "default: a temporary directory, removed at the end.")
    flags.DEFINE_string("flagfile_path", os.path.join(ROOT, "flags", "demo_shapes_cpu.flags"),
                        "The training recipe (an absl flagfile with --num_training_samples).")
    flags.DEFINE_integer("num_val", 50, "Validation images (as tools/demo.sh makes).")
    flags.DEFINE_integer("data_seed", 0, "Seed of the shapes generator (tools/demo.sh: 0).")


def flagfile_value(path: str, name: str) -> str:
    """The value of ``--name=value`` in an absl flagfile; ValueError naming the file if absent."""
    with open(path) as f:
        for line in f:
            match = re.fullmatch(rf"--{name}=(\S+)", line.strip())
            if match:
                return match.group(1)
    raise ValueError(f"{path} sets no --{name}=...")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (lscpu did not run)"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown (no 'Model name' in lscpu's output)"


def command(name: str) -> str:
    """The installed tfssd-* command beside this Python (the venv's), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.path.exists(beside) else name


def run(args: list[str], log_path: str) -> float:
    """Runs a command with its output to ``log_path``; returns its wall time in seconds."""
    start = time.monotonic()
    with open(log_path, "w") as log:
        result = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed with exit status {result.returncode}; "
                           f"its output: {log_path}")
    return elapsed


def benchmark(work_dir: str) -> dict:
    import tensorflow as tf

    import tfssd
    from tfssd.data import synthetic

    num_train = int(flagfile_value(FLAGS.flagfile_path, "num_training_samples"))
    voc_dir, data_dir = os.path.join(work_dir, "voc"), os.path.join(work_dir, "data")
    model_dir = os.path.join(work_dir, "model")
    synthetic.make_shapes_voc(voc_dir, num_train, FLAGS.num_val, FLAGS.data_seed)
    for split in ("train", "val"):
        run([command("tfssd-convert"), "--format=voc", f"--voc_dir={voc_dir}", f"--split={split}",
             f"--output={os.path.join(data_dir, split)}"],
            os.path.join(work_dir, f"convert_{split}.log"))
    train_log = os.path.join(work_dir, "train.log")
    train_seconds = run([command("tfssd-train"), f"--flagfile={FLAGS.flagfile_path}",
                         f"--train={os.path.join(data_dir, 'train-*')}",
                         f"--validation={os.path.join(data_dir, 'val-*')}",
                         f"--model_dir={model_dir}"], train_log)
    checkpoint = tf.train.latest_checkpoint(model_dir)
    steps = int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None
    export = os.path.join(model_dir, "export")
    report = tfssd.evaluate(export, os.path.join(data_dir, "val-*"))
    with open(os.path.join(voc_dir, "ImageSets", "Main", "val.txt")) as f:
        drawn = [line.strip() for line in f if line.strip()][:DRAWN_IMAGES]
    detector = tfssd.load(export)
    images = [os.path.join(voc_dir, "JPEGImages", image_id + ".jpg") for image_id in drawn]
    above = {image_id: int((d.scores >= DRAW_THRESHOLD).sum())
             for image_id, d in zip(drawn, detector.detect(images))}
    return {
        "cpu": cpu_model(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "flagfile": os.path.relpath(FLAGS.flagfile_path, ROOT),
        "train_images": num_train,
        "validation_images": FLAGS.num_val,
        "train_wall_seconds": round(train_seconds, 1),
        "steps": steps,
        "validation_map": round(float(report.voc.mean_ap), 4),
        "ap_per_class": {name: round(float(ap), 4)
                         for name, ap in zip(report.class_names, report.voc.ap)},
        f"detections_at_score_{DRAW_THRESHOLD}_on_drawn_images": above,
        "train_log": train_log,
    }


def main(argv):
    del argv
    work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix="tfssd_demo_benchmark_")
    if FLAGS.work_dir:
        shutil.rmtree(work_dir, ignore_errors=True)
        os.makedirs(work_dir)
    try:
        result = benchmark(work_dir)
    finally:
        if not FLAGS.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    if not FLAGS.work_dir:
        del result["train_log"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    define_flags()
    app.run(main)
