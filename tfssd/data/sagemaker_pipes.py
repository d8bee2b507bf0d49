"""SageMaker's Pipe mode: a pass's FIFO opened (or peeked at) and TFRecord byte streams read.

Pipe mode gives one FIFO per pass over a channel, ``<channel>_0``, ``<channel>_1``, ...;
SageMaker creates each one when the pass is due, and a reader waits for it (``open_pipe``).
A FIFO cannot be rewound, so the first bytes read to recognise its format (``peek_pipe``) are
kept and served again to the next reader. TFRecord framing is checked with TFRecord's masked
CRC-32C, without TensorFlow.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator

from tfssd.data.sources import SourceDataError

PIPE_WAIT_SECONDS = 600.0  # how long the next pass's FIFO may take to appear


class ChannelError(SourceDataError):
    """A channel whose description or data tfssd cannot use; the message names the channel."""


def tfrecord_framed(head: bytes) -> bool:
    """Whether ``head`` starts as a TFRecord file: uint64 length, then its masked CRC-32C."""
    if len(head) < 12:
        return False
    (crc,) = struct.unpack("<I", head[8:12])
    return crc == masked_crc32c(head[:8])


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C (Castagnoli), rotated and offset ("masked")."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


_PEEKED: dict[str, _PrefixedStream] = {}  # pipes whose first bytes detect_format has read


class _PrefixedStream:
    """A binary stream whose first bytes were already read (``prefix``) and are served again."""

    def __init__(self, raw, prefix: bytes):
        self._raw, self._prefix = raw, prefix

    def read(self, size: int = -1) -> bytes:
        if not self._prefix:
            return self._raw.read(size)
        if size < 0:
            data, self._prefix = self._prefix + self._raw.read(), b""
            return data
        data, self._prefix = self._prefix[:size], self._prefix[size:]
        return data + (self._raw.read(size - len(data)) if size > len(data) else b"")

    def close(self) -> None:
        self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_pipe(path: str, wait_seconds: float = PIPE_WAIT_SECONDS):
    """Opens the FIFO of one pass (``<channel>_<k>``), waiting for SageMaker to create it.

    Raises:
      ChannelError: the FIFO did not appear within ``wait_seconds``.
    """
    peeked = _PEEKED.pop(path, None)
    if peeked is not None:
        return peeked
    deadline = time.monotonic() + wait_seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise ChannelError(f"{path} did not appear within {wait_seconds:.0f} s (SageMaker "
                               "creates a Pipe-mode channel's FIFO for each pass)")
        time.sleep(0.1)
    return open(path, "rb", buffering=1 << 20)  # blocks until SageMaker's writer opens it


def peek_pipe(path: str, size: int) -> bytes:
    """The first ``size`` bytes of the FIFO ``path`` (fewer at its end); they stay readable."""
    stream = open_pipe(path)
    head = stream.read(size)
    _PEEKED[path] = _PrefixedStream(stream, head)
    return head


def read_tfrecord_stream(stream, where: str) -> Iterator[bytes]:
    """Yields the records of a TFRecord byte stream, read sequentially (a pipe works).

    A record: uint64 length, uint32 masked CRC-32C of the length, the data, uint32 masked CRC
    of the data (checked by the input pipeline's parse, not here).
    """
    offset = 0
    while True:
        head = stream.read(12)
        if not head:
            return
        if len(head) < 12 or not tfrecord_framed(head):
            raise ChannelError(f"{where}: no TFRecord record header at byte {offset}")
        (length,) = struct.unpack("<Q", head[:8])
        data = stream.read(length)
        if len(data) < length or len(stream.read(4)) < 4:
            raise ChannelError(f"{where}: record at byte {offset} is truncated")
        offset += 16 + length
        yield data
