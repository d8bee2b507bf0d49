"""Typed, frozen configuration of a tfssd run, built once from validated hyperparameters.

Only the ``build_*`` factories read these objects; what they build takes plain values. Values
that follow from others (steps per epoch, schedule boundaries in steps) are properties, never
stored twice. No TensorFlow import here: configuration is checked before any TF work starts.
"""

from __future__ import annotations

import dataclasses
import math

# SageMaker's names (tfssd's networks), then SageMaker's own MXNet networks layer for layer
# (model/sagemaker_networks.py: what tfssd-import-sagemaker makes of SageMaker's models).
BASE_NETWORKS = ("vgg-16", "resnet-50", "sagemaker-vgg-16", "sagemaker-resnet-50")
OPTIMIZERS = ("sgd", "adam", "rmsprop", "adadelta")
KV_STORES = ("dist_sync", "dist_async")
AP_METHODS = ("11point", "allpoint")
INPUT_FORMATS = ("tfssd", "odapi", "auto")
# TFLite export: "none" keeps float32 weights; int8 quantizes the network (post-processing stays
# float). Names as the figures and files call them:
TFLITE_QUANTIZATIONS = {"none": "float32", "float16": "float16", "int8": "int8"}

CLASS_MAP_NAME = "class_map.json"  # written beside the TFRecords by tfssd-convert
RUN_FILE = "tfssd_run.json"  # in a model directory: the network geometry it was trained with
BEST_DIR = "best"  # under a model directory: the checkpoint with the best validation mAP

# A label is [header_width, object_width, objects...]; see tfssd/data/schema.py.
LABEL_HEADER_WIDTH = 2
OBJECT_WIDTH = 5


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network and its post-processing."""

    num_classes: int
    base_network: str = "vgg-16"
    image_size: int = 300
    width_multiplier: float = 1.0
    use_pretrained_model: bool = True
    pretrained_weights: str | None = None
    freeze_layer_pattern: str | None = None
    nms_threshold: float = 0.45
    score_threshold: float = 0.01
    max_detections: int = 200


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the TFRecords are and how examples are shaped."""

    train_files: tuple[str, ...]
    validation_files: tuple[str, ...] = ()
    label_width: int = 350
    shuffle_buffer: int = 1024
    input_format: str = "auto"
    skip_corrupt_records: bool = False
    class_map_file: str | None = None

    @property
    def max_objects(self) -> int:
        """Most objects a label of ``label_width`` floats can hold (5-wide objects)."""
        return (self.label_width - LABEL_HEADER_WIDTH) // OBJECT_WIDTH


@dataclasses.dataclass(frozen=True)
class EarlyStoppingConfig:
    """SageMaker's early stopping on validation mAP."""

    enabled: bool = False
    min_epochs: int = 10
    patience: int = 5
    tolerance: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation schedule and the run's directories."""

    num_training_samples: int
    epochs: int = 30
    learning_rate: float = 0.001
    lr_scheduler_factor: float = 0.1
    lr_scheduler_step: tuple[int, ...] = ()
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0005
    mini_batch_size: int = 32
    num_workers: int = 1
    kv_store: str | None = None
    model_dir: str = "tfssd_model"
    export_dir: str | None = None
    init_from: str | None = None
    seed: int | None = None
    log_every_steps: int = 20
    checkpoint_every_steps: int = 0
    max_checkpoints: int = 3
    precision: str = "float32"  # a Keras policy: float32, mixed_bfloat16 or mixed_float16
    export_precision: str = "float32"  # the exported serving graph: float32, bfloat16, float16

    @property
    def global_batch_size(self) -> int:
        """Images per optimiser step over all workers (``mini_batch_size`` is per machine)."""
        return self.mini_batch_size * self.num_workers

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_training_samples / self.global_batch_size)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def lr_boundaries(self) -> tuple[int, ...]:
        """Global steps at which the learning rate is multiplied by ``lr_scheduler_factor``."""
        return tuple(epoch * self.steps_per_epoch for epoch in self.lr_scheduler_step)

    @property
    def resolved_export_dir(self) -> str:
        return self.export_dir or f"{self.model_dir.rstrip('/')}/export"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How validation mAP is computed."""

    overlap_threshold: float = 0.5
    ap_method: str = "11point"
    coco_metrics: bool = False  # also COCO AP@[.5:.95], AP50, AP75 by size (pycocotools)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run needs, grouped as the package is."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    early_stopping: EarlyStoppingConfig = dataclasses.field(default_factory=EarlyStoppingConfig)
