"""Weight inheritance (zyxxmu/White-Box ``cifar.py`` / ``imagenet.py: build_*_pruned_model``):
the compact model equals the masked full model where the fold is exact."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import whitebox as wb
from common import models

X = jax.random.normal(jax.random.PRNGKey(9), (4, 32, 32, 3))


def _randomise(variables, seed):
  """Random BN affine / statistics so that eval-mode BN is not the identity."""
  rng = np.random.default_rng(seed)
  flat_p = traverse_util.flatten_dict(jax.device_get(variables['params']))
  for k, v in flat_p.items():
    if k[-1] == 'scale':
      flat_p[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
    elif k[-1] == 'bias':
      flat_p[k] = rng.normal(0, 0.2, v.shape).astype(np.float32)
  flat_s = traverse_util.flatten_dict(jax.device_get(variables['batch_stats']))
  for k, v in flat_s.items():
    flat_s[k] = (rng.normal(0, 0.2, v.shape) if k[-1] == 'mean'
                 else rng.uniform(0.5, 2.0, v.shape)).astype(np.float32)
  return {'params': traverse_util.unflatten_dict(flat_p),
          'batch_stats': traverse_util.unflatten_dict(flat_s)}


def _setup(name, widths, kw, target, seed=0, positive=True):
  plan = wb.Plan(name, widths)
  full = models.get_model(name, 10, widths=widths, **kw)
  v = _randomise(full.init(jax.random.PRNGKey(seed), X[:1], train=False), seed)
  rng = np.random.default_rng(seed + 1)
  lo = 0.05 if positive else -1.5
  masks = {m.name: rng.uniform(lo, 1.0, (10, m.width)).astype(np.float32) for m in plan.masks}
  pr = wb.prune(plan, masks, target, input_hw=(32, 32), num_classes=10, model_kwargs=kw,
                seed=seed)
  compact = models.get_model(name, 10, widths=pr.widths, **kw)
  return plan, full, v, masks, pr, compact


def _indicator(width, keep):
  z = np.zeros(width, np.float32)
  z[keep] = 1.0
  return z


def test_vgg_post_relu_fold_is_exact():
  name, kw = 'vgg_tiny', {}
  plan, full, v, masks, pr, compact = _setup(name, None, kw, 0.5)
  cv = wb.compact_variables(plan, pr, v['params'], v['batch_stats'], compact, (32, 32, 3),
                            jax.random.PRNGKey(1))
  gates = {}
  for i, m in enumerate(plan.masks):
    if i in pr.keep:    # kept channels scaled by m = sum_k M / 2, pruned ones zero
      gates[m.site] = _indicator(m.width, pr.keep[i]) * wb.folded_scales(masks[m.name])
    else:               # the random last conv: kept channels copied unscaled
      gates[m.site] = _indicator(m.width, pr.random_idx)
  tap = lambda s, h: h * gates[s] if s in gates else h
  ref = full.apply(v, X, train=False, tap=tap)
  out = compact.apply(cv, X, train=False)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=1e-5)
  assert pr.widths != models.default_widths(name)


def test_negative_folded_scales_are_counted():
  plan, full, v, masks, pr, compact = _setup('vgg_tiny', None, {}, 0.5, seed=2, positive=False)
  rep = wb.layer_report(plan, pr)
  neg = sum(int((wb.folded_scales(masks[plan.masks[i].name])[k] < 0).sum())
            for i, k in pr.keep.items())
  assert neg > 0 and rep['folded_scales']['negative_total'] == neg


def _scaled_full(v, scales):
  """The full model with BN gamma/beta multiplied by ``scales[bn path]``."""
  flat = traverse_util.flatten_dict(jax.device_get(v['params']))
  for path, s in scales.items():
    for leaf in ('scale', 'bias'):
      flat[path + (leaf,)] = flat[path + (leaf,)] * s
  return {'params': traverse_util.unflatten_dict(flat), 'batch_stats': v['batch_stats']}


def test_resnet_cifar_surgery_matches_bn_scaled_full_model():
  name = 'resnet20'
  plan, full, v, masks, pr, compact = _setup(name, None, {}, 0.3, positive=False)
  cv = wb.compact_variables(plan, pr, v['params'], v['batch_stats'], compact, (32, 32, 3),
                            jax.random.PRNGKey(1))
  m = [wb.folded_scales(masks[x.name]) for x in plan.masks]
  scales, zero = {('bn1',): m[0]}, {}
  for b, (s, j) in enumerate([(s, j) for s in range(1, 4) for j in range(3)]):
    p = f'layer{s}_{j}'
    scales[(p, 'bn1')] = m[2 * b + 1]
    scales[(p, 'bn2')] = m[2 * b + 2]
    zero[f'{p}/act1'] = _indicator(plan.masks[2 * b + 1].width, pr.keep[2 * b + 1])
  ref = full.apply(_scaled_full(v, scales), X, train=False,
                   tap=lambda s, h: h * zero[s] if s in zero else h)
  out = compact.apply(cv, X, train=False)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=1e-5)
  dense = plan.widths
  assert pr.widths['stem'] == dense['stem'] and pr.widths['stages'] == dense['stages']
  assert cv['params']['layer3_2']['conv2']['kernel'].shape[-1] == dense['stages'][2]


R50 = {'stem': 8, 'stages': [16, 32, 64, 128], 'conv1': [[4] * 3, [8] * 4, [16] * 6, [8] * 3],
       'conv2': [[4] * 3, [8] * 4, [16] * 6, [8] * 3]}


@pytest.fixture(scope='module')
def r50():
  return _setup('resnet50', R50, {}, 0.3)


def test_resnet50_exact_with_inherited_downsample(r50):
  plan, full, v, masks, pr, compact = r50
  cv = wb.compact_variables(plan, pr, v['params'], v['batch_stats'], compact, (32, 32, 3),
                            jax.random.PRNGKey(1), fresh_shortcuts=False)
  gates = {m.site: _indicator(m.width, pr.keep[i]) * wb.folded_scales(masks[m.name])
           for i, m in enumerate(plan.masks) if m.site is not None}
  ref = np.asarray(full.apply(v, X, train=False,
                              tap=lambda s, h: h * gates[s] if s in gates else h))
  out = compact.apply(cv, X, train=False)
  # 16 random-BN bottlenecks give logits of size ~1e3: float32 summation order (narrower convs)
  # then differs by ~2e-5 relative, so the tolerance is 1e-5 of the logit scale.
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
  assert pr.widths['stages'] == R50['stages'] and pr.widths['stem'] == R50['stem']


def test_resnet50_downsample_fresh_by_default(r50):
  plan, full, v, masks, pr, compact = r50
  rng = jax.random.PRNGKey(1)
  cv = wb.compact_variables(plan, pr, v['params'], v['batch_stats'], compact, (32, 32, 3), rng)
  init = compact.init(rng, jnp.zeros((1, 32, 32, 3)), train=False)
  for mod in ('downsample_conv', 'downsample_bn'):
    got = traverse_util.flatten_dict(cv['params']['layer2_0'][mod])
    fresh = traverse_util.flatten_dict(jax.device_get(init['params']['layer2_0'][mod]))
    old = traverse_util.flatten_dict(jax.device_get(v['params']['layer2_0'][mod]))
    for k in got:
      np.testing.assert_array_equal(got[k], fresh[k])
      assert not np.array_equal(got[k], old[k]) or mod == 'downsample_bn'
  # bn3 (the block output) is copied unscaled.
  np.testing.assert_array_equal(cv['params']['layer1_0']['bn3']['scale'],
                                v['params']['layer1_0']['bn3']['scale'])
