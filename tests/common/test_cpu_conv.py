"""The zoo's conv layers on the CPU conv kernels (``common.models.layers.cpu_conv``): on by
default, switched off by the environment or a context, same losses and gradients as XLA's convs for
networks with 3x3 / 1x1 / strided / depthwise convs, and XLA's path when the kernels are absent."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import models
from common.models import layers as L
from xla_ext import conv as xc

needs_kernels = pytest.mark.skipif(not xc.available(),
                                   reason=f'conv kernels unavailable: {xc.load_error()}')

# Tiny versions of the quick experiments' networks: a ResNet with projection shortcuts (1x1 stride
# 2 convs), a VGG with conv biases, a MobileNet-V2 with depthwise convs at strides 1 and 2.
NETS = {
    'resnet20': dict(widths={'stem': 4, 'stages': [4, 8, 12], 'inner': [[4], [8], [12]]},
                     shortcut='projection'),
    'vgg_tiny': dict(widths=[4, 4, 6, 6, 8, 8]),
    'mobilenet_v2': dict(widths={'stem': 8, 'hidden': [8, 16, 24], 'out': [8, 8, 16],
                                 'last': 16}, strides=(1, 2, 1), stem_stride=2),
}


def _net(name):
  kw = dict(NETS[name])
  widths = kw.pop('widths')
  if name == 'resnet20':
    return models.get_model('resnet8', 10, widths=widths, **kw)
  return models.get_model(name, 10, widths=widths, **kw)


def _loss_and_grads(model, variables, x, y):
  def loss(params):
    logits, new = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                              train=True, mutable=['batch_stats'])
    onehot = jax.nn.one_hot(y, 10)
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * onehot, -1)), new
  (value, new), grads = jax.value_and_grad(loss, has_aux=True)(variables['params'])
  return value, grads, new['batch_stats']


def _lowered_text(name, enabled):
  model = _net(name)
  x = jnp.zeros((2, 16, 16, 3))
  with L.cpu_conv(enabled):
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    return jax.jit(lambda v: _loss_and_grads(model, v, x, jnp.zeros((2,), jnp.int32))).lower(
        variables).as_text()


def test_switch_reads_the_environment_and_the_context(monkeypatch):
  monkeypatch.delenv(L.CPU_CONV_ENV, raising=False)
  assert L.cpu_conv_enabled()
  for value, want in (('1', True), ('on', True), ('0', False), ('off', False), ('', True),
                      ('No', False)):
    monkeypatch.setenv(L.CPU_CONV_ENV, value)
    assert L.cpu_conv_enabled() is want
    with L.cpu_conv(not want):
      assert L.cpu_conv_enabled() is (not want)
  monkeypatch.setenv(L.CPU_CONV_ENV, 'maybe')
  with pytest.raises(ValueError, match=r"COMPRESS_JAX_CPU_CONV='maybe': allowed values"):
    L.cpu_conv_enabled()
  with pytest.raises(ValueError, match=r"cpu_conv\(enabled\) takes a bool; got 'yes'"):
    with L.cpu_conv('yes'):
      pass


def _forward_text():
  model = _net('vgg_tiny')
  x = jnp.zeros((2, 16, 16, 3))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  return jax.jit(lambda v: model.apply(v, x, train=False)).lower(variables).as_text()


@needs_kernels
def test_on_by_default_and_off_when_asked(monkeypatch):
  monkeypatch.delenv(L.CPU_CONV_ENV, raising=False)
  off = _lowered_text('mobilenet_v2', False)
  on = _lowered_text('mobilenet_v2', True)
  assert 'xla_ext_conv' not in off and 'stablehlo.convolution' in off
  for target in ('fwd', 'bwd_data', 'bwd_weights'):
    assert xc.TARGETS[target] in on
  # Every conv of the network, depthwise included, takes the kernels on CPU.
  assert 'stablehlo.convolution' not in on
  assert xc.TARGETS['fwd'] in _forward_text()          # nothing set: on
  monkeypatch.setenv(L.CPU_CONV_ENV, '0')
  text = _forward_text()
  assert 'xla_ext_conv' not in text and 'stablehlo.convolution' in text


@needs_kernels
@pytest.mark.parametrize('name', ['resnet20', 'mobilenet_v2'])   # vgg_tiny: lowering test only
def test_losses_and_gradients_equal_xla(name):
  model = _net(name)
  rs = np.random.RandomState(0)
  x = jnp.asarray(rs.randn(3, 16, 16, 3), jnp.float32)
  y = jnp.asarray(rs.randint(0, 10, 3), jnp.int32)
  variables = model.init(jax.random.PRNGKey(1), x, train=False)
  results = {}
  for enabled in (False, True):
    with L.cpu_conv(enabled):
      results[enabled] = jax.jit(lambda v: _loss_and_grads(model, v, x, y))(variables)
  (l0, g0, b0), (l1, g1, b1) = results[False], results[True]
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  for a, b in zip(jax.tree.leaves((g1, b1)), jax.tree.leaves((g0, b0))):
    scale = max(float(np.abs(b).max()), 1e-3)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale)


def test_unavailable_kernels_warn_and_fall_back(monkeypatch):
  monkeypatch.setattr(xc, '_lib', None)
  monkeypatch.setattr(xc, '_load_error', 'no oneDNN here')
  monkeypatch.setattr(L, '_cpu_conv_warned', False)
  monkeypatch.delenv(L.CPU_CONV_ENV, raising=False)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    text = _forward_text()                              # the default: XLA, silently
  assert 'xla_ext_conv' not in text and 'stablehlo.convolution' in text
  assert not any('no oneDNN here' in str(w.message) for w in caught)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    text = _lowered_text('vgg_tiny', True)              # asked for: XLA, with a warning
  assert 'xla_ext_conv' not in text and 'stablehlo.convolution' in text
  assert any('no oneDNN here' in str(w.message) for w in caught)
