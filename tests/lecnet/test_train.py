"""End to end: the LEC-Net quick experiment at smoke size (digits, base + one 2-way 5-shot session,
LEC-Net and Ft-CNN), then the properties of its checkpoints: frozen backbone bit-identical, old
logits unchanged, stored gates used at test time, per-session report, clear errors."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from common import train
from common.train import UserError
from lecnet import quick
from lecnet import train as lec_train
from lecnet.model import LECNet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('lecnet_quick'))
  return wd, quick.run(wd, seeds=(0,), smoke=True)


def test_smoke_outcome(smoke):
  wd, out = smoke
  assert set(out) == {'rows', 'plots', 'checks'}
  by = {r['arm']: r for r in out['rows']}
  assert set(by) == {'lec', 'finetune'}
  assert by['lec']['acc_s0'] >= 0.8                 # 4 base digits (chance 0.25)
  assert by['lec']['top1'] > by['finetune']['top1']  # Ft-CNN forgets the base digits
  assert out['checks'] and all(out['checks'].values()), out['checks']
  for p in out['plots']:
    assert os.path.getsize(p) > 1000


def test_backbone_and_old_branches_are_bit_identical_across_sessions(smoke):
  wd, _ = smoke
  base = train.load_state(os.path.join(wd, 'seed0', 'session_0'))
  lec = train.load_state(os.path.join(wd, 'seed0', 'lec_session1'))
  ft = train.load_state(os.path.join(wd, 'seed0', 'finetune_session1'))

  def same(a, b):
    la, lb = jax_leaves(a), jax_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))

  for k in ('net', 'node', 'head_0'):
    assert same(base['params'][k], lec['params'][k]), k
  assert same(base['batch_stats'], lec['batch_stats'])
  for k in ('expand_1', 'head_1'):
    assert not same(base['params'][k], lec['params'][k]), k
  # The fine-tuning baseline does move the backbone and its BN statistics.
  assert not same(base['params']['net'], ft['params']['net'])
  assert not same(base['batch_stats'], ft['batch_stats'])


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_old_class_logits_unchanged_and_stored_gate_used(smoke):
  wd, _ = smoke
  c = quick.config_for(0, smoke=True)
  proto = lec_train.build_protocol(c)
  model = LECNet('resnet8', 4, 2, 1, 64)
  base = train.load_state(os.path.join(wd, 'seed0', 'session_0'))
  lec = train.load_state(os.path.join(wd, 'seed0', 'lec_session1'))
  gates = jnp.asarray(lec['extra']['gates'])
  assert gates.shape == (2, 64)
  np.testing.assert_array_equal(np.asarray(gates[0]), 1.0)
  g1 = np.asarray(gates[1])
  assert ((g1 > 0) & (g1 < 1)).all()
  images = next(proto.test_set(1).batches(64, epoch=0, train=False))['image']
  v0 = {'params': base['params'], 'batch_stats': base['batch_stats']}
  v1 = {'params': lec['params'], 'batch_stats': lec['batch_stats']}
  l0, _ = model.apply(v0, images, session=0, gates=gates)
  l1, alpha = model.apply(v1, images, session=1, gates=gates)
  assert l1.shape == (64, 6)
  np.testing.assert_allclose(np.asarray(l1[:, :4]), np.asarray(l0), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(alpha), g1)
  # The run's reported active fraction is that of the stored gate.
  with open(os.path.join(wd, 'seed0', 'lec_session1', 'results.json')) as f:
    res = json.load(f)
  assert res['active_fraction'] == pytest.approx(float((g1 > 0.5).mean()))
  # Its joint accuracy is what the stored-gate model predicts on the joint test set.
  ds = proto.test_set(1)
  pred, lab = [], []
  for b in ds.batches(128, epoch=0, train=False, drop_remainder=False):
    pred.append(np.asarray(model.apply(v1, b['image'], session=1, gates=gates)[0]).argmax(1))
    lab.append(b['label'])
  acc = float(np.mean(np.concatenate(pred) == np.concatenate(lab)))
  with open(os.path.join(wd, 'seed0', 'sessions.json')) as f:
    table = json.load(f)
  assert table['lec'][1]['acc_joint'] == pytest.approx(acc, abs=1e-6)
  assert table['lec'][1]['test_top1'] == pytest.approx(acc, abs=1e-6)


def test_report_files_schedule_and_rerun_resumes(smoke):
  wd, _ = smoke
  run_dir = os.path.join(wd, 'seed0')
  for f in ('sessions.json', 'sessions.md', 'accuracy_vs_session.png', 'stages.json'):
    assert os.path.exists(os.path.join(run_dir, f)), f
  rows = train.read_metrics(os.path.join(run_dir, 'lec_session1'))
  c = quick.config_for(0, smoke=True)
  assert len(rows) == c.method.session_epochs // c.method.passes_per_epoch
  assert all(0 < r['active_fraction'] < 1 and r['penalty'] >= 0 for r in rows)
  # The gate slope reaches the step as LEC's epoch counter (one full-batch step per LEC epoch,
  # counted from 0 in every session): engine epoch k averages beta_e = 1 + max(e - 20, 0) over
  # e = k P .. (k + 1) P - 1 (smoke: 1.4 and 18.0).
  p = c.method.passes_per_epoch
  want = [np.mean([1.0 + max(e - 20, 0) for e in range(k * p, (k + 1) * p)])
          for k in range(len(rows))]
  np.testing.assert_allclose([r['beta'] for r in rows], want, rtol=1e-6)
  before = json.load(open(os.path.join(run_dir, 'sessions.json')))
  again = lec_train.run(c, run_dir)       # every stage is finished: nothing retrains
  assert json.dumps(again['table'], sort_keys=True) == json.dumps(before, sort_keys=True)


def test_bad_input_is_one_clear_error(tmp_path):
  c = quick.config_for(0, smoke=True)
  c.method.arms = 'lec,bogus'
  with pytest.raises(UserError, match=r"method.arms must be a comma-separated subset of "
                                      r"\['lec', .*got 'lec,bogus'"):
    lec_train.stages(c, str(tmp_path))
  c = quick.config_for(0, smoke=True)
  c.method.protocol = 'imagenet'
  with pytest.raises(UserError, match="method.protocol must be one of"):
    lec_train.build_protocol(c)
  c = quick.config_for(0, smoke=True)
  c.method.session_epochs = 30
  with pytest.raises(UserError, match='session_epochs=30 must be a positive multiple of '
                                      'method.passes_per_epoch=25'):
    lec_train.stages(c, str(tmp_path))
  p = subprocess.run([sys.executable, '-m', 'lecnet.train', f'--workdir={tmp_path / "w"}',
                      '--config=lecnet/configs/digits.py', '--config.method.r=1.5'],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert p.returncode == 2
  errors = [l for l in p.stderr.splitlines() if l.startswith('error:')]
  assert errors == ['error: method.r must be in [0, 1] (a fraction of the 64 nodes); got 1.5'], \
      p.stderr[-2000:]


def test_what_trains_in_each_session():
  """Session s of an LEC arm trains ``expand_s`` and ``head_s`` only (the old branches, heads,
  ``W_1`` and backbone keep their session s-1 values; ``method.train_node`` adds ``W_1``);
  Ft-CNN trains everything it uses; the base session trains backbone, ``W_1`` and the base head."""
  keys = ['net', 'node', 'head_0', 'head_1', 'head_2', 'head_3', 'expand_1', 'expand_2',
          'expand_3']
  params = {k: {'w': np.zeros(1)} for k in keys}

  def trained(session, arm, train_node=False):
    c = quick.config_for(0, smoke=False)
    c.method.train_node = train_node
    m = lec_train.FSCILMethod(c, proto=None, session=session, arm=arm)
    mask = m.trainable_mask(params)
    return sorted(k for k in keys if mask[k]['w'])

  assert trained(0, '') == ['head_0', 'net', 'node']
  for arm in ('lec', 'lec_no_penalty', 'lec_no_gate'):
    assert trained(2, arm) == ['expand_2', 'head_2']
  assert trained(3, 'lec', train_node=True) == ['expand_3', 'head_3', 'node']
  assert trained(2, 'finetune') == ['head_0', 'head_1', 'head_2', 'net', 'node']
  assert trained(2, 'prototype') == []


def test_penalty_gradient_in_the_lec_step_is_the_closed_form():
  """The LEC step's loss differs from the no-penalty arm's by exactly ``0.1 R`` and its gradient
  by ``0.1 dR/dW_aux,s = 0.1 / N * alpha (1 - alpha) * beta * mean_b x`` on ``expand_s`` alone
  (``get_loss``: ``0.1 * R1`` on the training gate ``self.alpha``); with ``W_1`` and the old heads
  frozen KD contributes a constant and no gradient."""
  import jax
  n, s, epoch = 8, 2, 23                  # beta = 1 + (23 - 20) = 4
  model = LECNet('resnet8', base_classes=4, way=2, sessions=3, nodes=n,
                 backbone_widths={'stem': 4, 'stages': [4, 4, 8], 'inner': [[4], [4], [8]]})
  rs = np.random.RandomState(0)
  gates = jnp.asarray(np.concatenate([np.ones((1, n)), rs.uniform(0, 1, (3, n))]), jnp.float32)
  images = jnp.asarray(rs.randn(6, 16, 16, 3), jnp.float32)
  labels = jnp.asarray([6, 7, 6, 7, 6, 7])
  v = model.init(jax.random.PRNGKey(0), images, session=3, gates=gates)
  params, stats = v['params'], v['batch_stats']
  extra = {'gates': gates, 'teacher': {k: w for k, w in params.items() if k != 'net'}}
  batch = {'image': images, 'label': labels, 'method': {'lec_epoch': np.int32(epoch)}}

  def loss_and_grad(arm):
    c = quick.config_for(0, smoke=False)
    m = lec_train.FSCILMethod(c, proto=None, session=s, arm=arm)
    fn = train._method_loss(m)
    mask = m.trainable_mask(params)

    def obj(p):
      p = jax.tree.map(lambda w, t: w if t else jax.lax.stop_gradient(w), p, mask)
      return fn(model, p, stats, extra, batch, jax.random.PRNGKey(1))

    (loss, (_, new_extra, mets, _)), g = jax.value_and_grad(obj, has_aux=True)(params)
    return float(loss), g, mets, new_extra

  l_pen, g_pen, m_pen, extra_pen = loss_and_grad('lec')
  l_free, g_free, _, _ = loss_and_grad('lec_no_penalty')
  x = np.asarray(model.apply(v, images, False, method=LECNet.features), np.float64)
  w = np.asarray(params[f'expand_{s}'], np.float64)
  beta = 1.0 + (epoch - 20)
  alpha = 1.0 / (1.0 + np.exp(-beta * (x @ w).mean(0)))
  assert alpha.mean() > 0.1                                     # the hinge is active
  assert l_pen - l_free == pytest.approx(0.1 * (alpha.mean() - 0.1), abs=1e-5)
  assert float(m_pen['beta']) == beta
  np.testing.assert_allclose(np.asarray(extra_pen['gates'][s]), alpha, rtol=1e-5)
  want = 0.1 / n * np.outer(x.mean(0), alpha * (1 - alpha) * beta)
  np.testing.assert_allclose(np.asarray(g_pen[f'expand_{s}']) - np.asarray(g_free[f'expand_{s}']),
                             want, rtol=1e-4, atol=1e-8)
  for k in params:
    if k != f'expand_{s}':
      for a, b in zip(jax.tree.leaves(g_pen[k]), jax.tree.leaves(g_free[k])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for k in ('net', 'node', 'head_0', 'head_1', 'expand_1'):
    assert all(not np.asarray(a).any() for a in jax.tree.leaves(g_pen[k])), k


def test_diagnose_block_confusion_and_expansion_gradients(smoke):
  from lecnet import diagnose
  # Hand-made: base 2 (classes 0, 1), way 1 (class 2 = session 1, class 3 = session 2);
  # (true, predicted) blocks (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 2), (2, 2).
  conf = diagnose.block_confusion([0, 2, 3, 1, 2, 3, 3], [0, 0, 1, 2, 2, 3, 3], 2, 1, 2)
  np.testing.assert_array_equal(conf, [[1, 1, 1], [1, 1, 0], [0, 0, 2]])
  with pytest.raises(ValueError, match='beyond session 1'):
    diagnose.block_confusion([3], [0], 2, 1, 1)

  # Gradients against a float64 NumPy forward by central differences and the penalty's closed form.
  rs = np.random.RandomState(0)
  f, n, base, way, s = 6, 5, 3, 2, 2
  p = {'node': rs.randn(f, n), 'head_0': rs.randn(n, base), 'head_1': rs.randn(n, way),
       'head_2': rs.randn(n, way), 'expand_1': rs.randn(f, n), 'expand_2': rs.randn(f, n)}
  x = np.abs(rs.randn(7, f))
  y = np.array([5, 6, 5, 6, 5, 6, 5])
  gates = np.concatenate([np.ones((1, n)), rs.uniform(0, 1, (2, n))])
  beta = 3.0

  def np_ce(w):
    nz = lambda v: v / (1e-6 + np.linalg.norm(v, axis=1, keepdims=True))
    u = x @ p['node']
    alpha = 1 / (1 + np.exp(-beta * (x @ w).mean(0)))
    z = [nz(u), nz(0.6 * u + gates[1] * (x @ p['expand_1'])), nz(0.6 * u + alpha * (x @ w))]
    lg = np.concatenate([zj @ p[f'head_{j}'] for j, zj in enumerate(z)], 1)
    lg = lg - lg.max(1, keepdims=True)
    return -np.mean(lg[np.arange(len(y)), y] - np.log(np.exp(lg).sum(1)))

  jp = {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}
  g_ce, g_pen, alpha = diagnose.expansion_gradients(jp, jnp.asarray(x, jnp.float32),
                                                    jnp.asarray(y), s, jnp.asarray(gates),
                                                    beta, r=0.1, penalty_weight=0.1)
  w = p['expand_2']
  for _ in range(3):
    d = rs.randn(f, n)
    fd = (np_ce(w + 1e-5 * d) - np_ce(w - 1e-5 * d)) / 2e-5
    assert float(np.sum(np.asarray(g_ce) * d)) == pytest.approx(fd, rel=1e-3, abs=1e-5)
  a = 1 / (1 + np.exp(-beta * (x @ w).mean(0)))
  np.testing.assert_allclose(np.asarray(alpha), a, rtol=1e-5)
  assert a.mean() > 0.1
  np.testing.assert_allclose(np.asarray(g_pen), 0.1 / n * np.outer(x.mean(0), a * (1 - a) * beta),
                             rtol=1e-4, atol=1e-8)

  # On the smoke run: the reported joint accuracy and the test set's block sizes.
  wd, _ = smoke
  c = quick.config_for(0, smoke=True)
  out = diagnose.diagnose(c, os.path.join(wd, 'seed0'))
  row, = out['sessions']
  conf = np.asarray(row['block_confusion'])
  with open(os.path.join(wd, 'seed0', 'sessions.json')) as fh:
    table = json.load(fh)
  assert row['accuracy'] == pytest.approx(table['lec'][1]['acc_joint'], abs=1e-6)
  assert np.trace(conf) / conf.sum() >= row['accuracy']   # a right block may hold a wrong class
  labels = lec_train.build_protocol(c).test_set(1).labels()
  np.testing.assert_array_equal(conf.sum(1), [(labels < 4).sum(), (labels >= 4).sum()])
  for tag in ('start', 'end'):
    g = row[f'gate_gradient_{tag}']
    assert g['penalty_t_mean'] > 0 and 0 <= g['ce_raises_t_fraction'] <= 1
  assert row['gate_gradient_start']['beta'] == 1.0
  assert os.path.exists(os.path.join(wd, 'seed0', 'diagnosis_lec.json'))
  with pytest.raises(UserError, match="arm must be one of"):
    diagnose.diagnose(c, os.path.join(wd, 'seed0'), arm='finetune')
