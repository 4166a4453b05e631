"""common.timing: known sleeps and a known work ratio are measured, loosely."""
import time

import jax
import jax.numpy as jnp
import pytest

from common import timing


def test_sleeps_are_timed_side_by_side():
  calls = {'short': 0, 'long': 0}

  def sleeper(name, s):
    def fn():
      calls[name] += 1
      time.sleep(s)
    return fn

  t = timing.time_interleaved({'short': sleeper('short', 0.002), 'long': sleeper('long', 0.02)},
                              repeats=5, warmup=1)
  assert set(t) == {'short', 'long'} and calls == {'short': 6, 'long': 6}
  assert 0.002 <= t['short'].min <= t['short'].median < 0.015
  assert 0.02 <= t['long'].min <= t['long'].median < 0.06
  assert len(t['long'].samples) == 5
  # A list in, a list out (same order); min_seconds lengthens the loops of short calls.
  short, long_ = timing.time_interleaved([sleeper('short', 0.001), sleeper('long', 0.004)],
                                         repeats=2, warmup=1, min_seconds=0.02)
  assert short.median < long_.median
  assert calls['short'] >= 6 + 1 + 1 + 2 * 3


def test_chained_loop_measures_a_known_work_ratio():
  # 256x256 matmuls: enough work per call that dispatch overhead, which a loaded machine inflates,
  # stays small next to it (at 128x128 the ratio fell under 4x at load average ~15).
  x = jnp.full((256, 256), 1.0 / 256, jnp.float32)
  step = lambda a, w: jnp.tanh(a @ w)
  one, many = timing.chained(step, (256, 256), 4), timing.chained(step, (256, 256), 64)
  assert jnp.allclose(one(x, x), jnp.tanh(x @ x))
  t = timing.time_interleaved({'one': lambda: one(x, x), 'many': lambda: many(x, x)}, repeats=5,
                              min_seconds=0.01)
  # 16x the matmuls in the loop: much more than 4x the time, even on a loaded machine.
  assert t['many'].median > 4 * t['one'].median


def test_loop_times_on_two_clocks_and_bad_arguments():
  wall, cpu = timing.loop_times(lambda: time.sleep(0.01), 2, (time.perf_counter,
                                                              time.process_time))
  assert wall >= 0.01 and cpu < wall
  with pytest.raises(ValueError, match='repeats must be >= 1'):
    timing.time_interleaved([lambda: None], repeats=0)
  with pytest.raises(ValueError, match='calls must be >= 1'):
    timing.loop_seconds(lambda: None, 0)
  with pytest.raises(ValueError, match='times must be >= 1'):
    timing.chained(jnp.sin, (1,), 0)
  out = jax.block_until_ready(timing.chained(lambda a: a + 1.0, (3,), 5)(jnp.zeros(3)))
  assert out.shape == (3,)


def test_cpu_name_is_the_cpuinfo_model_name():
  import os
  name = timing.cpu_name()
  assert isinstance(name, str) and name
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      models = [l.split(':', 1)[1].strip() for l in f if l.startswith('model name')]
    if models:
      assert name == models[0]
