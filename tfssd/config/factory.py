"""A run's Config from what the user gave: values merged by precedence, validated, then built.

Precedence, the same for the command line and the Python API: values given explicitly (flags
on the command line, keyword arguments), then hyperparameters.json, then the SageMaker
container's environment (channels, model directory), then the defaults. Every bad value is
reported in one ``HyperparameterError`` before any TensorFlow work starts. No absl, no TF.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tfssd.config import run_config, sagemaker_container
from tfssd.config.hyperparameters import (
    HYPERPARAMETER_NAMES,
    HYPERPARAMETERS,
    HyperparameterError,
    parse_hyperparameters,
)
from tfssd.config.input_files import expand_files
from tfssd.config.options import OPTION_NAMES, OPTIONS, OPTIONS_BY_NAME, check_options


def hyperparameter_text(name: str, value: Any) -> str | None:
    """A Python value of SageMaker's hyperparameter ``name`` as SageMaker would send it."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return ("1" if value else "0") if name == "use_pretrained_model" else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def resolve(given: Mapping[str, Any], environ: Mapping[str, str] = os.environ,
            check_files: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merges given values, hyperparameters.json and SageMaker's environment, then validates.

    Args:
      given: name -> value for what the user set explicitly: SageMaker's hyperparameters (as
        strings like SageMaker's, or Python values) and tfssd's options (OPTIONS).
      environ: the process environment (SageMaker's ``SM_*`` variables).
      check_files: whether the train and validation files must exist now (not before a
        SageMaker job has converted its channels).

    Returns:
      (hyperparameters, options): SageMaker's hyperparameters typed, and tfssd's own options.

    Raises:
      HyperparameterError: listing every invalid or unknown value.
    """
    errors: list[str] = []
    raw: dict[str, Any] = {h.name: h.default for h in HYPERPARAMETERS}
    options: dict[str, Any] = {o.name: o.default for o in OPTIONS}
    for name, value in given.items():
        if name in HYPERPARAMETER_NAMES:
            raw[name] = hyperparameter_text(name, value)
        elif name in OPTION_NAMES:
            try:
                options[name] = OPTIONS_BY_NAME[name].parse(value)
            except ValueError as e:
                errors.append(f"{name}={value!r}: expected {e}")
        else:
            errors.append(f"{name}: not a hyperparameter or option; known: "
                          + ", ".join((*HYPERPARAMETER_NAMES, *OPTION_NAMES)))

    sagemaker = sagemaker_container.environment_options(environ)
    for name, value in sagemaker.items():
        if name not in given and name != "sagemaker_hyperparameters":
            options[name] = [value] if name in ("train", "validation") else value

    json_path = options["sagemaker_hyperparameters"] or sagemaker.get("sagemaker_hyperparameters")
    if json_path:
        for name, text in sagemaker_container.read_sagemaker_hyperparameters(json_path).items():
            if name in given or name.startswith(("_", "sagemaker_")):
                continue  # explicit values win; SageMaker adds its own '_tuning...' keys
            if name in HYPERPARAMETER_NAMES:
                raw[name] = text
            elif name in OPTION_NAMES:
                try:
                    options[name] = OPTIONS_BY_NAME[name].parse(text)
                except ValueError as e:
                    errors.append(f"{name}={text!r}: expected {e}")
            else:
                errors.append(f"{name} (from {json_path}): not a hyperparameter; known: "
                              + ", ".join(HYPERPARAMETER_NAMES))

    values, value_errors = parse_hyperparameters(raw)
    errors.extend(value_errors)
    errors.extend(check_options(values, options, check_files))
    if errors:
        raise HyperparameterError(errors)
    return values, options


def build_config(values: Mapping[str, Any], options: Mapping[str, Any],
                 num_workers: int = 1, precision: str = "float32") -> run_config.Config:
    """Typed hyperparameters and tfssd options -> the frozen Config of a run.

    ``precision`` is the Keras policy ``--precision`` resolved to (config/precision.py).
    """
    train_files = expand_files(options["train"])
    class_map = options["class_map"]
    if class_map is None and train_files:
        beside = os.path.join(os.path.dirname(train_files[0]), run_config.CLASS_MAP_NAME)
        class_map = beside if os.path.isfile(beside) else None
    return run_config.Config(
        model=run_config.ModelConfig(
            num_classes=values["num_classes"],
            base_network=values["base_network"],
            image_size=values["image_shape"],
            width_multiplier=options["width_multiplier"],
            use_pretrained_model=values["use_pretrained_model"],
            pretrained_weights=options["pretrained_weights"],
            freeze_layer_pattern=values["freeze_layer_pattern"],
            nms_threshold=values["nms_threshold"]),
        data=run_config.DataConfig(
            train_files=train_files,
            validation_files=expand_files(options["validation"] or ()),
            label_width=values["label_width"],
            input_format=options["input_format"],
            skip_corrupt_records=options["skip_corrupt_records"],
            class_map_file=class_map),
        train=run_config.TrainConfig(
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
        eval=run_config.EvalConfig(
            overlap_threshold=values["overlap_threshold"],
            ap_method=options["ap_method"],
            coco_metrics=options["coco_metrics"]),
        early_stopping=run_config.EarlyStoppingConfig(
            enabled=values["early_stopping"],
            min_epochs=values["early_stopping_min_epochs"],
            patience=values["early_stopping_patience"],
            tolerance=values["early_stopping_tolerance"]))
