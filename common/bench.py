"""Train-step throughput of the engine on this machine, and XLA CPU flag variants side by side.

  python -m common.bench [--models=resnet20,resnet56] [--batch=128] [--steps=8] [--variants=all]

For each model: compile time and images/s of the jitted engine train step (the same
``make_train_step`` every paper uses: forward, backward, coupled-decay SGD update) at the given
batch. Each XLA flag variant runs in its own subprocess (XLA reads ``XLA_FLAGS`` once at start-up)
and is printed as a ratio to the default flags measured in the same run. Printed, not asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# Candidate XLA:CPU settings for convolution-heavy training (names from `XLA_FLAGS=--help` of the
# pinned jaxlib). Kept only if they measure faster; see README "Benchmarks".
VARIANTS = {
    'default': '',
    'onednn': '--xla_cpu_use_onednn=true',
    'onednn_custom_call': '--xla_cpu_experimental_onednn_custom_call=true',
    'no_xnnpack': '--xla_cpu_use_xnnpack=false',
    'fast_math': '--xla_cpu_enable_fast_math=true',
}


def measure(model_name: str, batch: int, steps: int) -> dict:
  """Compile time and steady-state images/s of one engine train step (single device)."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np

  from common import schedules, timing, train
  from common.configs import base

  config = base.get_config()
  config.model.name = model_name
  method = train.Method(config)
  method.num_classes = 10
  model = method.build_model()
  x = jnp.asarray(np.random.RandomState(0).randn(batch, 32, 32, 3), jnp.float32)
  y = jnp.asarray(np.random.RandomState(1).randint(0, 10, batch), jnp.int32)
  v = method.init_variables(model, jax.random.PRNGKey(0), x[:1])
  tx = schedules.make_optimizer(config.optimizer, lambda s: 0.1)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=v['params'],
                           batch_stats=v['batch_stats'], opt_state=tx.init(v['params']), extra={},
                           rng=jax.random.PRNGKey(0))
  step = jax.jit(train.make_train_step(method, model, tx, axis_name=None), donate_argnums=(0,))
  batch_d = {'image': x, 'label': y}
  t = time.perf_counter()
  compiled = step.lower(state, batch_d).compile()
  compile_s = time.perf_counter() - t
  def one_step():
    nonlocal state
    state, metrics = compiled(state, batch_d)
    return metrics

  # One untimed step, then the median of `steps` single steps (each blocked on).
  dt = timing.time_interleaved({'step': one_step}, steps, warmup=1)['step'].median
  return {'model': model_name, 'batch': batch, 'compile_s': compile_s, 'step_ms': dt * 1e3,
          'img_s': batch / dt}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--models', default='resnet20,resnet56')
  ap.add_argument('--batch', type=int, default=128)
  ap.add_argument('--steps', type=int, default=8)
  ap.add_argument('--variants', default='all', help='comma list of ' + ','.join(VARIANTS))
  ap.add_argument('--child', default='', help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.child:
    print(json.dumps(measure(args.child, args.batch, args.steps)))
    return 0
  names = list(VARIANTS) if args.variants == 'all' else args.variants.split(',')
  bad = [n for n in names if n not in VARIANTS]
  if bad:
    print(f'error: unknown variants {bad}; allowed: {list(VARIANTS)}', file=sys.stderr)
    return 2
  print(f'{"model":10s} {"variant":20s} {"compile s":>9s} {"step ms":>8s} {"img/s":>7s} '
        f'{"vs default":>10s}')
  for model in args.models.split(','):
    base_ips = None
    for name in names:
      env = dict(os.environ)
      env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' ' + VARIANTS[name]).strip()
      out = subprocess.run([sys.executable, '-m', 'common.bench', '--child', model, '--batch',
                            str(args.batch), '--steps', str(args.steps)], env=env,
                           capture_output=True, text=True)
      if out.returncode != 0:
        print(f'{model:10s} {name:20s} failed: {out.stderr.strip().splitlines()[-1:]}')
        continue
      r = json.loads(out.stdout.strip().splitlines()[-1])
      base_ips = base_ips or (r['img_s'] if name == 'default' else None)
      ratio = f'{r["img_s"] / base_ips:9.2f}x' if base_ips else '       n/a'
      print(f'{model:10s} {name:20s} {r["compile_s"]:9.1f} {r["step_ms"]:8.0f} {r["img_s"]:7.0f} '
            f'{ratio}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
