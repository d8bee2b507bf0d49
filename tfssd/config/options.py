"""tfssd's own training options (beyond SageMaker's table): names, defaults, types and checks.

One table serves the command line (``cli/hyperparameter_flags.py`` defines an absl flag per
row), the Python API (``tfssd.train(**options)``) and hyperparameters.json (string values,
parsed here). No absl and no TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from tfssd.config import run_config
from tfssd.config.input_files import expand_files
from tfssd.config.precision import EXPORT_PRECISIONS, PRECISIONS


@dataclasses.dataclass(frozen=True)
class Option:
    """One of tfssd's own options.

    ``kind`` is how a string value (from hyperparameters.json) is read: string, list (comma
    separated), float, integer, bool or enum (one of ``choices``).
    """

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    def parse(self, value: Any) -> Any:
        """A string or Python value -> the option's type; ValueError naming what is expected."""
        if value is None or not isinstance(value, str):
            return _python_value(self, value)
        text = value.strip()
        if self.kind == "string":
            return value
        if self.kind == "list":
            return [p.strip() for p in text.split(",") if p.strip()]
        if self.kind == "bool":
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError("true or false")
            return text.lower() in ("true", "1")
        if self.kind == "enum":
            if text not in self.choices:
                raise ValueError("one of " + ", ".join(self.choices))
            return text
        try:
            return int(text) if self.kind == "integer" else float(text)
        except ValueError:
            raise ValueError("an integer" if self.kind == "integer" else "a number") from None


def _python_value(option: Option, value: Any) -> Any:
    if value is None:
        return None
    if option.kind == "list":
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    if option.kind == "bool" and isinstance(value, bool):
        return value
    if option.kind in ("integer", "float") and isinstance(value, (int, float)) and not \
            isinstance(value, bool):
        return int(value) if option.kind == "integer" and value == int(value) else value
    if option.kind in ("string", "enum") and isinstance(value, os.PathLike):
        return option.parse(os.fspath(value))
    raise ValueError(f"a {option.kind}" if option.kind != "enum"
                     else "one of " + ", ".join(option.choices))


OPTIONS: tuple[Option, ...] = (
    Option("train", "list", None, "Training TFRecord files, globs or directories."),
    Option("validation", "list", None,
           "Validation TFRecord files, globs or directories; mAP after each epoch."),
    Option("class_map", "string", None,
           "class_map.json ({\"0\": \"name\", ...}); default: the one beside the first training "
           "file, if any."),
    Option("model_dir", "string", "tfssd_model",
           "Checkpoints and TensorBoard logs; a rerun resumes from here."),
    Option("export_dir", "string", None,
           "Where the SavedModel goes (as numbered versions for TF Serving); default: "
           "MODEL_DIR/export."),
    Option("pretrained_weights", "string", None,
           "Local ImageNet weights for the backbone: keras.applications' 'notop' .h5 "
           "(vgg-16, resnet-50), or MXNet's .params (sagemaker-vgg-16, sagemaker-resnet-50: "
           "needed, tfssd does not download those)."),
    Option("width_multiplier", "float", 1.0,
           "Scales every backbone and extra-layer width (0, 1]; below 1 for quick CPU trials "
           "only: ImageNet weights need 1."),
    Option("seed", "integer", None, "Seed for data order, augmentation and initialisation."),
    Option("log_every_steps", "integer", 20, "Steps between progress and metric log lines."),
    Option("checkpoint_every_steps", "integer", 0,
           "Also checkpoint every this many steps (0: at the end of each epoch only). A "
           "restarted run loses at most the steps since the last one."),
    Option("init_from", "string", None,
           "Start the network from an earlier tfssd run's model directory (its best weights): "
           "SageMaker's incremental training. Same base_network, num_classes, image_shape and "
           "width_multiplier required; ignored when --model_dir already holds a checkpoint (the "
           "run resumes instead)."),
    Option("input_format", "enum", "auto",
           "TFRecord schema: tfssd's, odapi (TF Object Detection API: image/object/bbox/*, class "
           "labels from 1), or auto (detected).", run_config.INPUT_FORMATS),
    Option("skip_corrupt_records", "bool", False,
           "Skip records whose image fails to decode (or whose label is invalid) instead of "
           "stopping with the record named."),
    Option("ap_method", "enum", "11point",
           "VOC AP interpolation: 11point (VOC2007, the published SSD figures) or allpoint "
           "(VOC2010+).", run_config.AP_METHODS),
    Option("coco_metrics", "bool", False,
           "Also compute COCO AP@[.5:.95], AP50, AP75 and AP by object size (through "
           "pycocotools) at each validation, to the log and TensorBoard."),
    Option("precision", "enum", "auto",
           "Compute precision: auto (mixed_float16 on GPUs of compute capability 7.x, "
           "mixed_bfloat16 on 8.0+ and on CPUs with amx_bf16 or avx512_bf16, else float32), or "
           "one of them. Weights and checkpoints stay float32.", PRECISIONS),
    Option("export_precision", "enum", "float32",
           "Precision of the exported serving graph: float32 serves anywhere; bfloat16 or "
           "float16 for hardware that computes them fast.", EXPORT_PRECISIONS),
    Option("sagemaker_hyperparameters", "string", None,
           "A SageMaker hyperparameters.json (all values strings); read automatically inside a "
           "SageMaker container. Command-line flags win."),
)
OPTION_NAMES = tuple(o.name for o in OPTIONS)
OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}


def check_options(values: Mapping[str, Any], options: Mapping[str, Any],
                  check_files: bool = True) -> list[str]:
    """Every problem of tfssd's options (given the typed hyperparameters), as 'name=value: ...'.

    ``check_files``: whether --train and --validation must name files that exist now.
    """
    errors = []
    width = options["width_multiplier"]
    if not 0 < width <= 1:
        errors.append(f"width_multiplier={width}: expected a float in (0, 1]")
    elif width != 1 and values.get("use_pretrained_model") and not options.get(
            "pretrained_weights"):  # a file of the user's own may be narrow: checked at load
        errors.append(f"width_multiplier={width}: ImageNet weights exist for width 1 only; "
                      "use --use_pretrained_model=0 with a narrower network")
    if check_files and not options["train"]:
        errors.append("train: required, expected TFRecord files, globs or a directory")
    elif check_files:
        errors.extend(f"train={p!r}: no file matches" for p in options["train"]
                      if not expand_files([p]))
    for p in (options["validation"] or ()) if check_files else ():
        if not expand_files([p]):
            errors.append(f"validation={p!r}: no file matches")
    if check_files and values.get("early_stopping") and not options["validation"]:
        errors.append("early_stopping='True': expected --validation data to measure mAP on")
    if options["log_every_steps"] <= 0:
        errors.append(f"log_every_steps={options['log_every_steps']}: expected a positive integer")
    if options["checkpoint_every_steps"] < 0:
        errors.append(f"checkpoint_every_steps={options['checkpoint_every_steps']}: expected 0 "
                      "or a positive integer")
    if options["init_from"] and not os.path.isdir(options["init_from"]):
        errors.append(f"init_from={options['init_from']!r}: no such directory")
    return errors
