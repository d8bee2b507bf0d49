"""tfssd-train's flags: one per row of SageMaker's table and of tfssd's own options, and
``--metric_lines``, which chooses the command's output rather than the run.

SageMaker's hyperparameters are string flags, parsed as SageMaker's algorithm parses them
(config/hyperparameters.py); tfssd's options get absl's types (config/options.py). What the
command line set explicitly goes to ``config.factory.resolve``, which merges it with
hyperparameters.json and the SageMaker container by the same precedence as the Python API.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from absl import flags

from tfssd.config import factory
from tfssd.config.hyperparameters import HYPERPARAMETER_NAMES, HYPERPARAMETERS
from tfssd.config.options import OPTION_NAMES, OPTIONS

_DEFINE = {"string": flags.DEFINE_string, "list": flags.DEFINE_list,
           "float": flags.DEFINE_float, "integer": flags.DEFINE_integer,
           "bool": flags.DEFINE_bool}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines SageMaker's hyperparameters and tfssd's own flags (never at import time)."""
    for h in HYPERPARAMETERS:
        flags.DEFINE_string(h.name, h.default, h.help, flag_values=flag_values)
    for o in OPTIONS:
        if o.kind == "enum":
            flags.DEFINE_enum(o.name, o.default, list(o.choices), o.help, flag_values=flag_values)
        else:
            _DEFINE[o.kind](o.name, o.default, o.help, flag_values=flag_values)
    flags.DEFINE_bool(
        "metric_lines", None,
        "Write SageMaker's metric lines (#quality_metric, #throughput_metric, #progress_metric: "
        "what its metric definitions parse) among the log lines. Default: inside a SageMaker "
        "container only; --nometric_lines leaves them out there too.", flag_values=flag_values)


def given_values(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
    """The hyperparameters and options set on the command line (or in a flagfile)."""
    return {name: flag_values[name].value for name in (*HYPERPARAMETER_NAMES, *OPTION_NAMES)
            if flag_values[name].present}


def resolve(flag_values: flags.FlagValues = flags.FLAGS,
            environ: Mapping[str, str] = os.environ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(hyperparameters, options) of the command line, merged and validated (factory.resolve)."""
    return factory.resolve(given_values(flag_values), environ)
