"""tfssd: SSD object detection on TensorFlow 2 / Keras 3, driven by SageMaker's hyperparameters.

The public API (tfssd/api.py): ``train``, ``load`` (then ``detect``), ``convert``, ``evaluate``,
``import_sagemaker``.
They are imported on first use, so that ``import tfssd`` stays light.
"""

__version__ = "0.1.0"
__all__ = ["convert", "evaluate", "import_sagemaker", "load", "train"]


def __getattr__(name):
    if name in __all__:
        from tfssd import api

        return getattr(api, name)
    raise AttributeError(f"module 'tfssd' has no attribute {name!r}")
