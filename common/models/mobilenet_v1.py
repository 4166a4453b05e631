"""MobileNet-V1 (Howard et al. 2017) with per-layer widths (1xN and PSS-Net layouts).

Layout (lmbxmu/1xN ``models/mobilenet_v1.py``, chenbong/PSS-Net ``models/mobilenet_v1.py``): 3x3
stem conv (stride 2) + BN + act; n depthwise-separable blocks ``act(bn(dw 3x3, stride s)) ->
act(bn(pw 1x1))``; global average pool; classifier (Linear, or with ``classifier_as_conv=True`` the
1xN 1x1 conv with bias).

Width config: a list ``[stem, pw_1, ..., pw_n]`` of n + 1 positive ints (PSS-Net's 14 slimmable
widths); each depthwise conv keeps its input width. Default (n = 13):
``[32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]`` with block strides
``[1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]`` (``strides`` kwarg; required when n != 13).

Options: ``act`` ('relu' as 1xN and the paper; PSS-Net uses 'relu6'; or any callable),
``pointwise_bias`` (1xN's pointwise convs carry a bias that is zero and frozen, i.e. no bias in
effect; default False), ``stem_stride`` (2), ``classifier_as_conv``, ``init`` (default PSS /
torchvision-style ``'kaiming_normal_fan_out'`` with ``dense_init='normal_0.01'``: PSS
``reset_parameters``).

Registered names: ``mobilenet_v1`` (ImageNet) and ``mobilenet_v1_tiny`` (stem 16 stride 1, blocks
32, 64/2, 64, 128/2, 128: a MobileNet-V1 small enough for CPU-scale PSS-Net runs).
Param paths: ``conv1, bn1, block{i}/{dw_conv, dw_bn, pw_conv, pw_bn}, fc``; roles stem,
depthwise, pointwise, classifier.

Tap sites (``common.models.taps``), in forward order: ``bn1_in, act1`` (stem), then per block
``block{i}/{dw_bn_in, dw_act, pw_bn_in, pw_act, out}`` (``out`` = ``pw_act``'s result), then
``features``.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn

from common.models import layers as L
from common.models import taps as T
from common.models.registry import register
from common.models.specs import SpecBuilder

CONFIGS = {
    'mobilenet_v1': dict(widths=[32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024,
                                 1024],
                         strides=(1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1), stem_stride=2),
    'mobilenet_v1_tiny': dict(widths=[16, 32, 64, 64, 128, 128], strides=(1, 2, 1, 2, 1),
                              stem_stride=1),
}


def parse(name: str, widths, strides=None, stem_stride=None):
  """Validates widths / strides; returns ``(widths, strides, stem_stride)`` as tuples / int."""
  ws = L.check_int_list(f'{name} widths', widths)
  if len(ws) < 2:
    raise ValueError(f'{name} widths must be [stem, pw_1, ..., pw_n] with n >= 1; got {widths!r}')
  cfg = CONFIGS[name]
  if strides is None:
    if len(ws) != len(cfg['widths']):
      raise ValueError(f'{name} with {len(ws) - 1} blocks needs explicit strides (the default '
                       f'strides are for {len(cfg["strides"])} blocks)')
    strides = cfg['strides']
  strides = tuple(strides)
  if len(strides) != len(ws) - 1 or any(s not in (1, 2) for s in strides):
    raise ValueError(f'{name} strides must be {len(ws) - 1} values in (1, 2); got {list(strides)}')
  stem_stride = cfg['stem_stride'] if stem_stride is None else stem_stride
  if stem_stride not in (1, 2):
    raise ValueError(f'{name} stem_stride must be 1 or 2; got {stem_stride!r}')
  return ws, strides, stem_stride


class MobileNetV1(nn.Module):
  """``__call__(x [B, H, W, 3], train, tap=None) -> logits [B, num_classes]``; sows pooled features
  ``[B, widths[-1]]``. ``init_scheme`` is ``get_model``'s ``init`` kwarg; ``act`` and ``tap``: see
  the module docstring."""
  num_classes: int
  widths: Tuple[int, ...]
  strides: Tuple[int, ...]
  stem_stride: int = 2
  act: Any = 'relu'
  pointwise_bias: bool = False
  classifier_as_conv: bool = False
  init_scheme: str = 'kaiming_normal_fan_out'
  dense_init: Optional[str] = 'normal_0.01'
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    init, dense_init = L.check_init(self.init_scheme, self.dense_init)
    act = L.act_fn(self.act)
    x = L.conv(self.widths[0], 3, in_ch=x.shape[-1], stride=self.stem_stride, init=init,
               name='conv1')(x)
    x = L.batch_norm(train, 'bn1', self.bn_axis_name)(T.at(tap, 'bn1_in', x))
    x = T.at(tap, 'act1', act(x))
    for i, (w, s) in enumerate(zip(self.widths[1:], self.strides)):
      x = DepthwiseSeparable(w, s, self.act, self.pointwise_bias, init, self.bn_axis_name,
                             name=f'block{i}')(x, train, T.within(tap, f'block{i}'))
    feats = T.at(tap, 'features', L.global_avg_pool(x))
    self.sow('intermediates', 'features', feats)
    return L.classifier(feats, self.num_classes, as_conv=self.classifier_as_conv, init=dense_init)


class DepthwiseSeparable(nn.Module):
  """Depthwise-separable block ``[B,H,W,C] -> [B,H/s,W/s,out]``."""
  out: int
  stride: int
  act: Any
  pointwise_bias: bool
  init: str
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    act = L.act_fn(self.act)
    bn = lambda n, h: L.batch_norm(train, n, self.bn_axis_name)(T.at(tap, f'{n}_in', h))
    c = x.shape[-1]
    x = L.conv(c, 3, in_ch=c, stride=self.stride, groups=c, init=self.init, name='dw_conv')(x)
    x = T.at(tap, 'dw_act', act(bn('dw_bn', x)))
    x = L.conv(self.out, 1, in_ch=c, bias=self.pointwise_bias, init=self.init, name='pw_conv')(x)
    return T.at(tap, 'out', T.at(tap, 'pw_act', act(bn('pw_bn', x))))


def layer_specs_of(name, widths, input_hw, num_classes, *, strides=None, stem_stride=None,
                   act: Any = 'relu', pointwise_bias: bool = False,
                   classifier_as_conv: bool = False, init: str = 'kaiming_normal_fan_out',
                   dense_init: Optional[str] = 'normal_0.01', bn_axis_name: Optional[str] = None):
  """Specs in forward order (no residual sums in MobileNet-V1)."""
  L.check_init(init, dense_init)
  L.act_fn(act)
  ws, st, ss = parse(name, widths, strides, stem_stride)
  b = SpecBuilder(input_hw)
  b.conv(('conv1',), 3, ws[0], 3, stride=ss, role='stem', bn=('bn1',))
  cin = ws[0]
  for i, (w, s) in enumerate(zip(ws[1:], st)):
    blk = f'block{i}'
    b.conv((blk, 'dw_conv'), cin, cin, 3, stride=s, groups=cin, role='depthwise',
           bn=(blk, 'dw_bn'))
    b.conv((blk, 'pw_conv'), cin, w, 1, bias=pointwise_bias, role='pointwise', bn=(blk, 'pw_bn'))
    cin = w
  b.classifier(cin, num_classes, classifier_as_conv)
  return b.specs


def _register(name: str):
  def build(num_classes, widths, strides=None, stem_stride=None, init='kaiming_normal_fan_out',
            dense_init='normal_0.01', act='relu', **kwargs):
    ws, st, ss = parse(name, widths, strides, stem_stride)
    L.check_init(init, dense_init)
    L.act_fn(act)
    return MobileNetV1(num_classes=num_classes, widths=ws, strides=st, stem_stride=ss, act=act,
                       init_scheme=init, dense_init=dense_init, **kwargs)

  def specs(widths, input_hw, num_classes, **kwargs):
    return layer_specs_of(name, widths, input_hw, num_classes, **kwargs)

  register(name, default_widths=lambda: list(CONFIGS[name]['widths']), specs=specs)(build)


for _name in CONFIGS:
  _register(_name)
