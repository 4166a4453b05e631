"""The Wide ResNets FFSD trains (``common.models.wrn``): params and thop FLOPs equal the counts of
the official PyTorch definition (``fixtures/make_ffsd_zoo_counts.py``), the spec matches the
built params, the feature tap sites exist with the official hooks' shapes."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import flops, models

COUNTS = json.load(open(os.path.join(os.path.dirname(__file__), 'fixtures',
                                     'ffsd_zoo_counts.json')))


@pytest.mark.parametrize('name', ['wrn_16_2', 'wrn_40_2'])
def test_params_and_flops_equal_the_official_definition(name):
  want = COUNTS[f'{name}/cifar100']
  m = models.get_model(name, 100)
  shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                         train=False))
  assert sum(x.size for x in jax.tree.leaves(shapes['params'])) == want['params']
  f, p, _ = flops.count(name, num_classes=100)
  assert (f, p) == (want['flops'], want['params'])
  covered = 0
  for spec in models.layer_specs(name, num_classes=100):
    node = shapes['params']
    for k in spec.path:
      node = node[k]
    for leaf, shape in spec.param_shapes().items():
      assert node[leaf].shape == shape, (spec.path, leaf)
      covered += int(np.prod(shape))
  assert covered == want['params']


def test_tap_sites_and_forward():
  m = models.get_model('wrn_16_1', 10)
  sites = dict(models.tap_sites(m, (2, 32, 32, 3)))
  assert sites['layer1_1/out'] == (2, 32, 32, 16)
  assert sites['layer2_1/out'] == (2, 16, 16, 32)
  assert sites['act_last'] == (2, 8, 8, 64)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  v = jax.jit(lambda a: m.init(jax.random.PRNGKey(0), a, train=False))(x)
  assert m.apply(v, x, train=False).shape == (2, 10)
  # Stride on conv2 (the official wide_basic), biased convs, a biased 1x1 shortcut.
  blk = v['params']['layer2_0']
  assert blk['conv1']['kernel'].shape == (3, 3, 16, 32) and 'bias' in blk['conv1']
  assert blk['shortcut_conv']['kernel'].shape == (1, 1, 16, 32)
  assert 'shortcut_conv' not in v['params']['layer1_1']
