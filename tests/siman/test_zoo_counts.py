"""Sizes and costs of the SiMaN BNN zoo (siman/models.py, lmbxmu/SiMaN ``models_*``): parameter
counts of every published model against closed forms written out here, the ImageNet BN gamma init, and
the op / bit accounting of siman.accounting. (Binary-layer behaviour, decay sets and alpha init
are in test_models.py.)"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import models
from siman import accounting


def shapes(name, num_classes=10, hw=32):
  m = models.get_model(name, num_classes)
  return jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, hw, hw, 3)),
                                       train=False))


def n_params(v):
  return sum(int(x.size) for x in jax.tree.leaves(v['params']))


def test_resnet20_exact_count_and_parameter_free_option_a_shortcut():
  conv = 3 * 16 * 9 + 6 * 16 * 16 * 9 + (16 * 32 + 5 * 32 * 32) * 9 + (32 * 64 + 5 * 64 * 64) * 9
  per_channel = 6 * (16 + 32 + 64)              # one alpha / one PReLU slope per block conv
  bn2d = 2 * 16 + 2 * per_channel
  expected = conv + per_channel + bn2d + per_channel + 2 * 64 + (64 * 10 + 10)
  v = shapes('siman_resnet20')
  assert n_params(v) == expected == 271194
  assert set(v['params']['layer2_0']) == {'conv1', 'bn1', 'nonlinear1', 'conv2', 'bn2',
                                          'nonlinear2'}          # option A: no shortcut params


def test_resnet18_cifar_count_and_binary_shortcut():
  conv, alpha, bn, cin = 3 * 64 * 9, 0, 2 * 64, 64
  for c in [64, 128, 256, 512]:
    conv += (cin * c + 3 * c * c) * 9
    alpha += 4 * c
    bn += 4 * 2 * c
    if cin != c:                                 # binarized 1x1 shortcut + BN
      conv += cin * c
      alpha += c
      bn += 2 * c
    cin = c
  v = shapes('siman_resnet18_cifar')
  assert n_params(v) == conv + alpha + bn + 2 * 512 + 512 * 10 + 10
  sc = v['params']['layer2_0']['shortcut_0']
  assert sc['kernel'].shape == (1, 1, 64, 128) and sc['alpha'].shape == (128,)


def test_vgg_small_count():
  w = [128, 128, 256, 256, 512, 512]
  conv = 3 * 128 * 9 + sum(a * b * 9 for a, b in zip(w[:-1], w[1:]))
  # alphas of conv1-5, BN of all six, PReLU of all six, Linear 512*4*4 -> 10 (no BN1d).
  expected = conv + sum(w[1:]) + 2 * sum(w) + sum(w) + 512 * 16 * 10 + 10
  assert n_params(shapes('siman_vgg_small')) == expected == 4663562


@pytest.mark.parametrize('name,blocks,torchvision', [('siman_resnet18', (2, 2, 2, 2), 11689512),
                                                     ('siman_resnet34', (3, 4, 6, 3), 21797672)])
def test_imagenet_counts_equal_torchvision_plus_alpha_prelu_bn1d(name, blocks, torchvision):
  per_channel = sum(2 * n * c for n, c in zip(blocks, [64, 128, 256, 512]))
  v = shapes(name, 1000, 224)
  assert n_params(v) == torchvision + 2 * per_channel + 2 * 512
  assert 'alpha' not in v['params']['layer2_0']['downsample_0']       # FP 1x1 downsample


def test_imagenet_bn2d_gamma_is_1e8_and_bn1d_gamma_is_1():
  # Collect every BatchNorm's scale initialiser while tracing init (no compile), then evaluate them.
  m = models.get_model('siman_resnet18', 5, widths={'stem': 4, 'stages': [4, 8, 8, 8]})
  inits = {}

  def spy(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm):
      inits['/'.join(context.module.path)] = context.module.scale_init
    return next_fun(*args, **kwargs)

  def init():
    with nn.intercept_methods(spy):
      return m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)

  jax.eval_shape(init)
  assert len(inits) == 1 + 8 * 2 + 3 + 1        # stem, block BNs, downsample BNs, BN1d
  for path, fn in inits.items():
    gamma = np.asarray(fn(jax.random.PRNGKey(0), (3,), jnp.float32))
    np.testing.assert_array_equal(gamma, 1.0 if path == 'bn2' else np.float32(1e-8))


def test_op_counts_and_bits_of_resnet20():
  m = models.get_model('siman_resnet20', 10)
  counts, table = accounting.op_counts(m, (32, 32, 3))
  bops = (6 * 32 * 32 * 16 * 16 * 9 + 16 * 16 * 32 * 9 * (16 + 5 * 32)
          + 8 * 8 * 64 * 9 * (32 + 5 * 64))
  assert counts['bops'] == bops
  stem = 32 * 32 * 16 * 27
  bn = 2 * 32 * 32 * 16 * 7 + 2 * 16 * 16 * 32 * 6 + 2 * 8 * 8 * 64 * 6 + 2 * 64
  assert counts['fp_flops'] == stem + bn + 64 * 10
  assert counts['ops'] == counts['fp_flops'] + bops // 64
  assert sum(r['binary'] for r in table) == 18
  bits = accounting.bits_summary(shapes('siman_resnet20')['params'])
  assert bits['binary_weights'] == 267696 - 432          # every conv weight but the stem's
  assert bits['model_bits'] == 267264 + 32 * (271194 - 267264)
  assert bits['memory_saving'] == pytest.approx(32 * 271194 / bits['model_bits'])
