"""End-to-end: the ReCU quick experiment at smoke size trains a real binary network on digits."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from common import binarize
from common import train
from recu import quick
from recu import recu
from recu import train as recu_train


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('recu_quick'))
  return wd, quick.run(wd, seeds=(0,), smoke=True)


def test_smoke_outcome(smoke):
  wd, out = smoke
  assert set(out) == {'rows', 'plots', 'checks'}
  (row,) = out['rows']
  assert row['method'] == 'ReCU' and row['seed'] == 0
  assert row['top1'] >= 0.25          # chance is 0.10 on 10 classes
  assert out['checks'] and all(out['checks'].values()), out['checks']
  for p in out['plots']:
    assert os.path.getsize(p) > 1000


def test_smoke_logs_tau_schedule_and_binary_weights(smoke):
  wd, _ = smoke
  run_dir = os.path.join(wd, 'recu_seed0')
  with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
    rows = [json.loads(l) for l in f]
  n = quick.SMOKE_EPOCHS
  assert [r['epoch'] for r in rows] == list(range(n))
  for r in rows:   # tau of each epoch follows recu.tau_schedule (float32 in the state)
    assert r['tau'] == pytest.approx(recu.tau_schedule(r['epoch'], n), abs=1e-6)
    assert 0.0 < r['dead_fraction'] < 0.5 and 0.9 < r['weight_entropy'] <= 1.0
  params = train.load_variables(run_dir, which='last')['params']
  eff = recu_train.binarize_params(params, jnp.float32(rows[-1]['tau']))
  paths = binarize.binary_kernel_paths(params)
  assert len(paths) == 18
  for p in paths:
    node_eff, node = eff, params
    for k in p:
      node_eff, node = node_eff[k], node[k]
    assert set(np.unique(np.asarray(node_eff))) <= {-1.0, 1.0}
  with open(os.path.join(run_dir, 'results.json')) as f:
    res = json.load(f)
  assert res['binary_weights'] > 0 and res['model_bits'] < 32 * res['params']
