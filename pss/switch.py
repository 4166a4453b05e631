"""Switch a trained PSS-Net supernet to the best retained subnet under a budget.

  python -m pss.switch --workdir=runs/pss_digits --budget=2.6e6 [--out=DIR]

Prints one JSON line: the chosen bin, its architecture (resolution, zoo width config), FLOPs,
test top-1 recorded at the end of training, the file of its narrow model, and the largest
difference between the narrow model's logits and the masked supernet's on a probe batch.

Deployment in chenbong/PSS-Net (README, ``train.py`` test mode) sets the subnet's widths and
resolution on the supernet and recalibrates its BN before use; the released checkpoint holds only
the shared BN buffers. Here training ends by storing, per bin, the retained subnet as a plain
narrow zoo model (``workdir/subnets/bin_<budget>.msgpack``: prefix-sliced supernet parameters
and that subnet's recalibrated BN statistics; ``subnets/index.json`` lists them). Switching is
then a file read, and the narrow model loads and runs on its own (``common.models.get_model``).
A budget below every retained subnet is one ``error:`` line.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from common import cli


def _narrow_model(space, widths, num_classes):
  from common import models
  return models.get_model(space.model, num_classes, widths=widths, act='relu6')


def export_subnets(method, state, workdir: str) -> str:
  """Writes every retained subnet of ``method.final_table`` as a narrow zoo model; returns the
  directory."""
  from common.models import slimmable
  table = method.final_table(state)
  out = os.path.join(workdir, 'subnets')
  os.makedirs(out, exist_ok=True)
  index: List[Dict[str, Any]] = []
  space = method.space
  for row in table['pss_table']:
    widths = space.widths(row['channels'])
    res = row['resolution']
    model = _narrow_model(space, widths, method.num_classes)
    x = jnp.zeros((1, res, res, 3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    bs = method._kept_bn[row['budget']]
    v = slimmable.slice_variables({'params': state.params, 'batch_stats': bs},
                                  {'params': shapes['params'],
                                   'batch_stats': shapes['batch_stats']})
    name = f'bin_{row["budget"]:g}.msgpack'
    with open(os.path.join(out, name), 'wb') as f:
      f.write(serialization.to_bytes(jax.tree.map(np.asarray, v)))
    index.append({'budget': row['budget'], 'file': name, 'model': space.model,
                  'widths': widths, 'channels': row['channels'], 'resolution': res,
                  'flops': row['flops'], 'metric_value': row['metric_value'],
                  'top1': row['top1'], 'num_classes': method.num_classes})
  with open(os.path.join(out, 'index.json'), 'w') as f:
    json.dump({'metric': table['metric'], 'subnets': index}, f, indent=2)
  return out


def load_subnet(workdir: str, entry: Dict[str, Any]):
  """``(model, variables)`` of one ``subnets/index.json`` entry: a plain zoo MobileNet."""
  from pss.space import Space
  model = _narrow_model(Space(entry['model']), entry['widths'], entry['num_classes'])
  res = entry['resolution']
  target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, res, res, 3)),
                                             train=False))
  target = {'params': target['params'], 'batch_stats': target['batch_stats']}
  target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), target)
  with open(os.path.join(workdir, 'subnets', entry['file']), 'rb') as f:
    v = serialization.from_bytes(target, f.read())
  return model, v


def choose(index: Dict[str, Any], budget: float) -> Dict[str, Any]:
  """The retained subnet with the highest test top-1 whose FLOPs are <= ``budget``."""
  ok = [e for e in index['subnets'] if e['flops'] <= budget]
  if not ok:
    lo = min(e['flops'] for e in index['subnets'])
    raise ValueError(f'--budget={budget:g} FLOPs is below every retained subnet (the smallest has '
                     f'{lo} FLOPs)')
  return max(ok, key=lambda e: (e['top1'], e['flops']))


def main(argv=None) -> int:
  p = cli.ArgumentParser(prog='python -m pss.switch', description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True)
  p.add_argument('--budget', required=True, type=float, help='FLOPs (MACs) budget, e.g. 2.6e6')
  p.add_argument('--check', default=True, action=argparse_bool(), help='compare the narrow '
                 'model with the masked supernet on a probe batch')
  a = p.parse_args(argv)
  path = os.path.join(a.workdir, 'subnets', 'index.json')
  if not os.path.exists(path):
    cli.fail(f'{path} not found: --workdir must hold a finished pss.train run')
  with open(path) as f:
    index = json.load(f)
  try:
    entry = choose(index, a.budget)
  except ValueError as e:
    cli.fail(str(e))
  model, v = load_subnet(a.workdir, entry)
  out = dict(entry)
  if a.check:
    out['max_abs_diff_vs_supernet'] = supernet_difference(a.workdir, entry, model, v)
  print(json.dumps(out))
  return 0


def argparse_bool():
  import argparse
  return argparse.BooleanOptionalAction


def supernet_difference(workdir: str, entry, model, v) -> float:
  """Largest |narrow logits - masked supernet logits| on a random probe batch (eval mode, the
  subnet's BN statistics in both)."""
  from common import models, train
  from common.models import slimmable
  with open(os.path.join(workdir, 'config.json')) as f:
    cfg = json.load(f)
  slim = models.get_model(cfg['model']['name'], entry['num_classes'])
  sup = train.load_variables(workdir, which='last')
  res = entry['resolution']
  x = jax.random.normal(jax.random.PRNGKey(0), (4, res, res, 3))
  # The supernet runs with the subnet's BN statistics written into the prefix of its buffers.
  bs = jax.tree.map(lambda full, sub: full.at[tuple(slice(0, s) for s in sub.shape)].set(sub),
                    jax.tree.map(jnp.asarray, sup['batch_stats']), v['batch_stats'])
  counts = jnp.asarray(slimmable.counts_of(cfg['model']['name'], entry['widths']))
  y_sup = slim.apply({'params': sup['params'], 'batch_stats': bs}, x, train=False, counts=counts)
  y = model.apply(v, x, train=False)
  return float(jnp.max(jnp.abs(y - y_sup)))


if __name__ == '__main__':
  sys.exit(main())
