"""The CIFAR DenseNet-40 FFSD trains (``common.models.densenet``): params and thop FLOPs equal the
counts of the official PyTorch definition (``fixtures/make_ffsd_zoo_counts.py``), the spec matches
the built params, the FFSD feature taps have the official hooks' shapes, a narrow DenseNet
computes the logits of the same network in PyTorch with the same weights, bad widths are refused
by name."""
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import flops, models

HERE = os.path.dirname(__file__)
COUNTS = json.load(open(os.path.join(HERE, 'fixtures', 'ffsd_zoo_counts.json')))


def _spec_covers_params(name, params):
  covered = 0
  for spec in models.layer_specs(name, num_classes=100):
    node = params
    for k in spec.path:
      node = node[k]
    for leaf, shape in spec.param_shapes().items():
      assert node[leaf].shape == shape, (spec.path, leaf)
      covered += int(np.prod(shape))
  return covered


def test_params_and_flops_equal_the_official_definition():
  want = COUNTS['densenet40/cifar100']
  m = models.get_model('densenet40', 100)
  shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                         train=False))
  assert sum(x.size for x in jax.tree.leaves(shapes['params'])) == want['params']
  assert flops.count('densenet40', num_classes=100)[:2] == (want['flops'], want['params'])
  assert _spec_covers_params('densenet40', shapes['params']) == want['params']


def test_ffsd_feature_taps_have_the_official_hook_shapes():
  # SJLeo/FFSD densenet_cifar.py: extract_layers = ['dense1', 'dense2', 'relu'].
  sites = dict(models.tap_sites(models.get_model('densenet40', 100), (2, 32, 32, 3)))
  assert sites['dense1/out'] == (2, 32, 32, 168)
  assert sites['dense2/out'] == (2, 16, 16, 312)
  assert sites['act_last'] == (2, 8, 8, 456)
  assert sites['trans1/out'] == (2, 16, 16, 168)
  assert sites['dense1/layer11/out'] == sites['dense1/out']


def _load_torch_reference():
  spec = importlib.util.spec_from_file_location(
      'ffsd_zoo_counts', os.path.join(HERE, 'fixtures', 'make_ffsd_zoo_counts.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _bn(t, rng):
  """Random affine and running statistics into a torch BN; returns the flax (params, stats)."""
  import torch
  c = t.num_features
  vals = [rng.normal(size=c), rng.normal(size=c) * 0.1, rng.normal(size=c) * 0.1,
          rng.uniform(0.5, 1.5, size=c)]
  with torch.no_grad():
    for dst, v in zip((t.weight, t.bias, t.running_mean, t.running_var), vals):
      dst.copy_(torch.tensor(v, dtype=torch.float32))
  return ({'scale': vals[0], 'bias': vals[1]}, {'mean': vals[2], 'var': vals[3]})


def _conv(t):
  return {'kernel': t.weight.detach().numpy().transpose(2, 3, 1, 0)}   # OIHW -> HWIO


def test_narrow_densenet_equals_pytorch_with_the_same_weights():
  torch = pytest.importorskip('torch')
  ref_mod = _load_torch_reference()
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  ref = ref_mod.DenseNet(depth=10, growth=4, num_classes=5).eval()   # 2 layers per block
  params, stats = {'conv1': _conv(ref.conv1)}, {}
  layers = list(ref.layers)
  d, i = 1, 0
  for layer in layers:
    if isinstance(layer, ref_mod.Transition):
      name = f'trans{d}'
      params[name], stats[name] = {}, {}
      p, s = params[name], stats[name]
      d, i = d + 1, 0
    else:
      params.setdefault(f'dense{d}', {})
      stats.setdefault(f'dense{d}', {})
      p = params[f'dense{d}'].setdefault(f'layer{i}', {})
      s = stats[f'dense{d}'].setdefault(f'layer{i}', {})
      i += 1
    p['bn1'], s['bn1'] = _bn(layer.bn1, rng)
    p['conv1'] = _conv(layer.conv1)
  params['bn_last'], stats['bn_last'] = _bn(ref.bn, rng)
  params['fc'] = {'kernel': ref.fc.weight.detach().numpy().T, 'bias': ref.fc.bias.detach().numpy()}
  m = models.get_model('densenet40', 5, widths={'stem': 8, 'growth': [[4, 4]] * 3})
  init = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                       train=False))
  ours = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), {'params': params,
                                                              'batch_stats': stats})
  assert jax.tree.structure(ours['params']) == jax.tree.structure(init['params'])
  assert jax.tree.structure(ours['batch_stats']) == jax.tree.structure(init['batch_stats'])
  x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  got = np.asarray(jax.jit(lambda v, a: m.apply(v, a, train=False))(ours, jnp.asarray(x)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_official_init_statistics():
  # reset_parameters: conv N(0, 2 / (k k C_out)), no conv bias. A transition on 68 channels
  # (a 68 -> 68 1x1 conv: 4624 weights) and a dense layer's 3x3 conv 68 -> 12 (fan_out 108).
  from common.models.densenet import DenseLayer, Transition
  x = jnp.zeros((1, 4, 4, 68))
  p = jax.jit(lambda k: Transition().init(k, x, train=False))(jax.random.PRNGKey(1))['params']
  k = np.asarray(p['conv1']['kernel'])
  assert k.shape == (1, 1, 68, 68) and 'bias' not in p['conv1']
  assert abs(k.std() - np.sqrt(2.0 / 68)) < 0.05 * np.sqrt(2.0 / 68)
  p = jax.jit(lambda k: DenseLayer(12).init(k, x, train=False))(jax.random.PRNGKey(2))['params']
  k = np.asarray(p['conv1']['kernel'])
  assert k.shape == (3, 3, 68, 12) and 'bias' not in p['conv1']
  assert abs(k.std() - np.sqrt(2.0 / 108)) < 0.05 * np.sqrt(2.0 / 108)


@pytest.mark.parametrize('widths,match', [
    ({'stem': 24}, 'exactly the keys'),
    ({'stem': 24, 'growth': [[12] * 12] * 2}, 'list of 3 dense blocks'),
    ({'stem': 0, 'growth': [[12]] * 3}, r'widths\["stem"\] must be a positive int; got 0'),
    ({'stem': 24, 'growth': [[12], [12, -1], [12]]}, r'growth"\]\[1\] must hold positive ints'),
])
def test_bad_widths_are_refused_by_name(widths, match):
  with pytest.raises(ValueError, match=match):
    models.get_model('densenet40', 10, widths=widths)
