"""The measuring side of tfssd-benchmark: one process per measurement (see benchmark.py).

worker() runs in a process of its own (python -c, its JSON spec the argument). It builds what
it measures: tfssd's train step (on a batch in memory or on its input pipeline), the input
pipeline alone, an exported SavedModel, a .tflite under LiteRT or an OpenVINO .xml under
OpenVINO (both without TensorFlow), or
torchvision's ssd300_vgg16 (the one place tfssd imports torch, from the [bench] extra). Then it
runs its warm-up steps, answers "ready", times steps whenever the parent writes "run N" on its
stdin, and on "stop" answers its peak memory; answers are JSON lines on its stdout.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
import time
import traceback

from tfssd.cli.command_runner import quiet_tensorflow
from tfssd.config.run_config import TFLITE_QUANTIZATIONS

MESSAGE = "@@tfssd-benchmark "  # starts each protocol line on a worker's stdout
BOXES_PER_IMAGE = 3  # random ground truth in the fixed training batch (tfssd's and torch's)
CALIBRATION_IMAGES = 8  # int8 calibration; its quality does not change the latency


def worker() -> None:
    """A worker's entry (python -c, its JSON spec the argument); see the module docstring."""
    spec = json.loads(sys.argv[1])
    try:
        if spec["kind"] == "prepare":
            return _send(ready=_prepare(spec))
        build = _torch if spec["kind"].startswith("torch") else {
            "tfssd_train": _train, "tfssd_end_to_end": _train, "tfssd_input": _input,
            "saved_model": _saved_model, "tflite": _tflite,
            "openvino": _openvino}[spec["kind"]]
        step, info, device_peak = build(spec)
        for _ in range(spec["warmup_steps"] if step else 0):
            step()
        _send(ready=info)
        for line in sys.stdin:
            if not line.startswith("run "):
                break
            times = []
            for _ in range(int(line.split()[1])):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            _send(times=times)
        _send(peak={"rss": _peak_rss_mib(), "device": device_peak()})
    except Exception as e:  # the parent names it and this worker's log
        traceback.print_exc()
        _send(error=f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")
        sys.exit(1)


def _send(**message) -> None:
    print(MESSAGE + json.dumps(message), flush=True)


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource  # no /proc: the same figure from getrusage (bytes on macOS, else KiB)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _tensorflow(spec: dict):
    """TensorFlow with its GPU memory grown as used (so that its peak means something and
    torchvision can share the GPU), and a function giving that peak in MiB (None on a CPU)."""
    quiet_tensorflow()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if spec["inter_op_threads"]:
        tf.config.threading.set_inter_op_parallelism_threads(spec["inter_op_threads"])
    tf.get_logger().setLevel("ERROR")
    return tf, lambda: (tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
                        if gpus else None)


def _prepare(spec: dict) -> dict:
    """What the workers share: TFRecords, the batch, anchors, SavedModels, .tflite files."""
    import keras
    import numpy as np

    _tensorflow(spec)
    from tfssd.cli.export_tflite import calibration_images
    from tfssd.config.run_config import ModelConfig
    from tfssd.data import conversion, synthetic, voc
    from tfssd.deploy import saved_model as export
    from tfssd.deploy import tflite as tflite_export
    from tfssd.deploy import trained_ssd
    from tfssd.model.ssd import build_ssd

    work, size, batch = spec["work_dir"], spec["image_size"], spec["batch"]
    root = synthetic.make_shapes_voc(os.path.join(work, "voc"), spec["records"], 0, seed=0)
    conversion.convert(voc.read_voc(f"{root}/Annotations", f"{root}/JPEGImages"),
                       os.path.join(work, "data", "train"), num_shards=2)
    model = ModelConfig(num_classes=spec["num_classes"], base_network=spec["base_network"],
                        image_size=size, width_multiplier=spec["width"],
                        use_pretrained_model=False)
    keras.utils.set_random_seed(0)
    ssd = build_ssd(model, load_pretrained=False)
    rng, shape = np.random.default_rng(0), (batch, BOXES_PER_IMAGE, 2)
    centres, sides = rng.uniform(0.3, 0.7, shape), rng.uniform(0.1, 0.6, shape)
    np.savez(spec["batch_file"], images=rng.uniform(0, 255, (batch, size, size, 3)).astype("f4"),
             boxes=np.concatenate([centres - sides / 2, centres + sides / 2], -1).astype("f4"),
             classes=rng.integers(0, spec["num_classes"], shape[:2], dtype=np.int32),
             inference_images=rng.integers(0, 256, (spec["inference_batch"], size, size, 3),
                                           dtype=np.uint8))
    info = dict(model=ssd.model.name, parameters=ssd.model.count_params(),
                anchors=ssd.num_anchors, anchors_file=os.path.join(work, "anchors.npy"),
                train_files=sorted(glob.glob(os.path.join(work, "data", "train-*"))),
                saved_models={}, tflite={}, openvino={})
    np.save(info["anchors_file"], ssd.anchors)
    settings = dict(image_size=size, class_names=[str(c) for c in range(spec["num_classes"])],
                    nms_threshold=model.nms_threshold, score_threshold=model.score_threshold,
                    max_detections=model.max_detections)
    for precision in spec["exports"]:
        # The same weights computing in 16 bits, as tfssd-train's --export_precision writes it.
        served = ssd.model if precision == "float32" else ssd.in_precision(
            f"mixed_{precision}").model
        info["saved_models"][precision] = export.export_saved_model(
            served, ssd.anchors, os.path.join(work, f"export-{precision}"), **settings)
    if spec["tflite"] or spec.get("openvino"):
        trained = trained_ssd.load_trained_ssd(info["saved_models"]["float32"])
    if spec.get("openvino"):
        from tfssd.deploy import openvino_export

        models = openvino_export.build_all(trained, calibration_images(
            info["train_files"], size, CALIBRATION_IMAGES)(), CALIBRATION_IMAGES)
        for quantize, built in models.items():
            info["openvino"][quantize] = path = os.path.join(work, f"ssd-{quantize}.xml")
            openvino_export.save(built, path, settings["class_names"])
    if spec["tflite"]:
        for quantize in TFLITE_QUANTIZATIONS:
            info["tflite"][quantize] = path = os.path.join(work, f"ssd-{quantize}.tflite")
            tflite_export.export_tflite(trained, path, quantize, calibration_images(
                info["train_files"], size, CALIBRATION_IMAGES) if quantize == "int8" else None)
    return info


def _train(spec: dict):
    """tfssd's train step on one batch held in memory, or on its input pipeline (end to end)."""
    tf, device_peak = _tensorflow(spec)
    import numpy as np

    from tfssd.config import run_config as config
    from tfssd.data.targets import encode_targets
    from tfssd.training import Trainer
    from tfssd.training.distribution import Cluster

    precision = {"precision": spec["policy"]} if spec["policy"] != "float32" else {}
    trainer = Trainer(config.Config(
        model=config.ModelConfig(
            num_classes=spec["num_classes"], base_network=spec["base_network"],
            image_size=spec["image_size"], width_multiplier=spec["width"],
            use_pretrained_model=False),
        data=config.DataConfig(train_files=tuple(spec["train_files"])),
        train=config.TrainConfig(
            num_training_samples=spec["records"], epochs=100, mini_batch_size=spec["batch"],
            optimizer=spec["optimizer"], model_dir=os.path.join(spec["work_dir"], spec["name"]),
            seed=0, **precision)), tf.distribute.get_strategy(), Cluster())
    if spec["kind"] == "tfssd_end_to_end":
        batches = trainer.train_dataset()
    else:
        data, anchors = np.load(spec["batch_file"]), tf.constant(trainer.ssd.anchors)
        cls_targets, box_targets = zip(*(encode_targets(tf.constant(b), tf.constant(c), anchors)
                                         for b, c in zip(data["boxes"], data["classes"])))
        batch = (tf.constant(data["images"]), {"cls_targets": tf.stack(cls_targets),
                                               "box_targets": tf.stack(box_targets)})
        batches = trainer.strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensors(batch).repeat())
    iterator = iter(batches)
    # The step's losses fetched, however many it returns: the step has run.
    step = lambda: tf.nest.map_structure(lambda t: t.numpy(), trainer.train_step(iterator))
    return step, {}, device_peak


def _input(spec: dict):
    """tfssd's input pipeline alone, with the network's anchors (no network in this process)."""
    tf, device_peak = _tensorflow(spec)
    import numpy as np

    from tfssd.config.run_config import DataConfig
    from tfssd.data import pipeline

    data = DataConfig(train_files=tuple(spec["train_files"]))
    iterator = iter(pipeline.build_train_dataset(
        data.train_files, np.load(spec["anchors"]), image_size=spec["image_size"],
        label_width=data.label_width, num_classes=spec["num_classes"], batch_size=spec["batch"],
        samples_per_epoch=spec["records"], seed=0, shuffle_buffer=data.shuffle_buffer))
    return lambda: tf.nest.map_structure(lambda t: t.numpy(), next(iterator)), {}, device_peak


def _saved_model(spec: dict):
    """The exported SavedModel's serving_images signature on a uint8 batch."""
    tf, device_peak = _tensorflow(spec)
    import numpy as np

    serve = tf.saved_model.load(spec["path"]).signatures["serving_images"]
    images = tf.constant(np.load(spec["batch_file"])["inference_images"][:spec["batch"]])
    return lambda: {k: v.numpy() for k, v in serve(images=images).items()}, {}, device_peak


def _tflite(spec: dict):
    """A .tflite under LiteRT at batch 1, in a process without TensorFlow."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    run = Interpreter(model_path=spec["path"], num_threads=spec["threads"]
                      ).get_signature_runner("serving_default")
    dtype = run.get_input_details()["images"]["dtype"]  # float32 pixels, or uint8 (int8)
    image = np.load(spec["batch_file"])["inference_images"][:1].astype(dtype)
    info = {"threads": f"{spec['threads']} threads",
            "size": f"{os.path.getsize(spec['path']) / 2**20:.1f} MiB file"}
    return lambda: run(images=image), info, lambda: None


def _openvino(spec: dict):
    """An .xml under OpenVINO's CPU plugin, at the spec's batch and inference precision, in a
    process without TensorFlow. The plugin's own default would be bfloat16 on a CPU with it."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    hint = {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}[spec["compute"]]
    if hint == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return None, {"na": "this CPU has no bfloat16 instructions"}, None
    compiled = core.compile_model(spec["path"], "CPU", {
        "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": spec["threads"]})
    images = np.load(spec["batch_file"])["inference_images"][:spec["batch"]]
    request = compiled.create_infer_request()
    info = {"threads": f"{spec['threads']} threads", "hint": f"{hint}",
            "size": f"{os.path.getsize(os.path.splitext(spec['path'])[0] + '.bin') / 2**20:.1f}"
                    " MiB .bin"}
    return lambda: request.infer({0: images}), info, lambda: None


def _torch(spec: dict):
    """torchvision's ssd300_vgg16 at its best for the precision: train step or inference."""
    import numpy as np
    import torch
    import torchvision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype, size = spec["autocast"], spec["image_size"]
    if dtype == "float16" and device.type == "cpu":
        return None, {"na": "float16 autocast is for GPUs; not applicable on a CPU"}, None
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True  # on a GPU: the fastest convolutions, as TF's autotune
    model = torchvision.models.detection.ssd300_vgg16(
        weights=None, weights_backbone=None, num_classes=spec["num_classes"] + 1)
    transform = model.transform  # tfssd's image size (SSD300's by default)
    transform.min_size, transform.max_size, transform.fixed_size = (size,), size, (size, size)
    model = model.to(device, memory_format=torch.channels_last)
    autocast = lambda: (torch.autocast(device.type, dtype=getattr(torch, dtype)) if dtype
                        else contextlib.nullcontext())
    info = {"device": f"{device.type}, {torch.get_num_threads()} threads"}
    peak = lambda: torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    data = np.load(spec["batch_file"])
    if spec["kind"] == "torch_inference":
        model.eval()
        image = torch.from_numpy(data["inference_images"][0]).to(device).permute(2, 0, 1) / 255

        def infer():
            with torch.inference_mode(), autocast():
                detections = model([image])
            detections[0]["boxes"].cpu()  # waits for the device

        return infer, info, peak
    images = (torch.from_numpy(data["images"]).to(device).permute(0, 3, 1, 2) / 255).contiguous(
        memory_format=torch.channels_last)
    # tfssd's normalised yxyx boxes as pixel xyxy; labels from 1 (0 is the background).
    boxes = torch.from_numpy(data["boxes"][..., [1, 0, 3, 2]] * size).to(device)
    labels = torch.from_numpy(data["classes"].astype(np.int64) + 1).to(device)
    targets = [{"boxes": b, "labels": c} for b, c in zip(boxes, labels)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=0.0005)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "float16")
    model.train()

    def train_step():
        with autocast():
            loss = sum(model(list(images), targets).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # a no-op scale unless float16
        scaler.step(optimizer)
        scaler.update()
        loss.item()  # waits for the device

    return train_step, info, peak
