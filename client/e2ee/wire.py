"""A strict length-prefixed codec for the group-key messages.

CBOR is not available, and JSON invites ambiguity (duplicate keys, number forms), so
messages are a fixed sequence of typed fields: big-endian integers, fixed-size byte
strings, and u16/u32 length-prefixed byte strings. The reader refuses truncation,
oversize fields, invalid UTF-8 and trailing bytes, so a relay cannot make two
parsers disagree about what a message says.
"""

from __future__ import annotations

from client.e2ee.group_errors import WireFormatError

MAX_ID_BYTES = 255  # meeting and participant ids, UTF-8


class Writer:
    """Accumulates fields in order; `finish` returns the encoded bytes."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(1, "big"))
        return self

    def u16(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(2, "big"))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(8, "big"))
        return self

    def fixed(self, value: bytes, size: int) -> Writer:
        if len(value) != size:
            raise ValueError(f"field must be {size} bytes, got {len(value)}")
        self._parts.append(bytes(value))
        return self

    def blob(self, value: bytes) -> Writer:
        """u32 length then the bytes."""
        self._parts.append(len(value).to_bytes(4, "big") + bytes(value))
        return self

    def text(self, value: str) -> Writer:
        """u16 length then UTF-8; ids must be non-empty and at most MAX_ID_BYTES."""
        raw = check_id(value)
        self._parts.append(len(raw).to_bytes(2, "big") + raw)
        return self

    def finish(self) -> bytes:
        return b"".join(self._parts)


def check_id(value: str) -> bytes:
    """UTF-8 of a meeting or participant id, refusing empty or oversize ids."""
    raw = value.encode("utf-8")
    if not raw or len(raw) > MAX_ID_BYTES:
        raise ValueError(f"id must be 1..{MAX_ID_BYTES} UTF-8 bytes")
    return raw


class Reader:
    """Reads fields in order; every failure is a `WireFormatError`."""

    __slots__ = ("_data", "_offset")

    def __init__(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise WireFormatError("message must be bytes")
        self._data = bytes(data)
        self._offset = 0

    def _take(self, size: int, what: str) -> bytes:
        end = self._offset + size
        if size < 0 or end > len(self._data):
            raise WireFormatError(f"message truncated in {what}")
        out = self._data[self._offset : end]
        self._offset = end
        return out

    def u8(self, what: str) -> int:
        return self._take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self._take(2, what), "big")

    def u64(self, what: str) -> int:
        return int.from_bytes(self._take(8, what), "big")

    def fixed(self, size: int, what: str) -> bytes:
        return self._take(size, what)

    def blob(self, what: str, max_len: int) -> bytes:
        size = int.from_bytes(self._take(4, what), "big")
        if size > max_len:
            raise WireFormatError(f"{what} is {size} bytes, more than {max_len}")
        return self._take(size, what)

    def text(self, what: str) -> str:
        size = int.from_bytes(self._take(2, what), "big")
        if size == 0 or size > MAX_ID_BYTES:
            raise WireFormatError(f"{what} must be 1..{MAX_ID_BYTES} bytes")
        raw = self._take(size, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WireFormatError(f"{what} is not valid UTF-8") from None

    def expect(self, prefix: bytes, what: str) -> None:
        """Check a magic/type prefix, so one message type is never parsed as another."""
        if self._take(len(prefix), what) != prefix:
            raise WireFormatError(f"not a {what}")

    def finish(self) -> None:
        """Refuse trailing bytes: a message has one encoding, not a family of them."""
        if self._offset != len(self._data):
            raise WireFormatError(f"{len(self._data) - self._offset} trailing bytes")
