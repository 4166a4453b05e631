"""Masked slimmable MobileNets equal explicitly sliced narrow zoo networks (outputs, BN statistics,
gradients), the property the prefix slicing of slimmable_networks ``USConv2d`` /
``USBatchNorm2d`` defines."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import models
from common.models import slimmable

V1 = dict(name='slim_mobilenet_v1', zoo='mobilenet_v1',
          widths=[8, 16, 16, 24], kw=dict(strides=(1, 2, 1), stem_stride=1),
          narrow=[[4, 8, 16, 24], [8, 4, 12, 8]])
V2 = dict(name='slim_mobilenet_v2', zoo='mobilenet_v2',
          widths={'stem': 16, 'hidden': [16, 48, 96, 96], 'out': [8, 16, 16, 24], 'last': 32},
          kw=dict(strides=(1, 2, 1, 1), stem_stride=1),
          narrow=[{'stem': 8, 'hidden': [8, 24, 48, 48], 'out': [4, 8, 8, 16], 'last': 32},
                  {'stem': 16, 'hidden': [16, 48, 72, 72], 'out': [4, 12, 12, 24], 'last': 32}])


def _randomise_stats(bs, key):
  leaves, tree = jax.tree.flatten(bs)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(tree, [jax.random.uniform(k, l.shape, minval=0.2, maxval=1.5)
                                   for k, l in zip(keys, leaves)])


@pytest.fixture(scope='module', params=[V1, V2], ids=['v1', 'v2'])
def net(request):
  cfg = request.param
  slim = models.get_model(cfg['name'], 5, widths=cfg['widths'], **cfg['kw'])
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 12, 12, 3))
  v = slim.init(jax.random.PRNGKey(1), x, train=False)
  # Non-trivial BN affine parameters and running statistics, so that masking errors show.
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
                        v['params'])
  bs = _randomise_stats(v['batch_stats'], jax.random.PRNGKey(3))
  return cfg, slim, x, params, bs


def _narrow(cfg, widths, params, bs, x):
  zoo = models.get_model(cfg['zoo'], 5, widths=widths, act='relu6', **cfg['kw'])
  shapes = jax.eval_shape(lambda: zoo.init(jax.random.PRNGKey(0), x, train=False))
  nv = slimmable.slice_variables({'params': params, 'batch_stats': bs},
                                 {'params': shapes['params'], 'batch_stats': shapes['batch_stats']})
  return zoo, nv


def test_same_variable_tree_as_zoo(net):
  cfg, slim, x, params, bs = net
  zoo = models.get_model(cfg['zoo'], 5, widths=cfg['widths'], act='relu6', **cfg['kw'])
  shapes = jax.eval_shape(lambda: zoo.init(jax.random.PRNGKey(0), x, train=False))
  got = jax.tree.map(lambda a: a.shape, {'params': params, 'batch_stats': bs})
  want = jax.tree.map(lambda a: a.shape, {'params': shapes['params'],
                                          'batch_stats': shapes['batch_stats']})
  assert got == want


def test_masked_equals_sliced_outputs_stats_and_gradients(net):
  cfg, slim, x, params, bs = net
  for widths in cfg['narrow']:
    counts = jnp.asarray(slimmable.counts_of(cfg['name'], widths))
    zoo, nv = _narrow(cfg, widths, params, bs, x)
    # Eval mode (running statistics).
    got = jax.jit(lambda c: slim.apply({'params': params, 'batch_stats': bs}, x, train=False,
                                       counts=c))(counts)
    want = jax.jit(lambda v: zoo.apply(v, x, train=False))(nv)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # Train mode: outputs, updated running statistics (active part as the narrow net's, the
    # rest of the buffer unchanged), and gradients of a random linear functional of the logits.
    r = jax.random.normal(jax.random.PRNGKey(7), got.shape)

    def f_slim(p):
      y, mut = slim.apply({'params': p, 'batch_stats': bs}, x, train=True, counts=counts,
                          mutable=['batch_stats', 'bn_batch'])
      return jnp.sum(y * r), (y, mut['batch_stats'])

    def f_zoo(p):
      y, mut = zoo.apply({'params': p, 'batch_stats': nv['batch_stats']}, x, train=True,
                         mutable=['batch_stats'])
      return jnp.sum(y * r), (y, mut['batch_stats'])

    (_, (ys, bs_s)), g_s = jax.jit(jax.value_and_grad(f_slim, has_aux=True))(params)
    (_, (yz, bs_z)), g_z = jax.jit(jax.value_and_grad(f_zoo, has_aux=True))(nv['params'])
    np.testing.assert_allclose(ys, yz, atol=1e-5, rtol=1e-5)
    cut = lambda t, like: jax.tree.map(lambda a, b: a[tuple(slice(0, s) for s in b.shape)], t,
                                       like)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
                 cut(bs_s, bs_z), bs_z)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
                 cut(g_s, g_z), g_z)
    # Outside the active slices: zero gradient, untouched running statistics.
    def outside(t, like):
      def rest(a, b):
        m = np.ones(a.shape, bool)
        m[tuple(slice(0, s) for s in b.shape)] = False
        return np.asarray(a)[m]
      return jax.tree.map(rest, t, like)
    for g in jax.tree.leaves(outside(g_s, g_z)):
      assert np.all(g == 0)
    for a, b in zip(jax.tree.leaves(outside(bs_s, bs_z)), jax.tree.leaves(outside(bs, bs_z))):
      np.testing.assert_array_equal(a, b)


def test_full_counts_equal_zoo_model(net):
  cfg, slim, x, params, bs = net
  zoo = models.get_model(cfg['zoo'], 5, widths=cfg['widths'], act='relu6', **cfg['kw'])
  v = {'params': params, 'batch_stats': bs}
  np.testing.assert_allclose(slim.apply(v, x, train=False), zoo.apply(v, x, train=False),
                             atol=1e-5, rtol=1e-5)


def test_bn_batch_sows_unbiased_variance():
  bn = slimmable.MaskedBatchNorm(False)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5, 6)) * 2 + 1
  mask = jnp.asarray([1, 1, 1, 0, 0, 0], jnp.float32)
  v = bn.init(jax.random.PRNGKey(0), x, mask)
  y, mut = bn.apply(v, x * mask, mask, mutable=['batch_stats', 'bn_batch'])
  flat = np.asarray(x * mask).reshape(-1, 6)
  np.testing.assert_allclose(mut['bn_batch']['mean'], flat.mean(0), atol=1e-5)
  np.testing.assert_allclose(mut['bn_batch']['var'], flat.var(0, ddof=1), atol=1e-4)
  assert np.all(np.asarray(y)[..., 3:] == 0)
  np.testing.assert_allclose(mut['batch_stats']['mean'][:3], 0.1 * flat.mean(0)[:3], atol=1e-6)
  np.testing.assert_array_equal(mut['batch_stats']['mean'][3:], 0.0)
  np.testing.assert_array_equal(mut['batch_stats']['var'][3:], 1.0)


def test_bad_counts_shape():
  slim = models.get_model('slim_mobilenet_v1', 5, widths=[8, 16], strides=(1,), stem_stride=1)
  x = jnp.zeros((1, 8, 8, 3))
  v = slim.init(jax.random.PRNGKey(0), x, train=False)
  with pytest.raises(ValueError, match=r'counts must have shape \(2,\)'):
    slim.apply(v, x, train=False, counts=jnp.asarray([8, 16, 4]))
