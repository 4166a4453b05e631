"""Tap sites of the zoo models: every model lists them, the identity tap is no tap, rewriting one
site changes the output exactly as a hand-built prediction, label gates work under jit, ``act``
replaces the activation."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import capture, models
from common.models import layers as L
from common.models import resnet_cifar, taps

from tests.common.test_models import IMAGENET, OWN, _flat, _shrink

# BNs whose output is not activated in place (a residual branch or the linear projection).
NO_ACT = ('project_bn', 'shortcut_bn', 'downsample_bn')


def _x(n=4, hw=16, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randn(n, hw, hw, 3), jnp.float32)


def _perturbed(variables, seed=1):
  """Variables with random BN statistics and affine params, so eval-mode BN is not ~identity."""
  rng = np.random.RandomState(seed)
  out = jax.tree_util.tree_map(np.asarray, variables)
  out = jax.tree_util.tree_map(lambda a: np.array(a, copy=True), out)
  for coll, leaf, lo, hi in (('batch_stats', 'mean', -0.5, 0.5), ('batch_stats', 'var', 0.5, 2.0),
                             ('params', 'scale', 0.5, 1.5), ('params', 'bias', -0.3, 0.3)):
    for path, a in _flat(out[coll]).items():
      if path[-1] == leaf:
        a[...] = rng.uniform(lo, hi, a.shape)
  return jax.tree_util.tree_map(jnp.asarray, out)


# A three-block MobileNet-V2 (CIFAR variant) with a conv, no and identity shortcut.
V2_SMALL = dict(widths={'stem': 4, 'hidden': [4, 8, 12], 'out': [6, 8, 8], 'last': 8},
                strides=[1, 2, 1])


def _build(name, f=4, **kw):
  if name == 'mobilenet_v2_small':
    return models.get_model('mobilenet_v2_cifar', 5, **V2_SMALL, **kw)
  return models.get_model(name, 5, widths=_shrink(models.default_widths(name), f), **kw)


def _init(model, x):
  return _perturbed(jax.jit(lambda a: model.init(jax.random.PRNGKey(0), a, train=False))(x))


def _zero_channel(site_name, c):
  def tap(site, h):
    return h.at[..., c].set(0.0) if site == site_name else h
  return tap


# ------------------------------------------------------------------------------------------------
# Site lists


@pytest.mark.parametrize('name', OWN)
def test_every_model_lists_its_sites(name):
  hw = 32 if name in IMAGENET else 16
  model = _build(name, 8)
  sites = models.tap_sites(model, (2, hw, hw, 3))
  shapes = dict(sites)
  names = [s for s, _ in sites]
  assert len(names) == len(set(names)) > 3
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), _x(2, hw), train=False))
  bns = ['/'.join(p[:-1]) for p in _flat(variables['batch_stats']) if p[-1] == 'mean']
  bn_sites = [s[:-3] for s in names if s.endswith('_in')]
  # One BN-input site per BN, with the BN's channel count; every activated BN has its act site.
  assert sorted(bn_sites) == sorted(bns)
  for bn in bns:
    c = _flat(variables['batch_stats'])[tuple(bn.split('/')) + ('mean',)].shape[0]
    assert shapes[bn + '_in'][-1] == c
    if bn.split('/')[-1] not in NO_ACT:
      act = '/'.join(bn.split('/')[:-1] + [taps.act_site(bn.split('/')[-1])])
      assert shapes[act] == shapes[bn + '_in'], (name, bn)
      assert names.index(act) > names.index(bn + '_in')
  blocks = {s.split('/')[0] for s in names if '/' in s}
  assert all(b + '/out' in shapes for b in blocks)
  assert names[-1] == 'features' and len(shapes['features']) == 2
  # The sites of the training-mode forward are the same.
  assert models.tap_sites(model, (2, hw, hw, 3), train=True) == sites


def test_models_without_taps_are_rejected():
  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
      return nn.Dense(2)(x)
  with pytest.raises(ValueError, match='Plain has no tap sites'):
    models.tap_sites(Plain(), (1, 3))


# ------------------------------------------------------------------------------------------------
# Identity


@pytest.mark.parametrize('name', ['resnet8', 'vgg_tiny', 'resnet50', 'mobilenet_v1_tiny',
                                  'mobilenet_v2_small'])
def test_identity_tap_is_no_tap(name):
  model = _build(name, 8)
  x = _x(2, 32 if name in IMAGENET else 16)
  v = _init(model, x)
  ident = lambda site, h: h
  for train in (False, True):
    kw = {'mutable': ['batch_stats']} if train else {}
    plain = lambda v: model.apply(v, x, train=train, **kw)
    tapped = lambda v: model.apply(v, x, train=train, tap=ident, **kw)
    assert str(jax.make_jaxpr(plain)(v)) == str(jax.make_jaxpr(tapped)(v))
  a, b = jax.jit(plain)(v), jax.jit(tapped)(v)
  jax.tree_util.tree_map(lambda p, q: np.testing.assert_array_equal(p, q), a, b)


def test_tap_must_keep_the_shape():
  model = _build('vgg_tiny')
  x = _x(2)
  v = _init(model, x)
  bad = lambda site, h: h[..., :1] if site == 'act2' else h
  with pytest.raises(ValueError, match="site 'act2' must return an array of shape"):
    model.apply(v, x, train=False, tap=bad)


# ------------------------------------------------------------------------------------------------
# Rewriting one site == a hand-built prediction


def test_zeroing_a_bn_input_channel_equals_zeroing_its_filter():
  model = _build('resnet8')
  x = _x()
  v = _init(model, x)
  c = 1
  tapped = model.apply(v, x, train=False, tap=_zero_channel('layer2_0/bn1_in', c))
  kernel = v['params']['layer2_0']['conv1']['kernel']
  pruned = jax.tree_util.tree_map(lambda a: a, v)
  pruned['params']['layer2_0']['conv1']['kernel'] = kernel.at[..., c].set(0.0)
  want = model.apply(pruned, x, train=False)
  np.testing.assert_allclose(tapped, want, rtol=1e-6, atol=1e-6)
  assert not np.allclose(tapped, model.apply(v, x, train=False), atol=1e-4)
  # Training mode (batch statistics of the zeroed channel are 0 both ways), updates included.
  (t_out, t_st), (p_out, p_st) = (
      model.apply(v, x, train=True, tap=_zero_channel('layer2_0/bn1_in', c),
                  mutable=['batch_stats']),
      model.apply(pruned, x, train=True, mutable=['batch_stats']))
  np.testing.assert_allclose(t_out, p_out, rtol=1e-5, atol=1e-5)
  jax.tree_util.tree_map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6),
                         t_st, p_st)


def test_zeroing_a_vgg_activation_equals_zeroing_the_next_conv_inputs():
  model = _build('vgg_tiny')
  x = _x()
  v = _init(model, x)
  c = 2
  tapped = model.apply(v, x, train=False, tap=_zero_channel('act4', c))
  pruned = jax.tree_util.tree_map(lambda a: a, v)
  k = v['params']['conv5']['kernel']
  pruned['params']['conv5']['kernel'] = k.at[:, :, c, :].set(0.0)
  np.testing.assert_allclose(tapped, model.apply(pruned, x, train=False), rtol=1e-6, atol=1e-6)
  assert np.abs(tapped - model.apply(v, x, train=False)).max() > 1e-4


def test_zeroing_a_mobilenet_v2_depthwise_activation_equals_zeroing_the_projection_input():
  model = _build('mobilenet_v2_small')
  x = _x(2)
  v = _init(model, x)
  c = 3
  tapped = model.apply(v, x, train=False, tap=_zero_channel('block2/dw_act', c))
  pruned = jax.tree_util.tree_map(lambda a: a, v)
  k = v['params']['block2']['project_conv']['kernel']
  pruned['params']['block2']['project_conv']['kernel'] = k.at[:, :, c, :].set(0.0)
  np.testing.assert_allclose(tapped, model.apply(pruned, x, train=False), rtol=1e-5, atol=1e-6)
  assert np.abs(tapped - model.apply(v, x, train=False)).max() > 1e-4


def test_zeroing_a_block_output_channel_equals_running_the_remaining_layers_by_hand():
  model = _build('resnet8')
  x = _x()
  v = _init(model, x)
  c = 2
  _, acts = capture.taps(model, v, x, sites='layer1_0/out')
  h = np.asarray(acts['layer1_0/out']).copy()
  h[..., c] = 0.0
  # The rest of the network by hand: the two remaining blocks as standalone modules with the
  # model's variables, then global average pooling and the linear classifier.
  h = jnp.asarray(h)
  for s, blk in ((1, 'layer2_0'), (2, 'layer3_0')):
    block = resnet_cifar.BasicBlockA(model.inner[s][0], model.stages[s], 2, model.init_scheme)
    h = block.apply({'params': v['params'][blk], 'batch_stats': v['batch_stats'][blk]}, h,
                    train=False)
  fc = v['params']['fc']
  want = np.asarray(h).mean((1, 2)) @ np.asarray(fc['kernel']) + np.asarray(fc['bias'])
  tapped = model.apply(v, x, train=False, tap=_zero_channel('layer1_0/out', c))
  np.testing.assert_allclose(tapped, want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(tapped, model.apply(v, x, train=False), atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Gates that read the labels; the act option


def test_label_gate_works_under_jit_and_routes_each_sample_by_its_label():
  """White-Box-style class-wise gates after every VGG activation: ``h * M_site[y]``."""
  model = _build('vgg_tiny')
  k = 3
  x, y = _x(6), jnp.asarray([0, 1, 2, 0, 1, 0], jnp.int32)
  v = _init(model, x)
  sites = {s: shp for s, shp in models.tap_sites(model, (1, 16, 16, 3)) if s.startswith('act')}
  rng = np.random.RandomState(3)
  masks = {s: jnp.asarray(rng.uniform(0.0, 2.0, (k, shp[-1])), jnp.float32)
           for s, shp in sites.items()}

  def gate(labels, m):
    def tap(site, h):
      return h * m[site][labels][:, None, None, :] if site in m else h
    return tap

  def loss(m, v, x, y):
    return jnp.sum(model.apply(v, x, train=False, tap=gate(y, m)))

  out = jax.jit(lambda m, v, x, y: model.apply(v, x, train=False, tap=gate(y, m)))(masks, v, x, y)
  np.testing.assert_allclose(out, model.apply(v, x, train=False, tap=gate(y, masks)),
                             rtol=1e-5, atol=1e-6)
  # Each sample sees the gates of its own label: the same as a batch gated with one fixed row.
  for label in range(k):
    rows = {s: jnp.broadcast_to(m[label], (x.shape[0], m.shape[1])) for s, m in masks.items()}
    fixed = lambda site, h: h * rows[site][:, None, None, :] if site in rows else h
    want = model.apply(v, x, train=False, tap=fixed)
    sel = np.asarray(y) == label
    np.testing.assert_allclose(np.asarray(out)[sel], np.asarray(want)[sel], rtol=1e-5, atol=1e-6)
  # Gradients reach only the mask rows of labels in the batch.
  y2 = jnp.asarray([0, 2, 0, 2, 2, 0], jnp.int32)
  g = jax.jit(jax.grad(loss))(masks, v, x, y2)
  for s in masks:
    assert np.abs(np.asarray(g[s][1])).max() == 0.0
    assert np.abs(np.asarray(g[s][0])).max() > 0.0 and np.abs(np.asarray(g[s][2])).max() > 0.0


@pytest.mark.parametrize('name', ['vgg_tiny', 'resnet8', 'mobilenet_v1_tiny'])
def test_act_option_replaces_the_activation(name):
  relu_model, tanh_model = _build(name), _build(name, act=jnp.tanh)
  x = _x(2)
  v = _init(relu_model, x)
  out, acts = capture.taps(tanh_model, v, x, sites=['bn1_in', 'act1'])
  assert not np.allclose(out, relu_model.apply(v, x, train=False), atol=1e-3)
  # act1 = tanh(eval-mode BN of bn1_in), computed by hand from the stored statistics.
  bn, st = v['params']['bn1'], v['batch_stats']['bn1']
  z = ((np.asarray(acts['bn1_in']) - np.asarray(st['mean'])) / np.sqrt(np.asarray(st['var'])
                                                                       + L.BN_EPS)
       * np.asarray(bn['scale']) + np.asarray(bn['bias']))
  np.testing.assert_allclose(acts['act1'], np.tanh(z), rtol=1e-5, atol=1e-6)
  assert np.asarray(acts['act1']).min() < 0.0
  with pytest.raises(ValueError, match="unknown activation 'gelu'"):
    _build(name, act='gelu')
