"""ReCU benchmark: BNN train / eval step time vs the same network in full precision, side by side.

  python -m recu.bench [--model=recu_resnet20] [--widths=16,32,64] [--batch=128] [--hw=32]
                       [--steps=20] [--repeats=3]

Both networks are built by ``common.models`` with the same widths (``binary=True`` / ``False``)
and run through the *same* engine step (``common.train.make_train_step`` / ``make_eval_step`` of
``recu.train.ReCU``, jitted, one device); the timings interleave the two (ABAB...) so load changes
on a shared machine hit both alike. Prints one line per network and, last,
``bnn_over_fp_train=<ratio> bnn_over_fp_eval=<ratio>``.

Honest reading: binarization here is *simulated* in float32 (sign, standardisation, the clamp and
alpha are extra elementwise work on top of the same float convolutions), so the BNN step is slower
than the FP one; no XNOR/popcount kernel exists in this codebase. The 1-bit model size is reported
by ``recu.train`` (``model_bits`` in results.json).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from common import timing, train
from recu.configs import digits as digits_config
from recu.train import ReCU


def _setup(model: str, widths, binarizer: str, batch: int, hw: int, num_classes: int = 10):
  c = digits_config.get_config()
  c.model.name = model
  c.model.widths = widths
  c.method.weight_binarizer = binarizer
  meth = ReCU(c)
  meth.num_classes = num_classes
  net = meth.build_model()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, hw, hw, 3)), jnp.float32)
  y = jnp.asarray(np.arange(batch) % num_classes, jnp.int32)
  v = jax.jit(lambda im: meth.init_variables(net, jax.random.PRNGKey(0), im))(x[:1])
  extra = meth.init_extra(v['params'], v['batch_stats'], None)
  extra['tau'] = jnp.float32(0.9)
  from common import schedules
  sched = schedules.make_schedule(c.schedule, 0.1, 10, 10)
  tx = schedules.make_optimizer(c.optimizer, sched, meth.decay_mask(v['params']))
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=v['params'],
                           batch_stats=v['batch_stats'], opt_state=tx.init(v['params']),
                           extra=extra, rng=jax.random.key_data(jax.random.PRNGKey(0)))
  step = jax.jit(train.make_train_step(meth, net, tx, axis_name=None))
  ev = jax.jit(train.make_eval_step(meth, net, axis_name=None))
  batch = {'image': x, 'label': y}
  ebatch = dict(batch, weight=jnp.ones((batch['label'].shape[0],), jnp.float32))
  return step, ev, state, batch, ebatch


def bench(model: str = 'recu_resnet20', widths=(16, 32, 64), batch: int = 128, hw: int = 32,
          steps: int = 20, repeats: int = 3):
  """Seconds per train and eval step of the BNN and the FP network, and their ratios.

  Returns ``{'bnn_train', 'fp_train', 'bnn_eval', 'fp_eval', 'bnn_over_fp_train',
  'bnn_over_fp_eval'}`` (medians over ``repeats`` interleaved rounds of ``steps`` steps).
  """
  if steps <= 0 or repeats <= 0 or batch <= 0:
    raise ValueError(f'steps, repeats and batch must be positive; got {steps}, {repeats}, {batch}')
  nets = {k: _setup(model, list(widths), b, batch, hw) for k, b in (('bnn', 'recu'),
                                                                     ('fp', 'none'))}
  states = {k: v[2] for k, v in nets.items()}
  times = {f'{k}_{p}': [] for k in nets for p in ('train', 'eval')}
  for k, (step, ev, st, b, eb) in nets.items():   # compile + warm up
    s, _ = step(st, b)
    jax.block_until_ready(ev(s, eb))
    states[k] = s
  for _ in range(repeats):
    for k, (step, ev, _, b, eb) in nets.items():
      def train_once(k=k, step=step, b=b):
        states[k], m = step(states[k], b)
        return m
      times[f'{k}_train'].append(timing.loop_seconds(train_once, steps))
      times[f'{k}_eval'].append(timing.loop_seconds(lambda k=k, ev=ev, eb=eb: ev(states[k], eb),
                                                    steps))
  out = {k: float(np.median(v)) for k, v in times.items()}
  out['bnn_over_fp_train'] = out['bnn_train'] / out['fp_train']
  out['bnn_over_fp_eval'] = out['bnn_eval'] / out['fp_eval']
  return out


def main(argv=None):
  import argparse
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', default='recu_resnet20')
  p.add_argument('--widths', default='16,32,64', help='comma-separated width list')
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--hw', type=int, default=32)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--repeats', type=int, default=3)
  a = p.parse_args(argv)
  try:
    widths = [int(w) for w in a.widths.split(',')]
  except ValueError:
    p.error(f'--widths must be comma-separated ints; got {a.widths!r}')
  r = bench(a.model, widths, a.batch, a.hw, a.steps, a.repeats)
  for k in ('bnn', 'fp'):
    print(f'{k}: train {1e3 * r[k + "_train"]:.2f} ms/step, eval {1e3 * r[k + "_eval"]:.2f} '
          f'ms/step ({a.model}, widths {widths}, batch {a.batch}, {a.hw}x{a.hw})')
  print(f'bnn_over_fp_train={r["bnn_over_fp_train"]:.3f} '
        f'bnn_over_fp_eval={r["bnn_over_fp_eval"]:.3f}')
  return r


if __name__ == '__main__':
  main()
