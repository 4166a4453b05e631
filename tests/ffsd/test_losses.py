"""FFSD's loss terms against hand-computed values and NumPy references (SJLeo/FFSD
``CIFARTrainer.py``: attention_loss, diversity_loss, diversity_target, lambda_warmup, DML)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffsd import ffsd as ffsd_lib
from ffsd import losses as F


def test_attention_map_is_channel_mean_of_squares():
  f = np.arange(2 * 3 * 3 * 4, dtype=np.float32).reshape(2, 3, 3, 4) / 10
  np.testing.assert_allclose(F.attention_map(jnp.asarray(f)), (f ** 2).mean(-1), rtol=1e-6)


def test_normalized_mse_hand_value_and_properties():
  # x_hat = (.6, .8), y_hat = (.8, .6): mean((-.2)^2, (.2)^2) = 0.04.
  x, y = jnp.array([[3.0, 4.0]]), jnp.array([[4.0, 3.0]])
  assert float(F.normalized_mse(x, y)) == pytest.approx(0.04, abs=1e-7)
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(3, 5, 5)), rng.normal(size=(3, 5, 5))
  v = float(F.normalized_mse(jnp.asarray(a), jnp.asarray(b)))
  assert float(F.normalized_mse(jnp.asarray(2.5 * a), jnp.asarray(0.3 * b))) == pytest.approx(v)
  assert float(F.normalized_mse(jnp.asarray(a), jnp.asarray(a))) == pytest.approx(0, abs=1e-9)
  assert 0 <= v <= 4 / 25
  assert float(F.normalized_mse(jnp.asarray(a ** 2), jnp.asarray(b ** 2))) <= 2 / 25
  with pytest.raises(ValueError, match='equal per-sample sizes'):
    F.normalized_mse(jnp.ones((2, 4)), jnp.ones((2, 5)))


def _np_normalize(a):
  return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def test_diversity_target_on_a_hand_made_3x3_map():
  a = np.arange(1.0, 10.0).reshape(1, 9)           # N = 9 -> k = 3, thr = 3rd smallest
  r = np.linalg.norm(a)
  a_hat = a / r
  t = np.asarray(F.diversity_target(jnp.asarray(a_hat), jnp.asarray([[r]])))
  np.testing.assert_allclose(t[0, :2], a_hat[0, :2], rtol=1e-5)       # below thr: unchanged
  assert t[0, 2] == pytest.approx(r / 2, rel=1e-5)                   # the threshold entry
  np.testing.assert_allclose(t[0, 3:], r - a_hat[0, 3:], rtol=1e-5)   # above: r - a_hat


def test_diversity_loss_against_numpy():
  rng = np.random.default_rng(1)
  x, y = rng.random((2, 3, 4)), rng.random((2, 3, 4))      # attention maps [B, H, W]
  xf, yf = x.reshape(2, -1), y.reshape(2, -1)
  r = np.linalg.norm(yf, axis=1, keepdims=True)
  yh = _np_normalize(yf)
  thr = np.sort(yh, axis=1)[:, 12 // 3 - 1:12 // 3]
  target = (r / 2 - yh) * np.sign(yh - thr) + r / 2
  want = np.mean((_np_normalize(xf) - target) ** 2)
  assert float(F.diversity_loss(jnp.asarray(x), jnp.asarray(y))) == pytest.approx(want, rel=1e-5)
  # y is the other student's map: detached.
  g = jax.grad(lambda yy: F.diversity_loss(jnp.asarray(x), yy))(jnp.asarray(y))
  assert np.all(np.asarray(g) == 0)


def test_diversity_shift_moves_every_channel_alike_and_spares_the_smallest_third():
  rng = np.random.default_rng(2)
  f = rng.normal(size=(2, 3, 3, 5)).astype(np.float32)
  d = np.asarray(F.diversity_shift(jnp.asarray(f))) - f
  np.testing.assert_allclose(d, np.repeat(d[..., :1], 5, -1), atol=1e-6)
  a = (f ** 2).mean(-1).reshape(2, -1)
  order = np.argsort(a, axis=1)
  for b in range(2):
    smallest = order[b, :9 // 3 - 1]                     # strictly below the threshold
    assert np.all(np.abs(d[b].reshape(9, 5)[smallest]) < 1e-7)
    r = np.linalg.norm(a[b])
    a_hat = a[b] / r
    big = order[b, 9 // 3:]
    np.testing.assert_allclose(d[b].reshape(9, 5)[big, 0], (r - 2 * a_hat[big]) * r / 5,
                               rtol=1e-4, atol=1e-6)


def test_dml_against_numpy_and_stop_gradient():
  rng = np.random.default_rng(3)
  z = rng.normal(size=(2, 4, 6)).astype(np.float32)
  t = 2.0

  def logsm(v):
    v = v - v.max(-1, keepdims=True)
    return v - np.log(np.exp(v).sum(-1, keepdims=True))

  lp = logsm(z / t)
  want = [t * t * np.mean(np.sum(np.exp(lp[1 - i]) * (lp[1 - i] - lp[i]), -1)) for i in range(2)]
  np.testing.assert_allclose(F.dml_losses(jnp.asarray(z), t), want, rtol=1e-5)
  # Student 0's loss sends nothing to student 1's logits (the target is detached).
  g = jax.grad(lambda zz: F.dml_losses(zz, t)[0])(jnp.asarray(z))
  assert np.all(np.asarray(g[1]) == 0) and np.any(np.asarray(g[0]) != 0)
  same = jnp.stack([jnp.asarray(z[0])] * 2)
  np.testing.assert_allclose(F.dml_losses(same, t), 0, atol=1e-6)
  # Three students: the mean over the two others.
  z3 = rng.normal(size=(3, 4, 6)).astype(np.float32)
  lp3 = logsm(z3 / t)
  kl = lambda i, j: t * t * np.mean(np.sum(np.exp(lp3[j]) * (lp3[j] - lp3[i]), -1))
  np.testing.assert_allclose(F.dml_losses(jnp.asarray(z3), t)[0], (kl(0, 1) + kl(0, 2)) / 2,
                             rtol=1e-5)


def test_lambda_warmup():
  assert F.lambda_warmup(10.0, 1) == pytest.approx(10 * math.exp(-3.2))
  assert F.lambda_warmup(10.0, 5) == 10.0 and F.lambda_warmup(10.0, 9) == 10.0
  vals = [F.lambda_warmup(1.0, e) for e in range(1, 9)]
  assert all(a <= b for a, b in zip(vals, vals[1:]))


def test_dml_variant_total_loss_is_ce_plus_t2_kl():
  rng = np.random.default_rng(4)
  z = rng.normal(size=(2, 5, 3)).astype(np.float32)
  y = np.array([0, 1, 2, 0, 1])

  def logsm(v):
    v = v - v.max(-1, keepdims=True)
    return v - np.log(np.exp(v).sum(-1, keepdims=True))

  ce = [-np.mean(logsm(z[i])[np.arange(5), y]) for i in range(2)]
  lp = logsm(z / 2)
  kl = [4 * np.mean(np.sum(np.exp(lp[1 - i]) * (lp[1 - i] - lp[i]), -1)) for i in range(2)]
  out = {'s_logits': jnp.asarray(z), 's_feats': []}
  loss, m = ffsd_lib.total_loss(out, jnp.asarray(y), {'lam_div': 1.0, 'lam_fus': 1.0,
                                                      'lam_sd': 1.0})
  assert float(loss) == pytest.approx(sum(ce) + sum(kl), rel=1e-5)
