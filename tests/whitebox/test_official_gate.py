"""The official hand-written gate backward (zyxxmu/White-Box ``ClassScale_Gaussian``, transcribed
in ``whitebox.official_lr_check``) equals the autodiff of ``whitebox.gate.apply_gate(x, u M)``."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from whitebox import gate

torch = pytest.importorskip('torch')
from whitebox import official_lr_check  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_hand_written_backward_equals_autodiff():
  rng = np.random.default_rng(0)
  n, c, h, w, k = 4, 6, 3, 5, 10
  x = rng.normal(size=(n, h, w, c)).astype(np.float32)
  m = rng.normal(1.0, 0.3, size=(k, c)).astype(np.float32)
  labels = np.array([0, 3, 3, 9])
  u = rng.uniform(size=(n, k)).astype(np.float32)
  u[np.arange(n), labels] = 1.0
  cot = rng.normal(size=(n, h, w, c)).astype(np.float32)

  def f(x_, m_):
    return jnp.sum(gate.apply_gate(x_, jnp.asarray(u) @ m_) * cot)

  out = gate.apply_gate(jnp.asarray(x), jnp.asarray(u) @ jnp.asarray(m))
  gx, gm = jax.grad(f, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(m))

  fn = official_lr_check.gate_function(torch)
  tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  tm = torch.tensor(m, requires_grad=True)
  tout = fn.apply(tx, tm, torch.tensor(u))
  tout.backward(torch.tensor(cot.transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(tout.detach().numpy().transpose(0, 2, 3, 1), out, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(tx.grad.numpy().transpose(0, 2, 3, 1), gx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(tm.grad.numpy(), gm, rtol=1e-5, atol=1e-4)


def test_draw_u_is_uniform_with_one_at_the_label():
  torch.manual_seed(0)
  labels = torch.tensor([2, 0, 7] * 2000)
  u = official_lr_check.draw_u(torch, labels, 10).numpy()
  assert np.all(u[np.arange(len(labels)), labels.numpy()] == 1.0)
  other = np.ones_like(u, bool)
  other[np.arange(len(labels)), labels.numpy()] = False
  assert abs(u[other].mean() - 0.5) < 0.01 and u[other].min() >= 0 and u[other].max() < 1
