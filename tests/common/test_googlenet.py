"""The CIFAR GoogLeNet FFSD trains (``common.models.googlenet``): params and thop FLOPs equal the
counts of the official PyTorch definition (``fixtures/make_ffsd_zoo_counts.py``), the spec matches
the built params, the FFSD feature taps have the official hooks' shapes, a narrow GoogLeNet
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
# A narrow GoogLeNet: 7 widths per inception (n1x1, n3x3red, n3x3, n5x5red1, n5x5red2, n5x5,
# pool), the 5x5 branch's two reductions different so that a swap would show.
NARROW = [[2 + i % 3, 3, 4, 2, 3, 2 + i % 2, 1 + i % 2] for i in range(9)]


def test_params_and_flops_equal_the_official_definition():
  want = COUNTS['googlenet/cifar100']
  m = models.get_model('googlenet', 100)
  shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                         train=False))
  assert sum(x.size for x in jax.tree.leaves(shapes['params'])) == want['params']
  assert flops.count('googlenet', num_classes=100)[:2] == (want['flops'], want['params'])
  covered = 0
  for spec in models.layer_specs('googlenet', num_classes=100):
    node = shapes['params']
    for k in spec.path:
      node = node[k]
    for leaf, shape in spec.param_shapes().items():
      assert node[leaf].shape == shape, (spec.path, leaf)
      covered += int(np.prod(shape))
  assert covered == want['params']


def test_ffsd_feature_taps_have_the_official_hook_shapes():
  # SJLeo/FFSD googlenet_cifar.py: extract_layers = ['inception_b3', 'inception_e4',
  # 'inception_b5'].
  sites = dict(models.tap_sites(models.get_model('googlenet', 100), (2, 32, 32, 3)))
  assert sites['inception_b3/out'] == (2, 32, 32, 480)
  assert sites['inception_e4/out'] == (2, 16, 16, 832)
  assert sites['inception_b5/out'] == (2, 8, 8, 1024)
  assert sites['inception_a4/b3_act2'] == (2, 16, 16, 48)     # the 5x5 branch's middle 3x3
  assert sites['features'] == (2, 1024)


def _load_torch_reference():
  spec = importlib.util.spec_from_file_location(
      'ffsd_zoo_counts', os.path.join(HERE, 'fixtures', 'make_ffsd_zoo_counts.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _conv_bn(conv, bn, rng):
  """Flax ``(conv params, bn params, bn stats)`` of a torch conv + BN, after giving the BN random
  affine and running statistics (the conv keeps its torch init)."""
  import torch
  c = bn.num_features
  vals = [rng.normal(size=c), rng.normal(size=c) * 0.1, rng.normal(size=c) * 0.1,
          rng.uniform(0.5, 1.5, size=c)]
  with torch.no_grad():
    for dst, v in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), vals):
      dst.copy_(torch.tensor(v, dtype=torch.float32))
  cp = {'kernel': conv.weight.detach().numpy().transpose(2, 3, 1, 0),   # OIHW -> HWIO
        'bias': conv.bias.detach().numpy()}
  return cp, {'scale': vals[0], 'bias': vals[1]}, {'mean': vals[2], 'var': vals[3]}


def test_narrow_googlenet_equals_pytorch_with_the_same_weights():
  torch = pytest.importorskip('torch')
  ref_mod = _load_torch_reference()
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  ref = ref_mod.GoogLeNet(num_classes=5, stem=6, blocks=NARROW).eval()
  params, stats = {}, {}
  params['pre_conv'], params['pre_bn'], stats['pre_bn'] = _conv_bn(ref.pre_layers[0],
                                                                   ref.pre_layers[1], rng)
  names = iter(['a3', 'b3', 'a4', 'b4', 'c4', 'd4', 'e4', 'a5', 'b5'])
  for blk in ref.blocks:
    if not isinstance(blk, ref_mod.Inception):
      continue
    name = f'inception_{next(names)}'
    p, s = params.setdefault(name, {}), stats.setdefault(name, {})
    branches = {'b1': (blk.branch1x1, ((0, 1),)),
                'b2': (blk.branch3x3, ((0, 1), (3, 4))),
                'b3': (blk.branch5x5, ((0, 1), (3, 4), (6, 7))),
                'b4': (blk.branch_pool, ((1, 2),))}
    for br, (seq, pairs) in branches.items():
      for j, (ci, bi) in enumerate(pairs):
        sfx = '' if len(pairs) == 1 else str(j + 1)
        p[f'{br}_conv{sfx}'], p[f'{br}_bn{sfx}'], s[f'{br}_bn{sfx}'] = _conv_bn(seq[ci], seq[bi],
                                                                                 rng)
  params['fc'] = {'kernel': ref.linear.weight.detach().numpy().T,
                  'bias': ref.linear.bias.detach().numpy()}
  m = models.get_model('googlenet', 5, widths={'stem': 6, 'blocks': NARROW})
  init = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                       train=False))
  ours = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), {'params': params,
                                                              'batch_stats': stats})
  assert jax.tree.structure(ours['params']) == jax.tree.structure(init['params'])
  assert jax.tree.map(jnp.shape, ours['params']) == jax.tree.map(lambda a: a.shape,
                                                                 init['params'])
  # Negative inputs reach the first inception's pool branch through BN + ReLU only as zeros, so
  # the max-pool padding is exercised where it matters: on the borders of post-ReLU maps.
  x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  got = np.asarray(jax.jit(lambda v, a: m.apply(v, a, train=False))(ours, jnp.asarray(x)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_official_init_statistics():
  # reset_parameters: conv N(0, 2 / (k k C_out)); conv bias and Linear PyTorch's default
  # U(+-1/sqrt(fan_in)). One inception (the whole network's init compiles for minutes on a
  # loaded CPU): its 3x3 conv b2_conv2 is 16 -> 32 (4608 weights, fan_out 288, fan_in 144).
  from common.models.googlenet import Inception
  blk = Inception((8, 16, 32, 4, 4, 8, 4))
  p = jax.jit(lambda k: blk.init(k, jnp.zeros((1, 4, 4, 64)), train=False))(
      jax.random.PRNGKey(1))['params']
  k = np.asarray(p['b2_conv2']['kernel'])
  assert k.shape == (3, 3, 16, 32)
  assert abs(k.std() - np.sqrt(2.0 / 288)) < 0.05 * np.sqrt(2.0 / 288)
  b = np.asarray(p['b2_conv2']['bias'])
  assert np.abs(b).max() <= 1 / 12 + 1e-7 and np.abs(b).max() > 0.5 / 12
  b = np.asarray(p['b1_conv']['bias'])                     # 1x1 on 64 channels
  assert np.abs(b).max() <= 1 / 8 + 1e-7


@pytest.mark.parametrize('widths,match', [
    ({'stem': 192}, 'exactly the keys'),
    ({'stem': 192, 'blocks': NARROW[:8]}, 'must list 9 inceptions'),
    ({'stem': 192, 'blocks': NARROW[:8] + [[1, 2, 3]]}, r'inception_b5\) must have 7 entries'),
    ({'stem': -3, 'blocks': NARROW}, r'widths\["stem"\] must be a positive int; got -3'),
])
def test_bad_widths_are_refused_by_name(widths, match):
  with pytest.raises(ValueError, match=match):
    models.get_model('googlenet', 10, widths=widths)
