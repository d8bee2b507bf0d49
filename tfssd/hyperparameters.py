"""tfssd-train's flags: SageMaker's hyperparameters and tfssd's own, merged and validated.

Every hyperparameter of SageMaker's table (hyperparameter_table.py) is a string flag, parsed as
SageMaker's algorithm parses it. Values come from the command line, then hyperparameters.json,
then the SageMaker container's environment (sagemaker_container.py), then the defaults; every
bad value is reported in one error before any TensorFlow work starts. ``build_config`` turns the
result into the run's frozen Config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from absl import flags

from tfssd import config as config_lib
from tfssd import sagemaker_container
from tfssd.files import expand_files
from tfssd.hyperparameter_table import (
    HYPERPARAMETER_NAMES,
    HYPERPARAMETERS,
    HyperparameterError,
    parse_hyperparameters,
)
from tfssd.precision import EXPORT_PRECISIONS, PRECISIONS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines SageMaker's hyperparameters and tfssd's own flags (never at import time)."""
    for h in HYPERPARAMETERS:
        flags.DEFINE_string(h.name, h.default, h.help, flag_values=flag_values)
    flags.DEFINE_list("train", None, "Training TFRecord files, globs or directories.",
                      flag_values=flag_values)
    flags.DEFINE_list("validation", None,
                      "Validation TFRecord files, globs or directories; mAP after each epoch.",
                      flag_values=flag_values)
    flags.DEFINE_string("class_map", None,
                        "class_map.json ({\"0\": \"name\", ...}); default: the one beside the "
                        "first training file, if any.", flag_values=flag_values)
    flags.DEFINE_string("model_dir", "tfssd_model",
                        "Checkpoints and TensorBoard logs; a rerun resumes from here.",
                        flag_values=flag_values)
    flags.DEFINE_string("export_dir", None,
                        "Where the SavedModel goes (as numbered versions for TF Serving); "
                        "default: MODEL_DIR/export.", flag_values=flag_values)
    flags.DEFINE_string("pretrained_weights", None,
                        "Local keras.applications 'notop' .h5 ImageNet weights for the backbone.",
                        flag_values=flag_values)
    flags.DEFINE_float("width_multiplier", 1.0,
                       "Scales every backbone and extra-layer width (0, 1]; below 1 for quick CPU "
                       "trials only: ImageNet weights need 1.", flag_values=flag_values)
    flags.DEFINE_integer("seed", None, "Seed for data order, augmentation and initialisation.",
                         flag_values=flag_values)
    flags.DEFINE_integer("log_every_steps", 20, "Steps between progress and metric log lines.",
                         flag_values=flag_values)
    flags.DEFINE_integer("checkpoint_every_steps", 0,
                         "Also checkpoint every this many steps (0: at the end of each epoch "
                         "only). A restarted run loses at most the steps since the last one.",
                         flag_values=flag_values)
    flags.DEFINE_string("init_from", None,
                        "Start the network from an earlier tfssd run's model directory (its best "
                        "weights): SageMaker's incremental training. Same base_network, "
                        "num_classes, image_shape and width_multiplier required; ignored when "
                        "--model_dir already holds a checkpoint (the run resumes instead).",
                        flag_values=flag_values)
    flags.DEFINE_enum("input_format", "auto", list(config_lib.INPUT_FORMATS),
                      "TFRecord schema: tfssd's, odapi (TF Object Detection API: image/object/"
                      "bbox/*, class labels from 1), or auto (detected).", flag_values=flag_values)
    flags.DEFINE_bool("skip_corrupt_records", False,
                      "Skip records whose image fails to decode (or whose label is invalid) "
                      "instead of stopping with the record named.", flag_values=flag_values)
    flags.DEFINE_enum("ap_method", "11point", list(config_lib.AP_METHODS),
                      "VOC AP interpolation: 11point (VOC2007, the published SSD figures) or "
                      "allpoint (VOC2010+).", flag_values=flag_values)
    flags.DEFINE_bool("coco_metrics", False,
                      "Also compute COCO AP@[.5:.95], AP50, AP75 and AP by object size (through "
                      "pycocotools) at each validation, to the log and TensorBoard.",
                      flag_values=flag_values)
    flags.DEFINE_enum("precision", "auto", list(PRECISIONS),
                      "Compute precision: auto (mixed_float16 on GPUs of compute capability 7.x, "
                      "mixed_bfloat16 on 8.0+ and on CPUs with amx_bf16 or avx512_bf16, else "
                      "float32), or one of them. Weights and checkpoints stay float32.",
                      flag_values=flag_values)
    flags.DEFINE_enum("export_precision", "float32", list(EXPORT_PRECISIONS),
                      "Precision of the exported serving graph: float32 serves anywhere; "
                      "bfloat16 or float16 for hardware that computes them fast.",
                      flag_values=flag_values)
    flags.DEFINE_string("sagemaker_hyperparameters", None,
                        "A SageMaker hyperparameters.json (all values strings); read "
                        "automatically inside a SageMaker container. Command-line flags win.",
                        flag_values=flag_values)


def _own_flag_names() -> tuple[str, ...]:
    probe = flags.FlagValues()
    define_flags(probe)
    return tuple(n for n in probe if n not in HYPERPARAMETER_NAMES)


def resolve(flag_values: flags.FlagValues = flags.FLAGS,
            environ: Mapping[str, str] = os.environ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merges command line, hyperparameters.json and SageMaker's environment, then validates.

    Precedence: flags given on the command line, then hyperparameters.json, then SageMaker's
    environment (channels, model directory), then defaults.

    Returns:
      (hyperparameters, options): SageMaker's hyperparameters typed, and tfssd's own flags.

    Raises:
      HyperparameterError: listing every invalid value.
    """
    own_names = _own_flag_names()
    raw = {name: flag_values[name].value for name in HYPERPARAMETER_NAMES}
    options = {name: flag_values[name].value for name in own_names}
    present = {name for name in (*HYPERPARAMETER_NAMES, *own_names) if flag_values[name].present}
    errors: list[str] = []

    sagemaker = sagemaker_container.environment_options(environ)
    for name, value in sagemaker.items():
        if name not in present and name != "sagemaker_hyperparameters":
            options[name] = [value] if name in ("train", "validation") else value

    json_path = options["sagemaker_hyperparameters"] or sagemaker.get("sagemaker_hyperparameters")
    if json_path:
        for name, text in sagemaker_container.read_sagemaker_hyperparameters(json_path).items():
            if name in present or name.startswith(("_", "sagemaker_")):
                continue  # the command line wins; SageMaker adds its own '_tuning...' keys
            if name in HYPERPARAMETER_NAMES:
                raw[name] = text
            elif name in own_names:
                try:
                    options[name] = flag_values[name].parser.parse(text)
                except (ValueError, flags.Error) as e:
                    errors.append(f"{name}={text!r}: {e}")
            else:
                errors.append(f"{name} (from {json_path}): not a hyperparameter; known: "
                              + ", ".join(HYPERPARAMETER_NAMES))

    values, value_errors = parse_hyperparameters(raw)
    errors.extend(value_errors)
    errors.extend(_check_options(values, options))
    if errors:
        raise HyperparameterError(errors)
    return values, options


def _check_options(values: Mapping[str, Any], options: Mapping[str, Any]) -> list[str]:
    errors = []
    width = options["width_multiplier"]
    if not 0 < width <= 1:
        errors.append(f"width_multiplier={width}: expected a float in (0, 1]")
    elif width != 1 and values.get("use_pretrained_model"):
        errors.append(f"width_multiplier={width}: ImageNet weights exist for width 1 only; "
                      "use --use_pretrained_model=0 with a narrower network")
    if not options["train"]:
        errors.append("train: required, expected TFRecord files, globs or a directory")
    else:
        errors.extend(f"train={p!r}: no file matches" for p in options["train"]
                      if not expand_files([p]))
    for p in options["validation"] or ():
        if not expand_files([p]):
            errors.append(f"validation={p!r}: no file matches")
    if values.get("early_stopping") and not options["validation"]:
        errors.append("early_stopping='True': expected --validation data to measure mAP on")
    if options["log_every_steps"] <= 0:
        errors.append(f"log_every_steps={options['log_every_steps']}: expected a positive integer")
    if options["checkpoint_every_steps"] < 0:
        errors.append(f"checkpoint_every_steps={options['checkpoint_every_steps']}: expected 0 "
                      "or a positive integer")
    if options["init_from"] and not os.path.isdir(options["init_from"]):
        errors.append(f"init_from={options['init_from']!r}: no such directory")
    return errors


def build_config(values: Mapping[str, Any], options: Mapping[str, Any],
                 num_workers: int = 1, precision: str = "float32") -> config_lib.Config:
    """Typed hyperparameters and tfssd options -> the frozen Config of a run.

    ``precision`` is the Keras policy ``--precision`` resolved to (tfssd/precision.py).
    """
    train_files = expand_files(options["train"])
    class_map = options["class_map"]
    if class_map is None and train_files:
        beside = os.path.join(os.path.dirname(train_files[0]), config_lib.CLASS_MAP_NAME)
        class_map = beside if os.path.isfile(beside) else None
    return config_lib.Config(
        model=config_lib.ModelConfig(
            num_classes=values["num_classes"],
            base_network=values["base_network"],
            image_size=values["image_shape"],
            width_multiplier=options["width_multiplier"],
            use_pretrained_model=values["use_pretrained_model"],
            pretrained_weights=options["pretrained_weights"],
            freeze_layer_pattern=values["freeze_layer_pattern"],
            nms_threshold=values["nms_threshold"]),
        data=config_lib.DataConfig(
            train_files=train_files,
            validation_files=expand_files(options["validation"] or ()),
            label_width=values["label_width"],
            input_format=options["input_format"],
            skip_corrupt_records=options["skip_corrupt_records"],
            class_map_file=class_map),
        train=config_lib.TrainConfig(
            num_training_samples=values["num_training_samples"],
            epochs=values["epochs"],
            learning_rate=values["learning_rate"],
            lr_scheduler_factor=values["lr_scheduler_factor"],
            lr_scheduler_step=values["lr_scheduler_step"],
            optimizer=values["optimizer"],
            momentum=values["momentum"],
            weight_decay=values["weight_decay"],
            mini_batch_size=values["mini_batch_size"],
            num_workers=num_workers,
            kv_store=values["kv_store"],
            model_dir=options["model_dir"],
            export_dir=options["export_dir"],
            init_from=options["init_from"],
            seed=options["seed"],
            log_every_steps=options["log_every_steps"],
            checkpoint_every_steps=options["checkpoint_every_steps"],
            precision=precision,
            export_precision=options["export_precision"]),
        eval=config_lib.EvalConfig(
            overlap_threshold=values["overlap_threshold"],
            ap_method=options["ap_method"],
            coco_metrics=options["coco_metrics"]),
        early_stopping=config_lib.EarlyStoppingConfig(
            enabled=values["early_stopping"],
            min_epochs=values["early_stopping_min_epochs"],
            patience=values["early_stopping_patience"],
            tolerance=values["early_stopping_tolerance"]))
