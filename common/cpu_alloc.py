"""Keep freed host memory mapped, so XLA:CPU's per-call buffers do not page-fault on every call.

Each call of a jitted function allocates its output and temporary buffers with ``malloc`` and frees
them when done. glibc serves blocks over ``M_MMAP_THRESHOLD`` (128 KiB at start) with a fresh
``mmap`` and returns the top of the heap to the OS past ``M_TRIM_THRESHOLD``, so a 2 MB output is
new, zero-filled memory every call: one page fault per 4 KiB page, written by whichever op fills
it first. Measured here (``python -m onexn.bench``): a 1xN layer writing 1.8 MB took 237 us per
call with the defaults and 85 us with this setting; XLA's dense GEMM on the same shape was not
affected (130 us either way), so the defaults make a fast kernel look slow by whoever happens to
write a new buffer first. ``retain_freed_memory`` raises both thresholds, as ``mallopt`` does for
any long-running inference server; the price is that freed memory stays in the process.

Set before timing; it changes allocation only, never results.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Dict

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
# glibc caps M_MMAP_THRESHOLD at HEAP_MAX / 2 = 32 MiB on 64-bit; larger values are rejected.
_MMAP_MAX = 32 * 1024 * 1024

_applied: Dict[str, int] = {}


def retain_freed_memory(trim_threshold: int = 1 << 30, top_pad: int = 64 << 20,
                        mmap_threshold: int = _MMAP_MAX) -> Dict[str, int]:
  """Tunes glibc's malloc to keep freed memory (module docstring). Idempotent.

  Args:
    trim_threshold: bytes of free heap top kept before returning memory to the OS.
    top_pad: extra bytes requested from the OS each time the heap grows.
    mmap_threshold: blocks at least this large get their own mmap (<= 32 MiB).
  Returns:
    the settings that glibc accepted, ``{}`` on a C library without ``mallopt`` (not glibc).
  """
  if _applied:
    return dict(_applied)
  name = ctypes.util.find_library('c')
  try:
    libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return {}
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  mallopt.restype = ctypes.c_int
  for key, param, value in (('mmap_threshold', _M_MMAP_THRESHOLD, min(mmap_threshold, _MMAP_MAX)),
                            ('trim_threshold', _M_TRIM_THRESHOLD, trim_threshold),
                            ('top_pad', _M_TOP_PAD, top_pad)):
    if mallopt(param, int(value)) == 1:
      _applied[key] = int(value)
  return dict(_applied)
