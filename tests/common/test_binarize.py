"""Shared binarizers: each custom_vjp backward equals its closed form; standardisations match NumPy;
the binary layers of ``common.models.bnn_layers`` compute sign(x) * sign(W) * alpha."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import binarize as B
from common.models import bnn_layers as BL


X = jnp.array([-1.5, -1.0, -0.75, -0.25, 0.0, 0.3, 0.5, 0.99, 1.0, 2.0])


def test_approx_sign_forward_and_backward():
  np.testing.assert_array_equal(B.approx_sign(X), np.sign(np.asarray(X)))
  g = jax.grad(lambda x: jnp.sum(B.approx_sign(x) * jnp.arange(1.0, 11.0)))(X)
  want = np.arange(1.0, 11.0) * np.maximum(0.0, 2 - 2 * np.abs(np.asarray(X)))
  np.testing.assert_allclose(g, want, rtol=1e-6)


def test_sign_ste_variants():
  g_id = jax.grad(lambda x: jnp.sum(B.sign_ste(x) * 3.0))(X)
  np.testing.assert_allclose(g_id, 3.0)
  g_clip = jax.grad(lambda x: jnp.sum(B.sign_clipped_ste(x) * 3.0))(X)
  np.testing.assert_allclose(g_clip, 3.0 * (np.abs(np.asarray(X)) <= 1))
  assert set(np.unique(np.asarray(B.sign_ste(X)))) <= {-1.0, 0.0, 1.0}


def test_standardize_per_channel_matches_torch_semantics():
  w = np.random.RandomState(0).randn(3, 3, 4, 5).astype(np.float32) * 0.1 + 0.3
  out = np.asarray(B.standardize_per_channel(jnp.asarray(w), scale=2 * np.sqrt(2)))
  flat = w.reshape(-1, 5)
  w0 = flat - flat.mean(0)
  ref = w0 / np.sqrt(w0.var(0, ddof=1) + 1e-5) * 2 * np.sqrt(2)
  np.testing.assert_allclose(out.reshape(-1, 5), ref, rtol=1e-4, atol=1e-5)


def test_standardize_per_sample():
  a = np.random.RandomState(1).randn(2, 4, 4, 3).astype(np.float32) + 1.0
  r = np.asarray(B.standardize_per_sample(jnp.asarray(a), subtract_mean=False))
  s = np.asarray(B.standardize_per_sample(jnp.asarray(a), subtract_mean=True))
  for i in range(2):
    np.testing.assert_allclose(r[i], a[i] / np.sqrt(a[i].var(ddof=1) + 1e-5), rtol=1e-5)
    c = a[i] - a[i].mean()
    np.testing.assert_allclose(s[i], c / np.sqrt(c.var(ddof=1) + 1e-5), rtol=1e-4, atol=1e-6)


def test_binary_conv_sees_binary_inputs_and_scales_by_alpha():
  seen = {}

  def spy_sign(a, train):
    b = B.approx_sign(a)
    seen['a'] = b
    return b

  layer = BL.BinaryConv(4, 3, act_binarizer=spy_sign, weight_binarizer=B.sign_ste,
                       alpha='uniform')
  x = jnp.asarray(np.random.RandomState(3).randn(2, 5, 5, 3), jnp.float32)
  v = layer.init(jax.random.PRNGKey(0), x)
  assert v['params']['alpha'].shape == (4,)
  assert (v['params']['alpha'] >= 0).all() and (v['params']['alpha'] < 1).all()
  y = layer.apply(v, x)
  assert set(np.unique(np.asarray(seen['a']))) <= {-1.0, 1.0}
  wb = np.sign(np.asarray(v['params']['kernel']))
  ref = jax.lax.conv_general_dilated(jnp.sign(x), wb, (1, 1), [(1, 1), (1, 1)],
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(y, np.asarray(ref) * np.asarray(v['params']['alpha']), rtol=1e-5,
                             atol=1e-5)


def test_alpha_mean_abs_default_init():
  init = B.alpha_init('mean_abs_default', fan_in=3 * 3 * 64)
  a = np.asarray(init(jax.random.PRNGKey(0), (128,)))
  assert abs(a.mean() - 0.5 / np.sqrt(576)) < 0.05 * 0.5 / np.sqrt(576)   # E|U(-b,b)| = b/2
  with pytest.raises(ValueError, match='unknown alpha init'):
    B.alpha_init('zeros', 9)(jax.random.PRNGKey(0), (2,))


def test_binary_dense_and_binary_kernel_paths():
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = nn.Conv(4, (3, 3), name='stem')(x)                      # full precision: no alpha
      x = BL.BinaryConv(4, act_binarizer=B.plain_activation, name='b1')(x, train)
      x = jnp.mean(x, axis=(1, 2))
      return BL.BinaryDense(3, act_binarizer=B.plain_activation, weight_binarizer=B.sign_ste,
                           name='fc')(x, train)

  x = jnp.asarray(np.random.RandomState(4).randn(2, 5, 5, 2), jnp.float32)
  v = Net().init(jax.random.PRNGKey(0), x)
  assert B.binary_kernel_paths(v['params']) == [('b1', 'kernel'), ('fc', 'kernel')]
  where = B.binary_kernel_where(v['params'])
  assert where(('fc', 'kernel'), None) and not where(('stem', 'kernel'), None)
  # BinaryDense alone: sign(x) @ sign(W) * alpha against NumPy.
  layer = BL.BinaryDense(3, act_binarizer=B.plain_activation, weight_binarizer=B.sign_ste)
  h = jnp.asarray(np.random.RandomState(5).randn(4, 6), jnp.float32)
  vd = layer.init(jax.random.PRNGKey(1), h)
  k, a = np.asarray(vd['params']['kernel']), np.asarray(vd['params']['alpha'])
  np.testing.assert_allclose(layer.apply(vd, h), np.sign(np.asarray(h)) @ np.sign(k) * a,
                             rtol=1e-5, atol=1e-5)
