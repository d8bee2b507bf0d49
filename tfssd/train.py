r"""The design card's module entry: trains an SSD detector from SageMaker's hyperparameters.

  python -m tfssd.train --num_classes=20 --num_training_samples=16551 \
      --train=data/train-* --validation=data/val-* [--flagfile=flags/ssd300_vgg16_voc.flags]

The same command as ``tfssd-train`` (tfssd/cli/train.py). ``tfssd.train(...)``, the Python API
(tfssd/api.py), stays callable after ``import tfssd.train``: this module, which then takes its
place as the package's attribute, calls it.
"""

import sys
import types

from tfssd.cli.train import run


class _TrainModule(types.ModuleType):
    """This module, callable as ``tfssd.api.train``."""

    def __call__(self, *args, **kwargs):
        from tfssd import api

        return api.train(*args, **kwargs)


if __name__ == "__main__":
    run()
else:
    sys.modules[__name__].__class__ = _TrainModule
