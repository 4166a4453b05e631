"""Sparse export == masked dense model (atol 1e-4) through the xla_ext kernel.

MobileNet-V2 (rearranged expansions and last 1x1 absorbed physically) and ResNet-50 with the
released code's fc pruning (the rearranged downsample convs and fc cannot be absorbed: their
outputs are gathered back) and a 3x3 conv2 (im2col path), at narrow widths.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import onexn
import xla_ext
from common import masks as common_masks
from common import models
from onexn import layer_policy

R50_TINY = {'stem': 8, 'stages': [16, 16, 32, 32], 'conv1': [[8] * 3, [8] * 4, [8] * 6, [8] * 3],
            'conv2': [[8] * 3, [8] * 4, [8] * 6, [8] * 3]}
MBV2_TINY = {'stem': 16, 'hidden': [16, 48, 72], 'out': [16, 24, 24], 'last': 32}
CASES = {
    'mobilenet_v2': (MBV2_TINY, {'strides': (1, 2, 1)}, {}),
    'resnet50': (R50_TINY, {}, {'prune_classifier': True}),
}


def config(name, widths, kwargs, n, p, **method):
  return ml_collections.ConfigDict({
      'seed': 0, 'model': {'name': name, 'widths': widths, 'kwargs': kwargs, 'num_classes': 8},
      'method': dict(dict(pattern='block', block_size_n=n, sparsity=p, rearrange=True), **method)})


@pytest.fixture(scope='module', params=sorted(CASES))
def net(request):
  name = request.param
  widths, kw, method = CASES[name]
  model = models.get_model(name, 8, widths=widths, **kw)
  specs = models.layer_specs(name, widths=widths, input_hw=(32, 32), num_classes=8, **kw)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 32, 32, 3))
  v = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.PRNGKey(0), x)
  r = np.random.RandomState(0)
  params = jax.tree_util.tree_map_with_path(
      lambda kp, a: a if kp[-1].key == 'kernel' else a + jnp.asarray(
          r.uniform(-0.2, 0.2, a.shape), a.dtype), v['params'])
  ref = jax.jit(lambda v, x: model.apply(v, x, train=False))
  train_apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))

  def calibrated(masks):
    """BN statistics of the masked model on x (running = 0.9 old + 0.1 batch, solved for the
    batch moments), as a fine-tuned model has: unit-scale activations, so that float32 rounding
    is not amplified by near-dead channels and atol 1e-4 is meaningful."""
    _, upd = train_apply({'params': common_masks.apply_masks(params, masks),
                          'batch_stats': v['batch_stats']}, x)
    stats = jax.tree.map(lambda new, old: (new - 0.9 * old) / 0.1, upd['batch_stats'],
                         v['batch_stats'])
    # ResNet-50's last stage sees 1x1 maps of 3 images: floor the variances so that no channel
    # is near-dead (a 1/sqrt(eps) gain would amplify rounding, not test the export)
    return jax.tree_util.tree_map_with_path(
        lambda kp, a: a + 0.1 if kp[-1].key == 'var' else a, stats)
  return name, model, specs, params, calibrated, x, ref, method


@pytest.mark.parametrize('n,p', [(4, 0.5), (8, 0.75)])
def test_export_matches_masked_dense_model(net, n, p):
  name, model, specs, params, calibrated, x, ref, method = net
  c = config(name, CASES[name][0], CASES[name][1], n, p, **method)
  masks = onexn.model_masks(params, specs, c.model.name, **onexn.mask_options(c.method))
  stats = calibrated(masks)
  sm = onexn.export_sparse(params, stats, masks, c.model, n=n, specs=specs, model=model)
  y_ref = ref({'params': common_masks.apply_masks(params, masks), 'batch_stats': stats}, x)
  assert float(jnp.abs(y_ref).max()) > 0.1           # the comparison is not between zeros
  np.testing.assert_allclose(sm(x), y_ref, atol=1e-4, rtol=1e-4)
  # every pruned masked layer runs through the block-sparse kernel at the right density
  pruned = [s for s in layer_policy.masked_layers(specs)
            if s.role != 'classifier' or method.get('prune_classifier')]
  assert sorted(sm.packed) == sorted('/'.join(s.path) for s in pruned)
  for pk in sm.packed.values():
    assert pk.density == pytest.approx(1 - p, abs=0.2)
  # rearranged layers: permuted physically where one layer reads them, else gathered back, unless
  # their mask happens to be N-consecutive in the original order already
  rearranged = [tuple(s.path) for s in layer_policy.rearranged_layers(name, specs)
                if tuple(s.path) in [tuple(t.path) for t in pruned]]
  assert set(sm.absorbed) | set(sm.gathers) <= set(rearranged)
  for path in set(rearranged) - set(sm.absorbed) - set(sm.gathers):
    mk = masks
    for k in path:
      mk = mk[k]
    assert onexn.pruning.is_block_mask(mk['kernel'], n)
  if name == 'mobilenet_v2':
    assert len(sm.absorbed) == 3 and not sm.gathers
  else:
    assert ('layer2_0', 'downsample_conv') in sm.gathers
    if n < 8:   # at N = 8 the 8-wide inner convs are one block: nothing to rearrange
      assert ('layer1_0', 'conv1') in sm.absorbed and ('layer1_0', 'conv2') in sm.absorbed
  if xla_ext.available():
    hlo = jax.jit(sm._fn).lower(sm.variables, sm.weights, sm.packed, sm.bias, x).as_text()
    assert xla_ext.TARGET_NAME in hlo


def test_gather_fallback_equals_absorbed(net):
  """absorb=False packs every rearranged layer with perm (output gather): same function."""
  name, model, specs, params, calibrated, x, ref, method = net
  c = config(name, CASES[name][0], CASES[name][1], 4, 0.5, **method)
  masks = onexn.model_masks(params, specs, c.model.name, **onexn.mask_options(c.method))
  stats = calibrated(masks)
  a = onexn.export_sparse(params, stats, masks, c.model, n=4, specs=specs, model=model)
  g = onexn.export_sparse(params, stats, masks, c.model, n=4, specs=specs, model=model,
                          absorb=False)
  assert not g.absorbed and len(g.gathers) == len(a.gathers) + len(a.absorbed)
  np.testing.assert_allclose(g(x), a(x), atol=1e-4, rtol=1e-4)


def test_unstructured_masks_stay_dense(net):
  name, model, specs, params, calibrated, x, ref, method = net
  c = config(name, CASES[name][0], CASES[name][1], 4, 0.5, **dict(method, pattern='weight'))
  masks = onexn.model_masks(params, specs, c.model.name, **onexn.mask_options(c.method))
  stats = calibrated(masks)
  sm = onexn.export_sparse(params, stats, masks, c.model, n=4, specs=specs, model=model)
  assert not sm.packed and all('not a 1x4 block mask' in r or r == 'nothing pruned'
                               for r in sm.dense.values())
  y_ref = ref({'params': common_masks.apply_masks(params, masks), 'batch_stats': stats}, x)
  np.testing.assert_allclose(sm(x), y_ref, atol=1e-4, rtol=1e-4)


def test_end_to_end_latency_rows():
  """The benchmark entry point (``onexn.bench`` calls it at 224x224): fields and
  exactness on a narrow model; timings are reported, not asserted (shared CPUs)."""
  rows = onexn.end_to_end_latency(
      (0.5, 0.9), n=4, widths=MBV2_TINY, input_hw=(32, 32), num_classes=10, repeats=2,
      model_kwargs={'strides': (1, 2, 1)})
  assert [r['p'] for r in rows] == [0.5, 0.9]
  for r in rows:
    assert r['max_rel_diff'] < 1e-5
    assert r['sparse_layers'] == 6 and r['absorbed'] == 3 and r['gathered'] == 0
    for k in ('dense_ms', 'sparse_ms', 'zoo_dense_ms', 'pruned_layers_dense_ms',
              'pruned_layers_sparse_ms'):
      assert r[k] > 0
    assert r['speedup'] == pytest.approx(r['dense_ms'] / r['sparse_ms'])
    # the baseline is the faster dense graph; the sparse time is the channels-first graph's
    assert r['dense_ms'] == min(r['dense_nhwc_ms'], r['dense_cf_ms'])
    assert r['sparse_ms'] == r['sparse_cf_ms']


def test_end_to_end_latency_without_channels_first_graph():
  """Models other than MobileNet-V1/V2 have no channels-first graph: NHWC graphs only."""
  rows = onexn.end_to_end_latency((0.5,), n=4, model_name='resnet20', input_hw=(32, 32),
                                  num_classes=10, repeats=1, per_layer=False)
  r = rows[0]
  assert 'dense_cf_ms' not in r and 'sparse_cf_ms' not in r
  assert r['dense_ms'] == r['dense_nhwc_ms'] and r['sparse_ms'] == r['sparse_nhwc_ms']
  assert r['max_rel_diff'] < 1e-5 and r['sparse_layers'] > 0
