"""MXNet's saved files, read with NumPy alone: ``.params`` and ``-symbol.json``.

``.params`` (``mx.nd.save`` of a dict, as ``Module.save_checkpoint`` writes it): little-endian

  uint64 0x112 (list magic), uint64 0 (reserved), uint64 N, then N arrays, each
    uint32 magic: 0xF993FAC9 (V2) or 0xF993FACA (V3, NumPy shapes): int32 storage type (0 dense)
                  0xF993FAC8 (V1): no storage type
                  anything else: a pre-V1 array whose first word is its number of dimensions
    shape: uint32 ndim (int32 in V3), then ndim int64 (uint32 before V1) sizes
    (an empty shape ends the array here)
    int32 device type, int32 device id, int32 dtype code, then the elements in C order
  uint64 N, then N names, each uint64 length and UTF-8 bytes ("arg:NAME" or "aux:NAME").

The symbol JSON is MXNet's graph: ``nodes`` (op, name, attrs, inputs as [node, output, version]),
``arg_nodes`` (the variables) and ``heads``; files saved before MXNet 0.9 call attrs "param".
"""

from __future__ import annotations

import json
import struct

import numpy as np

LIST_MAGIC = 0x112
_V1, _V2, _V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
# MXNet's mshadow type flags.
DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8,
          6: np.int64, 7: np.bool_}


class MXNetFormatError(ValueError):
    """A file that is not what MXNet writes."""


class _Reader:
    def __init__(self, data: bytes, source: str):
        self.data, self.pos, self.source = data, 0, source

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise MXNetFormatError(f"{self.source}: truncated at byte {self.pos}")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def one(self, fmt: str):
        return self.take(fmt)[0]

    def raw(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise MXNetFormatError(f"{self.source}: truncated at byte {self.pos}")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk


def _read_array(reader: _Reader) -> np.ndarray:
    magic = reader.one("<I")
    if magic in (_V2, _V3):
        storage = reader.one("<i")
        if storage != 0:
            raise MXNetFormatError(f"{reader.source}: sparse arrays (storage type {storage}) "
                                   "are not supported")
    if magic in (_V1, _V2, _V3):
        ndim = reader.one("<i" if magic == _V3 else "<I")
        shape = tuple(reader.take(f"<{ndim}q")) if ndim > 0 else ()
    else:  # pre-V1: the magic was the number of dimensions, and sizes are uint32
        ndim = magic
        shape = tuple(reader.take(f"<{ndim}I")) if ndim > 0 else ()
    if ndim <= 0:
        return np.zeros((0,), np.float32)
    reader.take("<ii")  # the device it was saved from
    code = reader.one("<i")
    if code not in DTYPES:
        raise MXNetFormatError(f"{reader.source}: unknown dtype code {code}")
    dtype = np.dtype(DTYPES[code]).newbyteorder("<")
    count = int(np.prod(shape))
    return np.frombuffer(reader.raw(count * dtype.itemsize), dtype).reshape(shape).astype(
        DTYPES[code])


def parse_params(data: bytes, source: str = "params") -> dict[str, np.ndarray]:
    """{name: array} of a ``.params`` file's bytes; names keep their "arg:"/"aux:" prefix."""
    reader = _Reader(data, source)
    magic, _ = reader.take("<QQ")
    if magic != LIST_MAGIC:
        raise MXNetFormatError(f"{source}: not an MXNet .params file (magic {magic:#x})")
    arrays = [_read_array(reader) for _ in range(reader.one("<Q"))]
    names = [reader.raw(reader.one("<Q")).decode("utf-8") for _ in range(reader.one("<Q"))]
    if len(names) != len(arrays):
        raise MXNetFormatError(f"{source}: {len(arrays)} arrays but {len(names)} names")
    return dict(zip(names, arrays))


def load_params(path: str) -> dict[str, np.ndarray]:
    """{name: array} of an MXNet ``.params`` file (names with their "arg:"/"aux:" prefix)."""
    with open(path, "rb") as f:
        return parse_params(f.read(), path)


def split_params(params: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """(arguments, auxiliary states) without their prefixes (unprefixed names: arguments)."""
    args, aux = {}, {}
    for name, value in params.items():
        kind, _, bare = name.partition(":")
        if bare and kind == "aux":
            aux[bare] = value
        else:
            args[bare if bare and kind == "arg" else name] = value
    return args, aux


def load_symbol(path: str) -> dict:
    """An MXNet symbol JSON, with every node's attributes under "attrs" (str -> str)."""
    with open(path, encoding="utf-8") as f:
        return parse_symbol(f.read(), path)


def parse_symbol(text: str, source: str = "symbol") -> dict:
    """See ``load_symbol``."""
    try:
        graph = json.loads(text)
        nodes = graph["nodes"]
    except (ValueError, KeyError, TypeError) as e:
        raise MXNetFormatError(f"{source}: not an MXNet symbol JSON ({e})") from None
    for node in nodes:
        node["attrs"] = dict(node.get("attrs") or node.get("attr") or node.get("param") or {})
    return graph


def parse_tuple(text: str) -> tuple[float, ...]:
    """MXNet's tuple attributes: "(1,2,0.5)", "(0.1, 0.1)", "[3, 3]", "-1" -> floats."""
    text = text.strip().strip("()[]")
    return tuple(float(v) for v in text.split(",") if v.strip())


def parse_bool(text: str) -> bool:
    return text.strip().lower() in ("true", "1")
