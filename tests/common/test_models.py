"""Tests of ``common.models``: layer specs == initialised params, closed-form counts, forwards vs
NumPy references, PyTorch-default initialisers, width validation."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import models
from common.models import layers as L
from common.models import resnet_cifar


def _shrink(w, f=8):
  """Every width divided by ``f`` (min 1): a tiny but structurally identical config."""
  if isinstance(w, dict):
    return {k: _shrink(v, f) for k, v in w.items()}
  if isinstance(w, list):
    return [_shrink(v, f) for v in w]
  if isinstance(w, int) and not isinstance(w, bool):
    return max(1, w // f)
  return w


def _input_hw(name):
  return (224, 224) if name in IMAGENET else (32, 32)


IMAGENET = {'resnet18', 'resnet34', 'resnet50', 'mobilenet_v1', 'mobilenet_v2'}
# The families of this zoo (the BNN modules registered by other packages test themselves).
OWN_MODULES = {f'common.models.{m}' for m in
               ('resnet_cifar', 'vgg', 'resnet', 'mobilenet_v1', 'mobilenet_v2')}
OWN = sorted(n for n, e in models.MODELS.items() if e.builder.__module__ in OWN_MODULES)


def _flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, 'items'):
      out.update(_flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _abstract_vars(model, hw, capture=False):
  x = jnp.zeros((2,) + tuple(hw) + (3,), jnp.float32)
  variables = jax.eval_shape(lambda: _init(model, 0, x))
  if not capture:
    return variables, None
  _, inter = jax.eval_shape(lambda v: model.apply(v, x, train=False, capture_intermediates=True,
                                                  mutable=['intermediates']), variables)
  return variables, inter['intermediates']


def _check_specs_match(name, widths, hw, num_classes=10):
  model = models.get_model(name, num_classes, widths=widths)
  variables, inter = _abstract_vars(model, hw, capture=True)
  params = _flat(variables['params'])
  stats = _flat(variables.get('batch_stats', {}))
  specs = models.layer_specs(name, widths=widths, input_hw=hw, num_classes=num_classes)
  seen = set()
  for s in specs:
    for leaf, shape in s.param_shapes().items():
      key = tuple(s.path) + (leaf,)
      assert key in params, f'{name}: spec leaf {key} not in params'
      assert tuple(params[key].shape) == shape, (name, key, params[key].shape, shape)
      seen.add(key)
    if s.kind == 'bn':
      assert stats[tuple(s.path) + ('mean',)].shape == (s.out_ch,)
    else:
      # Output spatial size / channels from the traced forward.
      out = _flat(inter)[tuple(s.path) + ('__call__',)][0]
      if s.kind == 'conv':
        assert out.shape[1:] == tuple(s.out_hw) + (s.out_ch,), (name, s.path, out.shape, s)
      else:
        assert out.shape[1:] == (s.out_ch,)
    if s.bn is not None:
      bn = [t for t in specs if tuple(t.path) == tuple(s.bn)]
      assert len(bn) == 1 and bn[0].kind == 'bn' and bn[0].out_ch == s.out_ch
    if s.depthwise:
      assert s.groups == s.in_ch == s.out_ch
  assert seen == set(params), f'{name}: params without spec: {set(params) - seen}'
  assert sum(s.num_params for s in specs) == sum(int(np.prod(v.shape)) for v in params.values())
  assert [s.role for s in specs if s.kind != 'bn'][-1] == 'classifier'
  return specs, params


# ------------------------------------------------------------------------------------------------
# Registry


def test_unknown_name_lists_known_models():
  with pytest.raises(ValueError, match='known models.*resnet20'):
    models.get_model('resnet21', 10)
  with pytest.raises(ValueError, match='known models'):
    models.layer_specs('nope')


def test_default_widths_are_json_and_fresh_copies():
  assert len(OWN) == 20
  for name in OWN:
    w = models.default_widths(name)
    assert json.loads(json.dumps(w)) == w
  w = models.default_widths('resnet20')
  w['stages'][0] = 1
  assert models.default_widths('resnet20')['stages'][0] == 16


def test_widths_from_frozen_config_dict():
  import ml_collections
  c = ml_collections.ConfigDict({'widths': models.default_widths('resnet20')})
  c.widths.inner[1][2] = 5
  frozen = ml_collections.FrozenConfigDict(c)          # lists become tuples
  specs = models.layer_specs('resnet20', widths=frozen.widths)
  assert [s.out_ch for s in specs if s.path == ('layer2_2', 'conv1')] == [5]
  assert models.get_model('resnet20', 10, widths=frozen.widths).inner[1] == (32, 32, 5)
  assert models.get_model('vgg_tiny', 10, widths=np.array([4, 4, 8, 8, 16, 16])).widths[-1] == 16


@pytest.mark.parametrize('name', OWN)
def test_builder_and_specs_take_the_same_options(name):
  # common.train passes config.model.kwargs to both get_model and common.flops.count.
  kw = dict(init='pytorch', dense_init='normal_0.01', classifier_as_conv=True, bn_axis_name=None)
  model = models.get_model(name, 7, **kw)
  specs = models.layer_specs(name, num_classes=7, **kw)
  assert specs[-1].kind == 'conv' and specs[-1].out_ch == 7 and model.classifier_as_conv
  with pytest.raises(TypeError):
    models.layer_specs(name, no_such_option=1)


@pytest.mark.parametrize('name', OWN)
def test_specs_match_params_small_widths(name):
  widths = _shrink(models.default_widths(name))
  _check_specs_match(name, widths, _input_hw(name) if name not in IMAGENET else (64, 64))


@pytest.mark.parametrize('name', OWN)
def test_specs_match_params_default_widths(name):
  _check_specs_match(name, None, _input_hw(name))


# ------------------------------------------------------------------------------------------------
# ResNet-CIFAR


def _resnet_cifar_params(stem, stages, n, k=10):
  """Independent closed form: 3x3 convs without bias, BN 2C, Linear with bias."""
  p = 9 * 3 * stem + 2 * stem
  cin = stem
  for c in stages:
    for _ in range(n):
      p += 9 * cin * c + 2 * c + 9 * c * c + 2 * c
      cin = c
  return p + cin * k + k


@pytest.mark.parametrize('depth', [20, 32, 44, 56, 110])
def test_resnet_cifar_param_counts(depth):
  specs = models.layer_specs(f'resnet{depth}')
  n = (depth - 2) // 6
  assert sum(s.num_params for s in specs) == _resnet_cifar_params(16, (16, 32, 64), n)
  convs = [s for s in specs if s.kind == 'conv']
  assert len(convs) == depth - 1    # + fc = depth weighted layers


def test_resnet_known_sizes():
  # He et al. Table 6: ResNet-20 0.27M, ResNet-56 0.85M, ResNet-110 1.7M.
  assert sum(s.num_params for s in models.layer_specs('resnet20')) == 269722
  assert round(sum(s.num_params for s in models.layer_specs('resnet56')) / 1e6, 3) == 0.853
  # Jackpot's wide ResNet-32: conv params 1.844M (the Lottery Jackpots paper's parameter count).
  conv = sum(s.num_params for s in models.layer_specs('resnet32_wide')
             if s.kind == 'conv' and s.role != 'classifier')
  assert round(conv / 1e6, 3) == 1.844


def test_resnet_cifar_roles():
  specs = [s for s in models.layer_specs('resnet20') if s.kind != 'bn']
  assert specs[0].role == 'stem' and specs[0].feeds_residual
  for s in specs[1:-1]:
    assert s.role == ('inner' if s.path[-1] == 'conv1' else 'block_out')
    assert s.feeds_residual == (s.role == 'block_out')
  strides = {s.path[0]: s.stride for s in specs if s.path[-1] == 'conv1' and len(s.path) == 2}
  assert strides == {f'layer{i}_{b}': (2 if i > 1 and b == 0 else 1)
                     for i in (1, 2, 3) for b in range(3)}


def test_option_a_shortcut_matches_numpy():
  x = np.random.RandomState(0).randn(2, 6, 6, 3).astype(np.float32)
  y = np.asarray(resnet_cifar.option_a_shortcut(jnp.asarray(x), 8, 2))
  ref = np.zeros((2, 3, 3, 8), np.float32)
  ref[..., 2:5] = x[:, ::2, ::2, :]       # left = (8 - 3) // 2 = 2, right = 3
  np.testing.assert_array_equal(y, ref)
  y1 = np.asarray(resnet_cifar.option_a_shortcut(jnp.asarray(x), 4, 1))
  np.testing.assert_array_equal(y1[..., 0:0], x[..., 0:0])
  np.testing.assert_array_equal(y1[..., :3], x)       # left = 0, right = 1
  np.testing.assert_array_equal(y1[..., 3], 0)


def test_resnet_cifar_bad_widths():
  with pytest.raises(ValueError, match='depth 20'):
    models.get_model('resnet20', 10, widths=resnet_cifar.uniform_widths(32))
  w = models.default_widths('resnet20')
  w['stages'] = [16, 8, 64]
  with pytest.raises(ValueError, match='option-A'):
    models.get_model('resnet20', 10, widths=w)
  w = models.default_widths('resnet20')
  w['inner'][1][0] = 0
  with pytest.raises(ValueError, match='positive'):
    models.get_model('resnet20', 10, widths=w)
  with pytest.raises(ValueError, match='keys'):
    models.get_model('resnet20', 10, widths={'stages': [16, 32, 64]})
  with pytest.raises(ValueError, match='init'):
    models.get_model('resnet20', 10, init='xavier')


# ------------------------------------------------------------------------------------------------
# NumPy references of the forward pass


def np_conv(x, k, stride=1, groups=1, bias=None):
  """NHWC conv with PyTorch padding k//2, kernel HWIO; naive loops over the kernel window."""
  kh, kw, cig, co = k.shape
  p = kh // 2
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  h = (x.shape[1] + 2 * p - kh) // stride + 1
  w = (x.shape[2] + 2 * p - kw) // stride + 1
  out = np.zeros((x.shape[0], h, w, co), np.float64)
  cog = co // groups
  for g in range(groups):
    xi = xp[..., g * cig:(g + 1) * cig]
    for i in range(kh):
      for j in range(kw):
        patch = xi[:, i:i + stride * h:stride, j:j + stride * w:stride, :]
        out[..., g * cog:(g + 1) * cog] += patch @ k[i, j, :, g * cog:(g + 1) * cog]
  return out if bias is None else out + bias


def np_bn(x, p, s, eps=1e-5):
  return (x - s['mean']) / np.sqrt(s['var'] + eps) * p['scale'] + p['bias']


def _init(model, seed, x):
  """Variables with the model's tree structure and shapes (``eval_shape``: nothing compiled),
  filled with NumPy random values: random kernels/biases, BN affine and statistics that make
  eval-mode BN far from the identity."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  r = np.random.RandomState(seed)

  def fill(path, leaf):
    name = path[-1].key
    shape = leaf.shape
    if name == 'kernel':
      fan_in = int(np.prod(shape[:-1]))
      return (r.randn(*shape) / np.sqrt(fan_in)).astype(np.float32)
    if name == 'var':
      return r.uniform(0.5, 2.0, shape).astype(np.float32)
    if name == 'scale':
      return r.uniform(0.5, 1.5, shape).astype(np.float32)
    return (0.3 * r.randn(*shape)).astype(np.float32)        # bias, BN beta, running mean
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _apply(model, v, x):
  return jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)


def test_resnet_cifar_forward_matches_numpy():
  # Two stages; stage 2 pads 4 -> 7 channels (odd: left 1, right 2).
  model = resnet_cifar.ResNetCifar(num_classes=3, stem=3, stages=(4, 7), inner=((2,), (5,)))
  x = np.random.RandomState(1).randn(2, 8, 8, 3).astype(np.float32)
  v = _init(model, 0, x)
  y = np.asarray(_apply(model, v, x))
  P, S = v['params'], v['batch_stats']
  relu = lambda t: np.maximum(t, 0)
  h = relu(np_bn(np_conv(x, P['conv1']['kernel']), P['bn1'], S['bn1']))
  for name, stride, out in (('layer1_0', 1, 4), ('layer2_0', 2, 7)):
    p, s = P[name], S[name]
    t = relu(np_bn(np_conv(h, p['conv1']['kernel'], stride), p['bn1'], s['bn1']))
    t = np_bn(np_conv(t, p['conv2']['kernel']), p['bn2'], s['bn2'])
    sc = h[:, ::stride, ::stride, :]
    left = (out - h.shape[-1]) // 2
    sc = np.pad(sc, ((0, 0), (0, 0), (0, 0), (left, out - h.shape[-1] - left)))
    h = relu(t + sc)
  ref = h.mean((1, 2)) @ P['fc']['kernel'] + P['fc']['bias']
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_resnet_cifar_projection_shortcut_matches_numpy_and_counts():
  # Option B: 1x1 conv (stride s) + BN wherever the stride or the width changes; a stage may
  # shrink (7 -> 4), which option A refuses.
  model = resnet_cifar.ResNetCifar(num_classes=3, stem=3, stages=(7, 4), inner=((2,), (5,)),
                                   shortcut='projection')
  x = np.random.RandomState(2).randn(2, 8, 8, 3).astype(np.float32)
  v = _init(model, 0, x)
  assert 'downsample_conv' in v['params']['layer1_0']      # 3 -> 7 at stride 1
  y = np.asarray(_apply(model, v, x))
  P, S = v['params'], v['batch_stats']
  relu = lambda t: np.maximum(t, 0)
  h = relu(np_bn(np_conv(x, P['conv1']['kernel']), P['bn1'], S['bn1']))
  for name, stride in (('layer1_0', 1), ('layer2_0', 2)):
    p, s = P[name], S[name]
    t = relu(np_bn(np_conv(h, p['conv1']['kernel'], stride), p['bn1'], s['bn1']))
    t = np_bn(np_conv(t, p['conv2']['kernel']), p['bn2'], s['bn2'])
    sc = np_bn(np_conv(h, p['downsample_conv']['kernel'], stride), p['downsample_bn'],
               s['downsample_bn'])
    h = relu(t + sc)
  ref = h.mean((1, 2)) @ P['fc']['kernel'] + P['fc']['bias']
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
  # ResNet-20 with projections: option A's 269,722 + (16*32 + 2*32) + (32*64 + 2*64).
  specs = models.layer_specs('resnet20', shortcut='projection')
  assert sum(sp.num_params for sp in specs) == 269722 + 576 + 2176
  m = models.get_model('resnet20', 10, shortcut='projection')
  v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  assert sum(a.size for a in jax.tree_util.tree_leaves(v['params'])) == 269722 + 576 + 2176
  sc = [sp for sp in specs if sp.path[-1] == 'downsample_conv']
  assert [(sp.path[0], sp.stride, sp.role, sp.feeds_residual) for sp in sc] == [
      ('layer2_0', 2, 'shortcut', True), ('layer3_0', 2, 'shortcut', True)]
  with pytest.raises(ValueError, match="unknown shortcut 'B'"):
    models.get_model('resnet20', 10, shortcut='B')


def test_features_are_sown_and_train_mode_updates_stats():
  model = models.get_model('resnet8', 4, widths=_shrink(models.default_widths('resnet8'), 4))
  x = np.random.RandomState(0).randn(3, 8, 8, 3).astype(np.float32)
  v = _init(model, 0, x)
  logits, state = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=['batch_stats', 'intermediates']))(v, x)
  assert logits.shape == (3, 4)
  assert state['intermediates']['features'][0].shape == (3, 16)
  # PyTorch momentum 0.1: running = 0.9 * running + 0.1 * batch statistic (Flax: biased var).
  h = np_conv(x, np.asarray(v['params']['conv1']['kernel']))
  old = v['batch_stats']['bn1']
  np.testing.assert_allclose(state['batch_stats']['bn1']['mean'],
                             0.9 * old['mean'] + 0.1 * h.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(state['batch_stats']['bn1']['var'],
                             0.9 * old['var'] + 0.1 * h.var((0, 1, 2)), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Initialisers


@pytest.fixture(scope='module')
def big_kernels():
  """Kernels of one conv (3x3, 64 -> 128, fan_in 576, fan_out 1152) under every scheme."""
  out = {}
  for init in L.INITS:
    c = L.conv(128, 3, in_ch=64, bias=True, init=init, name='c')
    out[init] = c.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 64)))['params']
  return out


def test_pytorch_default_init(big_kernels):
  k = np.asarray(big_kernels['pytorch']['kernel'])
  b = np.asarray(big_kernels['pytorch']['bias'])
  bound = 1 / math.sqrt(576)          # kaiming_uniform(a=sqrt 5) bound = 1/sqrt(fan_in)
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.99 * bound
  assert abs(k.std() - bound / math.sqrt(3)) < 0.02 * bound
  assert np.abs(b).max() <= bound and b.std() > 0.4 * bound


def test_kaiming_normal_inits(big_kernels):
  k_in = np.asarray(big_kernels['kaiming_normal_fan_in']['kernel'])
  k_out = np.asarray(big_kernels['kaiming_normal_fan_out']['kernel'])
  assert abs(k_in.std() / math.sqrt(2 / 576) - 1) < 0.02
  assert abs(k_out.std() / math.sqrt(2 / 1152) - 1) < 0.02
  assert np.abs(k_in).max() > 3.5 * math.sqrt(2 / 576)    # untruncated normal, as torch
  assert np.all(np.asarray(big_kernels['kaiming_normal_fan_out']['bias']) == 0)


def test_dense_init_defaults():
  assert L.check_init('kaiming_normal_fan_out') == ('kaiming_normal_fan_out', 'pytorch')
  assert L.check_init('kaiming_normal_fan_in') == ('kaiming_normal_fan_in', 'kaiming_normal_fan_in')
  d = L.dense(100, in_ch=400, init='normal_0.01', name='d').init(
      jax.random.PRNGKey(0), jnp.zeros((1, 400)))['params']
  assert abs(np.asarray(d['kernel']).std() - 0.01) < 0.0005
  assert np.all(np.asarray(d['bias']) == 0)


# ------------------------------------------------------------------------------------------------
# VGG


def _vgg_params(widths, k=10, bias=True, fc_bias=True):
  p, cin = 0, 3
  for w in widths:
    p += 9 * cin * w + (w if bias else 0) + 2 * w
    cin = w
  return p + cin * k + (k if fc_bias else 0)


def test_vgg_param_counts():
  v16 = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  assert sum(s.num_params for s in models.layer_specs('vgg16')) == _vgg_params(v16)
  assert round(_vgg_params(v16) / 1e6, 2) == 14.73          # thop count of torchvision VGG-16 (CIFAR head)
  v19 = [64, 64, 128, 128, 256, 256, 256, 256] + [512] * 8
  specs = models.layer_specs('vgg19', conv_bias=False, classifier_as_conv=True)
  assert sum(s.num_params for s in specs) == _vgg_params(v19, bias=False)
  conv = sum(s.num_params for s in specs if s.kind == 'conv' and s.role != 'classifier')
  assert round(conv / 1e6, 2) == 20.02                       # Jackpot conv params, as the paper's table
  assert specs[-1].kind == 'conv' and specs[-1].param_shapes()['kernel'] == (1, 1, 512, 10)
  dcff = [32, 32, 76, 76, 166, 166, 166, 76, 76, 76, 76, 76, 76]
  assert sum(s.num_params for s in models.layer_specs('vgg16', widths=dcff)) == _vgg_params(dcff)


def test_vgg_pools_and_bad_widths():
  specs = [s for s in models.layer_specs('vgg16') if s.kind == 'conv']
  assert [s.in_hw[0] for s in specs] == [32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2]
  assert models.layer_specs('vgg16')[-1].pool_in_hw == (1, 1)
  with pytest.raises(ValueError, match='13 entries'):
    models.get_model('vgg16', 10, widths=[64] * 12)
  with pytest.raises(ValueError, match='pools'):
    models.get_model('vgg_tiny', 10, widths=[4, 4], pools=[2])


def test_vgg_forward_matches_numpy():
  model = models.get_model('vgg_tiny', 3, widths=[2, 3, 4], pools=[0, 2], classifier_as_conv=True)
  x = np.random.RandomState(2).randn(2, 8, 8, 3).astype(np.float32)
  v = _init(model, 1, x)
  y = np.asarray(_apply(model, v, x))
  P, S = v['params'], v['batch_stats']
  h = x.astype(np.float64)
  for i in range(3):
    c = P[f'conv{i}']
    h = np.maximum(np_bn(np_conv(h, c['kernel'], bias=c['bias']), P[f'bn{i}'], S[f'bn{i}']), 0)
    if i in (0, 2):
      b, hh, ww, ch = h.shape
      h = h.reshape(b, hh // 2, 2, ww // 2, 2, ch).max((2, 4))
  ref = h.mean((1, 2)) @ P['fc']['kernel'][0, 0] + P['fc']['bias']
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# MobileNets


def test_mobilenet_reference_param_counts():
  # torchvision mobilenet_v2(): 3,504,872 params; MobileNet-V1 1.0-224: 4,231,976.
  assert sum(s.num_params for s in models.layer_specs('mobilenet_v2', num_classes=1000)) == 3504872
  assert sum(s.num_params for s in models.layer_specs('mobilenet_v1', num_classes=1000)) == 4231976
  # 1xN: 13 pointwise + classifier 1x1 conv masked; MobileNet-V2: 35 masked (lmbxmu/1xN: pointwise convs and the classifier).
  v1 = models.layer_specs('mobilenet_v1', num_classes=1000, classifier_as_conv=True)
  assert len([s for s in v1 if s.kind == 'conv' and s.role in ('pointwise', 'classifier')]) == 14
  v2 = models.layer_specs('mobilenet_v2', num_classes=1000, classifier_as_conv=True)
  masked = [s for s in v2 if s.kind == 'conv' and s.role not in ('stem', 'depthwise')]
  assert len(masked) == 35
  assert [s.path[0] for s in masked[:3]] == ['block0', 'block1', 'block1']


def test_mobilenet_v2_residual_roles():
  specs = [s for s in models.layer_specs('mobilenet_v2') if s.kind == 'conv']
  proj = {s.path[0]: s.feeds_residual for s in specs if s.role == 'project'}
  # Identity residuals (stride 1, equal widths) at blocks 2, 4, 5, 7-9, 11, 12, 14, 15; a
  # projection feeds the sum if its block adds or the next block adds its output as identity.
  res = {2, 4, 5, 7, 8, 9, 11, 12, 14, 15}
  assert proj == {f'block{i}': (i in res or i + 1 in res) for i in range(17)}
  assert not specs[0].feeds_residual
  assert all(s.depthwise == (s.role == 'depthwise') for s in specs)
  hw = {s.path[0]: s.out_hw for s in specs if s.role == 'depthwise'}
  assert hw['block0'] == (16, 16) and hw['block16'] == (1, 1)   # 32x32 input, stride 32
  cifar = [s for s in models.layer_specs('mobilenet_v2_cifar') if s.kind == 'conv']
  short = [s.path[0] for s in cifar if s.role == 'shortcut']
  # White-Box CIFAR variant: 1x1 conv shortcut when stride 1 and widths differ.
  assert short == ['block0', 'block1', 'block3', 'block10', 'block16']
  assert [s.out_hw for s in cifar if s.path == ('conv_last',)] == [(8, 8)]
  with pytest.raises(ValueError, match='hidden'):
    w = models.default_widths('mobilenet_v2')
    w['hidden'][0] = 16
    models.get_model('mobilenet_v2', 10, widths=w)
  with pytest.raises(ValueError, match='explicit strides'):
    models.get_model('mobilenet_v2', 10, widths={'stem': 8, 'hidden': [8], 'out': [8],
                                                  'last': 8})


def _np_mbv2(v, x, variant, strides, stem_stride, act):
  P, S = v['params'], v['batch_stats']
  bn = lambda t, n, blk=None: np_bn(t, (P[blk] if blk else P)[n], (S[blk] if blk else S)[n])
  h = act(bn(np_conv(x, P['conv1']['kernel'], stem_stride), 'bn1'))
  for i, s in enumerate(strides):
    blk, p = f'block{i}', P[f'block{i}']
    t = h
    if 'expand_conv' in p:
      t = act(bn(np_conv(t, p['expand_conv']['kernel']), 'expand_bn', blk))
    k = p['dw_conv']['kernel']
    t = act(bn(np_conv(t, k, s, groups=k.shape[-1]), 'dw_bn', blk))
    t = bn(np_conv(t, p['project_conv']['kernel']), 'project_bn', blk)
    if s == 1 and h.shape[-1] == t.shape[-1]:
      t = t + h
    elif s == 1 and variant == 'cifar':
      t = t + bn(np_conv(h, p['shortcut_conv']['kernel']), 'shortcut_bn', blk)
    h = t
  h = act(bn(np_conv(h, P['conv_last']['kernel']), 'bn_last'))
  return h.mean((1, 2)) @ P['fc']['kernel'] + P['fc']['bias']


@pytest.mark.parametrize('variant', ['imagenet', 'cifar'])
def test_mobilenet_v2_forward_matches_numpy(variant):
  name = 'mobilenet_v2' if variant == 'imagenet' else 'mobilenet_v2_cifar'
  widths = {'stem': 4, 'hidden': [4, 6, 9], 'out': [3, 5, 5], 'last': 7}
  strides = [1, 2, 1]
  model = models.get_model(name, 3, widths=widths, strides=strides, act='relu6')
  x = 3 * np.random.RandomState(3).randn(2, 8, 8, 3).astype(np.float32)
  v = _init(model, 2, x)
  y = np.asarray(_apply(model, v, x))
  ref = _np_mbv2(v, x, variant, strides, 2 if variant == 'imagenet' else 1,
                 lambda t: np.clip(t, 0, 6))
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
  assert ('expand_conv' in v['params']['block0']) == (variant == 'cifar')


def test_mobilenet_v1_forward_matches_numpy():
  model = models.get_model('mobilenet_v1_tiny', 3, widths=[4, 5, 6], strides=[2, 1],
                           pointwise_bias=True, classifier_as_conv=True)
  x = np.random.RandomState(4).randn(2, 8, 8, 3).astype(np.float32)
  v = _init(model, 3, x)
  y = np.asarray(_apply(model, v, x))
  P, S = v['params'], v['batch_stats']
  relu = lambda t: np.maximum(t, 0)
  h = relu(np_bn(np_conv(x, P['conv1']['kernel']), P['bn1'], S['bn1']))
  for i, s in enumerate([2, 1]):
    p, st = P[f'block{i}'], S[f'block{i}']
    h = relu(np_bn(np_conv(h, p['dw_conv']['kernel'], s, groups=h.shape[-1]), p['dw_bn'],
                   st['dw_bn']))
    h = relu(np_bn(np_conv(h, p['pw_conv']['kernel'], bias=p['pw_conv']['bias']), p['pw_bn'],
                   st['pw_bn']))
  ref = h.mean((1, 2)) @ P['fc']['kernel'][0, 0] + P['fc']['bias']
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# ImageNet ResNets


def test_imagenet_resnet_reference_param_counts():
  # torchvision resnet18/34/50 with a 1000-way fc.
  for name, n in (('resnet18', 11689512), ('resnet34', 21797672), ('resnet50', 25557032)):
    assert sum(s.num_params for s in models.layer_specs(name, num_classes=1000)) == n
  specs = models.layer_specs('resnet50', input_hw=(224, 224), num_classes=1000,
                             classifier_as_conv=True)
  conv = [s for s in specs if s.kind == 'conv' and s.role != 'classifier']
  assert round(sum(s.num_params for s in conv) / 1e6, 2) == 23.45     # Jackpot's ResNet-50 conv params
  # 1xN masks 53 convs: 16x3 + 4 downsample + the fc conv (not the stem), as lmbxmu/1xN masks them.
  assert len([s for s in specs if s.kind == 'conv' and s.role != 'stem']) == 53
  down = [s for s in conv if s.role == 'shortcut']
  assert [s.path[0] for s in down] == ['layer1_0', 'layer2_0', 'layer3_0', 'layer4_0']
  assert all(s.feeds_residual for s in down)
  # v1.5: the stride sits on the 3x3 conv2.
  assert [s.stride for s in conv if s.path == ('layer2_0', 'conv2')] == [2]
  assert [s.stride for s in conv if s.path == ('layer2_0', 'conv1')] == [1]
  assert [s.in_hw for s in conv if s.path == ('layer1_0', 'conv1')] == [(56, 56)]


def test_resnet50_widths_are_independent():
  w = models.default_widths('resnet50')
  w['conv1'][2][3] = 7
  w['conv2'][2][3] = 9
  w['stages'][1] = 300
  specs = {s.path: s for s in models.layer_specs('resnet50', widths=w) if s.kind == 'conv'}
  assert specs[('layer3_3', 'conv1')].out_ch == 7 and specs[('layer3_3', 'conv2')].in_ch == 7
  assert specs[('layer3_3', 'conv2')].out_ch == 9 and specs[('layer3_3', 'conv3')].in_ch == 9
  assert specs[('layer2_0', 'downsample_conv')].out_ch == 300
  assert specs[('layer3_0', 'downsample_conv')].in_ch == 300
  assert specs[('layer2_3', 'conv3')].out_ch == 300
  with pytest.raises(ValueError, match="'conv2'"):
    w['conv2'][0] = [64, 64]
    models.get_model('resnet50', 10, widths=w)


@pytest.mark.parametrize('bottleneck', [False, True])
def test_imagenet_resnet_forward_matches_numpy(bottleneck):
  from common.models import resnet
  blocks = (((2, 3),), ((3, 2), (2, 2))) if bottleneck else (((2,),), ((3,), (2,)))
  model = resnet.ResNet(num_classes=3, stem=4, stages=(6, 8), blocks=blocks)
  x = np.random.RandomState(5).randn(2, 16, 16, 3).astype(np.float32)
  v = _init(model, 4, x)
  y = np.asarray(_apply(model, v, x))
  P, S = v['params'], v['batch_stats']
  relu = lambda t: np.maximum(t, 0)
  h = relu(np_bn(np_conv(x, P['conv1']['kernel'], 2), P['bn1'], S['bn1']))
  hp = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  h = np.max([hp[:, i:i + 8:2, j:j + 8:2] for i in range(3) for j in range(3)], axis=0)
  for s, (out, stage) in enumerate(zip((6, 8), blocks)):
    for b, _ in enumerate(stage):
      stride = 2 if s > 0 and b == 0 else 1
      p, st = P[f'layer{s + 1}_{b}'], S[f'layer{s + 1}_{b}']
      if bottleneck:
        t = relu(np_bn(np_conv(h, p['conv1']['kernel']), p['bn1'], st['bn1']))
        t = relu(np_bn(np_conv(t, p['conv2']['kernel'], stride), p['bn2'], st['bn2']))
        t = np_bn(np_conv(t, p['conv3']['kernel']), p['bn3'], st['bn3'])
      else:
        t = relu(np_bn(np_conv(h, p['conv1']['kernel'], stride), p['bn1'], st['bn1']))
        t = np_bn(np_conv(t, p['conv2']['kernel']), p['bn2'], st['bn2'])
      if 'downsample_conv' in p:
        sc = np_bn(np_conv(h, p['downsample_conv']['kernel'], stride), p['downsample_bn'],
                   st['downsample_bn'])
      else:
        sc = h
      h = relu(t + sc)
  ref = h.mean((1, 2)) @ P['fc']['kernel'] + P['fc']['bias']
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
  assert 'downsample_conv' in P['layer1_0'] and 'downsample_conv' not in P['layer2_1']


@pytest.mark.parametrize('stride,padding', [(1, ((1, 1), (1, 1))), (2, ((1, 1), (1, 1))),
                                            (2, 'SAME'), (1, 'VALID')])
def test_depthwise_conv_matches_lax_grouped_conv(stride, padding):
  """The zoo's depthwise convs are shifted slices; lax's grouped conv is the reference."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 8, 6))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 1, 6))
  want = jax.lax.conv_general_dilated(x, k, (stride, stride), padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      feature_group_count=6, precision=jax.lax.Precision.HIGHEST)
  got = L.depthwise_conv(x, k, stride, padding)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_depthwise_module_is_an_nn_conv_with_the_same_params_values_and_gradients():
  """L.conv(groups=C) is a DepthwiseConv: same init (values, not just shapes), output and
  gradients as the nn.Conv with feature_group_count=C it replaces."""
  import flax.linen as nn
  dw = L.conv(8, 3, in_ch=8, stride=2, groups=8, bias=True, init='pytorch', name='dw')
  assert isinstance(dw, L.DepthwiseConv) and isinstance(dw, nn.Conv)
  ref = nn.Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=8,
                use_bias=True, kernel_init=L.kernel_init('pytorch'),
                bias_init=L.bias_init('pytorch', 9), name='dw')
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 7, 7, 8))
  v_dw = dw.init(jax.random.PRNGKey(3), x)
  v_ref = ref.init(jax.random.PRNGKey(3), x)
  jax.tree.map(np.testing.assert_array_equal, v_dw, v_ref)
  np.testing.assert_allclose(dw.apply(v_dw, x), ref.apply(v_ref, x), atol=1e-5, rtol=1e-5)
  g_dw = jax.grad(lambda v, x: jnp.sum(dw.apply(v, x) ** 2), argnums=(0, 1))(v_dw, x)
  g_ref = jax.grad(lambda v, x: jnp.sum(ref.apply(v, x) ** 2), argnums=(0, 1))(v_ref, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4), g_dw, g_ref)
  assert not isinstance(L.conv(8, 3, in_ch=8, groups=2, name='g'), L.DepthwiseConv)
