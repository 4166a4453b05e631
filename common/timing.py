"""Wall-clock timing of jitted callables, side by side, for the benchmarks.

    t = time_interleaved({'dense': lambda: f(x), 'sparse': lambda: g(x)}, repeats=7)
    t['dense'].median, t['sparse'].min          # seconds per call

Why interleaved: on a shared machine the load drifts over seconds; timing every candidate once per
round, round after round, exposes all of them to the same drift, so their ratio is stable even when
the absolute times are not. Every call's result is ``jax.block_until_ready``-ed inside the timed
region (JAX dispatches asynchronously), garbage collection is off while timing (as ``timeit`` does:
a collection costs more than a small op), and the warm-up calls (compilation, first-touch of
buffers) are not timed. :func:`chained` builds an in-graph loop, timing an op inside a compiled
program without per-call Python dispatch.
"""
from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple, Union

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Timing:
  """Seconds per call of one callable: ``median`` and ``min`` over rounds, all ``samples``."""
  median: float
  min: float
  samples: Tuple[float, ...]


def cpu_name() -> str:
  """The CPU model (``model name`` in ``/proc/cpuinfo``), printed beside every measured figure."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  import platform  # pylint: disable=g-import-not-at-top
  return platform.processor() or platform.machine() or 'unknown CPU'


def loop_times(fn: Callable[[], Any], calls: int = 1,
               clocks: Sequence[Callable[[], float]] = (time.perf_counter,)) -> Tuple[float, ...]:
  """Seconds per call on each of ``clocks`` (e.g. wall and process CPU time of the same loop) of
  ``calls`` back-to-back calls of ``fn``, the last result blocked on, garbage collection off."""
  if calls < 1:
    raise ValueError(f'calls must be >= 1; got {calls!r}')
  gc_was_enabled = gc.isenabled()
  gc.disable()
  try:
    t = [c() for c in clocks]
    out = None
    for _ in range(calls):
      out = fn()
    jax.block_until_ready(out)
    return tuple((c() - t0) / calls for c, t0 in zip(clocks, t))
  finally:
    if gc_was_enabled:
      gc.enable()


def loop_seconds(fn: Callable[[], Any], calls: int = 1,
                 clock: Callable[[], float] = time.perf_counter) -> float:
  """Seconds per call of ``calls`` back-to-back calls of ``fn`` on ``clock``
  (:func:`loop_times` with one clock)."""
  return loop_times(fn, calls, (clock,))[0]


def time_interleaved(fns: Union[Mapping[str, Callable[[], Any]], Sequence[Callable[[], Any]]],
                     repeats: int = 7, *, warmup: int = 2, min_seconds: float = 0.0,
                     calls: int = 1, clock: Callable[[], float] = time.perf_counter
                     ) -> Union[Dict[str, Timing], List[Timing]]:
  """Times several zero-argument callables in alternating rounds.

  Args:
    fns: ``{name: fn}`` or a list of fns; each ``fn()`` returns arrays (blocked on) or anything.
    repeats: timed rounds; each round times every fn once, in order.
    warmup: untimed calls of each fn first (at least 1: compilation).
    min_seconds: if > 0, each fn's loop is ``max(calls, min_seconds / one call)`` calls long, so
      that microsecond ops are not below the clock's resolution (calibrated after the warm-up).
    calls: calls per timed loop (the time reported is per call).
    clock: ``time.perf_counter`` (wall) or e.g. ``time.process_time`` (CPU time of all threads).
  Returns:
    a :class:`Timing` per fn, as a dict (for a mapping) or a list (for a sequence).
  """
  if repeats < 1:
    raise ValueError(f'repeats must be >= 1; got {repeats!r}')
  named = dict(fns) if isinstance(fns, Mapping) else dict(enumerate(fns))
  if not named:
    raise ValueError('time_interleaved needs at least one callable')
  for _ in range(max(warmup, 1)):
    for fn in named.values():
      jax.block_until_ready(fn())
  n = {k: calls for k in named}
  if min_seconds > 0:
    n = {k: max(calls, int(min_seconds / max(loop_seconds(fn, 1, clock), 1e-7)))
         for k, fn in named.items()}
  samples = {k: [] for k in named}
  for _ in range(repeats):
    for k, fn in named.items():
      samples[k].append(loop_seconds(fn, n[k], clock))
  out = {k: Timing(statistics.median(v), min(v), tuple(v)) for k, v in samples.items()}
  return out if isinstance(fns, Mapping) else [out[k] for k in sorted(out)]


def chained(fn: Callable, out_shape: Tuple[int, ...], times: int,
            dtype=jnp.float32) -> Callable:
  """``jit(x, *args -> fn(x, *args) applied `times` times in sequence)``: an op's time inside a
  compiled graph is ``time(chained(...)) / times``, without per-call Python dispatch.

  Every application reads the loop-carried x, which passes through ``lax.optimization_barrier``
  together with the new output ``[out_shape]``: XLA cannot prove it loop-invariant (so cannot
  hoist the op out of the loop) nor reuse a previous result; the barrier itself is free.
  """
  if times < 1:
    raise ValueError(f'times must be >= 1; got {times!r}')

  def run(x, *args):
    def body(_, carry):
      return jax.lax.optimization_barrier((carry[0], fn(carry[0], *args)))
    return jax.lax.fori_loop(0, times, body, (x, jnp.zeros(out_shape, dtype)))[1]
  return jax.jit(run)
