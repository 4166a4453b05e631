"""Command-line conventions shared by the ``python -m ...`` entry points of the repository.

Bad input is answered with exactly one line ``error: <what is wrong, the value given and what is
allowed>`` on stderr and exit status 2, never a traceback or a usage dump.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Sequence, TypeVar

T = TypeVar('T')


class ArgumentParser(argparse.ArgumentParser):
  """``argparse.ArgumentParser`` whose usage errors are one ``error:`` line (exit status 2)."""

  def error(self, message: str):
    fail(f'{message} (see {self.prog} --help)')


def fail(message: str) -> None:
  """Prints ``error: <message>`` (one line) on stderr and exits with status 2."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr)
  sys.exit(2)


def parse_list(text: str, flag: str, convert: Callable[[str], T],
               check: Callable[[T], bool] = lambda v: True, allowed: str = '') -> List[T]:
  """A comma-separated flag value as a non-empty list; bad items end the program via :func:`fail`.

  Args:
    text: the flag's value, e.g. ``'0.5,0.75'``.
    flag: the flag's name for the message, e.g. ``'--p'``.
    convert: item parser (``int``, ``float``, ``str``).
    check: predicate every converted item must satisfy.
    allowed: what the message says is allowed (e.g. ``'numbers in [0, 1)'``).
  Returns:
    the converted items, in order.
  """
  items = [s.strip() for s in text.split(',') if s.strip()]
  out = []
  for s in items:
    try:
      v = convert(s)
    except ValueError:
      v = None
    if v is None or not check(v):
      fail(f'{flag}: bad value {s!r} in {text!r}; allowed: comma-separated {allowed}')
    out.append(v)
  if not out:
    fail(f'{flag} is empty; allowed: comma-separated {allowed}')
  return out


def choices(values: Sequence[str], flag: str, allowed: Sequence[str]) -> List[str]:
  """``values`` if every one is in ``allowed``; otherwise :func:`fail` naming the unknown ones."""
  bad = [v for v in values if v not in allowed]
  if bad:
    fail(f'{flag}: unknown {bad}; allowed: {list(allowed)}')
  return list(values)
