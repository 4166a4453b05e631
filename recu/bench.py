"""ReCU benchmark: BNN train / eval step time vs the same network in full precision, side by side.

  python -m recu.bench [--model=recu_resnet20] [--widths='{"stem": 16, "stages": [16, 32, 64]}']
                       [--batch=128] [--hw=32] [--steps=20] [--repeats=3]

Both networks are built by ``common.models`` with the same widths (``binary=True`` / ``False``)
and run through the *same* engine step (``common.train.make_train_step`` / ``make_eval_step`` of
``recu.train.ReCU``, jitted, one device); the timings interleave the two (ABAB...) so load changes
on a shared machine hit both alike (:func:`time_interleaved`, also used by ``siman.bench``).
Prints one line per network and, last, ``bnn_over_fp_train=<ratio> bnn_over_fp_eval=<ratio>``.

Honest reading: binarization here is *simulated* in float32 (sign, standardisation, the clamp and
alpha are extra elementwise work on top of the same float convolutions), so the BNN step is slower
than the FP one; no XNOR/popcount kernel exists in this codebase. The 1-bit model size is reported
by ``recu.train`` (``model_bits`` in results.json).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from common import schedules
from common import timing
from common import train
from recu.configs import digits as digits_config
from recu.train import ReCU

DEFAULT_WIDTHS = {'stem': 16, 'stages': [16, 32, 64]}

def build_step(meth, batch: int, hw: int, extra: Optional[Dict[str, Any]] = None,
               num_classes: int = 10):
  """Jitted train and eval steps of ``meth`` (a ``common.train.Method`` built from a config),
  exactly as the engine runs them (``common.train.make_train_step`` / ``make_eval_step``, one
  device), on a random batch ``[batch, hw, hw, 3]``.

  ``extra``: entries that replace the method's initial ``TrainState.extra`` (e.g. a mid-run tau).
  Returns ``(train_step, eval_step, state, batch, eval_batch)``.
  """
  c = meth.config
  meth.setup(train.RunInfo(num_classes=num_classes, image_shape=(hw, hw, 3)))
  net = meth.build_model()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, hw, hw, 3)), jnp.float32)
  y = jnp.asarray(np.arange(batch) % num_classes, jnp.int32)
  v = jax.jit(lambda im: meth.init_variables(net, jax.random.PRNGKey(0), im))(x[:1])
  state_extra = meth.init_extra(v['params'], v['batch_stats'], None)
  state_extra.update({k: jnp.asarray(val, jnp.float32) for k, val in (extra or {}).items()})
  sched = schedules.make_schedule(c.schedule, 0.1, 10, 10)
  tx = schedules.make_optimizer(c.optimizer, sched, meth.decay_mask(v['params']))
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=v['params'],
                           batch_stats=v['batch_stats'], opt_state=tx.init(v['params']),
                           extra=state_extra, rng=jax.random.key_data(jax.random.PRNGKey(0)))
  step = jax.jit(train.make_train_step(meth, net, tx, axis_name=None))
  ev = jax.jit(train.make_eval_step(meth, net, axis_name=None))
  b = {'image': x, 'label': y}
  eb = dict(b, weight=jnp.ones((batch,), jnp.float32))
  return step, ev, state, b, eb


def seconds_per_call(fn: Callable[[], Any], n: int) -> float:
  """Wall seconds per call of ``fn`` over ``n`` back-to-back calls (``common.timing``)."""
  return timing.loop_seconds(fn, n)


def time_interleaved(nets: Dict[str, Tuple], steps: int, repeats: int) -> Dict[str, float]:
  """Median seconds per train / eval step of each ``build_step`` tuple in ``nets``.

  Every network is compiled and warmed up first; then ``repeats`` rounds time ``steps`` train
  steps and ``steps`` eval steps of each network in turn (ABAB...), so load changes on a shared
  machine hit all alike. Returns ``{f'{key}_train', f'{key}_eval'}``.
  """
  if steps <= 0 or repeats <= 0:
    raise ValueError(f'steps and repeats must be positive; got {steps}, {repeats}')
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
      times[f'{k}_train'].append(seconds_per_call(train_once, steps))
      times[f'{k}_eval'].append(seconds_per_call(lambda k=k, ev=ev, eb=eb: ev(states[k], eb),
                                                 steps))
  return {k: float(np.median(v)) for k, v in times.items()}


def _recu(model: str, widths, binarizer: str):
  c = digits_config.get_config()
  c.model.name = model
  c.model.widths = widths
  c.method.weight_binarizer = binarizer
  return ReCU(c)


def bench(model: str = 'recu_resnet20', widths=None, batch: int = 128, hw: int = 32,
          steps: int = 20, repeats: int = 3):
  """Seconds per train and eval step of the BNN and the FP network, and their ratios.

  ``widths``: the model's width config (None: ``{'stem': 16, 'stages': [16, 32, 64]}``).
  Returns ``{'bnn_train', 'fp_train', 'bnn_eval', 'fp_eval', 'bnn_over_fp_train',
  'bnn_over_fp_eval'}`` (medians over ``repeats`` interleaved rounds of ``steps`` steps).
  """
  if steps <= 0 or repeats <= 0 or batch <= 0:
    raise ValueError(f'steps, repeats and batch must be positive; got {steps}, {repeats}, {batch}')
  widths = DEFAULT_WIDTHS if widths is None else widths
  # tau = 0.9: a mid-run value, so the clamp is active in the timed BNN step.
  nets = {k: build_step(_recu(model, widths, b), batch, hw, extra={'tau': 0.9})
          for k, b in (('bnn', 'recu'), ('fp', 'none'))}
  out = time_interleaved(nets, steps, repeats)
  out['bnn_over_fp_train'] = out['bnn_train'] / out['fp_train']
  out['bnn_over_fp_eval'] = out['bnn_eval'] / out['fp_eval']
  return out


def parse_widths(text: str):
  """``--widths`` as JSON: ``'{"stem": 16, "stages": [16, 32, 64]}'`` or ``'[16, 16, ...]'``."""
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'--widths must be JSON (a dict or a list of ints); got {text!r}') from e


def main(argv=None):
  """Command line (module docstring): prints the two networks' step times and the ratios;
  returns the :func:`bench` dict."""
  import argparse
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', default='recu_resnet20')
  p.add_argument('--widths', default=json.dumps(DEFAULT_WIDTHS), help='width config as JSON')
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--hw', type=int, default=32)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--repeats', type=int, default=3)
  a = p.parse_args(argv)
  try:
    widths = parse_widths(a.widths)
  except ValueError as e:
    p.error(str(e))
  r = bench(a.model, widths, a.batch, a.hw, a.steps, a.repeats)
  for k in ('bnn', 'fp'):
    print(f'{k}: train {1e3 * r[k + "_train"]:.2f} ms/step, eval {1e3 * r[k + "_eval"]:.2f} '
          f'ms/step ({a.model}, widths {widths}, batch {a.batch}, {a.hw}x{a.hw})')
  print(f'bnn_over_fp_train={r["bnn_over_fp_train"]:.3f} '
        f'bnn_over_fp_eval={r["bnn_over_fp_eval"]:.3f}')
  return r


if __name__ == '__main__':
  main()
