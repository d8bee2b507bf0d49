"""A JSON request body walked left to right, never loaded whole.

``json.loads`` of a 16 MiB body of tiny objects builds over 700 MiB of Python objects before
any count could be checked. ``JSONWalker`` builds only what its caller asks for (keys, strings,
base64 decoded straight from the body), checks the rest without building it, and refuses what
is malformed, nested too deeply or too large with ``JSONBodyError`` (an HTTP 400 for the
server). UTF-8 bytes in, no TensorFlow and no HTTP library.
"""

from __future__ import annotations

import binascii
import json
import re


class JSONBodyError(ValueError):
    """The body is not JSON the server takes; the message names where and why."""


# A JSON text is walked, not loaded: json.loads of a 16 MiB body of tiny objects builds over
# 700 MiB of Python objects before any count could be checked. The walker builds only the
# values the server reads (keys, ``signature_name``, each image's bytes), counts the images as
# it meets them, and checks but never builds the rest: at most MAX_OTHER_VALUES values, at
# most MAX_DEPTH deep, so that neither memory nor time grows with what a client adds.
MAX_DEPTH = 32
MAX_OTHER_VALUES = 10_000  # values of members the server does not read ("parameters": ...)
MAX_KEY_BYTES = 64  # a longer key is none the server reads (escapes included)
_SPACE = re.compile(rb"[ \t\n\r]*")
_STRING_REST = re.compile(  # after the opening quote: the contents, then the closing quote
    rb'[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"')
_SCALAR = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")
_BASE64_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|(.))| ")  # in a JSON string
_ESCAPED = {b"/": b"/", b"\\": b"\\", b'"': b'"', b"b": b"\b", b"f": b"\f",
            b"n": b"", b"r": b"", b"t": b""}  # line breaks of MIME base64: dropped


class JSONWalker:
    """Walks one JSON text in ``data[start:end]`` (UTF-8 bytes), left to right."""

    def __init__(self, data, what: str, start: int = 0, end: int | None = None):
        self.data, self.what, self.pos = data, what, start
        self.end = len(data) if end is None else end
        self.other_values = 0

    def malformed(self, expected: str) -> JSONBodyError:
        where = "the end" if self.pos >= self.end else f"byte {self.pos}"
        return JSONBodyError(f"{self.what}: malformed JSON (expected {expected} at {where})")

    def peek(self) -> bytes:
        """The next byte past white space ("" at the end)."""
        self.pos = _SPACE.match(self.data, self.pos, self.end).end()
        return bytes(self.data[self.pos:min(self.pos + 1, self.end)])

    def take(self, char: bytes, expected: str) -> None:
        if self.peek() != char:
            raise self.malformed(expected)
        self.pos += 1

    def preview(self, start: int, stop: int | None = None) -> str:
        """The text from ``start`` (to ``stop``, else the end), cut at 60 characters."""
        stop = self.end if stop is None else stop
        text = bytes(self.data[start:min(stop, start + 60)]).decode("utf-8", "replace")
        return text if start + 60 >= stop else text[:57] + "..."

    def string_span(self) -> tuple[int, int]:
        """Past a string; the span of its contents, escapes as written."""
        if self.peek() != b'"':
            raise self.malformed("a string")
        match = _STRING_REST.match(self.data, self.pos + 1, self.end)
        if match is None:
            raise self.malformed("a complete string")
        self.pos = match.end()
        return match.start(), match.end() - 1

    def decoded(self, start: int, end: int) -> str:
        """The string whose contents span ``data[start:end]``."""
        try:
            return json.loads(bytes(self.data[start - 1:end + 1]))
        except ValueError as e:  # UnicodeDecodeError included
            raise JSONBodyError(f"{self.what}: malformed JSON ({e})") from None

    def members(self, depth: int):
        """Past an object's members: yields each key (None for one the server never reads,
        over MAX_KEY_BYTES), and the caller walks its value."""
        self._deeper(depth)
        self.take(b"{", "an object")
        if self.peek() == b"}":
            self.pos += 1
            return
        while True:
            start, end = self.string_span()
            key = self.decoded(start, end) if end - start <= MAX_KEY_BYTES else None
            self.take(b":", "':'")
            yield key
            if self.peek() == b"}":
                self.pos += 1
                return
            self.take(b",", "',' or '}'")

    def elements(self, depth: int):
        """Past an array's elements: yields each one's index, and the caller walks it."""
        self._deeper(depth)
        self.take(b"[", "an array")
        if self.peek() == b"]":
            self.pos += 1
            return
        index = 0
        while True:
            yield index
            index += 1
            if self.peek() == b"]":
                self.pos += 1
                return
            self.take(b",", "',' or ']'")

    def skip(self, depth: int) -> None:
        """Past one value, checked, not built; refused past MAX_OTHER_VALUES of them."""
        self.other_values += 1
        if self.other_values > MAX_OTHER_VALUES:
            raise JSONBodyError(f"{self.what}: more than {MAX_OTHER_VALUES} JSON values "
                                "besides the images; send the images alone")
        char = self.peek()
        if char == b"{":
            for _ in self.members(depth + 1):
                self.skip(depth + 1)
        elif char == b"[":
            for _ in self.elements(depth + 1):
                self.skip(depth + 1)
        elif char == b'"':
            self.string_span()
        else:
            match = _SCALAR.match(self.data, self.pos, self.end)
            if match is None:
                raise self.malformed("a value")
            self.pos = match.end()

    def finish(self) -> None:
        if self.peek():
            raise self.malformed("the end of the JSON text")

    def _deeper(self, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise JSONBodyError(f"{self.what}: JSON nested too deeply (over {MAX_DEPTH} "
                                "levels)")

    def base64_bytes(self, start: int, end: int, name: str) -> bytes:
        """The bytes a string of base64 holds, decoded straight from the body (no copy of
        the text unless it holds escapes or spaces)."""
        text = memoryview(self.data)[start:end]
        if self.data.find(b"\\", start, end) >= 0 or self.data.find(b" ", start, end) >= 0:
            text = _BASE64_ESCAPE.sub(_unescape, text)
        try:
            return binascii.a2b_base64(text, strict_mode=True)
        except (binascii.Error, ValueError) as e:
            raise JSONBodyError(f"{name}.b64: not valid base64 ({e})") from None


def _unescape(match: re.Match) -> bytes:
    if match[1] is not None:
        code = int(match[1], 16)
        return bytes([code]) if code < 128 else b"\x00"  # not base64: refused as such
    return _ESCAPED.get(match[2], b"\x00") if match[2] is not None else b""
