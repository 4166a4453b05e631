"""Physical rearrangement is function-preserving (same logits, eval mode) on self-contained
blocks.

The two networks below are written in the test (an inverted-residual MobileNet-V2 block and a
ResNet-50 bottleneck with a downsample conv), with hand-written layer specs, so the permutation
logic is checked independently of ``common.models`` (``test_models.py`` repeats it on the zoo).
"""
import dataclasses
from typing import Optional, Tuple

import flax.linen as nn
import jax
import numpy as np
import pytest

from common import masks as common_masks
from onexn import permute


@dataclasses.dataclass(frozen=True)
class Spec:
  path: Tuple[str, ...]
  kind: str
  in_ch: int
  out_ch: int
  role: str
  bn: Optional[Tuple[str, ...]] = None
  feeds_residual: bool = False
  depthwise: bool = False
  groups: int = 1


def bn(name, train=False):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class TinyMBv2(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu6(bn('stem_bn')(nn.Conv(8, (3, 3), use_bias=False, name='stem')(x)))
    h = nn.relu6(bn('expand_bn')(nn.Conv(16, (1, 1), use_bias=False, name='expand')(x)))
    h = nn.relu6(bn('dw_bn')(nn.Conv(16, (3, 3), feature_group_count=16, use_bias=False,
                                     name='dw')(h)))
    x = x + bn('project_bn')(nn.Conv(8, (1, 1), use_bias=False, name='project')(h))
    x = nn.relu6(bn('head_bn')(nn.Conv(32, (1, 1), use_bias=False, name='head')(x)))
    return nn.Dense(5, name='classifier')(x.mean((1, 2)))


MBV2_SPECS = [
    Spec(('stem',), 'conv', 3, 8, 'stem', ('stem_bn',)),
    Spec(('expand',), 'conv', 8, 16, 'expand', ('expand_bn',)),
    Spec(('dw',), 'conv', 16, 16, 'depthwise', ('dw_bn',), depthwise=True, groups=16),
    Spec(('project',), 'conv', 16, 8, 'project', ('project_bn',), feeds_residual=True),
    Spec(('head',), 'conv', 8, 32, 'pointwise', ('head_bn',)),
    Spec(('classifier',), 'dense', 32, 5, 'classifier'),
]


class TinyBottleneck(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.relu(bn('bn1')(nn.Conv(4, (1, 1), use_bias=False, name='conv1')(x)))
    h = nn.relu(bn('bn2')(nn.Conv(4, (3, 3), strides=2, padding=((1, 1), (1, 1)),
                                  use_bias=False, name='conv2')(h)))
    h = bn('bn3')(nn.Conv(16, (1, 1), use_bias=False, name='conv3')(h))
    s = bn('down_bn')(nn.Conv(16, (1, 1), strides=2, use_bias=False, name='down')(x))
    x = nn.relu(h + s)
    return nn.Dense(5, name='fc')(x.mean((1, 2)))


BOTTLENECK_SPECS = [
    Spec(('conv1',), 'conv', 8, 4, 'inner', ('bn1',)),
    Spec(('conv2',), 'conv', 4, 4, 'inner', ('bn2',)),
    Spec(('conv3',), 'conv', 4, 16, 'block_out', ('bn3',), feeds_residual=True),
    Spec(('down',), 'conv', 8, 16, 'shortcut', ('down_bn',), feeds_residual=True),
    Spec(('fc',), 'dense', 16, 5, 'classifier'),
]


def randomize(variables, seed):
  """Non-trivial BN statistics and affine params so that a wrong permutation changes the output."""
  leaves, tree = jax.tree_util.tree_flatten(variables)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  out = []
  for k, leaf in zip(keys, leaves):
    r = jax.random.uniform(k, leaf.shape, minval=0.5, maxval=1.5)
    out.append(leaf * r + 0.1 * (r - 1.0))
  return jax.tree_util.tree_unflatten(tree, out)


@pytest.fixture(scope='module', params=['mbv2', 'bottleneck'])
def net(request):
  model, specs, in_ch = ((TinyMBv2(), MBV2_SPECS, 3) if request.param == 'mbv2'
                         else (TinyBottleneck(), BOTTLENECK_SPECS, 8))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, in_ch))
  v = model.init(jax.random.PRNGKey(0), x)
  v = randomize({'params': v['params'], 'batch_stats': v['batch_stats']}, 2)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return request.param, specs, v, x, apply


def test_absorb_plans(net):
  name, specs, *_ = net
  plans = {s.path: permute.absorb_plan(specs, s.path) for s in specs if s.kind in ('conv', 'dense')}
  if name == 'mbv2':
    assert plans[('expand',)].depthwise == ((('dw',), ('dw_bn',)),)
    assert plans[('expand',)].consumer == ('project',)
    assert plans[('head',)].consumer == ('classifier',)
    assert plans[('head',)].consumer_kind == 'dense'
    for p in (('stem',), ('dw',), ('project',), ('classifier',)):
      assert plans[p] is None
  else:
    assert plans[('conv1',)].consumer == ('conv2',) and plans[('conv1',)].depthwise == ()
    assert plans[('conv2',)].consumer == ('conv3',)
    for p in (('conv3',), ('down',), ('fc',)):
      assert plans[p] is None


def test_physical_permutation_preserves_function(net):
  name, specs, v, x, apply = net
  y0 = apply(v, x)
  params, stats = v['params'], v['batch_stats']
  masks = {s.path[0]: {'kernel': jax.random.bernoulli(jax.random.PRNGKey(i), 0.6,
                                                      params[s.path[0]]['kernel'].shape)}
           for i, s in enumerate(specs) if s.kind in ('conv', 'dense')}
  masked = common_masks.apply_masks
  ym0 = apply({'params': masked(params, masks), 'batch_stats': stats}, x)
  r = np.random.RandomState(3)
  changed = 0
  for s in specs:
    plan = permute.absorb_plan(specs, s.path)
    if plan is None:
      continue
    perm = r.permutation(s.out_ch)
    new_p, new_s, new_m = permute.permute_pair(params, stats, masks, plan, perm)
    # the permutation really moved weights ...
    assert not np.allclose(new_p[s.path[0]]['kernel'], params[s.path[0]]['kernel'])
    np.testing.assert_array_equal(new_p[s.path[0]]['kernel'],
                                  np.asarray(params[s.path[0]]['kernel'])[..., perm])
    # ... and the network computes the same function, dense and masked
    np.testing.assert_allclose(apply({'params': new_p, 'batch_stats': new_s}, x), y0, atol=1e-5)
    np.testing.assert_allclose(apply({'params': masked(new_p, new_m), 'batch_stats': new_s}, x),
                               ym0, atol=1e-5)
    params, stats, masks = new_p, new_s, new_m
    changed += 1
  assert changed == 2


def test_permuting_only_the_layer_changes_function(net):
  """Control: without the BN / depthwise / consumer updates the output changes (test can fail)."""
  name, specs, v, x, apply = net
  s = specs[1] if name == 'mbv2' else specs[0]
  perm = np.random.RandomState(0).permutation(s.out_ch)
  p, st, _ = permute.permute_out_channels(v['params'], v['batch_stats'], None, s.path, perm)
  assert not np.allclose(apply({'params': p, 'batch_stats': st}, x), apply(v, x), atol=1e-3)


def test_bad_permutation_rejected(net):
  name, specs, v, *_ = net
  s = specs[1] if name == 'mbv2' else specs[0]
  plan = permute.absorb_plan(specs, s.path)
  with pytest.raises(ValueError, match='permutation of range'):
    permute.permute_pair(v['params'], v['batch_stats'], None, plan, np.zeros(s.out_ch, int))


def test_block_permutation_from_mask():
  import onexn
  w = np.random.RandomState(0).randn(3, 3, 6, 16).astype(np.float32)
  m = np.asarray(onexn.rearranged_block_mask(w, 4, 0.5))
  perm = permute.block_permutation_from_mask(m, 4)
  assert perm is not None and sorted(perm.tolist()) == list(range(16))
  g = m[..., perm].reshape(3, 3, 6, 4, 4)
  assert np.all(g == g[..., :1])
  plain = np.asarray(onexn.block_mask(w, 4, 0.5))
  np.testing.assert_array_equal(permute.block_permutation_from_mask(plain, 4), np.arange(16))
  unstructured = np.asarray(onexn.weight_mask(w, 0.5))
  assert permute.block_permutation_from_mask(unstructured, 4) is None
