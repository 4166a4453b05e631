"""RegNetX (Radosavovic et al. 2020, "Designing Network Design Spaces", Sec. 3-4) with per-stage widths.

Layout (facebookresearch/pycls ``pycls/models/anynet.py`` X blocks; osmr/pytorchcv
``pytorchcv/models/regnet.py`` ``RegNet``, the copy zysxmu/FDDA quantizes as ``regnetx_600m``):
stem 3x3 conv stride 2 + BN + ReLU; S stages of residual bottleneck units ``relu(body(x) +
shortcut(x))`` with ``body = conv1x1 -> BN -> ReLU -> grouped conv3x3 (stride 2 in the first unit
of every stage, group width g) -> BN -> ReLU -> conv1x1 -> BN`` (bottleneck ratio 1: every conv of
a unit has the unit's width) and a 1x1 conv (stride s) + BN shortcut where the width or the stride
changes; global average pool; linear classifier. No bias in the convs.

Widths (:func:`regnet_widths`, pycls ``generate_regnet`` / pytorchcv ``get_regnet``): per-block
widths ``u_j = w_0 + w_a j`` quantized to ``w_0 w_m^round(log(u_j / w_0) / log w_m)`` rounded to a
multiple of 8, grouped into stages of equal width, each stage's width rounded to a multiple of
its group width. RegNetX-600MF: ``w_0 = 48, w_a = 36.97, w_m = 2.24, d = 16, g = 24`` -> stage
widths 48/96/240/528, depths 1/3/5/7, 6.2M parameters, 0.6 GFLOPs (multiply-adds) at 224.

Width config: ``{'stem': int, 'stages': [int] * S, 'depths': [int] * S, 'group_width': int}``.
Registered name: ``regnetx_600mf``. Param paths: ``conv1, bn1,
stage{s}_{b}/{conv1, bn1, conv2, bn2, conv3, bn3, [downsample_conv, downsample_bn]}, fc`` (s from
1, b from 0). Tap sites, in forward order: ``bn1_in, act1``, then per unit
``stage{s}_{b}/{bn1_in, act1, bn2_in, act2, bn3_in, [downsample_bn_in,] act3, out}`` (``act3`` =
ReLU of the residual sum), then ``features``; 53 BatchNorms for RegNetX-600MF, as the FDDA code's
``BN_layer_num``. Init: ``kaiming_normal_fan_out`` convs, PyTorch-default classifier (as the
torchvision ResNets; pycls draws the classifier from N(0, 0.01)).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn
import numpy as np

from common.models import layers as L
from common.models import taps as T
from common.models.registry import register
from common.models.specs import SpecBuilder

# RegNetX-600MF of pycls's model zoo (RegNetX-600MF_dds_8gpu.yaml).
REGNETX_600MF = dict(w0=48, wa=36.97, wm=2.24, depth=16, group_width=24)


def regnet_widths(w0: float, wa: float, wm: float, depth: int, group_width: int, q: int = 8):
  """Stage widths and depths of a RegNet from its design parameters (pycls ``generate_regnet``,
  then ``adjust_ws_gs_comp`` with bottleneck ratio 1). -> ``{'stem', 'stages', 'depths',
  'group_width'}`` (the stem is 32 in every RegNet)."""
  if wa < 0 or w0 <= 0 or wm <= 1 or w0 % q:
    raise ValueError(f'RegNet needs wa >= 0, w0 > 0 a multiple of {q}, wm > 1; got '
                     f'w0={w0}, wa={wa}, wm={wm}')
  cont = np.arange(depth) * wa + w0
  ks = np.round(np.log(cont / w0) / np.log(wm))
  ws = (np.round(np.divide(w0 * np.power(wm, ks), q)) * q).astype(int)
  stages, depths = [], []
  for w in ws:
    if stages and stages[-1] == w:
      depths[-1] += 1
    else:
      stages.append(int(w))
      depths.append(1)
  gs = [min(group_width, w) for w in stages]
  stages = [int(round(w / g) * g) for w, g in zip(stages, gs)]
  return {'stem': 32, 'stages': stages, 'depths': depths, 'group_width': int(group_width)}


def parse_widths(name: str, widths):
  """Validates a width dict; returns ``(stem, stages, depths, group_width)``."""
  L.check_keys(name, widths, ('stem', 'stages', 'depths', 'group_width'))
  stem = L.check_pos_int(f'{name} widths["stem"]', widths['stem'])
  stages = L.check_int_list(f'{name} widths["stages"]', widths['stages'])
  depths = L.check_int_list(f'{name} widths["depths"]', widths['depths'], len(stages))
  g = L.check_pos_int(f'{name} widths["group_width"]', widths['group_width'])
  bad = [w for w in stages if w % min(g, w)]
  if bad:
    raise ValueError(f'{name}: stage widths {bad} are not multiples of the group width {g}')
  return stem, stages, depths, g


class Unit(nn.Module):
  """One X unit (``[B, H, W, C_in] -> [B, H/s, W/s, out]``); sites in the module docstring."""
  out: int
  stride: int
  group_width: int
  init: str
  bn_axis_name: Optional[str] = None
  act: Any = 'relu'

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    act = L.act_fn(self.act)
    bn = lambda n, h: L.batch_norm(train, n, self.bn_axis_name)(T.at(tap, f'{n}_in', h))
    cin, w = x.shape[-1], self.out
    groups = w // min(self.group_width, w)
    y = T.at(tap, 'act1', act(bn('bn1', L.conv(w, 1, in_ch=cin, init=self.init,
                                                name='conv1')(x))))
    y = L.conv(w, 3, in_ch=w, stride=self.stride, groups=groups, init=self.init, name='conv2')(y)
    y = T.at(tap, 'act2', act(bn('bn2', y)))
    y = bn('bn3', L.conv(w, 1, in_ch=w, init=self.init, name='conv3')(y))
    if self.stride != 1 or cin != w:
      x = bn('downsample_bn', L.conv(w, 1, in_ch=cin, stride=self.stride, init=self.init,
                                     name='downsample_conv')(x))
    return T.at(tap, 'out', T.at(tap, 'act3', act(y + x)))


class RegNet(nn.Module):
  """RegNetX: ``__call__(x [B, H, W, 3], train, tap=None) -> logits [B, num_classes]``; sows the
  pooled features ``[B, stages[-1]]``."""
  num_classes: int
  stem: int
  stages: Tuple[int, ...]
  depths: Tuple[int, ...]
  group_width: int
  init_scheme: str = 'kaiming_normal_fan_out'
  dense_init: Optional[str] = None
  bn_axis_name: Optional[str] = None
  act: Any = 'relu'

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    init, dense_init = L.check_init(self.init_scheme, self.dense_init)
    act = L.act_fn(self.act)
    x = L.conv(self.stem, 3, in_ch=x.shape[-1], stride=2, init=init, name='conv1')(x)
    x = L.batch_norm(train, 'bn1', self.bn_axis_name)(T.at(tap, 'bn1_in', x))
    x = T.at(tap, 'act1', act(x))
    for s, (w, d) in enumerate(zip(self.stages, self.depths)):
      for b in range(d):
        name = f'stage{s + 1}_{b}'
        x = Unit(w, 2 if b == 0 else 1, self.group_width, init, self.bn_axis_name, self.act,
                 name=name)(x, train, T.within(tap, name))
    feats = T.at(tap, 'features', L.global_avg_pool(x))
    self.sow('intermediates', 'features', feats)
    return L.classifier(feats, self.num_classes, as_conv=False, init=dense_init)


def layer_specs_of(name, widths, input_hw, num_classes, *, init='kaiming_normal_fan_out',
                   dense_init=None, bn_axis_name=None, act='relu'):
  """Specs in forward order (unit outputs and shortcuts feed the residual sum)."""
  L.check_init(init, dense_init)
  stem, stages, depths, g = parse_widths(name, widths)
  b = SpecBuilder(input_hw)
  b.conv(('conv1',), 3, stem, 3, stride=2, role='stem', bn=('bn1',))
  cin = stem
  for s, (w, d) in enumerate(zip(stages, depths)):
    for i in range(d):
      stride = 2 if i == 0 else 1
      u = f'stage{s + 1}_{i}'
      in_hw = b.hw
      b.conv((u, 'conv1'), cin, w, 1, role='inner', bn=(u, 'bn1'))
      b.conv((u, 'conv2'), w, w, 3, stride=stride, groups=w // min(g, w), role='inner',
             bn=(u, 'bn2'))
      b.conv((u, 'conv3'), w, w, 1, role='block_out', feeds_residual=True, bn=(u, 'bn3'))
      if stride != 1 or cin != w:
        b.conv((u, 'downsample_conv'), cin, w, 1, stride=stride, role='shortcut',
               feeds_residual=True, bn=(u, 'downsample_bn'), in_hw=in_hw)
      cin = w
  b.classifier(cin, num_classes, False)
  return b.specs


def _build(num_classes, widths, init='kaiming_normal_fan_out', **kwargs):
  stem, stages, depths, g = parse_widths('regnetx_600mf', widths)
  L.check_init(init, kwargs.get('dense_init'))
  return RegNet(num_classes=num_classes, stem=stem, stages=stages, depths=depths, group_width=g,
                init_scheme=init, **kwargs)


register('regnetx_600mf', default_widths=lambda: regnet_widths(**REGNETX_600MF),
         specs=lambda widths, input_hw, num_classes, **kw: layer_specs_of(
             'regnetx_600mf', widths, input_hw, num_classes, **kw))(_build)
