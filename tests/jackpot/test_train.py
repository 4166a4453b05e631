"""jackpot.train inside the jitted step: frozen weights and BN affine, scores the only optimizer
leaves, BN statistics updating, the pop-up after each step equal to a NumPy transcription of
zyxxmu/lottery-jackpots ``PretrainConv.final_pop_up``, per-layer counts invariant."""
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from common import pretrained, schedules, train
from jackpot import train as jtrain
from jackpot.configs import digits

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WIDTHS = [8, 8, 8, 8, 16, 16]
STEPS = 3


def tiny_config(ckpt='', **method):
  c = digits.get_config()
  c.model.widths = WIDTHS
  # The official lr (batch 256), not the digits recipe's batch-scaled one: over the STEPS steps
  # on random data the scores have to cross the 0.01 gap of the initial scores for masks to move.
  c.optimizer.learning_rate = digits.OFFICIAL_LR
  c.init_checkpoint = ckpt
  c.progress_bar = False
  for k, v in method.items():
    c.method[k] = v
  return c


@pytest.fixture(scope='module')
def pretrained_npz(tmp_path_factory):
  """Random 'pretrained' variables with non-trivial BN affine and classifier bias, so that
  'frozen' is observable."""
  c = tiny_config()
  m = jtrain.Jackpot(c)
  m.setup(train.RunInfo(num_classes=10, image_shape=(32, 32, 3)))
  model = m.build_model()
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  r = np.random.RandomState(0)
  params = jax.tree.map(lambda a: a + jnp.asarray(0.2 * r.randn(*a.shape), a.dtype), v['params'])
  path = str(tmp_path_factory.mktemp('pre') / 'pre.npz')
  pretrained.save_variables_npz(path, {'params': params, 'batch_stats': v['batch_stats']})
  return path


def build(ckpt, **method):
  c = tiny_config(ckpt, **method)
  m = jtrain.Jackpot(c)
  m.setup(train.RunInfo(num_classes=10, image_shape=(32, 32, 3), steps_per_epoch=STEPS))
  model = m.build_model()
  x0 = jnp.zeros((1, 32, 32, 3))
  v = m.init_variables(model, jax.random.PRNGKey(1), x0)
  extra = m.init_extra(v['params'], v['batch_stats'], jax.random.PRNGKey(2))
  sched = schedules.make_schedule(c.schedule, c.optimizer.learning_rate, 2, STEPS)
  tx = schedules.make_optimizer(c.optimizer, sched, m.decay_mask(v['params']),
                                m.trainable_mask(v['params']))
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=v['params'],
                           batch_stats=v['batch_stats'], opt_state=tx.init(v['params']),
                           extra=extra, rng=jax.random.PRNGKey(3))
  step = jax.jit(train.make_train_step(m, model, tx, axis_name=None))
  r = np.random.RandomState(4)
  states = [state]
  for _ in range(STEPS):
    batch = {'image': jnp.asarray(r.randn(16, 32, 32, 3), jnp.float32),
             'label': jnp.asarray(r.randint(0, 10, 16), jnp.int32)}
    states.append(step(states[-1], batch)[0])
  return m, model, states


@pytest.fixture(scope='module')
def v2(pretrained_npz):
  return build(pretrained_npz, sparsity=0.9)


def final_pop_up_ref(s, b, k, rate=1):
  """NumPy transcription of ``PretrainConv.final_pop_up`` (sorts and index lists)."""
  m, flat_bm = s.ravel().copy(), b.ravel().copy()
  srt = np.sort(m)
  idx0, idx1 = np.nonzero(~flat_bm)[0], np.nonzero(flat_bm)[0]
  pop0 = np.nonzero(m[idx0] > srt[k - 1])[0]
  pop1 = np.nonzero(m[idx1] <= srt[k - 1])[0]
  if len(pop0) and len(pop1) and len(pop0) == len(pop1):
    o0 = np.argsort(-m[idx0][pop0], kind='stable')
    o1 = np.argsort(m[idx1][pop1], kind='stable')
    q = math.ceil(len(o0) * rate) if len(pop0) > 1 else 1
    flat_bm[idx0[pop0][o0[:q]]] = True
    flat_bm[idx1[pop1][o1[:q]]] = False
  return flat_bm.reshape(b.shape)


def flat(t):
  return traverse_util.flatten_dict(jax.tree.map(np.asarray, t))


def test_frozen_weights_bn_affine_and_stats(v2):
  _, _, states = v2
  s0, s1 = states[0], states[-1]
  for k, a in flat(s0.params['net']).items():
    np.testing.assert_array_equal(a, flat(s1.params['net'])[k], err_msg=str(k))   # bit-identical
  bs0, bs1 = flat(s0.batch_stats), flat(s1.batch_stats)
  assert all(not np.array_equal(bs0[k], bs1[k]) for k in bs0)   # BN running stats move
  sc0, sc1 = flat(s0.params['scores']), flat(s1.params['scores'])
  assert all(not np.array_equal(sc0[k], sc1[k]) for k in sc0)


def test_only_scores_in_the_optimizer(v2):
  m, _, states = v2
  n_scores = sum(a.size for a in jax.tree.leaves(states[0].params['scores']))
  n_net = sum(a.size for a in jax.tree.leaves(states[0].params['net']))
  opt = sum(np.size(a) for a in jax.tree.leaves(states[0].opt_state)
            if np.ndim(a) > 0)
  assert opt == n_scores and n_net > n_scores / 2   # one momentum buffer per score, none else


def test_popup_in_step_matches_official_and_counts_invariant(v2):
  m, _, states = v2
  k = {p: int(v) for p, v in flat(states[0].extra['counts']).items()}
  changed = 0
  for prev, cur in zip(states[:-1], states[1:]):
    b_prev, b_cur = flat(prev.extra['masks']), flat(cur.extra['masks'])
    scores = flat(cur.params['scores'])
    for p, b in b_cur.items():
      assert (~b).sum() == k[p], p                            # per-layer kept count invariant
      if k[p]:
        np.testing.assert_array_equal(b, final_pop_up_ref(scores[p], b_prev[p], k[p]))
      changed += int((b != b_prev[p]).sum())
  assert changed > 0


def test_v1_step_masks_follow_abs_scores(pretrained_npz):
  m, _, states = build(pretrained_npz, sparsity=0.9, variant='v1')
  s = states[-1]
  masks = flat(m.current_masks(s))
  k = {p: int(v) for p, v in flat(s.extra['counts']).items()}
  for p, sc in flat(s.params['scores']).items():
    ref = np.ones(sc.size, bool)
    ref[np.argsort(np.abs(sc).ravel(), kind='stable')[:k[p]]] = False
    np.testing.assert_array_equal(masks[p], ref.reshape(sc.shape))
  for a, b in zip(jax.tree.leaves(states[0].params['net']), jax.tree.leaves(s.params['net'])):
    np.testing.assert_array_equal(a, b)


def test_exported_model_equals_masked_model(v2):
  m, model, states = v2
  from jackpot import export
  s = states[-1]
  out, rep = export.export_sparse(s.params['net'], s.extra['masks'])
  x = jnp.asarray(np.random.RandomState(5).randn(4, 32, 32, 3), jnp.float32)
  eff = m.effective_params(s.params, s.extra)
  a = model.apply({'params': out, 'batch_stats': s.batch_stats}, x, train=False)
  b = model.apply({'params': eff, 'batch_stats': s.batch_stats}, x, train=False)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  masks = flat(s.extra['masks'])
  assert rep['kept'] == sum(int(v.sum()) for v in masks.values())
  for p, b_ in masks.items():
    np.testing.assert_array_equal(traverse_util.flatten_dict(out)[p],
                                  np.where(b_, flat(s.params['net'])[p], 0.0))


def test_search_then_tune_stages(pretrained_npz, tmp_path):
  """``run_config`` with ``method.tune``: search/ then tune/ (mask fixed, weights trained)."""
  c = tiny_config(pretrained_npz, sparsity=0.9)
  c.num_epochs = 1
  c.dataset.batch_size = 64
  c.method.tune.num_epochs = 1
  res = jtrain.run_config(c, str(tmp_path))
  assert set(res['stages']) == {'search', 'tune'}
  s = train.load_state(str(tmp_path / 'search'), 'best')
  t = train.load_state(str(tmp_path / 'tune'), 'last')
  for p, b in flat(s['extra']['masks']).items():
    np.testing.assert_array_equal(flat(t['extra']['masks'])[p], b)
    w_t = flat(t['params'])[p]
    w_s = flat(s['params']['net'])[p]
    assert not np.array_equal(w_t[b], w_s[b]), p   # kept weights were tuned
  assert res['stages']['search']['export_max_abs_diff'] == 0.0
  assert res['stages']['tune']['export_max_abs_diff'] == 0.0
  assert abs(res['stages']['search']['sparsity'] - 0.9) < 0.01


def test_cli_bad_variant_one_error_line():
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  out = subprocess.run([sys.executable, '-m', 'jackpot.train', '--workdir=/tmp/unused_jp',
                        '--config.method.variant=v3'], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  err = [l for l in out.stderr.splitlines() if l.startswith('error:')]
  assert len(err) == 1 and 'Traceback' not in out.stderr
  assert "method.variant must be one of ['v2', 'v1']; got 'v3'" in err[0]
