"""MXNet's ``.params`` files written as MXNet 1.x's ``mx.nd.save`` writes them, for tests.

tfssd only reads them (tfssd/model/mxnet_params.py); tests write their own to try the reader and
the importer on weights of their choosing. The constants are written out here, not taken from
the reader, so that a wrong one in either shows up as a disagreement.
"""

import struct

import numpy as np

_LIST_MAGIC = 0x112
_ARRAY_V2 = 0xF993FAC9  # dense arrays with int64 sizes
_CPU = 1  # MXNet's device type of arrays saved from the host
# mshadow's type flags
_DTYPE_CODES = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2,
                np.dtype(np.uint8): 3, np.dtype(np.int32): 4, np.dtype(np.int8): 5,
                np.dtype(np.int64): 6, np.dtype(np.bool_): 7}


def dump_params(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes MXNet 1.x writes (V2 arrays, CPU) for {name: array}, names as given
    ("arg:NAME", "aux:NAME")."""
    out = [struct.pack("<QQQ", _LIST_MAGIC, 0, len(arrays))]
    for value in arrays.values():
        value = np.ascontiguousarray(value)
        out.append(struct.pack("<Ii", _ARRAY_V2, 0))  # storage type 0: dense
        out.append(struct.pack(f"<I{value.ndim}q", value.ndim, *value.shape))
        out.append(struct.pack("<iii", _CPU, 0, _DTYPE_CODES[value.dtype]))
        out.append(value.astype(value.dtype.newbyteorder("<")).tobytes())
    out.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        encoded = name.encode("utf-8")
        out.append(struct.pack("<Q", len(encoded)) + encoded)
    return b"".join(out)
