"""CRC-32C checksums of TFRecord framing, from the `google-crc32c` C library.

tensorboardX checksums byte by byte in Python (seconds per 1000 histogram steps); event
files need a CRC of every record's length and of its data.
"""
from __future__ import annotations

from collections.abc import Sequence

from google_crc32c import value as crc32c

_MASK_DELTA = 0xA282EAD8


def crc32c_many(messages: Sequence[bytes]) -> list[int]:
    """CRC-32C of each message."""
    return [crc32c(m) for m in messages]


def masked(crc: int) -> int:
    """TFRecord's masked form of a CRC, as stored in event files."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF
