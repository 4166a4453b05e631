"""Per-model rules of the official code and rearrangement on the zoo's MobileNets / ResNet-50.

lmbxmu/1xN ``imagenet.py: main`` and ``models/*`` (which layers are masked / rearranged, classifier
rate 0, C_out % N errors) and physical permutation preserving the network function, on
``common.models``.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import onexn
from common import masks as common_masks
from common import models
from onexn import layer_policy, permute

R50_TINY = {'stem': 8, 'stages': [16, 16, 32, 32], 'conv1': [[4] * 3, [4] * 4, [8] * 6, [8] * 3],
            'conv2': [[4] * 3, [4] * 4, [8] * 6, [8] * 3]}
MBV2_TINY = {'stem': 8, 'hidden': [8, 16, 32], 'out': [8, 16, 16], 'last': 32}
TINY = {
    'mobilenet_v2': (MBV2_TINY, {'strides': (1, 2, 1)}),
    'resnet50': (R50_TINY, {}),
    'mobilenet_v1_tiny': (None, {}),
}


def cfg(name, widths=None, kwargs=None, **method):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict({'name': name, 'widths': widths, 'num_classes': 5,
                                       'kwargs': kwargs or {}})
  c.method = ml_collections.ConfigDict(dict(pattern='block', block_size_n=4, sparsity=0.5,
                                            rearrange=True, straddle_blocks=False,
                                            prune_classifier=False, random_with_replacement=True))
  c.method.update(method)
  return c


def masks_of(params, c, specs):
  """``model_masks`` with the arguments an experiment config names (as ``onexn.train`` calls it)."""
  return layer_policy.model_masks(params, specs, c.model.name, **layer_policy.mask_options(c.method))


def fake_params(specs, seed=0):
  """Random params of the specs' shapes (no model.init: the paper-size models stay cheap)."""
  r = np.random.RandomState(seed)
  out = {}
  for s in specs:
    node = out
    for k in s.path:
      node = node.setdefault(k, {})
    for leaf, shape in s.param_shapes().items():
      node[leaf] = jnp.asarray(r.randn(*shape).astype(np.float32))
  return out


def paths(specs):
  return [tuple(s.path) for s in specs]


def test_official_layer_counts_and_rules():
  mbv1 = models.layer_specs('mobilenet_v1', input_hw=(224, 224), num_classes=1000)
  mbv2 = models.layer_specs('mobilenet_v2', input_hw=(224, 224), num_classes=1000)
  r50 = models.layer_specs('resnet50', input_hw=(224, 224), num_classes=1000)
  # the official builders: 14 / 35 / 53 masked modules (classifier included)
  assert len(layer_policy.masked_layers(mbv1)) == 14
  assert len(layer_policy.masked_layers(mbv2)) == 35
  assert len(layer_policy.masked_layers(r50)) == 53
  for specs in (mbv1, mbv2, r50):
    for s in layer_policy.masked_layers(specs):
      assert s.role not in ('stem', 'depthwise') and not s.depthwise
  # V1: everything rearranged
  assert paths(layer_policy.rearranged_layers('mobilenet_v1', mbv1)) == paths(
      layer_policy.masked_layers(mbv1))
  # V2: the role rule equals the literal alternating flag of imagenet.py on the official model
  masked = layer_policy.masked_layers(mbv2)
  flags = layer_policy.official_alternating_rule(mbv2)
  assert paths([s for s, f in zip(masked, flags) if f]) == paths(
      layer_policy.rearranged_layers('mobilenet_v2', mbv2))
  assert sum(flags) == 17 and masked[0].path == ('block0', 'project_conv') and not flags[0]
  assert flags[-2] and masked[-2].path == ('conv_last',) and not flags[-1]
  # ResNet-50: all but conv3 (37 = 16 conv1 + 16 conv2 + 4 downsample + fc)
  rr = layer_policy.rearranged_layers('resnet50', r50)
  assert len(rr) == 37 and not any(s.path[-1] == 'conv3' for s in rr)
  assert ('fc',) in paths(rr)


def test_classifier_rate_and_resnet50_quirk():
  specs = models.layer_specs('resnet50', widths=R50_TINY, num_classes=8)
  params = fake_params(specs)
  m = masks_of(params, cfg('resnet50', R50_TINY), specs)
  assert bool(np.all(m['fc']['kernel']))
  rep = common_masks.sparsity_report(m)
  for name, r in rep['layers'].items():
    if name != 'fc/kernel':
      num_blocks = r['total'] // 4   # one 1x4 block per 4 weights of a 1x1 conv ... k*k*4 of a 3x3
      assert r['sparsity'] == pytest.approx(0.5, abs=1.0 / max(num_blocks // 9, 1))
  q = layer_policy.model_masks(params, specs, 'resnet50', pattern='block', p=0.5, n=4,
                               rearrange=True, prune_classifier=True)
  assert (~np.asarray(q['fc']['kernel'])).sum() == int(32 * 8 / 4 * 0.5) * 4
  assert set(common_masks.sparsity_report(m)['layers']) == {
      '/'.join(s.path) + '/kernel' for s in layer_policy.masked_layers(specs)}


MBV2_24 = {'stem': 16, 'hidden': [16, 48, 72], 'out': [16, 24, 24], 'last': 32}


def test_masks_per_pattern_exact_counts():
  """Property 9 and the baselines over a whole model (MobileNet-V2 layout, narrow widths)."""
  specs = models.layer_specs('mobilenet_v2', widths=MBV2_24, strides=(1, 2, 1), num_classes=10)
  params = fake_params(specs)
  for pattern in ('block', 'weight', 'filter'):
    m = masks_of(params, cfg('mobilenet_v2', MBV2_24, pattern=pattern,
                                             rearrange=False, block_size_n=8), specs)
    for s in layer_policy.masked_layers(specs):
      mk = m
      for k in s.path:
        mk = mk[k]
      mk = np.asarray(mk['kernel'])
      if s.role == 'classifier':
        assert mk.all()
        continue
      units = {'block': s.in_ch * s.out_ch // 8, 'weight': mk.size, 'filter': s.out_ch}[pattern]
      pruned_units = int(units * 0.5)
      assert (~mk).sum() == pruned_units * mk.size // units, (pattern, s.path)


def test_straddle_error_names_layer():
  specs = models.layer_specs('mobilenet_v2', widths=MBV2_24, strides=(1, 2, 1), num_classes=10)
  params = fake_params(specs)
  c = lambda **kw: cfg('mobilenet_v2', MBV2_24, **kw)
  with pytest.raises(ValueError, match=r"block1/project_conv.*C_out=24.*N=16.*straddle_blocks"):
    masks_of(params, c(block_size_n=16), specs)
  with pytest.raises(ValueError, match=r"block0/project_conv.*C_out=16.*N=32"):
    masks_of(params, c(block_size_n=32), specs)
  m = masks_of(params, c(block_size_n=16, straddle_blocks=True), specs)
  k = np.asarray(m['block1']['project_conv']['kernel'])   # 48 -> 24: groups straddle inputs
  assert (~k).sum() == int(48 * 24 // 16 * 0.5) * 16
  with pytest.raises(ValueError, match='unknown mask pattern'):
    masks_of(params, c(pattern='kernel'), specs)
  with pytest.raises(ValueError, match="random_block.*needs rng"):
    layer_policy.model_masks(params, specs, 'mobilenet_v2', pattern='random_block')


def test_mask_options_names_every_method_field():
  c = cfg('mobilenet_v2', pattern='weight', block_size_n=8, sparsity=0.75, rearrange=False,
          straddle_blocks=True, prune_classifier=True, random_with_replacement=False)
  assert layer_policy.mask_options(c.method) == {
      'pattern': 'weight', 'n': 8, 'p': 0.75, 'rearrange': False, 'straddle_blocks': True,
      'prune_classifier': True, 'random_with_replacement': False}
  assert layer_policy.mask_options({'sparsity': 0.5}) == {'p': 0.5}


@pytest.fixture(scope='module', params=sorted(TINY))
def tiny(request):
  name = request.param
  widths, kw = TINY[name]
  model = models.get_model(name, 5, widths=widths, **kw)
  specs = models.layer_specs(name, widths=widths, input_hw=(32, 32), num_classes=5, **kw)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  v = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.PRNGKey(0), x)
  # non-trivial BN statistics so that a wrong permutation changes the output
  r = np.random.RandomState(0)
  jitter = lambda a: a * jnp.asarray(r.uniform(0.5, 1.5, a.shape), a.dtype)
  v = {'batch_stats': jax.tree.map(jitter, v['batch_stats']),
       'params': jax.tree_util.tree_map_with_path(
           lambda kp, a: a if kp[-1].key == 'kernel' else jitter(a) + 0.05, v['params'])}
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return name, widths, kw, specs, v, x, apply


def test_rearranged_layers_are_physically_permutable(tiny):
  """Property 4: every absorbable rearranged layer, permuted by its own π, same function."""
  name, widths, kw, specs, v, x, apply = tiny
  c = cfg(name, widths, kw, rearrange=True)
  m = masks_of(v['params'], c, specs)
  y_masked = apply({'params': common_masks.apply_masks(v['params'], m),
                    'batch_stats': v['batch_stats']}, x)
  params, stats, masks = v['params'], v['batch_stats'], m
  absorbed = 0
  for s in layer_policy.rearranged_layers(name, specs):
    plan = permute.absorb_plan(specs, s.path)
    if plan is None:
      assert s.role in ('classifier', 'shortcut'), s.path
      continue
    kernel = params
    for k in s.path:
      kernel = kernel[k]
    perm = np.asarray(onexn.rearrange_permutation(kernel['kernel']))
    params, stats, masks = permute.permute_pair(params, stats, masks, plan, perm)
    mk = masks
    for k in s.path:
      mk = mk[k]
    assert onexn.pruning.is_block_mask(mk['kernel'], 4)     # now N-consecutive
    absorbed += 1
  assert absorbed >= 3
  y = apply({'params': common_masks.apply_masks(params, masks), 'batch_stats': stats}, x)
  # atol 1e-5 relative to the logit scale (float32 summation order changes with the permutation)
  scale = float(np.abs(y_masked).max())
  np.testing.assert_allclose(y / scale, y_masked / scale, atol=1e-5)
  y_dense, y_dense0 = apply({'params': params, 'batch_stats': stats}, x), apply(v, x)
  scale = float(np.abs(y_dense0).max())
  np.testing.assert_allclose(y_dense / scale, y_dense0 / scale, atol=1e-5)
