"""BN-input capture equals moments computed by hand from an explicit forward."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common import capture


class Net(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    h = nn.Conv(3, (3, 3), name='conv1')(x)
    y = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='bn1')(h)
    feats = nn.relu(y).mean((1, 2))
    self.sow('intermediates', 'features', feats)
    return nn.Dense(4, name='fc')(feats)


def test_bn_input_moments_and_features():
  m = Net()
  x = jnp.asarray(np.random.RandomState(0).randn(5, 6, 6, 2), jnp.float32)
  v = m.init(jax.random.PRNGKey(0), x, train=False)
  out, stats = capture.bn_input_moments(m, v, x)
  h = np.asarray(jax.lax.conv_general_dilated(
      x, v['params']['conv1']['kernel'], (1, 1), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))) + np.asarray(v['params']['conv1']['bias'])
  mean, var = stats['bn1']
  np.testing.assert_allclose(mean, h.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(var, h.var((0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(out, m.apply(v, x, train=False), rtol=1e-6)
  logits, feats = capture.features(m, v, x)
  assert feats.shape == (5, 3)
  np.testing.assert_allclose(logits, out, rtol=1e-6)
