"""common.losses against NumPy formulas computed by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import losses


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _logits(seed, b=5, k=7, scale=2.0):
  return (scale * np.random.RandomState(seed).randn(b, k)).astype(np.float32)


@pytest.mark.parametrize('eps', [0.0, 0.1])
def test_cross_entropy_with_label_smoothing(eps):
  z, y = _logits(0), np.array([0, 3, 6, 2, 3])
  target = np.eye(7)[y] * (1 - eps) + eps / 7
  want = -(target * _np_log_softmax(z.astype(np.float64))).sum(-1).mean()
  np.testing.assert_allclose(losses.cross_entropy(jnp.asarray(z), jnp.asarray(y), eps), want,
                             rtol=1e-5)
  with pytest.raises(ValueError, match='label_smoothing must be in'):
    losses.cross_entropy(jnp.asarray(z), jnp.asarray(y), 1.0)


@pytest.mark.parametrize('t', [1.0, 2.0, 20.0])
def test_kl_divergence_and_soft_cross_entropy(t):
  s, te = _logits(1), _logits(2)
  lp_t = _np_log_softmax(te.astype(np.float64) / t)
  lp_s = _np_log_softmax(s.astype(np.float64) / t)
  kl = (np.exp(lp_t) * (lp_t - lp_s)).sum(-1).mean()
  sce = -(np.exp(lp_t) * lp_s).sum(-1).mean()
  js, jt = jnp.asarray(s), jnp.asarray(te)
  np.testing.assert_allclose(losses.kl_divergence(js, jt, t), kl, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(losses.kl_divergence(js, jt, t, scale_by_t2=True), t * t * kl,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.soft_cross_entropy(js, jt, t), sce, rtol=1e-5)
  # KL = soft CE - H(teacher): the same student gradient; no gradient reaches the teacher.
  g_kl = jax.grad(lambda a, b: losses.kl_divergence(a, b, t), argnums=(0, 1))(js, jt)
  g_ce = jax.grad(lambda a, b: losses.soft_cross_entropy(a, b, t), argnums=(0, 1))(js, jt)
  np.testing.assert_allclose(g_kl[0], g_ce[0], rtol=1e-4, atol=1e-7)
  assert float(jnp.abs(g_kl[1]).max()) == 0.0 and float(jnp.abs(g_ce[1]).max()) == 0.0
  # Hand gradient of the batch-mean KL w.r.t. the student logits: (p_s - p_t) / (T B).
  np.testing.assert_allclose(g_kl[0], (np.exp(lp_s) - np.exp(lp_t)) / (t * s.shape[0]),
                             rtol=1e-4, atol=1e-7)


def test_kl_is_zero_for_equal_logits_and_inputs_are_checked():
  z = jnp.asarray(_logits(3))
  assert abs(float(losses.kl_divergence(z, z, 2.0, scale_by_t2=True))) < 1e-6
  with pytest.raises(ValueError, match='temperature must be > 0'):
    losses.kl_divergence(z, z, 0.0)
  with pytest.raises(ValueError, match=r'both be \[B, K\]'):
    losses.soft_cross_entropy(z, z[:, :3])


def test_recu_kd_loss_is_the_soft_cross_entropy():
  from recu import train as recu_train
  s, te = jnp.asarray(_logits(4)), jnp.asarray(_logits(5))
  lp_t = _np_log_softmax(np.asarray(te, np.float64))
  lp_s = _np_log_softmax(np.asarray(s, np.float64))
  np.testing.assert_allclose(recu_train.kd_loss(s, te), -(np.exp(lp_t) * lp_s).sum(-1).mean(),
                             rtol=1e-5)
