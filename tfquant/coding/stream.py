"""Bounds-checked reading and writing of tfquant's binary formats (coder streams and the
compressed-model container): little-endian `struct` fields and LEB128 varints, no pickle.

Every read checks the bytes it needs against what is left and every count against a limit,
so malformed input raises `CompressedFormatError` and never an IndexError or a huge allocation.
"""

import struct


class CompressedFormatError(ValueError):
    """Raised when bytes are not a valid tfquant coder stream or container, or do not fit the
    model they are restored into.

    Example:
      >>> from tfquant.coding import huffman
      >>> try:
      ...     huffman.decode(b"\\x05")
      ... except CompressedFormatError as error:
      ...     print(error)
      truncated Huffman stream: symbol count needs 1 more byte(s), 0 left
    """


_MAX_VARINT_BYTES = 10  # enough for 64 bits


class Reader:
    """A cursor over `data` whose reads raise `CompressedFormatError` instead of running off.

    Args:
      data: bytes-like object.
      what: name of the format, used in error messages ("Huffman stream", "container").

    Example:
      >>> reader = Reader(varint(300) + bytes([1, 0]), "example")
      >>> reader.varint("count", 1000), reader.unpack("<H", "flags")
      (300, (1,))
      >>> reader.take(1, "extra")
      Traceback (most recent call last):
      ...
      tfquant.coding.stream.CompressedFormatError: truncated example: extra needs 1 byte(s), 0 left
    """

    def __init__(self, data, what):
        self.data = memoryview(data).cast("B")
        self.position = 0
        self.what = what

    @property
    def remaining(self):
        return len(self.data) - self.position

    def fail(self, message):
        raise CompressedFormatError(f"{self.what}: {message}")

    def take(self, count, field):
        """The next `count` bytes (a memoryview) for `field`."""
        if count < 0 or count > self.remaining:
            raise CompressedFormatError(
                f"truncated {self.what}: {field} needs {count} byte(s), {self.remaining} left"
            )
        start = self.position
        self.position += count
        return self.data[start : self.position]

    def unpack(self, layout, field):
        """Unpacks a `struct.Struct` (or format string) and returns the tuple."""
        layout = layout if isinstance(layout, struct.Struct) else struct.Struct(layout)
        return layout.unpack(self.take(layout.size, field))

    def varint(self, field, maximum):
        """An unsigned LEB128 integer in [0, maximum]."""
        value = 0
        for index in range(_MAX_VARINT_BYTES):
            if self.remaining < 1:
                raise CompressedFormatError(
                    f"truncated {self.what}: {field} needs 1 more byte(s), 0 left"
                )
            byte = self.data[self.position]
            self.position += 1
            value |= (byte & 0x7F) << (7 * index)
            if value > maximum:
                self.fail(f"{field} exceeds its limit {maximum}")
            if not byte & 0x80:
                return value
        self.fail(f"{field} is a varint longer than {_MAX_VARINT_BYTES} bytes")

    def signed_varint(self, field, bound):
        """A zigzag-coded LEB128 integer in [-bound, bound]."""
        raw = self.varint(field, 2 * bound + 1)
        value = (raw >> 1) ^ -(raw & 1)
        if abs(value) > bound:
            self.fail(f"{field} exceeds its limit {bound}")
        return value

    def string(self, field, max_bytes):
        """A varint length followed by that many UTF-8 bytes."""
        size = self.varint(f"{field} length", max_bytes)
        try:
            return bytes(self.take(size, field)).decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{field} is not valid UTF-8")

    def expect_end(self):
        if self.remaining:
            self.fail(f"{self.remaining} unexpected trailing byte(s)")


def varint(value):
    """LEB128 bytes of a non-negative integer.

    >>> varint(300).hex()
    'ac02'
    """
    if value < 0:
        raise ValueError(f"value must be non-negative. Received: value={value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def signed_varint(value):
    """Zigzag LEB128 bytes of an integer (small magnitudes, either sign, take one byte)."""
    return varint(2 * value if value >= 0 else -2 * value - 1)


def string(text):
    """Varint length + UTF-8 bytes."""
    raw = text.encode("utf-8")
    return varint(len(raw)) + raw
