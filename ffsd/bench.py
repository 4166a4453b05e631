"""FFSD benchmark: one training step of every network with the common students (and decoders)
stacked under ``jax.vmap``, over the same step with them run one by one, side by side in one run.

  python -m ffsd.bench [--model=resnet8] [--batch=64] [--hw=32] [--students=2] [--steps=5]
                       [--repeats=3]

Both steps are the engine's (``common.train.make_train_step`` of ``ffsd.train.FFSD``, jitted, one
device) on the same random batch and the same initial state: every network's forward, the summed
loss, one backward and every network's own optimizer update. The only difference is
``method.vectorize``: True batches the m students' (and the m decoders') convolutions into one
vmapped call, False traces them as m separate sub-graphs inside the same jitted step. The two are
timed interleaved (``common.timing.time_interleaved``), so load drift on a shared machine hits both
alike. Prints one JSON line: seconds per step of each and ``vmapped_over_one_by_one``.
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from common import timing
from common import train
from ffsd.configs import digits as digits_config
from ffsd.train import FFSD


def build_step(vectorize: bool, model: str, batch: int, hw: int, students: int,
               num_classes: int = 10):
  """``(jitted step, state, batch)`` of the engine's FFSD train step (one device)."""
  c = digits_config.get_config()
  c.model.name = model
  c.method.num_students = students
  c.method.vectorize = vectorize
  meth = FFSD(c)
  meth.setup(train.RunInfo(num_classes=num_classes, image_shape=(hw, hw, 3), steps_per_epoch=10))
  net = meth.build_model()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, hw, hw, 3)), jnp.float32)
  y = jnp.asarray(np.arange(batch) % num_classes, jnp.int32)
  v = meth.init_variables(net, jax.random.PRNGKey(0), x[:2])
  ups = meth.updates(v['params'], lambda s: jnp.float32(c.optimizer.learning_rate))
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=v['params'],
                           batch_stats=v['batch_stats'],
                           opt_state=train.init_opt_state(ups, v['params']),
                           extra=meth.init_extra(v['params'], v['batch_stats'], None),
                           rng=jax.random.key_data(jax.random.PRNGKey(0)))
  step = jax.jit(train.make_train_step(meth, net, ups, axis_name=None))
  return step, state, {'image': x, 'label': y}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--model', default='resnet8')
  ap.add_argument('--batch', type=int, default=64)
  ap.add_argument('--hw', type=int, default=32)
  ap.add_argument('--students', type=int, default=2)
  ap.add_argument('--steps', type=int, default=5)
  ap.add_argument('--repeats', type=int, default=3)
  a = ap.parse_args(argv)
  for k in ('batch', 'hw', 'steps', 'repeats'):
    if getattr(a, k) <= 0:
      ap.error(f'--{k} must be positive; got {getattr(a, k)}')
  if a.students < 2:
    ap.error(f'--students must be >= 2 (FFSD); got {a.students}')
  try:
    built = {name: build_step(vec, a.model, a.batch, a.hw, a.students)
             for name, vec in (('vmapped', True), ('one_by_one', False))}
  except (train.UserError, ValueError) as e:
    ap.error(str(e))
  states = {k: v[1] for k, v in built.items()}

  def runner(name):
    step, _, b = built[name]

    def go():
      s = states[name]
      for _ in range(a.steps):
        s, m = step(s, b)
      states[name] = s
      return m['loss']
    return go

  t = timing.time_interleaved({k: runner(k) for k in built}, repeats=a.repeats, warmup=1)
  out = {k: t[k].median / a.steps for k in built}
  out['vmapped_over_one_by_one'] = out['vmapped'] / out['one_by_one']
  out.update(model=a.model, batch=a.batch, hw=a.hw, students=a.students)
  print(json.dumps(out))
  return out


if __name__ == '__main__':
  main()
