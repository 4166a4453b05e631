"""Engine contracts: resume == uninterrupted, NaN guard, corrupt checkpoint, outputs, errors."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import checkpoint, train
from tests.common.engine_fixtures import ToyMethod, toy_config, use_toy_data


def read_rows(wd):
  with open(os.path.join(wd, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f if l.strip()]


class CrashAt(ToyMethod):
  """Simulates a kill after an epoch's steps, before its metrics line and checkpoint."""

  def __init__(self, config, epoch):
    super().__init__(config)
    self.crash_epoch = epoch

  def epoch_end(self, state, epoch):
    if epoch == self.crash_epoch:
      raise KeyboardInterrupt('simulated kill')
    return {}


def test_outputs_and_resume_equals_uninterrupted(tmp_path, monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(4)
  ref = train.run(c, str(tmp_path / 'a'), ToyMethod(c))
  for name in ('config.json', 'metrics.jsonl', 'results.json', 'metrics.png'):
    assert os.path.exists(tmp_path / 'a' / name), name
  rows = read_rows(tmp_path / 'a')
  assert [r['epoch'] for r in rows] == [0, 1, 2, 3]
  assert set(rows[0]) >= {'epoch', 'lr', 'train_loss', 'test_top1', 'seconds'}
  assert ref['top1_best'] == max(r['test_top1'] for r in rows)
  assert rows[-1]['train_loss'] < rows[0]['train_loss']   # it actually trains

  with pytest.raises(KeyboardInterrupt):
    train.run(c, str(tmp_path / 'b'), CrashAt(c, 2))
  assert [r['epoch'] for r in read_rows(tmp_path / 'b')] == [0, 1]
  res = train.run(c, str(tmp_path / 'b'), ToyMethod(c))
  rows_b = read_rows(tmp_path / 'b')
  assert [r['epoch'] for r in rows_b] == [0, 1, 2, 3]
  for ra, rb in zip(rows, rows_b):
    assert ra['train_loss'] == rb['train_loss'] and ra['test_top1'] == rb['test_top1']
  assert res['top1_last'] == ref['top1_last']


class Explodes(ToyMethod):
  def loss(self, logits, labels, aux, params, extra):
    loss, m = super().loss(logits, labels, aux, params, extra)
    return loss * jnp.where(extra['epoch'] >= 2, jnp.nan, 1.0), m

  def init_extra(self, params, batch_stats, rng):
    return {'epoch': jnp.zeros((), jnp.int32)}

  def epoch_start(self, state, epoch):
    return state.replace(extra={'epoch': jnp.asarray(epoch, jnp.int32)})


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(4)
  with pytest.raises(FloatingPointError, match='non-finite training metrics at epoch 2'):
    train.run(c, str(tmp_path), Explodes(c))
  ck = checkpoint.Checkpointer(str(tmp_path / 'checkpoints'))
  assert ck.latest_step() == 1
  raw, meta = ck.restore_raw()
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(raw['params']))
  assert meta['epoch'] == 1


def test_corrupt_checkpoint_is_a_clear_error_and_untouched(tmp_path, monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(2)
  train.run(c, str(tmp_path), ToyMethod(c))
  # Both kept checkpoints are damaged (with one intact, the run falls back to it instead).
  victims = [os.path.join(d, f) for s in ('0', '1')
             for d, _, fs in os.walk(tmp_path / 'checkpoints' / s / 'state') for f in fs]
  assert victims
  for v in victims:
    with open(v, 'wb') as f:
      f.write(b'garbage')
  before = sorted(os.listdir(tmp_path / 'checkpoints'))
  c.num_epochs = 3
  with pytest.raises(checkpoint.CheckpointError, match='cannot be restored'):
    train.run(c, str(tmp_path), ToyMethod(c))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == before


def test_bad_batch_size_and_epochs(tmp_path, monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(1)
  c.dataset.batch_size = 1000
  with pytest.raises(train.UserError, match='exceeds the 64 training examples'):
    train.run(c, str(tmp_path / 'x'), ToyMethod(c))
  c.dataset.batch_size = 16
  c.num_epochs = 0
  with pytest.raises(train.UserError, match='num_epochs must be positive'):
    train.run(c, str(tmp_path / 'y'), ToyMethod(c))


def test_load_variables_roundtrip(tmp_path, monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(2)
  train.run(c, str(tmp_path), ToyMethod(c))
  v = train.load_variables(str(tmp_path))
  assert set(v) == {'params', 'batch_stats'}
  assert v['params']['conv1']['kernel'].shape == (3, 3, 3, 4)
  with pytest.raises(train.UserError, match='no checkpoint found'):
    train.load_variables(str(tmp_path / 'nothing'))


def test_method_choice_default_value_and_error():
  """Method.choice: the default when unset, the configured value, a UserError naming all three."""
  import ml_collections
  cfg = ml_collections.ConfigDict({'method': {'mode': 'b'}})
  m = train.Method(cfg)
  assert m.choice('mode', 'a', ('a', 'b')) == 'b'
  assert m.choice('other', 'a', ('a', 'b')) == 'a'
  with pytest.raises(train.UserError, match=r"method.mode must be one of \['a', 'c'\]; got 'b'"):
    m.choice('mode', 'a', ('a', 'c'))


def test_load_dataset_keeps_augmentation_on_sliced_train_splits(monkeypatch):
  """'train[:N]' is a training split: only the test split (or augment=False) turns augmentation off."""
  from common import data
  from common.configs import resnet20_digits
  seen = {}

  def fake_load(name, split, **kwargs):
    seen[split] = kwargs.get('augment', True)
    return None

  monkeypatch.setattr(data, 'load', fake_load)
  config = resnet20_digits.get_config()
  for split in ('train', 'train[:500]', 'train[10%:]', 'test', 'test[:100]'):
    train.load_dataset(config, split)
  assert seen == {'train': True, 'train[:500]': True, 'train[10%:]': True, 'test': False,
                  'test[:100]': False}
  config.dataset.augment = False
  train.load_dataset(config, 'train[:500]')
  assert seen['train[:500]'] is False
