"""Channels-first forward of a 1xN export == the masked zoo model (atol 1e-4).

MobileNet-V2 ImageNet layout (no expansion in block 0, identity / no shortcuts, stride-2 stem),
the CIFAR variant (identity, 1x1-conv and no shortcuts, stride-1 stem) and MobileNet-V1, at narrow
widths, with 1x4 masks at p = 0.5 (rearranged and plain), exported sparse and all dense. The
reference is the zoo's own ``model.apply`` in eval mode on the masked params (NHWC, BN unfolded,
lax convolutions), so layout, padding, BN folding and epilogue order are all checked against code
this module does not share.
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
from onexn import channels_first

CASES = {
    # block0: identity (no expansion), block1: stride 2 (none), block2: identity
    'mobilenet_v2': ({'stem': 16, 'hidden': [16, 48, 72], 'out': [16, 24, 24], 'last': 32},
                     {'strides': (1, 2, 1)}),
    # block0: identity, block1: 1x1-conv shortcut, block2: stride 2 (none), block3: identity
    'mobilenet_v2_cifar': ({'stem': 16, 'hidden': [32, 48, 48, 48], 'out': [16, 24, 24, 24],
                            'last': 32}, {'strides': (1, 1, 2, 1)}),
    'mobilenet_v1': ([16, 32, 64, 64], {'strides': (1, 2, 1)}),
}
NUM_CLASSES = 8


def config(name, p, rearrange):
  widths, kw = CASES[name]
  return ml_collections.ConfigDict({
      'seed': 0, 'model': {'name': name, 'widths': widths, 'kwargs': kw},
      'method': {'pattern': 'block', 'block_size_n': 4, 'sparsity': p, 'rearrange': rearrange}})


@pytest.fixture(scope='module', params=sorted(CASES))
def net(request):
  """Model, perturbed params, masks and BN statistics calibrated on x (unit-scale activations,
  as a fine-tuned model has, so that atol 1e-4 is meaningful), and the zoo reference."""
  name = request.param
  widths, kw = CASES[name]
  model = models.get_model(name, NUM_CLASSES, widths=widths, **kw)
  specs = models.layer_specs(name, widths=widths, input_hw=(32, 32), num_classes=NUM_CLASSES, **kw)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  v = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.PRNGKey(0), x)
  r = np.random.RandomState(0)
  params = jax.tree_util.tree_map_with_path(
      lambda kp, a: a if kp[-1].key == 'kernel' else a + jnp.asarray(
          r.uniform(-0.2, 0.2, a.shape), a.dtype), v['params'])
  ref_fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  train_apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  out = {}
  for rearrange in (True, False):
    c = config(name, 0.5, rearrange)
    masks = onexn.model_masks(params, specs, c.model.name, **onexn.mask_options(c.method))
    masked = common_masks.apply_masks(params, masks)
    _, upd = train_apply({'params': masked, 'batch_stats': v['batch_stats']}, x)
    stats = jax.tree.map(lambda new, old: (new - 0.9 * old) / 0.1, upd['batch_stats'],
                         v['batch_stats'])
    ref = ref_fn({'params': masked, 'batch_stats': stats}, x)
    out[rearrange] = (c, masks, stats, ref)
  return name, model, specs, params, x, out


def export(net, rearrange, **kw):
  name, model, specs, params, x, out = net
  c, masks, stats, ref = out[rearrange]
  sm = onexn.export_sparse(params, stats, masks, c.model, n=4, num_classes=NUM_CLASSES,
                           specs=specs, model=model, **kw)
  return sm, ref


def assert_close(y, ref):
  scale = float(jnp.abs(ref).max())
  assert scale > 0.1                                 # the comparison is not between zeros
  assert y.shape == ref.shape
  np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize('rearrange', [True, False])
def test_sparse_cf_equals_masked_zoo(net, rearrange):
  sm, ref = export(net, rearrange)
  name, *_ = net
  assert len(sm.packed) >= 3                         # the 1x1 convs run through the kernel
  if rearrange and name.startswith('mobilenet_v2'):
    assert sm.absorbed                               # the permutation is physical in the weights
  cfm = channels_first.ChannelsFirstModel(sm)
  x = net[4]
  assert_close(cfm(x), ref)
  assert_close(cfm(x[:1]), ref[:1])                  # batch 1: the 2-D GEMM path
  if xla_ext.available():
    hlo = cfm._fn.lower(cfm.weights, cfm.packed, cfm.bias, x).as_text()
    assert xla_ext.TARGET_NAME_CF in hlo


def test_dense_cf_equals_masked_zoo(net):
  sm, ref = export(net, True, use_sparse_kernel=False)
  assert not sm.packed
  cfm = channels_first.ChannelsFirstModel(sm)
  x = net[4]
  assert_close(cfm(x), ref)
  assert_close(cfm(x[:1]), ref[:1])


def test_xla_backend_equals_auto(net):
  sm, ref = export(net, True)
  x = net[4]
  auto = channels_first.ChannelsFirstModel(sm)(x)
  fallback = channels_first.ChannelsFirstModel(sm, backend='xla')
  if xla_ext.available():
    hlo = fallback._fn.lower(fallback.weights, fallback.packed, fallback.bias, x).as_text()
    assert xla_ext.TARGET_NAME_CF not in hlo
  np.testing.assert_allclose(np.asarray(fallback(x)), np.asarray(auto), rtol=1e-4,
                             atol=1e-4 * float(jnp.abs(auto).max()))
  assert_close(fallback(x), ref)


@pytest.mark.parametrize('backend', ['xla', 'ffi'])
@pytest.mark.parametrize('hw,stride', [((7, 7), 1), ((7, 7), 2), ((6, 5), 2), ((5, 6), 1),
                                       ((8, 8), 2), ((1, 1), 1), ((1, 3), 2), ((9, 35), 1),
                                       ((10, 37), 2)])
def test_depthwise3x3_equals_lax(hw, stride, backend):
  """Padded-width layout helpers on odd / even / non-square maps against lax's grouped conv with
  the zoo's padding (1, 1)."""
  c = 5
  x = jax.random.normal(jax.random.PRNGKey(0), (2, c) + hw)
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 1, c))
  b = jax.random.normal(jax.random.PRNGKey(2), (c,))
  want = jax.lax.conv_general_dilated(x, k, (stride, stride), ((1, 1), (1, 1)),
                                      dimension_numbers=('NCHW', 'HWIO', 'NCHW'),
                                      feature_group_count=c,
                                      precision=jax.lax.Precision.HIGHEST) + b[:, None, None]
  want = jnp.clip(want, 0, 6)
  xp = channels_first.to_padded_width(x)
  # junk columns may hold anything: poison them to check that nothing reads them
  junk = ~channels_first._valid_columns(hw)
  xp = jnp.where(jnp.asarray(junk), 1e6, xp)
  k9 = jnp.transpose(k[:, :, 0, :], (2, 0, 1)).reshape(c, 9)
  y, out_hw = channels_first.depthwise3x3(xp, k9, b, hw, stride, 'relu6', backend=backend)
  assert out_hw == want.shape[2:]
  np.testing.assert_allclose(channels_first.from_padded_width(y, out_hw), want, atol=1e-5)
  if backend == 'ffi':  # the kernel defines the output's junk columns as zeros
    assert np.all(np.asarray(y)[..., ~channels_first._valid_columns(out_hw)] == 0)


def test_unsupported_model_raises():
  model = models.get_model('resnet20', 10)
  with pytest.raises(ValueError, match='MobileNetV2'):
    channels_first.layer_plan(model)


def test_bad_backend_raises(net):
  sm, _ = export(net, True)
  with pytest.raises(ValueError, match='backend'):
    channels_first.ChannelsFirstModel(sm, backend='gpu')
