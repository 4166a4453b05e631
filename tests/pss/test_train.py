"""End to end on digits at the smallest size: the per-bin table, exact resume (pools, host RNG,
params), and the switch to a plain narrow model equal to the masked supernet."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from common import checkpoint as ckpt_lib
from common import train
from common.compile_cache import persistent_compilation_cache
from pss import switch
from pss.configs import digits
from pss.train import PSS


def _config():
  c = digits.get_config()
  c.num_epochs = 2
  c.dataset.batch_size = 32
  c.method.train_split = 'train[:160]'
  c.method.heldout_split = 'train[1337:]'
  c.method.prior_size = 3000
  c.method.pool_size = 2
  c.method.valid_topk = 2
  c.method.recal_batches = 2
  c.method.random_per_bin = 1
  return c


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('pss')
  with persistent_compilation_cache(str(root / 'xla')):
    full = str(root / 'full')
    res = train.run(_config(), full, PSS(_config()))
    # A run killed after its first epoch's checkpoint: the same directory without epoch 1.
    killed = str(root / 'killed')
    shutil.copytree(full, killed)
    shutil.rmtree(os.path.join(killed, 'checkpoints', '1'))
    os.remove(os.path.join(killed, 'results.json'))
    resumed = train.run(_config(), killed, PSS(_config()))
  return full, res, killed, resumed


def _last(workdir):
  c = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'))
  try:
    return c.restore_raw()
  finally:
    c.close()


def test_table_rows_lie_in_their_bins(runs):
  _, res, _, _ = runs
  assert res['pss_table'], 'no retained subnet'
  for r in res['pss_table']:
    assert abs(r['metric_value'] - r['budget']) <= 0.25 + 1e-9
    assert 0.0 <= r['top1'] <= 1.0 and len(r['random']) == 1
  assert res['max_net']['flops'] == 4601088 and res['min_net']['flops'] == 778240
  rows = train.read_metrics(runs[0])
  assert [r['p'] for r in rows] == [1.0, 0.1]   # p = 0.01 ** (e / E)


def test_resume_restores_pools_host_rng_and_params_exactly(runs):
  full, res, killed, resumed = runs
  (raw_a, meta_a), (raw_b, meta_b) = _last(full), _last(killed)
  assert meta_a['host_state'] == meta_b['host_state']
  jax.tree.map(np.testing.assert_array_equal, raw_a['params'], raw_b['params'])
  assert res['pss_table'] == resumed['pss_table']


def test_switch_exports_a_narrow_model_equal_to_the_supernet(runs, capsys):
  full, res, _, _ = runs
  budget = max(r['flops'] for r in res['pss_table'])
  assert switch.main([f'--workdir={full}', f'--budget={budget}']) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out['flops'] <= budget and out['max_abs_diff_vs_supernet'] < 1e-4
  best = max((r for r in res['pss_table'] if r['flops'] <= budget), key=lambda r: r['top1'])
  assert out['top1'] == best['top1']


def test_switch_budget_below_every_subnet_is_one_error_line(runs, capsys):
  with pytest.raises(SystemExit) as e:
    switch.main([f'--workdir={runs[0]}', '--budget=1000'])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: --budget=1000 FLOPs is below')


def test_bad_config_is_a_user_error(tmp_path):
  c = _config()
  c.method.metric = 'energy'
  with pytest.raises(train.UserError, match=r"method.metric must be one of \['flops', 'latency'\]"):
    train.run(c, str(tmp_path / 'bad'), PSS(c))
