"""CIFAR VGG-11/13/16/19 (+ a tiny VGG) with per-conv widths.

Layout (lmbxmu/DCFF and zyxxmu/White-Box ``vgg_cifar.py``, zyxxmu/lottery-jackpots VGG-19):
every conv is 3x3 (padding 1) + BN + act (ReLU); a 2x2/2 max-pool follows the convs listed in
``pools``; then global average pooling (at 32x32 input the five pools leave 1x1, so this is the
repos' no-op ``AvgPool2d(1)`` + flatten) and the classifier (``Linear(widths[-1], K)``, or a 1x1
conv with bias for Jackpot's VGG-19).

Width config: a list with one positive int per conv, in forward order (13 for VGG-16, 16 for
VGG-19), e.g. DCFF's compact VGG-16 ``[32, 32, 76, 76, 166, 166, 166, 76, 76, 76, 76, 76, 76]``.

Options (``get_model`` kwargs): ``conv_bias`` (default True: DCFF and White-Box VGG-16 have conv
biases; Jackpot's VGG-19 has none: pass False), ``classifier_as_conv`` (Jackpot), ``init``
(default 'pytorch' as DCFF; White-Box: ``init='kaiming_normal_fan_out', dense_init='normal_0.01'``),
``pools`` (0-based conv indices followed by a max-pool; default: the VGG config's 'M' positions).

Registered names: ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19`` and ``vgg_tiny`` (16,16,M,32,32,M,
64,64,M: a VGG small enough for CPU-scale DCFF runs). Param paths ``conv{i}``, ``bn{i}`` (i from 0),
``fc``. Conv ``conv0`` has role 'stem', the others 'inner'; nothing feeds a residual sum.

Activation: the ``act`` option ('relu' default, 'relu6', or a callable). Tap sites
(``common.models.taps``), in forward order: ``bn{i}_in, act{i}`` for every conv i (``act{i}`` is
before the max-pool that may follow), then ``features``.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn

from common.models import layers as L
from common.models import taps as T
from common.models.registry import register
from common.models.specs import SpecBuilder

CFGS = {
    'vgg11': [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'vgg13': [64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'vgg16': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512,
              'M'],
    'vgg19': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512,
              512, 512, 512, 'M'],
    'vgg_tiny': [16, 16, 'M', 32, 32, 'M', 64, 64, 'M'],
}


def cfg_widths(cfg) -> list:
  """Conv widths of a VGG config list (the ints)."""
  return [c for c in cfg if c != 'M']


def cfg_pools(cfg) -> Tuple[int, ...]:
  """0-based indices of the convs followed by a max-pool in a VGG config list."""
  out, i = [], -1
  for c in cfg:
    if c == 'M':
      out.append(i)
    else:
      i += 1
  return tuple(out)


class VGG(nn.Module):
  """VGG for CIFAR: ``__call__(x [B, H, W, 3], train, tap=None) -> logits [B, num_classes]``; sows
  pooled features ``[B, widths[-1]]``. ``init_scheme`` is ``get_model``'s ``init`` kwarg; ``act``
  and ``tap``: see the module docstring."""
  num_classes: int
  widths: Tuple[int, ...]
  pools: Tuple[int, ...]
  conv_bias: bool = True
  classifier_as_conv: bool = False
  init_scheme: str = 'pytorch'
  dense_init: Optional[str] = None
  bn_axis_name: Optional[str] = None
  act: Any = 'relu'

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    init, dense_init = L.check_init(self.init_scheme, self.dense_init)
    act = L.act_fn(self.act)
    for i, w in enumerate(self.widths):
      x = L.conv(w, 3, in_ch=x.shape[-1], bias=self.conv_bias, init=init, name=f'conv{i}')(x)
      x = L.batch_norm(train, f'bn{i}', self.bn_axis_name)(T.at(tap, f'bn{i}_in', x))
      x = T.at(tap, f'act{i}', act(x))
      if i in self.pools:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    feats = T.at(tap, 'features', L.global_avg_pool(x))
    self.sow('intermediates', 'features', feats)
    return L.classifier(feats, self.num_classes, as_conv=self.classifier_as_conv, init=dense_init)


def parse(name: str, widths, pools=None):
  """Validates ``widths`` (and ``pools``); returns ``(widths tuple, pools tuple)``."""
  default = CFGS[name]
  n = len(cfg_widths(default))
  if pools is None:
    ws = L.check_int_list(f'{name} widths', widths, n)
    return ws, cfg_pools(default)
  ws = L.check_int_list(f'{name} widths', widths)
  if (not isinstance(pools, (list, tuple)) or any(isinstance(p, bool) or not isinstance(p, int)
                                                  or not 0 <= p < len(ws) for p in pools)
      or len(set(pools)) != len(pools)):
    raise ValueError(f'{name} pools must be distinct conv indices in [0, {len(ws)}); got {pools!r}')
  return ws, tuple(sorted(int(p) for p in pools))


def layer_specs_of(name, widths, input_hw, num_classes, *, pools=None, conv_bias: bool = True,
                   classifier_as_conv: bool = False, init: str = 'pytorch',
                   dense_init: Optional[str] = None, bn_axis_name: Optional[str] = None,
                   act: Any = 'relu'):
  """Specs in forward order (conv, bn per layer; then the classifier)."""
  L.check_init(init, dense_init)
  L.act_fn(act)
  ws, pls = parse(name, widths, pools)
  b = SpecBuilder(input_hw)
  cin = 3
  for i, w in enumerate(ws):
    b.conv((f'conv{i}',), cin, w, 3, bias=conv_bias, role='stem' if i == 0 else 'inner',
           bn=(f'bn{i}',))
    if i in pls:
      b.pool(2, 2)
    cin = w
  b.classifier(cin, num_classes, classifier_as_conv)
  return b.specs


def _register(name: str):
  def build(num_classes, widths, pools=None, init='pytorch', **kwargs):
    ws, pls = parse(name, widths, pools)
    L.check_init(init, kwargs.get('dense_init'))
    L.act_fn(kwargs.get('act', 'relu'))
    return VGG(num_classes=num_classes, widths=ws, pools=pls, init_scheme=init, **kwargs)

  def specs(widths, input_hw, num_classes, **kwargs):
    return layer_specs_of(name, widths, input_hw, num_classes, **kwargs)

  register(name, default_widths=lambda: cfg_widths(CFGS[name]), specs=specs)(build)


for _name in CFGS:
  _register(_name)
