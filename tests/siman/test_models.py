"""The SiMaN BNN zoo (``siman.models``, lmbxmu/SiMaN ``models_cifar/``, ``models_imagenet/``):
binary layers compute with {-1, +1} weights and activations only, the stem / classifier (and
ImageNet downsample) stay full precision, the weight-decay groups are exactly the official sets
(written out by hand here, not derived from the rule), alpha starts at ~0.5 / sqrt(N)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.models import bnn_layers
from common import models
from common import transforms
from siman import siman

TINY = {
    'siman_resnet20': {'stem': 4, 'stages': [4, 8, 16]},
    'siman_resnet18_cifar': {'stem': 4, 'stages': [4, 8, 8, 16]},
    'siman_resnet18': {'stem': 4, 'stages': [4, 8, 8, 16]},
    'siman_resnet34': {'stem': 4, 'stages': [4, 8, 8, 16]},
    'siman_vgg_small': [4, 4, 8, 8, 8, 8],
}
BLOCKS = {'siman_resnet20': (3, 3, 3), 'siman_resnet18_cifar': (2, 2, 2, 2),
          'siman_resnet18': (2, 2, 2, 2), 'siman_resnet34': (3, 4, 6, 3)}
X = jnp.asarray(np.random.RandomState(0).randn(2, 32, 32, 3), jnp.float32)


def shapes(name):
  model = models.get_model(name, 10, widths=TINY[name])
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), X, train=False))
  return v['params']


def paths_of(tree, pred):
  return {transforms.path_str(p) for p, leaf in transforms.select(tree, lambda p, l: True).items()
          if pred(p, leaf)}


# --- exact weight-decay sets, written out per model -----------------------------------------------


def expected_no_decay(name):
  """``main.py``'s wd = 0 group: the block conv1/conv2 kernels and alphas of every residual block;
  VGG conv1..5."""
  if name == 'siman_vgg_small':
    return {f'conv{i}/{leaf}' for i in range(1, 6) for leaf in ('kernel', 'alpha')}
  return {f'layer{s + 1}_{b}/conv{c}/{leaf}' for s, n in enumerate(BLOCKS[name])
          for b in range(n) for c in (1, 2) for leaf in ('kernel', 'alpha')}


@pytest.mark.parametrize('name', sorted(TINY))
def test_decay_mask_is_exactly_the_official_sets(name):
  params = shapes(name)
  mask = siman.decay_mask(params, siman.decay_rule_for(name))
  no_decay = paths_of(mask, lambda p, m: not m)
  assert no_decay == expected_no_decay(name)
  decayed = paths_of(mask, lambda p, m: m)
  # Decayed by the name rule: stem conv, BN, PReLU slopes, BN1d, classifier, FP downsample,
  # the CIFAR ResNet-18 binarized shortcut.
  must = {'siman_resnet20': ['conv1/kernel', 'bn1/scale', 'bn2/scale', 'linear/kernel',
                             'linear/bias', 'layer1_0/nonlinear1/negative_slope',
                             'layer1_0/bn1/bias'],
          'siman_resnet18_cifar': ['conv1/kernel', 'layer2_0/shortcut_0/kernel',
                                   'layer2_0/shortcut_0/alpha', 'layer2_0/shortcut_1/scale',
                                   'linear/kernel'],
          'siman_resnet18': ['conv1/kernel', 'layer2_0/downsample_0/kernel',
                             'layer2_0/downsample_1/scale', 'fc/kernel', 'fc/bias',
                             'layer4_1/nonlinear2/negative_slope'],
          'siman_resnet34': ['conv1/kernel', 'layer3_0/downsample_0/kernel', 'fc/kernel'],
          'siman_vgg_small': ['conv0/kernel', 'bn0/scale', 'bn5/bias',
                              'nonlinear3/negative_slope', 'fc/kernel', 'fc/bias']}[name]
  assert set(must) <= decayed
  all_paths = paths_of(params, lambda p, l: True)
  assert decayed | no_decay == all_paths and not decayed & no_decay


def test_decay_mask_bad_rule():
  with pytest.raises(ValueError, match='resnet'):
    siman.decay_mask(shapes('siman_resnet20'), 'mobilenet')


# --- which layers are binary ----------------------------------------------------------------------


@pytest.mark.parametrize('name', sorted(TINY))
def test_stem_and_classifier_stay_full_precision(name):
  params = shapes(name)
  binary = {transforms.path_str(p[:-1]) for p in siman.binary_kernel_paths(params)}
  if name == 'siman_vgg_small':
    assert binary == {f'conv{i}' for i in range(1, 6)}
    return
  expect = {f'layer{s + 1}_{b}/conv{c}' for s, n in enumerate(BLOCKS[name]) for b in range(n)
            for c in (1, 2)}
  if name == 'siman_resnet18_cifar':   # the binarized 1x1 shortcut convs (resnet2.py shortcut)
    expect |= {f'layer{s}_0/shortcut_0' for s in (2, 3, 4)}
  assert binary == expect
  assert 'conv1' not in binary and 'linear' not in binary and 'fc' not in binary
  assert not any('downsample' in b for b in binary)   # ImageNet downsample is FP


# --- binary layers see only +-1 -------------------------------------------------------------------


def random_variables(model, seed=1):
  """Variables of ``model`` with NumPy-random values (no init compile: the CPU is shared)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), X, train=False))
  r = np.random.RandomState(seed)

  def fill(path, s):
    name = transforms.path_tuple(path)[-1]
    if name == 'var':
      return np.ones(s.shape, np.float32)
    if name == 'mean':
      return np.zeros(s.shape, np.float32)
    x = r.randn(*s.shape).astype(np.float32) * 0.1
    return np.abs(x) + 0.05 if name in ('alpha', 'scale') else x
  return jax.tree_util.tree_map_with_path(fill, shapes)


class Call:
  """One intercepted conv / dense call: the module's static facts and its traced arrays."""

  def __init__(self, binary, name, strides):
    self.binary, self.name, self.strides = binary, name, strides


@pytest.fixture(scope='module')
def captured():
  """Per model: every conv / dense call of a train-mode forward on SiMaN-binarized params
  (``(Call, input, kernel used, alpha or None, output)``); one jit per model."""
  out = {}
  for name in ('siman_resnet20', 'siman_resnet18_cifar', 'siman_resnet18', 'siman_vgg_small'):
    model = models.get_model(name, 10, widths=TINY[name])
    v = random_variables(model)
    meta = []

    def forward(params, bs, model=model, meta=meta):
      eff = siman.binarize_params(params, siman.binary_codes(params))
      arrays = []

      def interceptor(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        mod = context.module
        if context.method_name == '__call__' and isinstance(
            mod, (bnn_layers.BinaryConv, nn.Conv, nn.Dense)):
          binary = isinstance(mod, bnn_layers.BinaryConv)
          if len(meta) < len(arrays) + 1:
            meta.append(Call(binary, mod.name, getattr(mod, 'strides', None)))
          p = mod.variables['params']
          arrays.append((args[0], p['kernel'], p['alpha'] if binary else None, y))
        return y

      with nn.intercept_methods(interceptor):
        model.apply({'params': eff, 'batch_stats': bs}, X, train=True, mutable=['batch_stats'])
      return arrays

    arrays = jax.device_get(jax.jit(forward)(v['params'], v['batch_stats']))
    out[name] = (v['params'], [(m,) + tuple(a) for m, a in zip(meta, arrays)])
  return out


@pytest.mark.parametrize('name', ['siman_resnet20', 'siman_resnet18_cifar', 'siman_resnet18',
                                  'siman_vgg_small'])
def test_binary_layers_compute_with_pm1_only(name, captured):
  params, calls = captured[name]
  n_binary = 0
  for mod, x, kernel, alpha, y in calls:
    if not mod.binary:
      continue
    n_binary += 1
    np.testing.assert_array_equal(np.abs(kernel), 1.0)           # weights in {-1, +1}
    # SiMaN activation, written here: sign((a - mean) / std) per sample.
    xb = np.sign(x - x.mean(axis=(1, 2, 3), keepdims=True))
    np.testing.assert_array_equal(np.abs(xb), 1.0)
    # The layer's output is the conv of those two +-1 tensors times alpha.
    k = kernel.shape[0]
    ref = jax.lax.conv_general_dilated(jnp.asarray(xb), jnp.asarray(kernel), (mod.strides,) * 2
                                       if isinstance(mod.strides, int) else mod.strides,
                                       [(k // 2, k // 2)] * 2,
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    # Integer-valued conv of +-1 tensors: exact up to the alpha product.
    conv_int = np.asarray(ref)
    np.testing.assert_array_equal(conv_int, np.round(conv_int))
    np.testing.assert_allclose(y, conv_int * alpha, rtol=1e-5, atol=1e-5)
  assert n_binary == len(siman.binary_kernel_paths(params))
  fp = [(mod, kernel) for mod, _, kernel, _, _ in calls if not mod.binary]
  assert fp, 'stem and classifier must be ordinary (full-precision) layers'
  for mod, kernel in fp:                     # the FP layers keep their real weights
    assert len(np.unique(kernel)) > 2, mod.name


def test_forward_weight_is_2b_minus_1_of_each_kernel(captured):
  params, calls = captured['siman_resnet20']
  binary = [c for c in calls if c[0].binary]
  for (mod, _, kernel, _, _), path in zip(binary, siman.binary_kernel_paths(params)):
    w = np.asarray(transforms.get_path(params, path), np.float64)
    flat = w.reshape(-1, w.shape[-1])
    c = flat - flat.mean(0)
    x = np.abs(c / np.sqrt(c.var(0, ddof=1) + 1e-5))
    top = np.argsort(-x, axis=0)[:flat.shape[0] // 2]       # larger half per output channel
    ref = -np.ones_like(flat)
    np.put_along_axis(ref, top, 1.0, axis=0)
    np.testing.assert_array_equal(kernel.reshape(flat.shape), ref)


# --- alpha init, parameter count ------------------------------------------------------------------


def test_alpha_init_is_mean_abs_of_pytorch_default():
  # N = 3 * 3 * 128 = 1152: mean |U(-1/sqrt N, 1/sqrt N)| = 0.5 / sqrt N.
  conv = bnn_layers.BinaryConv(8, 3, act_binarizer=None, alpha='mean_abs_default')
  v = conv.init(jax.random.PRNGKey(2), jnp.zeros((1, 4, 4, 128)))
  alpha = np.asarray(v['params']['alpha'])
  np.testing.assert_allclose(alpha, 0.5 / np.sqrt(1152), rtol=0.05)


def test_resnet20_default_param_count():
  model = models.get_model('siman_resnet20', 10)
  p = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), X, train=False))['params']
  binary = sum(int(np.prod(transforms.get_path(p, q).shape)) for q in siman.binary_kernel_paths(p))
  total = sum(int(np.prod(l.shape)) for l in jax.tree.leaves(p))
  # 18 binary 3x3 convs of the 16/32/64 ResNet-20: 9 * (16*16*6 + 16*32 + 32*32*5 + 32*64
  # + 64*64*5) = 267,264 binary weights; the whole net ~0.27M.
  assert binary == 9 * (16 * 16 * 6 + 16 * 32 + 32 * 32 * 5 + 32 * 64 + 64 * 64 * 5)
  assert 0.26e6 < total < 0.28e6


def test_bad_options():
  with pytest.raises(ValueError, match='nonlinearity'):
    models.get_model('siman_resnet20', 10, nonlinearity='gelu')
  with pytest.raises(ValueError, match='act_binarizer'):
    models.get_model('siman_vgg_small', 10, act_binarizer='tanh')
  with pytest.raises(ValueError, match='option-A'):
    models.get_model('siman_resnet20', 10, widths={'stem': 4, 'stages': [4, 7, 16]})
