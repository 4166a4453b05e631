"""PSS-Net bench: host-side pool work per step vs the step, and compilations per resolution.

  python -m pss.bench [--steps=60]

On the quick experiment's supernet (tiny MobileNet-V1 on digits, batch 32), in one run:

* compilations: every XLA backend compile while the engine's pmapped train step runs ``--steps``
  steps is counted (``jax.monitoring``); the middle subnet's widths are data and only its
  resolution is static, so the step should compile once per resolution (3) and never again;
* host work per step: the time of ``before_step`` (bin, coin, prior rejection sampling or pool
  softmax, counts) plus ``after_step``'s pool update (insert / EMA / evict) *after* the metric
  has been read, against the wall time of the step itself (dispatch to ``block_until_ready``).
  Timed in the same loop, step by step, so that the machine's load drifts over both alike.

Prints one JSON line with the CPU model, the medians and the ratio (target: host < 5% of the
step). On a shared machine absolute times vary; the ratio is the figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from common import timing


def _count_compiles():
  """A list that grows by one per executable built: a backend compile, or a program read back
  from the persistent compilation cache (which skips the backend compile)."""
  events = []

  def on_duration(name, duration, **kw):
    if name == '/jax/core/compile/backend_compile_duration':
      events.append(name)

  def on_event(name, **kw):
    if name == '/jax/compilation_cache/cache_hits':
      events.append(name)
  jax.monitoring.register_event_duration_secs_listener(on_duration)
  jax.monitoring.register_event_listener(on_event)
  return events


def run(steps: int = 60, epochs: int = 0) -> dict:
  """The bench (module docstring); ``epochs`` > 0 overrides the config's ``num_epochs`` (the
  per-step cosine length is part of the compiled program)."""
  from common import train
  from pss.configs import digits
  from pss.train import PSS

  compiles = _count_compiles()
  c = digits.get_config()
  if epochs:
    c.num_epochs = epochs
  method = PSS(c)
  engine = train.Engine(c, method)
  state = engine.create_state()
  rstate = train.replicate(state)
  p_train = engine.train_step_fn()
  batches = list(engine.train_ds.batches(engine.batch_size, epoch=0, train=True,
                                         drop_remainder=True))
  ndev = engine.ndev
  before, after, step_t, res_seen = [], [], [], []
  n_before = len(compiles)
  for i in range(steps):
    batch = train.shard(dict(batches[i % len(batches)]), ndev)
    t0 = time.perf_counter()
    arrays, static = train._split_inputs(method.before_step(rstate, i))
    batch['method'] = train._replicate_inputs(arrays, ndev)
    t1 = time.perf_counter()
    rstate, m = p_train(rstate, batch, static)
    jax.block_until_ready(m)
    t2 = time.perf_counter()
    method.after_step(rstate, m, i)
    t3 = time.perf_counter()
    before.append(t1 - t0)
    step_t.append(t2 - t1)
    after.append(t3 - t2)
    res_seen.append(dict(static)['mid_res'])
  train_compiles = len(compiles) - n_before
  first = {r: res_seen.index(r) for r in set(res_seen)}
  warm = [i for i in range(steps) if i > max(first.values())]
  host = np.asarray(before) + np.asarray(after)
  step = np.asarray(step_t)
  out = {'cpu': timing.cpu_name(), 'steps': steps, 'resolutions_seen': sorted(first),
         'compiles_during_training': train_compiles,
         'compiles_expected': len(first),
         'warm_steps': len(warm),
         'host_ms_median': float(np.median(host[warm]) * 1e3) if warm else None,
         'step_ms_median': float(np.median(step[warm]) * 1e3) if warm else None}
  if warm:
    out['host_over_step'] = out['host_ms_median'] / out['step_ms_median']
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m pss.bench', description=__doc__.split('\n')[0])
  p.add_argument('--steps', type=int, default=60)
  p.add_argument('--epochs', type=int, default=0, help='num_epochs of the config (0: its own)')
  p.add_argument('--xla_cache', default='', help='persistent compilation cache directory')
  a = p.parse_args(argv)
  if a.steps < 4 or a.epochs < 0:
    print(f'error: --steps must be >= 4 and --epochs >= 0; got {a.steps}, {a.epochs}',
          file=sys.stderr)
    return 2
  if a.xla_cache:
    from common.compile_cache import persistent_compilation_cache
    with persistent_compilation_cache(a.xla_cache):
      out = run(a.steps, a.epochs)
  else:
    out = run(a.steps, a.epochs)
  print(json.dumps(out))
  return 0


if __name__ == '__main__':
  sys.exit(main())
