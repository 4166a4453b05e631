"""RegNetX-600MF: widths from the design parameters, params / FLOPs against the published figures
and a count written out in the test, BN layers as the FDDA code counts them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import flops, models
from common.models import regnet


def test_design_parameters_give_the_published_stages():
  w = regnet.regnet_widths(**regnet.REGNETX_600MF)
  # pycls RegNetX-600MF: widths 48/96/240/528, depths 1/3/5/7, group width 24.
  assert w == {'stem': 32, 'stages': [48, 96, 240, 528], 'depths': [1, 3, 5, 7],
               'group_width': 24}


def _hand_count(hw=224, classes=1000):
  """MACs and params of RegNetX-600MF written out layer by layer (BN: 2 params per channel)."""
  macs, params = 0, 0
  h = hw // 2
  macs += h * h * 3 * 32 * 9
  params += 3 * 32 * 9 + 2 * 32
  cin = 32
  for w, d in zip([48, 96, 240, 528], [1, 3, 5, 7]):
    for b in range(d):
      s = 2 if b == 0 else 1
      ho = h // s
      g = w // 24
      macs += h * h * cin * w + ho * ho * (w // g) * w * 9 + ho * ho * w * w
      params += cin * w + (w // g) * w * 9 + w * w + 3 * 2 * w
      if b == 0:
        macs += ho * ho * cin * w
        params += cin * w + 2 * w
      h, cin = ho, w
  macs += cin * classes
  params += cin * classes + classes
  return macs, params


def test_params_and_flops_fixture():
  m = models.get_model('regnetx_600mf', 1000)
  shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)),
                                         train=False))
  n = sum(x.size for x in jax.tree.leaves(shapes['params']))
  # osmr/pytorchcv regnetx_600m: 6,196,040 parameters; pycls: 6.2M, 0.6 GFLOPs.
  assert n == 6_196_040
  macs, p = flops.count('regnetx_600mf', input_hw=(224, 224), num_classes=1000,
                        convention='macs')[:2]
  hand_macs, hand_params = _hand_count()
  assert p == n == hand_params
  # The 'macs' convention adds BN / ReLU / pool element costs on top of the conv / fc MACs.
  assert hand_macs <= macs <= 1.01 * hand_macs
  assert abs(macs - 0.6e9) / 0.6e9 < 0.01


def test_bn_layers_and_forward():
  m = models.get_model('regnetx_600mf', 10)
  sites = [s for s, _ in models.tap_sites(m, (1, 32, 32, 3))]
  assert sum(s.endswith('_in') for s in sites) == 53   # zysxmu/FDDA BN_layer_num for regnetx_600m
  v = m.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=False)
  out = m.apply(v, jnp.ones((2, 32, 32, 3)), train=False)
  assert out.shape == (2, 10) and bool(jnp.all(jnp.isfinite(out)))


def test_bad_widths():
  with pytest.raises(ValueError, match='group width'):
    models.get_model('regnetx_600mf', 10, widths={'stem': 32, 'stages': [50], 'depths': [1],
                                                  'group_width': 24})
