"""White-Box benchmark: the class-wise mask step, the dense step and the compact fine-tuning step
of the same VGG-16, and the host-side vote, side by side in one run.

  python -m whitebox.bench [--model=vgg16] [--batch=64] [--target=0.75] [--repeats=5]

Every step is ``common.train.make_train_step`` (jitted, one device) on the same random CIFAR-sized
batch, with the config of ``whitebox/configs/vgg16_cifar10.py`` (SGD momentum 0.9, coupled weight
decay 5e-4, conv biases, Kaiming fan-out init):

* ``classwise``: stage 1, ``whitebox.train.ClassWise`` (the gate ``g = u M`` after every ReLU,
  a fresh ``u`` per position and step, and ``lambda sum_l ||sum_k M_l||_2`` over all 13 masks;
  zyxxmu/White-Box ``cifar.py: train_class``);
* ``dense``: the same network trained without masks (what the gate and regulariser cost);
* ``finetune``: stage 3, plain training of the compact network the vote builds for ``--target``
  (``cifar.py: main`` after ``build_vgg_pruned_model``);
* ``vote``: stage 2 on the host, ``whitebox.compact.prune`` (scores, the keep-ratio loop with one
  ``common.flops`` count per candidate, the random 13th conv), on seeded random masks
  ``1 + 0.1 N(0, 1)``: time does not depend on the values, only the loop length does, and that is
  printed (``vote_iterations``).

The timings interleave all four (``common.timing.time_interleaved``) so that load on a shared
machine hits all alike. Prints one JSON line with the seconds per call and the ratios
``classwise_over_dense`` (the price of the masks in stage 1) and ``finetune_over_dense`` (what the
compact network saves in stage 3). The vote runs once per pruning run; its seconds are printed as
they are. Weights are random (step time does not depend on them).
"""
from __future__ import annotations

import json
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from common import cli, schedules, timing, train
from whitebox import compact as prune_lib
from whitebox import train as wb_train
from whitebox.configs import recipes

MODELS = ('vgg16', 'vgg_tiny')   # vgg_tiny: the quick experiment's network (and a fast test)


def _state(meth: train.Method, variables, config):
  """A fresh ``TrainState`` and the jitted single-device step for ``meth`` on ``variables``."""
  sched = schedules.make_schedule(config.schedule, float(config.optimizer.learning_rate), 1, 10)
  tx = schedules.make_optimizer(config.optimizer, sched, meth.decay_mask(variables['params']),
                                meth.trainable_mask(variables['params']))
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                           batch_stats=variables['batch_stats'],
                           opt_state=tx.init(variables['params']), extra={},
                           rng=jax.random.key_data(jax.random.PRNGKey(0)))
  return state, tx


def build(model: str = 'vgg16', batch: int = 64, target: float = 0.75, hw: int = 32,
          num_classes: int = 10) -> Dict[str, Any]:
  """Everything :func:`main` times.

  Returns:
    ``{'steps': {name: (jitted step, state)}, 'batch': {'image' [batch, hw, hw, 3], 'label'
    [batch]}, 'vote': () -> Pruning, 'pruning': the vote's result, 'plan', 'widths'}``.
  """
  c = recipes.cifar10(model, sparse_lambda=0.01, flops_target=target)
  with c.unlocked():   # vgg_cifar.py: _initialize_weights, for VGG-tiny as for VGG-16
    c.model.kwargs.init = 'kaiming_normal_fan_out'
    c.model.kwargs.dense_init = 'normal_0.01'
  c1, c3 = wb_train.stage_configs(c)
  info = train.RunInfo(num_classes=num_classes, image_shape=(hw, hw, 3), steps_per_epoch=10)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, hw, hw, 3)), jnp.float32)
  y = jnp.asarray(np.arange(batch) % num_classes, jnp.int32)
  key = jax.random.PRNGKey(0)
  steps = {}

  cls = wb_train.ClassWise(c1)
  cls.setup(info)
  net = cls.build_model()
  v = jax.jit(lambda im: cls.init_variables(net, key, im))(x[:1])
  state, tx = _state(cls, v, c1)
  steps['classwise'] = (jax.jit(train.make_train_step(cls, net, tx, axis_name=None)), state)

  dense = train.Method(c3)
  dense.setup(info)
  dnet = dense.build_model()
  dv = jax.jit(lambda im: dense.init_variables(dnet, key, im))(x[:1])
  state, tx = _state(dense, dv, c3)
  steps['dense'] = (jax.jit(train.make_train_step(dense, dnet, tx, axis_name=None)), state)

  plan = cls.plan
  rng = np.random.default_rng(1)
  masks = {m.name: (1.0 + 0.1 * rng.normal(size=(num_classes, m.width))).astype(np.float32)
           for m in plan.masks}
  kw = cls.model_kwargs()

  def vote():
    return prune_lib.prune(plan, masks, target, input_hw=(hw, hw), num_classes=num_classes,
                           model_kwargs=kw, min_preserve=float(c.method.min_preserve),
                           seed=int(c.seed))

  pruning = vote()
  with c3.unlocked():
    c3.model.widths = pruning.widths
  ft = train.Method(c3)
  ft.setup(info)
  fnet = ft.build_model()
  fv = jax.jit(lambda im: ft.init_variables(fnet, key, im))(x[:1])
  state, tx = _state(ft, fv, c3)
  steps['finetune'] = (jax.jit(train.make_train_step(ft, fnet, tx, axis_name=None)), state)
  return {'steps': steps, 'batch': {'image': x, 'label': y}, 'vote': vote, 'pruning': pruning,
          'plan': plan, 'widths': pruning.widths}


def main(argv=None) -> Dict[str, Any]:
  ap = cli.ArgumentParser(prog='python -m whitebox.bench', description=__doc__.split('\n')[0])
  ap.add_argument('--model', default='vgg16', help=f'one of {list(MODELS)}')
  ap.add_argument('--batch', type=int, default=64, help='batch size, >= 1')
  ap.add_argument('--target', type=float, default=0.75, help='FLOPs reduction of the vote, (0, 1)')
  ap.add_argument('--repeats', type=int, default=5, help='timed rounds (each times every call)')
  fl = ap.parse_args(argv)
  cli.choices([fl.model], '--model', MODELS)
  if fl.batch < 1:
    cli.fail(f'--batch must be >= 1; got {fl.batch}')
  if fl.repeats < 1:
    cli.fail(f'--repeats must be >= 1; got {fl.repeats}')
  if not 0.0 < fl.target < 0.9:
    cli.fail(f'--target must lie in (0, 0.9) (the vote cannot go below min_preserve 0.3 per '
             f'layer); got {fl.target}')
  b = build(fl.model, fl.batch, fl.target)
  batch = b['batch']
  fns = {k: (lambda step=step, st=st: step(st, batch)[1]['loss'])
         for k, (step, st) in b['steps'].items()}
  fns['vote'] = lambda: b['vote']().vote.reduction
  t = timing.time_interleaved(fns, repeats=fl.repeats, warmup=1)
  pr = b['pruning']
  res = {'model': fl.model, 'batch': fl.batch, 'target': fl.target, 'cpu': timing.cpu_name(),
         'devices': str(jax.devices()[0].platform),
         **{f'{k}_s': round(v.median, 4) for k, v in t.items()},
         'classwise_over_dense': round(t['classwise'].median / t['dense'].median, 3),
         'finetune_over_dense': round(t['finetune'].median / t['dense'].median, 3),
         'vote_iterations': len(pr.vote.history),
         'vote_flops_reduction': round(pr.vote.reduction, 4),
         'compact_widths': list(map(int, pr.widths))}
  print(json.dumps(res))
  return res


if __name__ == '__main__':
  main()
