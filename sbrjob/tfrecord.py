"""TFRecord files without TensorFlow: what the Beam exporter's workers write.

The format is fixed and simple (per record: uint64 length, masked CRC32C of the length, the data,
masked CRC32C of the data, all little-endian), so the same records give the same bytes as
`tf.io.TFRecordWriter` (tests/test_beam_export.py checks it) and workers need not load TensorFlow.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Iterable

import google_crc32c

_MASK_DELTA = 0xA282EAD8


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF)


def write_records(fh: BinaryIO, records: Iterable[bytes]) -> None:
    """Append `records` to an open binary file in the TFRecord framing (no compression)."""
    for rec in records:
        length = struct.pack("<Q", len(rec))
        fh.write(length)
        fh.write(_masked_crc(length))
        fh.write(rec)
        fh.write(_masked_crc(rec))
