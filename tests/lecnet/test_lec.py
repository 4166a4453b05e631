"""LEC-Net's math, model and metrics against NumPy references and the paper's properties
(ICCV2021-LEC/LEC ``models/LECNet.py``)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lecnet import lec, metrics
from lecnet.model import LECNet


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_normalize(v):
  return v / (1e-6 + np.linalg.norm(v, axis=-1, keepdims=True))


# --- gate ------------------------------------------------------------------------------------


def test_beta_schedule_is_one_then_linear():
  for e in range(0, 60):
    want = 1.0 if e <= 20 else 1.0 + (e - 20)
    assert float(lec.beta_schedule(e)) == want
  assert float(lec.beta_schedule(1020)) == 1001.0
  assert float(lec.beta_schedule(jnp.int32(35), start=30)) == 6.0


def test_gate_range_shape_and_saturation():
  r = np.random.RandomState(0)
  a = r.randn(7, 16).astype(np.float32)
  for beta in (1.0, 5.0):
    alpha = np.asarray(lec.gate(jnp.asarray(a), beta))
    assert alpha.shape == (16,)
    assert ((alpha > 0) & (alpha < 1)).all()
    np.testing.assert_allclose(alpha, np_sigmoid(beta * a.mean(0)), rtol=1e-6)
  # At epoch 1020 (beta = 1001) the gates are binary wherever |t| > 0.02.
  t = np.linspace(-1, 1, 101).astype(np.float32)
  t = t[np.abs(t) > 0.02]
  alpha = np.asarray(lec.gate(jnp.asarray(t[None, :]), lec.beta_schedule(1020)))
  assert np.all(np.minimum(alpha, 1 - alpha) < 1e-6)
  np.testing.assert_array_equal(alpha > 0.5, t > 0)


# --- compression penalty ---------------------------------------------------------------------


def test_penalty_value_and_gradient():
  r = 0.1
  n = 64
  rs = np.random.RandomState(1)
  above = rs.uniform(0.2, 0.9, n).astype(np.float32)         # mean ~0.55 > r
  below = np.full(n, 0.05, np.float32)                        # mean 0.05 < r
  assert float(lec.compression_penalty(jnp.asarray(above), r)) == pytest.approx(
      above.mean() - r, abs=1e-6)
  assert float(lec.compression_penalty(jnp.asarray(below), r)) == 0.0
  g = np.asarray(jax.grad(lambda x: lec.compression_penalty(x, r))(jnp.asarray(above)))
  np.testing.assert_allclose(g, np.full(n, 1.0 / n), rtol=1e-6)
  g0 = np.asarray(jax.grad(lambda x: lec.compression_penalty(x, r))(jnp.asarray(below)))
  assert (g0 == 0).all()
  for _ in range(20):
    x = jnp.asarray(rs.uniform(0, 1, n).astype(np.float32))
    assert float(lec.compression_penalty(x, r)) >= 0.0


# --- KD ----------------------------------------------------------------------------------------


def test_kd_value_and_zero_teacher_gradient():
  rs = np.random.RandomState(2)
  new = rs.randn(5, 8).astype(np.float32)
  old = rs.randn(5, 6).astype(np.float32)
  t = 2.0
  p_old = np.exp(old / t) / np.exp(old / t).sum(1, keepdims=True)
  z = new[:, :6] / t
  log_p_new = z - np.log(np.exp(z).sum(1, keepdims=True))
  want = -np.mean(np.sum(p_old * log_p_new, 1))
  assert float(lec.kd_loss(jnp.asarray(new), jnp.asarray(old), t)) == pytest.approx(want, rel=1e-5)
  g_teacher = jax.grad(lambda o: lec.kd_loss(jnp.asarray(new), o, t))(jnp.asarray(old))
  assert (np.asarray(g_teacher) == 0).all()
  g_student = np.asarray(jax.grad(lambda n: lec.kd_loss(n, jnp.asarray(old), t))(jnp.asarray(new)))
  assert (g_student[:, 6:] == 0).all() and np.abs(g_student[:, :6]).max() > 0
  with pytest.raises(ValueError, match='fewer than'):
    lec.kd_loss(jnp.asarray(old), jnp.asarray(new))


# --- session logits --------------------------------------------------------------------------


def test_session_logits_layout_and_numpy_reference():
  rs = np.random.RandomState(3)
  b, n, base, way, s = 4, 6, 5, 3, 2
  u = rs.randn(b, n).astype(np.float32)
  a = [rs.randn(b, n).astype(np.float32) for _ in range(s)]
  g = [rs.uniform(0, 1, n).astype(np.float32) for _ in range(s)]
  heads = [rs.randn(n, base).astype(np.float32)] + [rs.randn(n, way).astype(np.float32)
                                                    for _ in range(s)]
  got = np.asarray(lec.session_logits(jnp.asarray(u), [jnp.asarray(x) for x in a],
                                      [jnp.asarray(x) for x in g],
                                      [jnp.asarray(h) for h in heads], gamma=0.6))
  want = [np_normalize(u) @ heads[0]] + [np_normalize(0.6 * u + g[j] * a[j]) @ heads[j + 1]
                                         for j in range(s)]
  assert got.shape == (b, base + s * way)
  np.testing.assert_allclose(got, np.concatenate(want, 1), rtol=1e-5, atol=1e-5)
  # Every z_j has unit norm.
  for z in lec.session_features(jnp.asarray(u), [jnp.asarray(x) for x in a],
                                [jnp.asarray(x) for x in g]):
    np.testing.assert_allclose(np.linalg.norm(np.asarray(z), axis=1), 1.0, atol=1e-5)
  # Changing the current gate leaves the blocks of the earlier sessions unchanged.
  g2 = list(g)
  g2[-1] = rs.uniform(0, 1, n).astype(np.float32)
  other = np.asarray(lec.session_logits(jnp.asarray(u), [jnp.asarray(x) for x in a],
                                        [jnp.asarray(x) for x in g2],
                                        [jnp.asarray(h) for h in heads], gamma=0.6))
  k_old = base + (s - 1) * way
  np.testing.assert_array_equal(other[:, :k_old], got[:, :k_old])
  assert np.abs(other[:, k_old:] - got[:, k_old:]).max() > 1e-3


@pytest.fixture(scope='module')
def tiny_model():
  m = LECNet('resnet8', base_classes=3, way=2, sessions=2, nodes=8,
             backbone_widths={'stem': 4, 'stages': [4, 4, 8], 'inner': [[4], [4], [8]]})
  gates = jnp.concatenate([jnp.ones((1, 8)), jax.random.uniform(jax.random.PRNGKey(1), (2, 8))])
  v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), session=2, gates=gates)
  return m, v, gates


def test_model_preallocates_every_session(tiny_model):
  m, v, gates = tiny_model
  p = v['params']
  shapes = {k: p[k].shape for k in p if k != 'net'}
  assert shapes == {'node': (8, 8), 'head_0': (8, 3), 'head_1': (8, 2), 'head_2': (8, 2),
                    'expand_1': (8, 8), 'expand_2': (8, 8)}
  x = jax.random.normal(jax.random.PRNGKey(2), (5, 16, 16, 3))
  for s, k in ((0, 3), (1, 5), (2, 7)):
    logits, alpha = m.apply(v, x, session=s, gates=gates)
    assert logits.shape == (5, k) and alpha.shape == (8,)
  # The session-0 columns are the same whatever the session.
  l0, _ = m.apply(v, x, session=0, gates=gates)
  l2, _ = m.apply(v, x, session=2, gates=gates)
  np.testing.assert_allclose(np.asarray(l2[:, :3]), np.asarray(l0), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match=r'session must be in \[0, 2\]'):
    m.apply(v, x, session=3, gates=gates)


def test_test_mode_is_batch_independent_and_train_mode_is_not(tiny_model):
  m, v, gates = tiny_model
  r = jax.random.split(jax.random.PRNGKey(3), 3)
  x0 = jax.random.normal(r[0], (1, 16, 16, 3))
  xa = jnp.concatenate([x0, jax.random.normal(r[1], (3, 16, 16, 3))])
  xb = jnp.concatenate([x0, 3.0 * jax.random.normal(r[2], (3, 16, 16, 3)) + 1.0])
  ta, alpha_a = m.apply(v, xa, session=2, gates=gates)
  tb, _ = m.apply(v, xb, session=2, gates=gates)
  np.testing.assert_allclose(np.asarray(ta[0]), np.asarray(tb[0]), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(alpha_a), np.asarray(gates[2]))
  fa, _ = m.apply(v, xa, session=2, gates=gates, beta=jnp.float32(5.0))
  fb, _ = m.apply(v, xb, session=2, gates=gates, beta=jnp.float32(5.0))
  assert np.abs(np.asarray(fa[0, 5:]) - np.asarray(fb[0, 5:])).max() > 1e-4
  # Old blocks use the stored gates in both modes: identical for the shared sample.
  np.testing.assert_allclose(np.asarray(fa[0, :5]), np.asarray(fb[0, :5]), rtol=1e-5, atol=1e-6)


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_on_hand_made_predictions():
  # base 2 classes (0, 1), way 1: session 1 = class 2, session 2 = class 3.
  labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3])
  preds = np.array([0, 0, 1, 1, 1, 1, 2, 0, 3, 3, 0, 0])
  correct, count = metrics.block_counts(jnp.asarray(preds), jnp.asarray(labels), 2, 1, 2)
  np.testing.assert_array_equal(np.asarray(count), [6, 2, 4])
  np.testing.assert_array_equal(np.asarray(correct), [5, 1, 2])
  out = metrics.summarize(correct, count, base=2, way=1)
  assert out['acc_joint'] == pytest.approx(8 / 12)
  # LEC's ACC weights each session's accuracy by its class count: (5/6*2 + 1/2*1 + 2/4*1) / 4.
  assert out['acc_weighted'] == pytest.approx((5 / 6 * 2 + 0.5 + 0.5) / 4)
  assert out['acc_base'] == pytest.approx(5 / 6)
  assert out['acc_old'] == pytest.approx(6 / 8)
  assert out['acc_new'] == pytest.approx(2 / 4)
  assert out['acc_blocks'] == pytest.approx([5 / 6, 0.5, 0.5])
  # Padding rows (weight 0) do not count.
  c2, n2 = metrics.block_counts(jnp.asarray(np.r_[preds, 0]), jnp.asarray(np.r_[labels, 3]), 2, 1,
                                2, weight=jnp.asarray(np.r_[np.ones(12), 0.0]))
  np.testing.assert_array_equal(np.asarray(n2), [6, 2, 4])
  assert metrics.performance_drop([0.9, 0.7, 0.6]) == pytest.approx(0.3)
  base_only = metrics.summarize([3.0], [4.0], 2, 1)
  assert base_only['acc_joint'] == 0.75 and np.isnan(base_only['acc_old'])
  with pytest.raises(ValueError, match='needs test images'):
    metrics.summarize([1.0, 0.0], [2.0, 0.0], 2, 1)


def test_weighted_equals_joint_on_class_balanced_test_sets():
  rs = np.random.RandomState(4)
  base, way, s, per_class = 4, 2, 3, 7
  labels = np.repeat(np.arange(base + s * way), per_class)
  preds = np.where(rs.uniform(size=labels.size) < 0.6, labels, rs.randint(0, 10, labels.size))
  c, n = metrics.block_counts(jnp.asarray(preds), jnp.asarray(labels), base, way, s)
  out = metrics.summarize(c, n, base, way)
  assert out['acc_weighted'] == pytest.approx(out['acc_joint'], abs=1e-9)
  assert out['acc_joint'] == pytest.approx(np.mean(preds == labels))


def test_compact_export_matches_gated_heads():
  from lecnet import bench, compact_branches, compact_logits
  params, gates = bench.build(features=12, nodes=10, base=4, way=2, sessions=3, active=0.3)
  gates[2, 0] = 0.004                      # a nearly-off gate: dropped, within its bound
  x = np.random.RandomState(5).rand(6, 12).astype(np.float32)
  s = 3
  u = x @ params['node']
  a = [x @ params[f'expand_{j}'] for j in range(1, s + 1)]
  want = np.concatenate([np_normalize(u) @ params['head_0']] + [
      np_normalize(0.6 * u + gates[j] * a[j - 1]) @ params[f'head_{j}'] for j in range(1, s + 1)],
      1)
  br = compact_branches(params, gates, s)
  assert [len(b['index']) for b in br] == [3, 3, 3]
  assert br[1]['dropped_max'] == pytest.approx(0.004)
  got = np.asarray(compact_logits(jnp.asarray(x), jax.tree.map(jnp.asarray, params), br))
  np.testing.assert_allclose(got[:, :4 + 2 * 1], want[:, :6], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[:, 8:], want[:, 8:], rtol=1e-5, atol=1e-5)
  assert np.abs(got[:, 6:8] - want[:, 6:8]).max() < 0.05    # session 2 drops A = 0.004
