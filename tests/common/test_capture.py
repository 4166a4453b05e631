"""BN-input capture equals moments computed by hand from an explicit forward."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


class Wrapped(nn.Module):
  """A zoo model behind a module without taps: capture falls back to interception."""
  inner: nn.Module

  @nn.compact
  def __call__(self, x, train: bool):
    return self.inner(x, train)


def test_bn_moments_from_tap_sites_equal_the_intercepted_ones():
  from common import models
  m = models.get_model('resnet8', 3, widths={'stem': 2, 'stages': [2, 3, 4],
                                              'inner': [[2], [3], [2]]})
  x = jnp.asarray(np.random.RandomState(1).randn(3, 8, 8, 3), jnp.float32)
  v = m.init(jax.random.PRNGKey(0), x, train=False)
  for train in (False, True):
    out, stats = capture.bn_input_moments(m, v, x, train=train)
    w_out, w_stats = capture.bn_input_moments(Wrapped(m), {k: {'inner': t} for k, t in v.items()},
                                              x, train=train)
    assert sorted(stats) == sorted(k[len('inner/'):] for k in w_stats)
    assert len(stats) == 7 and 'layer2_0/bn1' in stats
    np.testing.assert_array_equal(out, w_out)
    for k, (mean, var) in stats.items():
      np.testing.assert_allclose(mean, w_stats['inner/' + k][0], rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(var, w_stats['inner/' + k][1], rtol=1e-6, atol=1e-7)


def test_taps_selects_sites_by_pattern_and_rejects_unknown_ones():
  from common import models
  m = models.get_model('vgg_tiny', 3, widths=[2, 2, 3, 3, 4, 4])
  x = jnp.asarray(np.random.RandomState(2).randn(2, 8, 8, 3), jnp.float32)
  v = m.init(jax.random.PRNGKey(0), x, train=False)
  out, acts = capture.taps(m, v, x, sites='act*')
  assert list(acts) == [f'act{i}' for i in range(6)]
  assert all(float(jnp.min(a)) >= 0.0 for a in acts.values())   # after ReLU
  np.testing.assert_array_equal(out, m.apply(v, x, train=False))
  _, both = capture.taps(m, v, x, sites=['bn0_in', 'features'])
  assert list(both) == ['bn0_in', 'features'] and both['features'].shape == (2, 4)
  half = lambda site, h: 0.5 * h if site == 'act0' else h
  _, gated = capture.taps(m, v, x, sites='act0', tap=half)
  np.testing.assert_allclose(gated['act0'], 0.5 * acts['act0'], rtol=1e-6)
  with pytest.raises(ValueError, match="sites='layer1_0/out' selects none.*act0"):
    capture.taps(m, v, x, sites='layer1_0/out')
  with pytest.raises(ValueError, match='Net has no tap sites'):
    capture.taps(Net(), {}, x)
