"""TFRecord files without TensorFlow: read the TF-prepared TFDS copies that users already have.

A TFRecord file is a sequence of ``uint64 length | uint32 masked_crc32c(length) | data |
uint32 masked_crc32c(data)`` (little endian; TensorFlow's ``core/lib/io/record_writer``). TFDS
writes one serialised ``tf.train.Example`` per record in both its tfrecord and array_record formats,
so a record read here parses with TFDS's NumPy example parser (no TensorFlow anywhere).
"""
from __future__ import annotations

import struct
from typing import Iterable, Iterator

import numpy as np

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected


def _table() -> np.ndarray:
  t = np.arange(256, dtype=np.uint32)
  for _ in range(8):
    t = np.where(t & 1, (t >> 1) ^ np.uint32(_POLY), t >> 1).astype(np.uint32)
  return t


_TABLE = [int(v) for v in _table()]


def crc32c(data: bytes) -> int:
  """CRC-32C of ``data`` (pure Python: fine for headers and small test records)."""
  crc = 0xFFFFFFFF
  for b in data:
    crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TensorFlow's masked CRC: ``rot_right(crc, 15) + 0xa282ead8`` (mod 2^32)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: str, verify_data: bool = False) -> Iterator[bytes]:
  """The records of a TFRecord file, in order.

  The length CRC is always checked (it catches misframed or non-TFRecord files); the data CRC
  only with ``verify_data`` (pure-Python CRC is slow on gigabytes; a corrupted payload still fails
  to parse as a tf.train.Example).

  Raises:
    ValueError: a truncated file or a CRC mismatch, naming the file and byte offset.
  """
  with open(path, 'rb') as f:
    offset = 0
    while True:
      header = f.read(12)
      if not header:
        return
      if len(header) < 12:
        raise ValueError(f'{path}: truncated record header at byte {offset}')
      length, length_crc = struct.unpack('<QI', header)
      if masked_crc32c(header[:8]) != length_crc:
        raise ValueError(f'{path}: corrupt record length at byte {offset} (not a TFRecord file?)')
      data = f.read(length)
      footer = f.read(4)
      if len(data) < length or len(footer) < 4:
        raise ValueError(f'{path}: truncated record at byte {offset}')
      if verify_data and masked_crc32c(data) != struct.unpack('<I', footer)[0]:
        raise ValueError(f'{path}: data CRC mismatch in the record at byte {offset}')
      offset += 16 + length
      yield data


def write_records(path: str, records: Iterable[bytes]) -> int:
  """Writes ``records`` as a TFRecord file (what ``tf.io.TFRecordWriter`` writes); returns the
  number written."""
  n = 0
  with open(path, 'wb') as f:
    for data in records:
      header = struct.pack('<Q', len(data))
      f.write(header + struct.pack('<I', masked_crc32c(header)) + data
              + struct.pack('<I', masked_crc32c(data)))
      n += 1
  return n
