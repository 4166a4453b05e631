"""End-to-end: the quick experiment at its smallest size (DCFF through common.train on digits,
export, reload) and the L1 baseline's pruning against a functional reference."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import models, train
from dcff import cprate, evaluate, quick
from dcff.train import DCFF


def test_l1_prune_equals_dense_with_removed_channels_silenced():
  dense_w = models.default_widths('vgg_tiny')
  widths = cprate.compact_widths('vgg_tiny', '[0.3]*6')
  dense = models.get_model('vgg_tiny', 10)
  shapes = jax.eval_shape(lambda: dense.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)),
                                             train=False))
  rng = np.random.default_rng(0)
  v = jax.tree.map(lambda s: rng.normal(0.0, 0.3, s.shape).astype(np.float32), shapes)
  v = {'params': v['params'], 'batch_stats': jax.tree.map(np.abs, v['batch_stats'])}
  pruned = quick.l1_prune(v, dense_w, widths)
  # Reference: the dense net whose removed channels output exactly 0 (BN scale = bias = 0 -> ReLU
  # 0 -> the next conv never sees them), with the keep sets computed here by brute force.
  silenced = jax.tree.map(np.array, v)
  prev = None
  for i, (c, m) in enumerate(zip(dense_w, widths)):
    k = v['params'][f'conv{i}']['kernel']
    k = k if prev is None else k[:, :, prev, :]
    l1 = [np.abs(k[..., j]).sum() for j in range(c)]
    keep = sorted(sorted(range(c), key=lambda j: -l1[j])[:m])
    np.testing.assert_array_equal(pruned['params'][f'conv{i}']['kernel'], k[..., keep])
    drop = [j for j in range(c) if j not in keep]
    silenced['params'][f'bn{i}']['scale'][drop] = 0
    silenced['params'][f'bn{i}']['bias'][drop] = 0
    prev = keep
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 16, 16, 3))
  y_ref = dense.apply(silenced, x, train=False)
  y = models.get_model('vgg_tiny', 10, widths=widths).apply(pruned, x, train=False)
  np.testing.assert_allclose(y, y_ref, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('dcff_quick'))
  return wd, quick.run(wd, seeds=(0,), smoke=True)


def test_quick_smoke_outcome(smoke):
  wd, out = smoke
  assert set(out) >= {'rows', 'plots', 'checks'}
  assert out['checks'] and all(out['checks'].values()), out['checks']
  rows = {r['method']: r for r in out['rows']}
  assert set(rows) == {quick.M_DCFF, quick.M_DYN, quick.M_SCRATCH}
  # Above chance (0.1) by a margin after 3 epochs, and the compact FLOPs are the thop count.
  assert rows[quick.M_DCFF]['top1'] > 0.25 and rows[quick.M_SCRATCH]['top1'] > 0.5
  assert rows[quick.M_DCFF]['flops'] == rows[quick.M_SCRATCH]['flops'] == 4883384
  assert all(os.path.exists(p) for p in out['plots'])


def test_smoke_workdir_artifacts(smoke):
  wd, out = smoke
  run = os.path.join(wd, 'dcff_faithful_seed0')
  with open(os.path.join(run, 'results.json')) as f:
    res = json.load(f)
  assert res['compact_widths'] == [11, 11, 22, 22, 44, 44]
  with open(os.path.join(run, 'metrics.jsonl')) as f:
    temps = [json.loads(line)['temperature'] for line in f]
  a = 2 * 9999 * (1 + np.exp(-3)) / (1 - np.exp(-3))  # E = 3 epochs in the smoke run
  assert temps[0] == pytest.approx(1.0) and temps[1] == pytest.approx(a * (1 / (1 + np.exp(-1)) - 0.5) + 1)
  assert os.path.exists(os.path.join(run, 'fusion.png'))
  # The compact model alone (what `python -m dcff.evaluate` runs) reproduces the reported top-1.
  ev = evaluate.evaluate_workdir(run)
  assert ev['compact_top1'] == res['compact_top1'] == res['top1_best']
  assert ev['flops'] == res['flops']


class CrashAfterSteps(DCFF):
  """Simulates a kill after epoch ``crash``'s steps, before its metrics line and checkpoint."""

  def __init__(self, config, crash):
    super().__init__(config)
    self.crash = crash

  def epoch_end(self, state, epoch):
    if epoch == self.crash:
      raise KeyboardInterrupt
    return super().epoch_end(state, epoch)


def test_resume_restores_fusion_state(smoke, tmp_path):
  """Killed after epoch 2's steps and resumed == the uninterrupted smoke run: the stored scores,
  selection and P_sel come back from the checkpoint (official ``layers_iScore`` resume)."""
  wd, _ = smoke
  c = quick.base_config(0, 3)
  c.checkpoint_every_epochs = 1
  c.method.export = False
  run_dir = str(tmp_path / 'resumed')
  with quick.compilation_cache(os.path.join(wd, 'xla_cache')):
    with pytest.raises(KeyboardInterrupt):
      train.run(c, run_dir, CrashAfterSteps(c, 2))
    train.run(c, run_dir, DCFF(c))

  def rows(d):
    with open(os.path.join(d, 'metrics.jsonl')) as f:
      return [json.loads(line) for line in f]
  ref, got = rows(os.path.join(wd, 'dcff_faithful_seed0')), rows(run_dir)
  assert [r['epoch'] for r in got] == [0, 1, 2]
  for a, b in zip(ref, got):
    for k in ('train_loss', 'test_top1', 'temperature', 'layers_scores_replaced',
              'filters_selection_changed'):
      assert a[k] == b[k], (k, a[k], b[k])
  with open(os.path.join(wd, 'dcff_faithful_seed0', 'results.json')) as f:
    sel_ref = json.load(f)['selected_filters_last']
  with open(os.path.join(run_dir, 'results.json')) as f:
    assert json.load(f)['selected_filters_last'] == sel_ref
