"""The class-wise gate, its gradient and the regulariser against closed forms
(zyxxmu/White-Box ``model/vgg_cifar.py: Gaussian_select, ClassScale_Gaussian``;
``cifar.py: train_class``)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from whitebox import gate

K, C, B = 5, 7, 6


@pytest.fixture(scope='module')
def data():
  rng = np.random.default_rng(0)
  return {'x': jnp.asarray(rng.normal(size=(B, 3, 4, C)), jnp.float32),
          'M': jnp.asarray(rng.normal(size=(K, C)), jnp.float32),
          'y': jnp.asarray(rng.integers(0, K, B)),
          'w': jnp.asarray(rng.normal(size=(B, 3, 4, C)), jnp.float32)}


def test_class_weights_uniform_with_true_class_one(data):
  u = np.asarray(gate.class_weights(jax.random.PRNGKey(3), data['y'], K))
  y = np.asarray(data['y'])
  assert u.shape == (B, K)
  np.testing.assert_array_equal(u[np.arange(B), y], 1.0)
  other = u[np.arange(K)[None, :] != y[:, None]]
  assert other.min() >= 0.0 and other.max() < 1.0
  # Many draws: the other classes' weights are Uniform[0, 1) (mean 1/2, variance 1/12).
  big = np.asarray(gate.class_weights(jax.random.PRNGKey(4), jnp.zeros(20000, jnp.int32), 2))[:, 1]
  assert abs(big.mean() - 0.5) < 0.01 and abs(big.var() - 1 / 12) < 0.005


def test_gate_with_one_hot_weights_is_true_class_row(data):
  # u = one-hot(y): the masked activation is x * M[y] (testable property 1).
  x, M, y = data['x'], data['M'], data['y']
  u = jax.nn.one_hot(y, K)
  out = np.asarray(gate.apply_gate(x, u @ M))
  np.testing.assert_allclose(out, np.asarray(x) * np.asarray(M)[np.asarray(y)][:, None, None, :],
                             rtol=1e-6)


def test_gate_equals_numpy_and_fresh_per_key(data):
  x, M, y = data['x'], data['M'], data['y']
  k = jax.random.PRNGKey(11)
  u = np.asarray(gate.class_weights(k, y, K))
  g_np = np.einsum('bk,kc->bc', u, np.asarray(M))
  np.testing.assert_allclose(np.asarray(gate.class_gate(M, y, k)), g_np, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(gate.class_gate(M, y, k)),
                                np.asarray(gate.class_gate(M, y, k)))
  assert not np.allclose(np.asarray(gate.class_gate(M, y, k)),
                         np.asarray(gate.class_gate(M, y, jax.random.PRNGKey(12))))


def test_gradient_equals_closed_form(data):
  # L = sum(w * x * g[:, None, None, :]); dL/dg[b, c] = sum_hw w x; dL/dM = u^T dL/dg,
  # dL/dx = w * g (the official hand-written backward).
  x, M, y, w = data['x'], data['M'], data['y'], data['w']
  k = jax.random.PRNGKey(5)
  loss = lambda M_, x_: jnp.sum(w * gate.apply_gate(x_, gate.class_gate(M_, y, k)))
  gM, gx = jax.grad(loss, argnums=(0, 1))(M, x)
  u = np.asarray(gate.class_weights(k, y, K))
  dg = (np.asarray(w) * np.asarray(x)).sum((1, 2))
  np.testing.assert_allclose(np.asarray(gM), u.T @ dg, rtol=1e-4, atol=1e-5)
  g = u @ np.asarray(M)
  np.testing.assert_allclose(np.asarray(gx), np.asarray(w) * g[:, None, None, :], rtol=1e-5,
                             atol=1e-6)
  # Only rows k with u[b, k] > 0 of some sample receive gradient: with u one-hot, only the
  # classes present in the batch.
  only_true = lambda M_: jnp.sum(w * gate.apply_gate(x, jax.nn.one_hot(y, K) @ M_))
  g1 = np.asarray(jax.grad(only_true)(M))
  absent = sorted(set(range(K)) - set(np.asarray(y).tolist()))
  assert np.all(g1[absent] == 0)


def test_regulariser_value():
  masks = [jnp.asarray([[1.0, -2.0], [3.0, 0.0]]), jnp.asarray([[0.5, 0.5, 0.5]] * 4)]
  # column sums: [4, -2] -> sqrt(20); [2, 2, 2] -> sqrt(12)
  expected = 0.01 * (np.sqrt(20.0) + np.sqrt(12.0))
  np.testing.assert_allclose(float(gate.mask_regularizer(masks, 0.01)), expected, rtol=1e-6)
  assert float(gate.mask_regularizer(masks, 0.0)) == 0.0


def test_scores_and_folded_scales():
  M = np.asarray([[1.0, -3.0, 0.2], [0.5, 1.0, -0.4]])
  np.testing.assert_allclose(gate.channel_scores(M, halve=False), [1.5, 2.0, 0.2])
  np.testing.assert_allclose(gate.channel_scores(M, halve=True), [0.75, 1.0, 0.1])
  np.testing.assert_allclose(gate.folded_scales(M), [0.75, -1.0, -0.1])
  np.testing.assert_allclose(np.asarray(gate.label_free_gate(jnp.asarray(M))), [0.75, -1.0, -0.1])
