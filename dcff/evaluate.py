"""The exported compact DCFF model: save, load and evaluate it alone (official
``test_compact_model.py``; ``test_compact_model.py``'s compact copy).

  python -m dcff.evaluate --workdir=runs/dcff_digits [--data_dir=DIR]

``workdir/compact/model.json`` holds the compact model config (``common.models.get_model`` name,
num_classes, widths, kwargs), the cprate and where the weights came from;
``workdir/compact/variables.msgpack`` the plain ``{'params', 'batch_stats'}`` of that model: no
fusion, no original filters, nothing DCFF-specific is needed to run it.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from common import models
from dcff import network

COMPACT_DIR = 'compact'


def save_compact(workdir: str, plan: network.FusionPlan, params, batch_stats, state, *,
                 dataset: str = '', image_shape=(32, 32, 3), source: str = '') -> str:
  """Exports (``network.export_compact``) and writes the compact model; returns its directory."""
  cfg, compact_params = network.export_compact(params, state, plan)
  d = os.path.join(workdir, COMPACT_DIR)
  os.makedirs(d, exist_ok=True)
  meta = dict(cfg, cprate=list(plan.cprate), dataset=dataset,
              image_shape=[int(v) for v in image_shape], source=source)
  with open(os.path.join(d, 'model.json'), 'w') as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  variables = {'params': compact_params,
               'batch_stats': jax.tree.map(np.asarray, dict(batch_stats))}
  with open(os.path.join(d, 'variables.msgpack'), 'wb') as f:
    f.write(serialization.msgpack_serialize(variables))
  return d


def load_compact(workdir: str) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
  """``(model, variables, meta)`` of ``workdir/compact`` (a plain ``common.models`` network).

  Raises:
    FileNotFoundError: no exported model there (naming the path).
  """
  d = os.path.join(workdir, COMPACT_DIR)
  mpath, vpath = os.path.join(d, 'model.json'), os.path.join(d, 'variables.msgpack')
  if not (os.path.exists(mpath) and os.path.exists(vpath)):
    raise FileNotFoundError(f'no exported compact model in {d} (expected model.json and '
                            'variables.msgpack written by `python -m dcff.train`)')
  with open(mpath) as f:
    meta = json.load(f)
  with open(vpath, 'rb') as f:
    variables = serialization.msgpack_restore(f.read())
  model = models.get_model(meta['name'], int(meta['num_classes']), widths=meta['widths'],
                           **meta.get('kwargs', {}))
  return model, variables, meta


def evaluate_model(model, variables, dataset, batch_size: int = 256) -> float:
  """Test top-1 of ``model`` (eval mode) over every example of ``dataset`` (a common.data set)."""
  fn = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x, train=False), -1))
  correct = total = 0
  for batch in dataset.batches(batch_size, epoch=0, train=False, drop_remainder=False):
    pred = np.asarray(fn(variables, jnp.asarray(batch['image'])))
    correct += int((pred == np.asarray(batch['label'])).sum())
    total += int(pred.shape[0])
  if total == 0:
    raise ValueError('the evaluation dataset is empty')
  return correct / total


def evaluate_workdir(workdir: str, data_dir: Optional[str] = None) -> Dict[str, Any]:
  """Loads ``workdir``'s compact model and its run's test set; returns top-1, FLOPs and params."""
  import ml_collections
  from common import train
  model, variables, meta = load_compact(workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if data_dir is not None:
    config.dataset.data_dir = data_dir
  ds = train.load_dataset(config, 'test')
  top1 = evaluate_model(model, variables, ds, int(config.dataset.eval_batch_size))
  out = {'compact_top1': top1, 'model': meta['name'], 'widths': meta['widths']}
  try:
    from common import flops as flops_lib
    f, p, _ = flops_lib.count(meta['name'], widths=meta['widths'],
                              input_hw=tuple(meta['image_shape'][:2]),
                              num_classes=int(meta['num_classes']), **meta.get('kwargs', {}))
    out.update({'flops': int(f), 'params': int(p)})
  except ImportError:
    pass
  return out


def main(argv=None):
  from absl import app, flags
  flags.DEFINE_string('workdir', None, 'a finished `python -m dcff.train` workdir')
  flags.DEFINE_string('data_dir', None, 'override the dataset directory of the run')
  flags.mark_flags_as_required(['workdir'])

  def run(argv_):
    if len(argv_) > 1:
      raise app.UsageError(f'unexpected arguments: {argv_[1:]}')
    try:
      out = evaluate_workdir(flags.FLAGS.workdir, flags.FLAGS.data_dir)
    except (FileNotFoundError, ValueError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    print(json.dumps(out))

  app.run(run, argv=argv)


if __name__ == '__main__':
  main()
