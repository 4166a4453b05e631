"""Lottery-Jackpots benchmark: the search step over a plain fine-tuning step of the same network,
side by side in one run.

  python -m jackpot.bench [--model=vgg19] [--batch=64] [--hw=32] [--sparsity=0.9] [--repeats=5]

Both steps are ``common.train.make_train_step`` (jitted, one device) on the same random batch, the
VGG-19 CIFAR layout Jackpot prunes (no conv bias, 1x1-conv classifier; 20.02M conv weights):

* ``finetune``: plain dense training of every weight and BN parameter (SGD m0.9, wd 5e-4);
* ``search_v2``: ``jackpot.train.Jackpot`` (forward on ``W * b``, straight-through gradient to the
  scores, SGD on the scores only, then the pop-up of every layer: the k-th smallest score by 32
  compare-and-count passes, ``jackpot.select``);
* ``search_v1``: the April 2021 variant (the mask recomputed from ``|s|`` in every forward).

The timings interleave the steps (``common.timing.time_interleaved``) so that load on a shared
machine hits all alike. Prints one JSON line with the seconds per step and
``search_over_finetune`` (the paper's method should cost little more than fine-tuning: the target
is <= 1.3x). The weights are random (time does not depend on them).
"""
from __future__ import annotations

import json
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from common import schedules, timing, train
from common.configs.jackpot_dense import LAYOUTS
from jackpot.configs.recipes import search_config
from jackpot.train import Jackpot



def build(model: str = 'vgg19', batch: int = 64, hw: int = 32, sparsity: float = 0.9,
          num_classes: int = 10) -> Dict[str, Any]:
  """``{name: (jitted step, state)}`` for 'finetune', 'search_v2', 'search_v1', and the batch."""
  c = search_config(model=model, dataset='cifar10', sparsity=sparsity, num_epochs=1,
                    model_kwargs=LAYOUTS.get(model, {}))
  info = train.RunInfo(num_classes=num_classes, image_shape=(hw, hw, 3), steps_per_epoch=10)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, hw, hw, 3)), jnp.float32)
  y = jnp.asarray(np.arange(batch) % num_classes, jnp.int32)
  dense = train.Method(c)
  dense.setup(info)
  net = dense.build_model()
  v = jax.jit(lambda im: net.init(jax.random.PRNGKey(0), im, train=False))(x[:1])
  v = {'params': v['params'], 'batch_stats': v['batch_stats']}
  sched = schedules.make_schedule(c.schedule, 0.1, 1, 10)
  out = {}

  def make(meth, variables, extra):
    tx = schedules.make_optimizer(c.optimizer, sched, meth.decay_mask(variables['params']),
                                  meth.trainable_mask(variables['params']))
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                             batch_stats=variables['batch_stats'],
                             opt_state=tx.init(variables['params']), extra=extra,
                             rng=jax.random.key_data(jax.random.PRNGKey(0)))
    return jax.jit(train.make_train_step(meth, net, tx, axis_name=None)), state

  out['finetune'] = make(dense, v, {})
  for variant in ('v2', 'v1'):
    with c.unlocked():
      c.method.variant = variant
    meth = Jackpot(c)
    meth.setup(info)
    sv = meth.search_variables(v, jax.random.PRNGKey(1))
    out[f'search_{variant}'] = make(meth, sv, meth.init_extra(sv['params'], sv['batch_stats'],
                                                              None))
  return {'steps': out, 'batch': {'image': x, 'label': y}}


def main(argv=None) -> Dict[str, Any]:
  import argparse
  ap = argparse.ArgumentParser(prog='python -m jackpot.bench', description=__doc__.split('\n')[0])
  ap.add_argument('--model', default='vgg19', help='model name (Jackpot layout when in LAYOUTS)')
  ap.add_argument('--batch', type=int, default=64, help='batch size')
  ap.add_argument('--hw', type=int, default=32, help='input height = width')
  ap.add_argument('--sparsity', type=float, default=0.9, help='search sparsity')
  ap.add_argument('--repeats', type=int, default=5, help='timed rounds (each times every step)')
  fl = ap.parse_args(argv)
  if fl.batch <= 0 or fl.hw <= 0 or fl.repeats <= 0:
    ap.error(f'batch, hw and repeats must be positive; got {fl.batch}, {fl.hw}, {fl.repeats}')
  if not 0.0 <= fl.sparsity < 1.0:
    ap.error(f'sparsity must lie in [0, 1); got {fl.sparsity}')
  b = build(fl.model, fl.batch, fl.hw, fl.sparsity)
  batch = b['batch']
  fns = {k: (lambda step=step, st=st: step(st, batch)[1]['loss'])
         for k, (step, st) in b['steps'].items()}
  t = timing.time_interleaved(fns, repeats=fl.repeats, warmup=1)
  res = {'model': fl.model, 'batch': fl.batch, 'hw': fl.hw, 'sparsity': fl.sparsity,
         'cpu': timing.cpu_name(), 'devices': str(jax.devices()[0].platform),
         **{f'{k}_s': round(v.median, 4) for k, v in t.items()},
         'search_over_finetune': round(t['search_v2'].median / t['finetune'].median, 3),
         'search_v1_over_finetune': round(t['search_v1'].median / t['finetune'].median, 3)}
  print(json.dumps(res))
  return res


if __name__ == '__main__':
  main()
