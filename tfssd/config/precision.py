"""Which numeric precision a run computes in, chosen from the hardware it runs on.

``auto`` picks Keras' ``mixed_float16`` (with dynamic loss scaling) on GPUs of compute
capability 7.x, ``mixed_bfloat16`` on GPUs of 8.0 and up and on CPUs whose flags include
``amx_bf16`` or ``avx512_bf16``, else ``float32``. Mixed policies compute in 16 bits and keep
the weights (so the checkpoints) in float32; the losses, softmax, L2 normalisation, box decoding
and NMS stay in float32 (model/ssd.py, losses.py, postprocess.py).
"""

from __future__ import annotations

import contextlib
import dataclasses

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
EXPORT_PRECISIONS = ("float32", "bfloat16", "float16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclasses.dataclass(frozen=True)
class Hardware:
    """What the precision depends on."""

    gpus: tuple[tuple[str, tuple[int, int]], ...] = ()  # (name, compute capability)
    cpu_model: str = ""
    cpu_flags: frozenset[str] = frozenset()


def describe_hardware() -> Hardware:
    """This machine: its GPUs as TensorFlow sees them, its CPU model and flags (Linux)."""
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append((details.get("device_name", device.name),
                     tuple(details.get("compute_capability", (0, 0)))))
    model, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return Hardware(tuple(gpus), model, flags)


def choose(requested: str, hardware: Hardware) -> tuple[str, str]:
    """The Keras policy for ``requested`` on ``hardware``, and why (for the run's first lines)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}: expected one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested, "as asked (--precision)"
    if hardware.gpus:
        name, (major, minor) = min(hardware.gpus, key=lambda g: g[1])
        if major >= 8:
            return "mixed_bfloat16", f"{name} (compute capability {major}.{minor}) has bfloat16"
        if major == 7:
            return "mixed_float16", (f"{name} (compute capability {major}.{minor}) has float16 "
                                     "tensor cores but no bfloat16; dynamic loss scaling")
        return "float32", f"{name} (compute capability {major}.{minor}) has no fast 16-bit path"
    found = [flag for flag in BF16_CPU_FLAGS if flag in hardware.cpu_flags]
    cpu = hardware.cpu_model or "the CPU"
    if found:
        return "mixed_bfloat16", f"{cpu} has {' and '.join(found)}"
    return "float32", f"{cpu} has neither {' nor '.join(BF16_CPU_FLAGS)}"


def export_policy(export_precision: str) -> str:
    """The Keras policy an export of ``export_precision`` computes in (float32 serves anywhere,
    whatever the training precision was)."""
    if export_precision not in EXPORT_PRECISIONS:
        raise ValueError(f"export precision {export_precision!r}: expected one of "
                         f"{', '.join(EXPORT_PRECISIONS)}")
    return "float32" if export_precision == "float32" else f"mixed_{export_precision}"


def uses_loss_scaling(policy: str) -> bool:
    """float16's narrow range needs the loss scaled; bfloat16 has float32's range."""
    return policy == "mixed_float16"


@contextlib.contextmanager
def policy_scope(policy: str):
    """Layers built inside compute in ``policy``; the global policy is restored afterwards."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
